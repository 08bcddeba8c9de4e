"""Results -> table columns and rows: the terminal table (rich), Markdown, and the
report's table.

Columns are chosen from the metrics present, so a decoder run shows
perplexity/KL/top-1 and an encoder run shows embedding cosines; ``metrics``
arguments pick columns by key (see ``COLUMN_KEYS``; ``task:<name>`` for one
task). ``qeval compare`` builds its table from the same columns.

>>> from qeval.results.table import print_table
>>> print_table(results)                  # after a run
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from qeval.console import as_number as _num
from qeval.console import print_wide
from qeval.results import intervals
from qeval.results.schema import run_label
from qeval.results.summary import failed_checks, kv_cache_bytes, kv_format, short_check

# ---------------------------------------------------------------------------
# Formatting helpers


def format_bytes(n: Any) -> str:
    """``1536 -> '1.50 KiB'``; '-' for missing."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{n} B"  # unreachable


def _fmt(x: Any, spec: str = ".4g") -> str:
    v = _num(x)
    if v is None:
        return "-"
    if not math.isfinite(v):
        return str(v)
    return format(v, spec)


def _pct(x: Any) -> str:
    v = _num(x)
    return "-" if v is None else f"{v * 100:.1f}%"


# ---------------------------------------------------------------------------
# Columns


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    get: Callable[[dict, dict], Any]  # (entry, baseline metrics) -> raw value
    fmt: Callable[[Any], str]
    baseline: bool = True  # meaningful for the baseline row
    spread: Callable[[dict, dict], float | None] | None = None  # half the interval, shown as "± x"
    spread_fmt: str = ".2g"

    def cell(self, entry: dict, base: dict) -> str:
        text = self.fmt(self.get(entry, base))
        half = self.spread(entry, base) if self.spread is not None and text != "-" else None
        return text if half is None or not math.isfinite(half) else f"{text} ± {format(half, self.spread_fmt)}"


def _metric(key: str) -> Callable[[dict, dict], Any]:
    return lambda entry, base: (entry.get("metrics") or {}).get(key)


def _confidence(entry: dict) -> float:
    return _num(((entry.get("metrics") or {}).get("ci") or {}).get("confidence")) or 0.95


def _half(key: str) -> Callable[[dict, dict], float | None]:
    """Half the stored-confidence interval of ``key`` (None without one: schema 1, one window)."""

    def get(entry: dict, base: dict):
        ci = intervals.interval(entry.get("metrics") or {}, key, _confidence(entry))
        return None if ci is None else (ci[1] - ci[0]) / 2

    return get


def _paired_ppl(entry: dict, base: dict):
    if entry.get("name") == "baseline":
        return None
    return intervals.paired_difference(entry.get("metrics") or {}, base, "perplexity", _confidence(entry))


def _ppl_increase(entry: dict, base: dict) -> float | None:
    ppl, b = _num((entry.get("metrics") or {}).get("perplexity")), _num(base.get("perplexity"))
    if ppl is None or b is None or b <= 0 or entry.get("name") == "baseline":
        return None
    diff = _paired_ppl(entry, base)  # on the windows both scored (a target_ci run may stop early)
    return diff.value if diff is not None and math.isfinite(ppl) else (ppl - b) / b * 100


def _ppl_increase_half(entry: dict, base: dict) -> float | None:
    diff = _paired_ppl(entry, base)  # paired with the baseline: much narrower than either interval
    return None if diff is None else (diff.hi - diff.lo) / 2


def _gate(entry: dict, base: dict) -> str | None:
    verdict = entry.get("gate")
    if not isinstance(verdict, dict):
        return None
    if verdict.get("passed"):
        return "PASS"
    failed = [short_check(c.get("name", "?")) for c in failed_checks(entry)]
    return f"FAIL: {', '.join(failed)}" if failed else "FAIL"


def _kv(entry: dict, base: dict) -> str | None:
    if entry.get("name") == "baseline":
        return None
    size = kv_cache_bytes(entry)
    return kv_format(entry) + ("" if size is None else f" {format_bytes(size)}")


