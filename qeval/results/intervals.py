"""Intervals and paired differences, read back from the per-window sums a run stores.

A text pass stores, per policy, ``metrics.windows`` (token count and the sums
of NLL, KL and top-1 matches of every window) and ``metrics.ci`` (intervals at
the recipe's confidence, and the KL p99 bootstrap distribution). From those,
any confidence level can be recomputed (the gate uses its own), and two
entries scored on the same windows (same ``windows.key``) can be compared
pairwise: the per-window differences cancel the text's own variation, so a
paired difference is often significant where the separate intervals overlap.
Statistics in ``qeval.uncertainty``. Results without these fields (schema 1)
give None: callers fall back to point estimates and say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qeval.uncertainty import Estimate, bootstrap_level, exp_interval, paired_estimate, ratio_estimate

# metric -> per-window field summed over tokens
FIELDS = {"perplexity": "nll", "kl_mean": "kl_sum", "top1_agreement": "top1"}
HIGHER_IS_BETTER = {"perplexity": False, "kl_mean": False, "top1_agreement": True, "kl_p99": False}


def _windows(metrics: dict) -> dict | None:
    w = (metrics or {}).get("windows")
    if not isinstance(w, dict) or not isinstance(w.get("tokens"), list) or len(w["tokens"]) == 0:
        return None
    return w


def estimate(metrics: dict, metric: str) -> Estimate | None:
    """The window-level estimate of ``metric`` (mean NLL for perplexity), or None when not stored."""
    w = _windows(metrics)
    field = FIELDS.get(metric)
    if w is None or field is None or not isinstance(w.get(field), list) or len(w[field]) != len(w["tokens"]):
        return None
    return ratio_estimate(w[field], w["tokens"])


def _finite(lo: float, hi: float) -> tuple[float, float] | None:
    return None if math.isnan(lo) or math.isnan(hi) else (lo, hi)


def interval(metrics: dict, metric: str, confidence: float) -> tuple[float, float] | None:
    """Two-sided interval of ``metric`` at ``confidence``; None when the run did not store one."""
    if metric == "kl_p99":
        levels = (((metrics or {}).get("ci") or {}).get("kl_p99_bootstrap") or {}).get("levels")
        if not levels:
            return None
        return _finite(bootstrap_level(levels, 0.5 - confidence / 2), bootstrap_level(levels, 0.5 + confidence / 2))
    est = estimate(metrics, metric)
    if est is None:
        return None
    lo, hi = est.interval(confidence)
    return _finite(*(exp_interval(lo, hi) if metric == "perplexity" else (lo, hi)))


def bounds(metrics: dict, metric: str, confidence: float) -> tuple[float, float] | None:
    """One-sided lower and upper bounds, each holding with ``confidence`` (the gate's reading)."""
    return interval(metrics, metric, 2 * confidence - 1)


def judge(value: float, bounds: tuple[float, float], op: str, threshold: float) -> tuple[bool, str]:
    """A threshold verdict that does not flip on noise: ``(passed, verdict)``.

    ``bounds``: one-sided lower and upper bounds. For ``op`` "<=" the check fails
    only when even the lower bound is above the threshold ("fails
    significantly"); a point estimate above it with the lower bound below
    "passes within noise"; ">=" mirrors it.
    """
    lower, upper = bounds
    near, far = (lower, upper) if op == "<=" else (upper, lower)  # near: the bound on the failing side

    def beyond(x: float) -> bool:
        return x > threshold if op == "<=" else x < threshold

    if beyond(near):
        return False, "fails significantly"
    if beyond(value):
        return True, "passes within noise"
    if not beyond(far):
        return True, "passes significantly"
    return True, "passes, but the margin is within noise"


@dataclass(frozen=True)
class Difference:
    """``a - b`` of one metric on the windows both were scored on, with its paired interval.

    For perplexity the difference is relative, in percent: ``(ppl_a / ppl_b - 1) * 100``
    (the exp of the mean NLL difference).
    """

    metric: str
    value: float
    lo: float
    hi: float
    windows: int
    confidence: float

    @property
    def significant(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def better(self) -> str | None:
        """'a' or 'b' where the difference is significant, else None."""
        if not self.significant:
            return None
        a_higher = self.lo > 0
        return "a" if a_higher == HIGHER_IS_BETTER[self.metric] else "b"


def same_tokens(a: dict, b: dict) -> int:
    """How many leading windows two entries share (0: not the same tokens, or not stored)."""
    wa, wb = _windows(a), _windows(b)
    if wa is None or wb is None:
        return 0
    if wa.get("key") != wb.get("key"):  # different text or window layout (None == None: older runs)
        return 0
    k = min(len(wa["tokens"]), len(wb["tokens"]))
    return k if wa["tokens"][:k] == wb["tokens"][:k] else 0


def paired_estimate_of(a: dict, b: dict, metric: str) -> Estimate | None:
    """The paired estimate of ``a - b`` (per token) over the shared windows."""
    field = FIELDS.get(metric)
    k = same_tokens(a, b)
    if field is None or k < 1:
        return None
    wa, wb = _windows(a), _windows(b)
    if not isinstance(wa.get(field), list) or not isinstance(wb.get(field), list):
        return None
    if len(wa[field]) < k or len(wb[field]) < k:
        return None
    return paired_estimate(wa[field][:k], wb[field][:k], wa["tokens"][:k])


def paired_difference(a: dict, b: dict, metric: str, confidence: float) -> Difference | None:
    """``a - b`` with its two-sided paired interval at ``confidence`` (metrics dicts of two entries)."""
    est = paired_estimate_of(a, b, metric)
    if est is None or est.df < 1:
        return None
    lo, hi = est.interval(confidence)
    value = est.value
    if metric == "perplexity":
        value, lo, hi = (math.expm1(x) * 100 if x < 709 else math.inf for x in (value, lo, hi))
    return Difference(metric, value, lo, hi, est.windows, confidence)


def ranking(entries: list[dict], metric: str, confidence: float) -> str | None:
    """Policies ordered best first by ``metric``, joined by '>' where the one before is significantly
    better (paired, at ``confidence``) and by '~' where the order is within noise.

    None when fewer than two entries carry the metric.
    """
    rows = [(e, (e.get("metrics") or {}).get(metric)) for e in entries]
    rows = [(e, v) for e, v in rows if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if len(rows) < 2:
        return None
    rows.sort(key=lambda r: -r[1] if HIGHER_IS_BETTER[metric] else r[1])
    out = str(rows[0][0].get("name"))
    for (prev, _), (cur, _) in zip(rows, rows[1:]):
        diff = paired_difference(prev.get("metrics") or {}, cur.get("metrics") or {}, metric, confidence)
        out += (" > " if diff is not None and diff.significant else " ~ ") + str(cur.get("name"))
    return out


# ---------------------------------------------------------------------------
# Tables: paired differences (qeval compare) and the significant ranking (report.md)

_LABELS = {"perplexity": "ppl %", "kl_mean": "KL mean", "top1_agreement": "top-1"}


def _cell(d: Difference | None) -> str:
    if d is None:
        return "-"
    spec = "+.2f" if d.metric == "perplexity" else "+.4g"
    word = "significant" if d.significant else "within noise"
    return f"{format(d.value, spec)} [{format(d.lo, spec)}, {format(d.hi, spec)}] {word}"


def paired_table(named: list[tuple[str, dict]], confidence: float) -> tuple[list[str], list[list[str]]]:
    """One row per pair ``(a, b)`` of entries scored on the same tokens: ``a - b`` per metric with its
    paired interval at ``confidence`` and whether it is significant. ``named``: (label, entry) pairs."""
    metrics = [m for m in FIELDS if any(estimate(e.get("metrics") or {}, m) is not None for _, e in named)]
    headers = ["a", "b", "windows"] + [f"{_LABELS[m]} a-b [{confidence:.0%}]" for m in metrics]
    rows = []
    for i, (la, a) in enumerate(named):
        for lb, b in named[i + 1:]:
            ma, mb = a.get("metrics") or {}, b.get("metrics") or {}
            k = same_tokens(ma, mb)
            if k < 2:
                continue
            rows.append([la, lb, str(k)] + [_cell(paired_difference(ma, mb, m, confidence)) for m in metrics])
    return headers, rows


def ranking_lines(results: dict) -> list[str]:
    """report.md's ranking section: best first, '>' only where the paired difference is significant."""
    policies = [p for p in results.get("policies") or [] if isinstance(p, dict)]
    confidence = next((((p.get("metrics") or {}).get("ci") or {}).get("confidence") for p in policies
                       if ((p.get("metrics") or {}).get("ci") or {}).get("confidence")), 0.95)
    lines = []
    for metric in ("kl_mean", "top1_agreement", "perplexity"):
        order = ranking(policies, metric, confidence)
        if order is not None:
            lines.append(f"- {_LABELS[metric].replace(' %', '')}: {order}")
    if not lines:
        return []
    return ["## Ranking", "",
            f"Best first. `>`: the paired difference on the same windows is significant ({confidence:.0%} interval "
            "excludes 0); `~`: within noise, the order is not established.", "", *lines, ""]
