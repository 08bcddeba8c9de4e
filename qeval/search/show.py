"""Tables and the per-layer plot of a sensitivity file, and the predicted-vs-measured table of a search."""

from __future__ import annotations

import math
from pathlib import Path

from qeval.console import print_wide


def _kl(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return "0" if x == 0 else f"{x:.3g}"


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:,.2f} MiB"


def print_sensitivity(doc: dict, console=None) -> None:
    """One row per group: its parameters and, per format, KL (+- standard error) and bytes."""
    from rich.table import Table

    choices = [c["name"] for c in doc["choices"]]
    t = Table(title=f"sensitivity: KL(baseline || one group quantized) on {doc['text'].get('tokens')} tokens of "
                    f"calibration text ({doc['granularity']} groups)", title_justify="left")
    t.add_column("group")
    t.add_column("params", justify="right")
    for c in choices:
        if c != "bf16":
            t.add_column(f"{c} KL", justify="right")
    for g in doc["groups"]:
        row = doc["scores"].get(g["id"], {})
        cells = []
        for c in choices:
            if c == "bf16":
                continue
            s = row.get(c)
            cells.append("-" if s is None else f"{_kl(s['kl_mean'])} ±{_kl(s.get('kl_stderr'))}")
        t.add_row(g["id"], f"{g['params']:,}", *cells)
    print_wide(t, console)


def plot_sensitivity(doc: dict, path) -> Path:
    """Layers on x, KL on a log y axis: one panel per format, one line per group kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    choices = [c["name"] for c in doc["choices"] if c["name"] != "bf16"]
    kinds = list(dict.fromkeys(g["kind"] for g in doc["groups"] if g["layer"] is not None))
    fig, axes = plt.subplots(1, max(len(choices), 1), figsize=(4.2 * max(len(choices), 1), 3.4), sharey=True,
                             squeeze=False)
    for ax, c in zip(axes[0], choices):
        for k in kinds:
            pts = [(g["layer"], doc["scores"][g["id"]][c]["kl_mean"]) for g in doc["groups"]
                   if g["kind"] == k and g["layer"] is not None and c in doc["scores"].get(g["id"], {})]
            pts = [(x, y) for x, y in pts if y and y > 0]  # log scale: a KL of exactly 0 is not drawn
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=2.5, lw=1, label=k)
        ax.set_yscale("log")
        ax.set_title(c, fontsize=10)
        ax.set_xlabel("decoder layer")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("KL, that group alone quantized")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{doc.get('recipe_name')}: sensitivity per layer ({doc['granularity']})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def print_search(rows: list[dict], console=None) -> None:
    """Predicted (sum of group KLs, calibration text) next to measured KL (calibration and eval text)."""
    from rich.table import Table

    t = Table(title="searched policies: predicted vs measured KL", title_justify="left")
    for col in ("policy", "budget", "weights", "bits/weight", "predicted KL", "measured KL (calib)",
                "measured KL (eval)"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for r in rows:
        calib = r.get("measured_calibration") or {}
        ev = r.get("measured_eval")
        t.add_row(
            r["name"], _mib(r["budget_bytes"]), _mib(r["weight_bytes"]), f"{r['bits_per_weight']:.2f}",
            f"{_kl(r['predicted_kl'])} ±{_kl(r['predicted_kl_stderr'])}",
            "-" if not calib else f"{_kl(calib.get('kl_mean'))} ±{_kl(calib.get('kl_stderr'))}",
            "-" if ev is None else _kl(ev),
        )
    print_wide(t, console)


def print_comparison(results: dict, searched: list[str], console=None) -> None:
    """Every policy of the evaluation run by size: weights and eval KL, searched ones marked."""
    from rich.table import Table

    t = Table(title="eval text: searched policies beside the others (by size)", title_justify="left")
    for col in ("policy", "weights", "KL mean", "KL p99", "top-1"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    entries = sorted(results.get("policies") or [], key=lambda e: e.get("weight_bytes") or 0)
    for e in entries:
        name = e.get("name", "?")
        m = e.get("metrics") or {}
        t.add_row(("* " if name in searched else "  ") + name, _mib(e.get("weight_bytes")), _kl(m.get("kl_mean")),
                  _kl(m.get("kl_p99")), "-" if m.get("top1_agreement") is None else f"{m['top1_agreement']:.3f}")
    print_wide(t, console)
