"""Confidence intervals for the text metrics, with the evaluation window as the unit of sampling.

Tokens inside a window are correlated (the same article, a shared context), so
treating 2,048 tokens as 2,048 independent draws makes an interval several
times too narrow (``tests/test_uncertainty.py`` measures it). Windows are far
apart in the text and are treated as independent draws instead:

- a mean over tokens (mean NLL, mean KL, top-1 agreement) is a ratio
  ``R = sum_i x_i / sum_i n_i`` of per-window sums ``x_i`` and token counts
  ``n_i``; its standard error is the ratio (cluster) estimator's
  ``se = sqrt(k / (k-1) * sum_i (x_i - R n_i)^2) / sum_i n_i`` over ``k``
  windows, and the interval is ``R +- t(k-1) * se`` (Student t, k-1 degrees of
  freedom). Perplexity is ``exp`` of the mean NLL's interval (asymmetric).
- a paired difference (two policies, or a policy and the baseline, scored on
  the same windows) is the same estimator applied to ``x_i(a) - x_i(b)``: the
  window-to-window variation of the text cancels, which is why a paired
  interval is much narrower than the two separate ones.
- the 99th percentile of per-token KL has no per-window sum: its interval
  comes from a bootstrap that resamples whole windows (seeded, so the same
  run gives the same interval).

With ``k < 2`` windows there is no variance estimate: ``se`` is NaN and the
interval is ``(nan, nan)``. This module imports nothing of qeval (numbers only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# probabilities at which a bootstrap distribution is kept in results.json (the gate reads bounds off it)
BOOTSTRAP_LEVELS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99, 0.995)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (NaN for ``df < 1``)."""
    if df < 1:
        return math.nan
    from scipy.stats import t

    return float(t.ppf(p, df))


@dataclass(frozen=True)
class Estimate:
    """A mean over tokens from per-window sums: the value, its standard error and degrees of freedom."""

    value: float
    se: float
    windows: int

    @property
    def df(self) -> int:
        return self.windows - 1

    def interval(self, confidence: float) -> tuple[float, float]:
        """Two-sided interval at ``confidence`` (e.g. 0.95: 2.5% out on each side)."""
        half = t_quantile(0.5 + confidence / 2, self.df) * self.se
        return self.value - half, self.value + half

    def bound(self, confidence: float, upper: bool) -> float:
        """One-sided bound: the true value is below (``upper``) or above it with ``confidence``."""
        step = t_quantile(confidence, self.df) * self.se
        return self.value + step if upper else self.value - step

    def half_width(self, confidence: float) -> float:
        return t_quantile(0.5 + confidence / 2, self.df) * self.se


