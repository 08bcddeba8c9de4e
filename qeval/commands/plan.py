"""Show how a precision policy resolves on a model: per group of modules (the same
module in every decoder block is one row), the rule that matched, the weight /
activation / KV formats, parameters and bytes before (BF16) and after. The model
is built on the meta device from its config: no weights are read or downloaded.
MODEL may also be a recipe YAML (its `model:`)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

HELP = "show which format each module of a model gets under a policy, and the bytes"
EPILOG = """examples:
  qeval plan llama-3.1-8b --policy mixed-fp4-fp8
  qeval plan recipes/quickstart.yaml --policy fp8
  qeval plan ./my-model/ --policy configs/policies/nvfp4.yaml --json
  qeval plan path/to/config.json --policy fp8-dynamic --all
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="local model folder, a config.json, a configs/models name, a recipe YAML, "
                                      "or a hub ID (online)")
    parser.add_argument("--policy", "-p", required=True, help="built-in policy name or a policy YAML file")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON (one entry per module)")
    parser.add_argument("--all", action="store_true", help="also list norms and other unquantizable modules")


def _model(source: str):
    """The meta-device model of a model source or of a recipe's ``model:``."""
    from qeval.deploy.load import load_model, resolve_model

    if source.endswith((".yaml", ".yml")) and Path(source).is_file():
        from qeval.files import read_yaml

        data = read_yaml(source, "recipe") or {}
        if not isinstance(data, dict) or "model" not in data:
            raise ValueError(f"{source}: not a recipe (no 'model:' key)")
        return resolve_model(data["model"], None, None, None, False)[0].model
    return load_model(source).model


def _ranges(layers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2, 5``."""
    out, start = [], None
    for i, n in enumerate(layers):
        if start is None:
            start = n
        if i + 1 == len(layers) or layers[i + 1] != n + 1:
            out.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(out)


def group_entries(entries) -> list[dict]:
    """Rows of modules that differ only in their block (or expert) index and got the same treatment."""
    groups: dict[tuple, dict] = {}
    for e in entries:
        pattern = re.sub(r"(?<=\.)\d+(?=\.|$)", "*", e.name)
        key = (pattern, e.kind, e.rule, e.weights, e.activations, e.kv_cache, e.params, bool(e.tied_to))
        g = groups.setdefault(key, {"name": pattern, "entry": e, "count": 0, "layers": set(),
                                    "params": 0, "before": 0, "after": 0})
        g["count"] += 1
        g["params"] += e.params
        g["before"] += e.bytes_before
        g["after"] += e.bytes_after
        if e.layer is not None:
            g["layers"].add(e.layer)
    for g in groups.values():
        if g["count"] == 1:  # a group of one: its own name
            g["name"] = g["entry"].name
    return list(groups.values())


def _counts(counts: dict) -> str:
    return ", ".join(f"{n} modules {fmt}" for fmt, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from qeval.console import print_wide
    from qeval.policy import load_policy, plan
    from qeval.policy.planner import QUANTIZABLE
    from qeval.policy.schema import PROTECTED_KINDS

    try:
        policy = load_policy(args.policy)
        result = plan(_model(args.model), policy)  # meta device: no weights read
    except (ValueError, FileNotFoundError) as err:
        Console(stderr=True).print(f"[red]error:[/red] {err}", highlight=False)
        return 2
    from qeval.pipeline.preflight import quantizes_nothing

    if quantizes_nothing(result, policy):
        Console(stderr=True).print(f"warning: policy {result.policy!r} quantizes no module of this model "
                                   "(every weight stays BF16)", highlight=False)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
        return 0

    s = result.summary()
    unit, scale = ("GiB", 2**30) if s["bytes_before"] >= 2**30 else ("MiB", 2**20)  # one unit for the whole output
    table = Table(title=f"{args.model} under policy {result.policy}", show_lines=False)
    for col, just in (("modules", "left"), ("kind", "left"), ("layers", "right"), ("n", "right"), ("rule", "right"),
                      ("weights", "left"), ("activations", "left"), ("kv", "left"),
                      ("params", "right"), (f"{unit} before", "right"), (f"{unit} after", "right")):
        table.add_column(col, justify=just, no_wrap=col == "modules")
    shown = [e for e in result.entries if args.all or e.kind in QUANTIZABLE]
    for g in group_entries(shown):
        e = g["entry"]
        rule = str(e.rule) if e.rule is not None else "" if e.kind in PROTECTED_KINDS else "default"
        table.add_row(
            g["name"], e.kind, _ranges(sorted(g["layers"])), str(g["count"]), rule,
            e.weights or "bf16", e.activations or "bf16", e.kv_cache or "",
            "(tied)" if e.tied_to and not e.params else f"{g['params']:,}",
            f"{g['before'] / scale:,.3f}", f"{g['after'] / scale:,.3f}",
        )
    console = Console()
    print_wide(table, console)
    console.print(f"weights: {_counts(s['weights'])}", highlight=False)
    console.print(f"activations: {_counts(s['activations'])}", highlight=False)
    console.print(f"KV cache: {s['kv_cache'] or 'bf16'}", highlight=False)
    console.print(
        f"total: {s['total_params']:,} params, {s['bytes_before'] / scale:,.3f} {unit} (BF16) -> "
        f"{s['bytes_after'] / scale:,.3f} {unit} ({s['ratio']:.3f}x)", highlight=False,
    )
    return 0
