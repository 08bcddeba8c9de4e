"""The report of a run: ``report.md``, ``report.html`` (self-contained) and ``pareto.png``.

The content is built once as blocks (``qeval.results.document``) and rendered
twice. It opens with a one-line verdict, then provenance, the results table,
the gate with reasons, the GPU recommendation, each policy's rules and the
Pareto plot. The table itself lives in ``qeval.results.table`` (re-exported).

>>> from qeval.results.report import print_table, write_report
>>> print_table(results)                  # after a run
>>> write_report(results, run_dir)        # report.md + report.html + pareto.png, atomically
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from qeval.files import atomic_write_bytes
from qeval.results import intervals
from qeval.results.schema import run_label
from qeval.results.summary import failure_reasons, recommendation_rows, rule_lines, task_sensitivity, verdict
from qeval.results.table import (  # noqa: F401  (re-exported: the table API predates this split)
    COLUMN_KEYS, DEFAULT_COLUMNS, Column, format_bytes, markdown_table, print_table, rich_table, select_columns,
    table_rows,
)

# ---------------------------------------------------------------------------
# report.md

_GGUF_TYPE = re.compile(r"[.-]((?:I?Q\d[\w]*)|F16|BF16|F32)\.gguf$", re.IGNORECASE)


def baseline_provenance(config: dict) -> str | None:
    """Where the baseline's weights came from, as far as the recipe says."""
    model = (config or {}).get("model") or {}
    note = model.get("baseline_note") or (config or {}).get("baseline_note")
    if note:
        return str(note)
    source = model.get("id") or (f"package `{model['package']}`" if model.get("package") else None)
    gguf = model.get("gguf_file") or (model.get("id") if str(model.get("id") or "").endswith(".gguf") else None)
    if gguf:
        m = _GGUF_TYPE.search(str(gguf))
        qtype = m.group(1).upper() if m else None
        text = f"The baseline is the GGUF file `{Path(str(gguf)).name}` from {source}, dequantized to {model.get('dtype', 'float')}."
        if qtype and qtype not in ("F16", "BF16", "F32"):
            text += (
                f" Its weights were already {qtype} (quantized) before they became the float baseline, so the losses"
                " below are relative to that model, not to a full-precision checkpoint."
            )
        return text
    if source:
        return f"The baseline is {source} as loaded (dtype {model.get('dtype', 'as stored')}), unquantized."
    return None


def _ranking_blocks(results: dict) -> list[tuple]:
    """``intervals.ranking_lines`` (Markdown: heading, explanation, one bullet per metric) as blocks."""
    lines = intervals.ranking_lines(results)
    if not lines:
        return []
    text = next(line for line in lines[1:] if line and not line.startswith(("#", "- ")))
    return [("h2", lines[0].lstrip("# ")), ("p", text), ("ul", [line[2:] for line in lines if line.startswith("- ")])]


def _gate_blocks(results: dict) -> list[tuple]:
    policies = [p for p in results.get("policies") or [] if isinstance(p.get("gate"), dict)]
    if not policies:
        return []
    top = results.get("gate") or {}
    blocks: list[tuple] = [("h2", "Gate")]
    if top:
        blocks.append(("p", f"Overall: **{'PASS' if top.get('passed') else 'FAIL'}** (every policy must pass)."))
    items = []
    for p in policies:
        verdict = p["gate"]
        reasons = failure_reasons(p)
        head = f"**{p['name']}**: " + ("PASS" if verdict.get("passed") else "FAIL: " + "; ".join(reasons))
        subs = []
        for c in verdict.get("checks", []):
            mark = "skip" if c.get("skipped") else ("ok" if c.get("passed") else "FAIL")
            subs.append(f"[{mark}] `{c.get('name')}`: {c.get('detail', '')}")
        items.append((head, subs))
    return blocks + [("ul", items)]


_MODE_NOTES = {  # what each compute path means, said once for the paths a run used
    "emulate (exact)": "codes x block scales multiplied exactly, FP32 accumulation, per-tensor / per-row scales "
                       "on the output, as the tensor core computes",
    "emulate (fake_quant)": "dequantize, then a float matmul",
}


def _mode(entry: dict) -> str:
    emu = entry.get("emulation")
    return f"{entry['mode']} ({emu})" if entry.get("mode") == "emulate" and emu else str(entry.get("mode"))


def _recommendation_blocks(results: dict) -> list[tuple]:
    headers, rows = recommendation_rows(results)
    if not any(r[2] != "-" for r in rows):
        return []
    hw = ((results.get("recipe") or {}).get("config") or {}).get("hardware") or {}
    blocks: list[tuple] = [
        ("h2", "GPU recommendation"),
        ("p", f"For serving at context {hw.get('context', '?')} x batch {hw.get('batch', '?')} (the recipe's "
              "`hardware:`): the cheapest option per hour that fits with headroom, from the model's config "
              "(weights, KV cache, activations and overhead per GPU; `qeval recommend` shows every option)."),
        ("table", headers, rows),
    ]
    why = [f"**{p['name']}**: {(p.get('recommendation') or {}).get('why')}" for p in results.get("policies") or []
           if (p.get("recommendation") or {}).get("why")]
    return blocks + ([("ul", why)] if why else [])