def ratio_estimate(sums: Sequence[float], counts: Sequence[float]) -> Estimate:
    """``sum(sums) / sum(counts)`` and its window-level (cluster) standard error.

    The value equals the plain token mean (``math.fsum`` order-independent), so
    adding an interval never changes a reported number.
    """
    x = np.asarray(sums, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    if x.shape != n.shape:
        raise ValueError(f"{x.shape[0]} window sums but {n.shape[0]} window counts")
    total = math.fsum(n.tolist())
    if x.size == 0 or total <= 0:
        return Estimate(math.nan, math.nan, int(x.size))
    value = math.fsum(x.tolist()) / total
    k = x.size
    if k < 2:
        return Estimate(value, math.nan, k)
    resid = x - value * n
    se = math.sqrt(k / (k - 1) * math.fsum((resid * resid).tolist())) / total
    return Estimate(value, se, k)


def paired_estimate(sums_a: Sequence[float], sums_b: Sequence[float], counts: Sequence[float]) -> Estimate:
    """Mean per-token difference ``a - b`` over windows both were scored on, with its paired se."""
    a = np.asarray(sums_a, dtype=np.float64)
    b = np.asarray(sums_b, dtype=np.float64)
    return ratio_estimate(a - b, counts)


def naive_estimate(values: Sequence[float]) -> Estimate:
    """Every token an independent draw (what NOT to do with text; kept to show it under-covers)."""
    v = np.asarray(values, dtype=np.float64)
    return ratio_estimate(v, np.ones_like(v))


def bootstrap_quantile(per_window: Sequence[np.ndarray], q: float, replicates: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of the ``q``-th percentile (numpy's linear rule), resampling whole windows.

    Each replicate draws ``k`` windows with replacement from the ``k`` windows
    and takes the percentile of their pooled values. Deterministic for a given
    ``seed``. Returns the replicates sorted.

    A high percentile of a pooled sample depends only on its tail: values under
    a cut that lies below every window's own ``q - 1`` percentile are only
    counted, and each replicate's two order statistics are found among the rest
    by weighted ranks (``_tail_ranks``): the same numbers as pooling and
    partitioning each replicate, in a fraction of the time.
    """
    k = len(per_window)
    if k == 0 or replicates < 1:
        return np.zeros(0)
    arrays = [np.sort(np.asarray(w, dtype=np.float64)) for w in per_window]  # NaN sorts last, as in partition
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, k, size=(replicates, k))
    counts = np.zeros((replicates, k), dtype=np.int64)
    np.add.at(counts, (np.arange(replicates)[:, None], draws), 1)
    out, ok = _tail_ranks(arrays, counts, q)
    for r in np.flatnonzero(~ok):  # the cut was above this replicate's order statistic: pool it
        out[r] = _percentile(np.concatenate([arrays[i] for i in draws[r]]), q)
    out.sort()
    return out


def _tail_ranks(arrays: list[np.ndarray], counts: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """The linear-rule percentile of each replicate's pooled windows (``counts[r, w]`` copies of
    sorted window ``w``) from the values at or above a common cut, and where that was possible."""
    sizes = np.array([a.size for a in arrays], dtype=np.int64)
    cut_at = [int(max(0.0, q - 1.0) / 100.0 * (a.size - 1)) for a in arrays]
    finite_cuts = [a[i] for a, i in zip(arrays, cut_at) if a.size and not np.isnan(a[i])]
    cut = min(finite_cuts) if finite_cuts else -np.inf
    below = np.array([np.searchsorted(a, cut, side="left") for a in arrays], dtype=np.int64)
    values = np.concatenate([a[b:] for a, b in zip(arrays, below)])
    labels = np.concatenate([np.full(a.size - b, w) for w, (a, b) in enumerate(zip(arrays, below))]).astype(np.int64)
    order = np.argsort(values, kind="stable")
    values, labels = values[order], labels[order]
    n = counts @ sizes
    h = (n - 1) * q / 100.0
    lo = np.floor(h).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    base = counts @ below  # pooled values under the cut
    out = np.full(len(counts), np.nan)
    ok = (lo >= base) & (n > 0)
    step = max(1, 2**22 // max(values.size, 1))  # bounded scratch: replicates per block
    for s in range(0, len(counts), step):
        rows = np.flatnonzero(ok[s : s + step]) + s
        if rows.size == 0:
            continue
        cum = np.cumsum(counts[rows][:, labels], axis=1)  # pooled rank + 1 of each tail value, per replicate
        at_lo = (cum <= (lo[rows] - base[rows])[:, None]).sum(axis=1)
        at_hi = (cum <= (hi[rows] - base[rows])[:, None]).sum(axis=1)
        v_lo, v_hi = values[at_lo], values[at_hi]
        out[rows] = v_lo + (v_hi - v_lo) * (h[rows] - lo[rows])
    return out, ok


def _percentile(x: np.ndarray, q: float) -> float:
    # numpy's "linear" percentile via a partial sort: several times faster than np.percentile on small arrays
    if x.size == 0:
        return math.nan  # a resample of empty windows only
    h = (x.size - 1) * q / 100.0
    lo = int(math.floor(h))
    hi = min(lo + 1, x.size - 1)
    part = np.partition(x, [lo, hi])
    return float(part[lo] + (part[hi] - part[lo]) * (h - lo))


def bootstrap_summary(replicates: np.ndarray) -> dict[str, float]:
    """The replicates' quantiles at ``BOOTSTRAP_LEVELS``, keyed by level (what results.json keeps)."""
    if len(replicates) == 0:
        return {}
    return {f"{p:g}": float(np.quantile(replicates, p)) for p in BOOTSTRAP_LEVELS}


def bootstrap_level(summary: dict[str, float], p: float) -> float:
    """The bootstrap distribution's ``p`` quantile, interpolated between the stored levels.

    Outside the stored levels the nearest one is used (a conservative interval
    is not promised there); NaN for an empty summary.
    """
    if not summary:
        return math.nan
    levels = sorted((float(k), float(v)) for k, v in summary.items())
    xs = [a for a, _ in levels]
    ys = [b for _, b in levels]
    return float(np.interp(p, xs, ys))


def bootstrap_interval(summary: dict[str, float], confidence: float) -> tuple[float, float]:
    """Percentile interval at ``confidence`` from a stored bootstrap summary."""
    return bootstrap_level(summary, 0.5 - confidence / 2), bootstrap_level(summary, 0.5 + confidence / 2)


def exp_interval(lo: float, hi: float) -> tuple[float, float]:
    """``exp`` of an interval on a mean log (perplexity from mean NLL), overflow to inf."""
    return _exp(lo), _exp(hi)


def _exp(x: float) -> float:
    if math.isnan(x):
        return math.nan
    return math.exp(x) if x < 709.0 else math.inf


def half_width(lo: float, hi: float) -> float:
    """The ``+-`` shown for an interval: half its width (perplexity's is slightly asymmetric)."""
    return (hi - lo) / 2
