"""The Pareto plot: weight bytes (x) against quality loss (y), one point per policy.

The y axis is mean KL when the run measured it, else the mean task accuracy
delta (points), else the mean embedding cosine. The baseline is a red star, and
a dashed line joins the policies no other policy beats on both axes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

from qeval.console import as_number as _num
from qeval.files import atomic_write_bytes
from qeval.results.schema import run_label


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


def pareto_plot(results: dict, path: str | os.PathLike) -> Path:
    """Weight bytes (x) vs quality loss (y), one labelled point per policy, baseline starred.

    Written atomically as PNG; the Agg backend, so no display is needed.
    """
    import io

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    key, label, get = pareto_axis(results)
    baseline = results.get("baseline") or {}
    base_y = {"kl_mean": 0.0, "accuracy_delta": 0.0, "embedding_cosine_mean": 1.0}[key]
    points = []
    for entry in results.get("policies") or []:
        x, y = _num(entry.get("weight_bytes")), get(entry)
        if x is not None and y is not None and math.isfinite(y):
            points.append((x, y, str(entry.get("name"))))

    xs = [p[0] for p in points] + ([b] if (b := _num(baseline.get("weight_bytes"))) is not None else [])
    unit, scale = _unit(max(xs) if xs else 1)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        if points:
            ax.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue", zorder=3, label="policy")
            for x, y, name in points:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
            front = _frontier(points, lower_is_better=(key == "kl_mean"))
            if len(front) > 1:
                ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="tab:blue", alpha=0.5, label="Pareto front")
        bx = _num(baseline.get("weight_bytes"))
        if bx is not None:
            ax.scatter([bx], [base_y], marker="*", s=180, color="tab:red", zorder=4, label="baseline")
            ax.annotate("baseline", (bx, base_y), textcoords="offset points", xytext=(5, -12), fontsize=8)
        if not points and bx is None:
            ax.text(0.5, 0.5, "no policy has both weight bytes and a quality metric", ha="center", va="center", transform=ax.transAxes)
        lo, hi = ax.get_xlim()  # round ticks in the displayed unit, not in bytes
        ax.set_xticks(matplotlib.ticker.MaxNLocator(8).tick_values(lo / scale, hi / scale) * scale)
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / scale:g}"))
        ax.set_xlabel(f"weight size, {unit} (analytic, incl. scales)")
        ax.set_ylabel(label)
        ax.set_title(f"qeval {run_label(results)}: size vs quality")
        ax.grid(True, alpha=0.3)
        if points or bx is not None:
            ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