_COLUMNS = [
    Column("weight_bytes", "weights", lambda e, b: e.get("weight_bytes"), format_bytes),
    Column("savings_vs_bf16", "saved", lambda e, b: e.get("savings_vs_bf16"), _pct, baseline=False),
    Column("perplexity", "ppl", _metric("perplexity"), lambda v: _fmt(v, ".2f"), spread=_half("perplexity"), spread_fmt=".2f"),
    Column("perplexity_increase_pct", "ppl +%", _ppl_increase, lambda v: _fmt(v, "+.2f"), baseline=False,
           spread=_ppl_increase_half, spread_fmt=".2f"),
    Column("kl_mean", "KL mean", _metric("kl_mean"), _fmt, baseline=False, spread=_half("kl_mean")),
    Column("kl_p99", "KL p99", _metric("kl_p99"), _fmt, baseline=False, spread=_half("kl_p99")),
    Column("top1_agreement", "top-1", _metric("top1_agreement"), lambda v: _fmt(v, ".3f"), baseline=False,
           spread=_half("top1_agreement"), spread_fmt=".3f"),
    Column("embedding_cosine_mean", "cos mean", _metric("embedding_cosine_mean"), lambda v: _fmt(v, ".5f"), baseline=False),
    Column("embedding_cosine_min", "cos min", _metric("embedding_cosine_min"), lambda v: _fmt(v, ".5f"), baseline=False),
    Column("similarity_spearman", "spearman", _metric("similarity_spearman"), lambda v: _fmt(v, ".4f")),
    Column("kv_cache", "KV cache", _kv, lambda v: "-" if v is None else str(v), baseline=False),
    Column("quantize_s", "quantize s", lambda e, b: (e.get("timings") or {}).get("quantize_s"), lambda v: _fmt(v, ".1f"), baseline=False),
    Column("eval_s", "eval s", lambda e, b: (e.get("timings") or {}).get("eval_s"), lambda v: _fmt(v, ".1f")),
    Column("gpu_peak", "GPU peak", lambda e, b: (e.get("memory") or {}).get("gpu_peak_bytes"), format_bytes),
    Column("host_peak", "host peak", lambda e, b: (e.get("memory") or {}).get("host_peak_bytes"), format_bytes),
    Column("gate", "gate", _gate, lambda v: "-" if v is None else str(v), baseline=False),
]
COLUMN_KEYS = [c.key for c in _COLUMNS] + ["task:<name>", "tasks"]
DEFAULT_COLUMNS = [
    "weight_bytes", "savings_vs_bf16", "perplexity", "perplexity_increase_pct", "kl_mean", "kl_p99",
    "top1_agreement", "embedding_cosine_mean", "embedding_cosine_min", "similarity_spearman", "tasks", "kv_cache",
    "quantize_s", "eval_s", "gpu_peak", "host_peak", "gate",
]


def _task_column(task: str, metric: str = "acc") -> Column:
    def get(entry: dict, base: dict):
        return ((entry.get("metrics") or {}).get("tasks") or {}).get(task)

    def fmt(t: Any) -> str:
        if not isinstance(t, dict) or _num(t.get("acc")) is None:
            return "-"
        out = f"{t['acc']:.3f}"
        if _num(t.get("stderr")) is not None:
            out += f"±{t['stderr']:.3f}"
        if _num(t.get("recovery")) is not None:
            out += f" ({t['recovery']:.1f}%)"
        return out

    return Column(f"task:{task}", f"{task} {metric}", get, fmt)


def _entries(results: dict) -> list[dict]:
    """Baseline (if any) then policies."""
    out = []
    if isinstance(results.get("baseline"), dict):
        out.append({"name": "baseline", **results["baseline"]})
    out.extend(results.get("policies") or [])
    return out


def _task_names(results_list: list[dict]) -> list[str]:
    names: list[str] = []
    for results in results_list:
        for entry in _entries(results):
            for task in (entry.get("metrics") or {}).get("tasks") or {}:
                if task not in names:
                    names.append(task)
    return names


def _task_metric(results_list: list[dict], task: str) -> str:
    """The metric a task's cells show (``acc`` for multiple choice; lm-eval's primary metric otherwise)."""
    for results in results_list:
        for entry in _entries(results):
            t = ((entry.get("metrics") or {}).get("tasks") or {}).get(task)
            if isinstance(t, dict) and t.get("metric"):
                return str(t["metric"])
    return "acc"


def select_columns(results_list: list[dict], metrics: list[str] | None = None) -> list[Column]:
    """Columns for these results: ``metrics`` keys in that order, or every default with a value.

    Raises:
        ValueError: an unknown key (the message lists the valid ones).
    """
    by_key = {c.key: c for c in _COLUMNS}
    tasks = _task_names(results_list)
    keys = metrics or DEFAULT_COLUMNS
    columns: list[Column] = []
    for key in keys:
        if key == "tasks":
            columns.extend(_task_column(t, _task_metric(results_list, t)) for t in tasks)
        elif key.startswith("task:"):
            columns.append(_task_column(key[5:], _task_metric(results_list, key[5:])))
        elif key in by_key:
            columns.append(by_key[key])
        else:
            raise ValueError(f"unknown metric column {key!r} (valid: {', '.join(COLUMN_KEYS)})")
    if metrics:
        return columns
    # defaults: drop columns no row has a value for
    rows = [(e, ((r.get("baseline") or {}).get("metrics") or {})) for r in results_list for e in _entries(r)]
    return [c for c in columns if any(c.get(e, b) is not None for e, b in rows)]


