"""The Pareto plot: memory (x) against quality loss (y), one point per policy.

x is weight bytes plus the KV cache at the recipe's hardware context x batch
(from the stored GPU recommendation), so KV-cache quantization counts; weights
alone when no recommendation was stored. The y axis is mean KL when the run
measured it, else the mean task accuracy delta (points), else the mean embedding
cosine. Points are green when they pass the gate and red when they fail; the
gate's KL limit is a horizontal line; the baseline is a hollow star, drawn under
the points so that a policy on the same spot (bf16) stays visible; a dashed line
joins the policies no other policy beats on both axes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

from qeval.console import as_number as _num
from qeval.files import atomic_write_bytes
from qeval.results.schema import run_label
from qeval.results.summary import kv_cache_bytes, kv_format


def _accuracy_delta(entry: dict) -> float | None:
    """Mean over tasks of (acc - baseline_acc), in percentage points."""
    deltas = []
    for t in ((entry.get("metrics") or {}).get("tasks") or {}).values():
        acc, base = _num((t or {}).get("acc")), _num((t or {}).get("baseline_acc"))
        if acc is not None and base is not None:
            deltas.append((acc - base) * 100)
    return sum(deltas) / len(deltas) if deltas else None


def pareto_axis(results: dict) -> tuple[str, str, Callable[[dict], float | None]]:
    """(metric key, axis label, value getter): mean KL when measured, else accuracy delta, else cosine."""
    policies = results.get("policies") or []
    if any(_num((p.get("metrics") or {}).get("kl_mean")) is not None for p in policies):
        return "kl_mean", "mean KL vs baseline (nats/token, lower is better)", lambda e: _num((e.get("metrics") or {}).get("kl_mean"))
    if any(_accuracy_delta(p) is not None for p in policies):
        return "accuracy_delta", "mean task accuracy delta (points, higher is better)", _accuracy_delta
    return (
        "embedding_cosine_mean",
        "mean embedding cosine to baseline (higher is better)",
        lambda e: _num((e.get("metrics") or {}).get("embedding_cosine_mean")),
    )


def _unit(n: float) -> tuple[str, float]:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return unit, scale
    return "bytes", 1


def _frontier(points: list[tuple[float, float, str]], lower_is_better: bool) -> list[tuple[float, float, str]]:
    """Points no other point beats on both bytes (fewer) and quality."""
    best = []
    sign = 1 if lower_is_better else -1
    for x, y, name in sorted(points, key=lambda p: (p[0], sign * p[1])):
        if not best or sign * y < sign * best[-1][1]:
            best.append((x, y, name))
    return best


def _memory(results: dict) -> tuple[Callable[[dict], float | None], float | None, str]:
    """(x of a policy, x of the baseline, axis label): weights + KV cache when every policy has it."""
    policies = results.get("policies") or []
    base_w = _num((results.get("baseline") or {}).get("weight_bytes"))
    kvs = [(kv_format(p), kv_cache_bytes(p)) for p in policies]
    if policies and all(kv is not None for _, kv in kvs):
        hw = ((results.get("recipe") or {}).get("config") or {}).get("hardware") or {}
        bf16 = [kv for fmt, kv in kvs if fmt == "bf16"]
        base_kv = max(bf16) if bf16 else max(kv for _, kv in kvs)  # quantizing the KV cache only shrinks it
        label = f"weights + KV cache at {hw.get('context', '?')} context x batch {hw.get('batch', '?')}"
        return (lambda e: (_num(e.get("weight_bytes")) or math.nan) + (kv_cache_bytes(e) or 0.0),
                None if base_w is None else base_w + base_kv, label)
    return lambda e: _num(e.get("weight_bytes")), base_w, "weight size (analytic, incl. scales)"


_COLOURS = {True: "tab:green", False: "tab:red", None: "tab:blue"}


def pareto_plot(results: dict, path: str | os.PathLike) -> Path:
    """Memory (x) vs quality loss (y), one labelled point per policy coloured by the gate.

    Written atomically as PNG; the Agg backend, so no display is needed.
    """
    import io

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    key, label, get = pareto_axis(results)
    xget, bx, xlabel = _memory(results)
    base_y = {"kl_mean": 0.0, "accuracy_delta": 0.0, "embedding_cosine_mean": 1.0}[key]
    points, passed = [], {}
    for entry in results.get("policies") or []:
        x, y = xget(entry), get(entry)
        if x is not None and math.isfinite(x) and y is not None and math.isfinite(y):
            points.append((x, y, str(entry.get("name"))))
            gate = entry.get("gate")
            passed[str(entry.get("name"))] = bool(gate.get("passed")) if isinstance(gate, dict) else None

    xs = [p[0] for p in points] + ([bx] if bx is not None else [])
    unit, scale = _unit(max(xs) if xs else 1)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    try:
        handles = []
        if bx is not None:  # under the points: a policy on the same spot (bf16) stays visible
            ax.scatter([bx], [base_y], marker="*", s=420, facecolors="none", edgecolors="black", linewidths=1.2, zorder=2)
            handles.append(Line2D([], [], marker="*", ls="", mfc="none", mec="black", ms=13, label="baseline"))
        if points:
            ax.scatter([p[0] for p in points], [p[1] for p in points], c=[_COLOURS[passed[p[2]]] for p in points],
                       s=40, zorder=3, edgecolors="white", linewidths=0.6)
            for x, y, name in points:
                same = bx is not None and abs(x - bx) <= 1e-6 * bx and y == base_y
                ax.annotate(f"{name} (= baseline)" if same else name, (x, y), textcoords="offset points",
                            xytext=(6, 5), fontsize=8)
            front = _frontier(points, lower_is_better=(key == "kl_mean"))
            if len(front) > 1:
                ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="grey", alpha=0.6, zorder=1)
                handles.append(Line2D([], [], ls="--", color="grey", label="Pareto front"))
            for state, text in ((True, "passes the gate"), (False, "fails the gate"), (None, "policy (no gate)")):
                if state in passed.values():
                    handles.append(Line2D([], [], marker="o", ls="", color=_COLOURS[state], label=text))
        limit = _num(((results.get("gate") or {}).get("config") or {}).get("max_kl_mean")) if key == "kl_mean" else None
        if limit is not None:
            ax.axhline(limit, color="tab:red", ls=":", lw=1.2, zorder=1)
            handles.append(Line2D([], [], ls=":", color="tab:red", label=f"gate: KL mean <= {limit:g}"))
        if not points and bx is None:
            ax.text(0.5, 0.5, "no policy has both a size and a quality metric", ha="center", va="center", transform=ax.transAxes)
        ax.margins(x=0.12, y=0.08)  # room for the labels right of the points
        lo, hi = ax.get_xlim()  # round ticks in the displayed unit, not in bytes
        ax.set_xticks(matplotlib.ticker.MaxNLocator(8).tick_values(lo / scale, hi / scale) * scale)
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / scale:g}"))
        ax.set_xlabel(f"{xlabel}, {unit}")
        ax.set_ylabel(label)
        ax.set_title(f"qeval {run_label(results)}: memory vs quality")
        ax.grid(True, alpha=0.3)
        if handles:
            ax.legend(handles=handles, fontsize=8, loc="best")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