def _policy_blocks(results: dict) -> list[tuple]:
    items = []
    for p in results.get("policies") or []:
        desc = str((p.get("policy") or {}).get("description") or "").strip()
        head = f"**{p.get('name')}**" + (f": {desc}" if desc else "")
        items.append((head, rule_lines(p)))
    return [("h2", "Policies (rules, first match wins)"), ("ul", items)] if items else []


def _provenance(results: dict) -> list[str]:
    recipe = results.get("recipe") or {}
    env = results.get("environment") or {}
    lines = [f"Recipe: `{recipe.get('path', '?')}` (sha256 `{str(recipe.get('sha256', '?'))[:16]}`)"]
    lines.append(
        f"Environment: qeval {env.get('qeval', '?')}, torch {env.get('torch', '?')}, "
        f"transformers {env.get('transformers', '?')}, lm-eval {env.get('lm_eval', '?')}, device {env.get('device', '?')}, "
        f"seed {env.get('seed', '?')}, git {str(env.get('git_commit') or 'n/a')[:12]}"
    )
    if env.get("started") or env.get("finished"):
        lines.append(f"Started {env.get('started', '?')}, finished {env.get('finished', '?')}")
    data = env.get("eval_data")
    if isinstance(data, dict):
        for key, what in (("eval", "Evaluation text"), ("calibration", "Calibration data")):
            if data.get(key):
                lines.append(f"{what}: `{json.dumps(data[key], sort_keys=True)}`")
    modes = sorted({_mode(p) for p in results.get("policies") or [] if p.get("mode")})
    if modes:
        lines.append("Compute path: " + "; ".join(f"{m} ({_MODE_NOTES[m]})" if m in _MODE_NOTES else m for m in modes))
    return lines


def report_blocks(results: dict, plot_name: str | None = "pareto.png") -> list[tuple]:
    """The report's content (``qeval.results.document`` renders it to Markdown and HTML)."""
    config = (results.get("recipe") or {}).get("config") or {}
    blocks: list[tuple] = [("h1", f"qeval report: {run_label(results)}"), ("p", f"**Verdict.** {verdict(results)}")]
    if config.get("description"):
        blocks.append(("p", str(config["description"])))
    blocks.append(("ul", _provenance(results)))
    provenance = baseline_provenance(config)
    if provenance:
        blocks.append(("p", f"**Baseline.** {provenance}"))
    headers, rows = table_rows([results], select_columns([results]), label_runs=False)
    blocks += [("h2", "Results"), ("table", headers, rows)]
    blocks.append(("p", "KL is KL(baseline || policy) per token over the full vocabulary (nats); task cells are "
                        "score±stderr (recovery vs baseline). ± is half the confidence interval, with the evaluation "
                        "window as the sampling unit (ppl +%: paired with the baseline on the same windows). KV cache "
                        "is its format and its bytes at the recipe's hardware context x batch; times are seconds on "
                        "this run's device."))
    sensitivity = task_sensitivity(results)
    if sensitivity:
        blocks.append(("ul", [f"**Small task.** {s}" for s in sensitivity]))
    blocks += _ranking_blocks(results) + _gate_blocks(results) + _recommendation_blocks(results) + _policy_blocks(results)
    if plot_name:
        blocks += [("h2", "Size vs quality"), ("img", plot_name, "Pareto plot")]
    return blocks


def report_markdown(results: dict, plot_name: str | None = "pareto.png") -> str:
    """The text of ``report.md``."""
    from qeval.results.document import to_markdown

    return to_markdown(report_blocks(results, plot_name))


def report_html(results: dict, images: dict[str, bytes] | None = None, plot_name: str | None = "pareto.png") -> str:
    """``report.html``: the same content in one file, the plot embedded (no network, no scripts)."""
    from qeval.results.document import to_html

    return to_html(report_blocks(results, plot_name), images or {}, f"qeval report: {run_label(results)}")


def write_report(results: dict, run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and ``pareto.png`` into ``run_dir`` (each atomically)."""
    run_dir = Path(run_dir)
    from qeval.results.pareto import pareto_plot

    png = pareto_plot(results, run_dir / "pareto.png")
    md = atomic_write_bytes(run_dir / "report.md", report_markdown(results, png.name).encode("utf-8"))
    page = report_html(results, {png.name: png.read_bytes()}, png.name)
    atomic_write_bytes(run_dir / "report.html", page.encode("utf-8"))
    return md, png