def table_rows(results_list: list[dict], columns: list[Column], label_runs: bool) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows; with ``label_runs`` the first column names the run."""
    headers = (["run"] if label_runs else []) + ["policy"] + [c.header for c in columns]
    rows = []
    for results in results_list:
        base = (results.get("baseline") or {}).get("metrics") or {}
        label = run_label(results)
        for entry in _entries(results):
            is_base = entry.get("name") == "baseline"
            cells = [("-" if is_base and not c.baseline else c.cell(entry, base)) for c in columns]
            name = str(entry.get("name", "?"))
            if entry.get("mx_scale_rule"):  # MX results depend on the scale rule: say which
                name += f" ({entry['mx_scale_rule']})"
            rows.append(([label] if label_runs else []) + [name] + cells)
    return headers, rows


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    from qeval.results.document import to_markdown

    return to_markdown([("table", headers, rows)]).rstrip("\n")


def rich_table(headers: list[str], rows: list[list[str]], title: str | None = None):
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for h in headers:
        table.add_column(h, justify="left" if h in ("run", "policy") else "right", no_wrap=True)
    for r in rows:
        style = "bold red" if r[-1].startswith("FAIL") else None
        table.add_row(*r, style=style)
    return table


def print_table(results: dict, console=None, metrics: list[str] | None = None) -> None:
    """Print one run's comparison table (baseline first) to the terminal.

    Args:
        results: a results dict (``results.json``'s content).
        console: a ``rich.console.Console``; default: a new one on stdout.
        metrics: column keys (default: all that have values).
    """
    columns = select_columns([results], metrics)
    headers, rows = table_rows([results], columns, label_runs=False)
    print_wide(rich_table(headers, rows, title=f"qeval: {run_label(results)}"), console)


def _value(column: Column, entry: dict, base: dict):
    raw = column.get(entry, base)
    return _num(raw.get("acc")) if isinstance(raw, dict) else raw


def changes_vs_first(results_list: list[dict], columns: list[Column]) -> list[str]:
    """What changed in each later run against the first, per policy both have; and whether the gates differ.

    One line per (run, policy): ``run-b nvfp4: KL mean 0.5353 -> 0.5101 (-0.0252); gate FAIL -> PASS``.
    """
    if len(results_list) < 2:
        return []
    first = results_list[0]
    label0 = run_label(first)
    ref = {e.get("name"): e for e in _entries(first)}
    base0 = (first.get("baseline") or {}).get("metrics") or {}
    lines = []
    gate0 = (first.get("gate") or {}).get("config")
    for results in results_list[1:]:
        label = run_label(results)
        base = (results.get("baseline") or {}).get("metrics") or {}
        gate = (results.get("gate") or {}).get("config")
        if gate != gate0:
            lines.append(f"note: {label} used another gate than {label0} ({_gate_text(gate)} vs {_gate_text(gate0)}): "
                         "their PASS/FAIL are not comparable")
        for entry in _entries(results):
            old = ref.get(entry.get("name"))
            if old is None:
                continue
            changes = []
            for c in columns:
                a, b = _value(c, old, base0), _value(c, entry, base)
                if a == b or (a is None and b is None):
                    continue
                na, nb = _num(a), _num(b)
                if na is not None and nb is not None:
                    changes.append(f"{c.header} {c.fmt(c.get(old, base0))} -> {c.fmt(c.get(entry, base))} ({nb - na:+.4g})")
                else:
                    changes.append(f"{c.header} {c.fmt(c.get(old, base0))} -> {c.fmt(c.get(entry, base))}")
            if changes:
                lines.append(f"{label} {entry.get('name')}: " + "; ".join(changes))
    return [f"vs {label0}:"] + lines if lines else [f"vs {label0}: no differences in the columns shown"]


def _gate_text(config) -> str:
    if not isinstance(config, dict):
        return "no gate"
    return ", ".join(f"{k} {v}" for k, v in config.items() if v is not None and k not in ("policies",)) or "empty gate"
