"""Show how a precision policy resolves on a model: per module, the rule that
matched, the weight / activation / KV formats, parameters and bytes before
(BF16) and after. The model is built on the meta device from its config: no
weights are read or downloaded."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "show which format each module of a model gets under a policy, and the bytes"
EPILOG = """examples:
  qeval plan llama-3.1-8b --policy mixed-fp4-fp8
  qeval plan ./my-model/ --policy configs/policies/nvfp4.yaml --json
  qeval plan path/to/config.json --policy fp8-dynamic --all
"""

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="local model folder, a config.json, a configs/models name, or a hub ID (online)")
    parser.add_argument("--policy", "-p", required=True, help="built-in policy name or a policy YAML file")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--all", action="store_true", help="also list norms and other unquantizable modules")


def _gib(n: int) -> str:
    return f"{n / 2**30:.3f} GiB" if n >= 2**28 else f"{n / 2**20:.3f} MiB"


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from qeval.console import print_wide
    from qeval.deploy.load import load_model
    from qeval.policy import load_policy, plan

    try:
        policy = load_policy(args.policy)
        model = load_model(args.model).model  # meta device: no weights read
        result = plan(model, policy)
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

    from qeval.policy.planner import QUANTIZABLE

    from qeval.policy.schema import PROTECTED_KINDS

    table = Table(title=f"{args.model} under policy {result.policy}", show_lines=False)
    for col, just in (("module", "left"), ("kind", "left"), ("layer", "right"), ("rule", "right"),
                      ("weights", "left"), ("activations", "left"), ("kv", "left"),
                      ("params", "right"), ("MiB before", "right"), ("MiB after", "right")):
        table.add_column(col, justify=just, no_wrap=col == "module")
    for e in result.entries:
        if not args.all and e.kind not in QUANTIZABLE:
            continue
        rule = str(e.rule) if e.rule is not None else "" if e.kind in PROTECTED_KINDS else "default"
        table.add_row(
            e.name, e.kind, "" if e.layer is None else str(e.layer), rule,
            e.weights or "bf16", e.activations or "bf16", e.kv_cache or "",
            "(tied)" if e.tied_to and not e.params else f"{e.params:,}",
            f"{e.bytes_before / 2**20:,.2f}", f"{e.bytes_after / 2**20:,.2f}",
        )
    console = Console()
    print_wide(table, console)
    s = result.summary()
    console.print(f"weights: {s['weights']}")
    console.print(f"activations: {s['activations']}")
    console.print(f"KV cache: {s['kv_cache'] or 'bf16'}")
    console.print(
        f"total: {s['total_params']:,} params, {_gib(s['bytes_before'])} (BF16) -> {_gib(s['bytes_after'])} "
        f"({s['ratio']:.3f}x)"
    )
    return 0
