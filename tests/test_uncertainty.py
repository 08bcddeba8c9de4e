"""qeval.uncertainty: window-level intervals against float64 / scipy references, and their coverage on
simulated text-like data with a known answer (AR(1)-correlated tokens inside windows).

Coverage simulations use fixed seeds (a statistical check must not flake); the formula
checks draw fresh random inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from qeval.uncertainty import (
    bootstrap_interval,
    bootstrap_level,
    bootstrap_quantile,
    bootstrap_summary,
    exp_interval,
    naive_estimate,
    paired_estimate,
    ratio_estimate,
    t_quantile,
)


def _ar1(rng, rows: int, m: int, phi: float) -> tuple[np.ndarray, float]:
    """``rows`` stationary AR(1) series of length ``m`` (unit innovations) and their marginal sd."""
    sd = 1 / math.sqrt(1 - phi * phi)
    x = np.empty((rows, m))
    x[:, 0] = rng.standard_normal(rows) * sd
    e = rng.standard_normal((rows, m))
    for t in range(1, m):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    return x, sd


# ---------------------------------------------------------------------------
# formulas


def test_ratio_estimate_matches_the_float64_cluster_formula():
    rng = np.random.default_rng()
    k = int(rng.integers(2, 40))
    counts = rng.integers(1, 300, k)
    sums = rng.normal(2.0, 1.0, k) * counts
    est = ratio_estimate(sums.tolist(), counts.tolist())
    r = sum(float(s) for s in sums) / sum(int(c) for c in counts)
    ss = sum((float(s) - r * int(c)) ** 2 for s, c in zip(sums, counts))
    se = math.sqrt(k / (k - 1) * ss) / sum(int(c) for c in counts)
    assert est.value == pytest.approx(r, rel=1e-12) and est.se == pytest.approx(se, rel=1e-10)
    assert est.windows == k and est.df == k - 1
    lo, hi = est.interval(0.9)
    assert (hi - lo) / 2 == pytest.approx(sps.t.ppf(0.95, k - 1) * se, rel=1e-10)
    assert est.bound(0.95, upper=True) == pytest.approx(r + sps.t.ppf(0.95, k - 1) * se, rel=1e-10)
    assert est.bound(0.95, upper=False) == pytest.approx(r - sps.t.ppf(0.95, k - 1) * se, rel=1e-10)


def test_equal_windows_give_scipys_t_interval_on_window_means():
    rng = np.random.default_rng()
    k, m = int(rng.integers(3, 25)), int(rng.integers(5, 200))
    means = rng.normal(0.3, 0.05, k)
    lo, hi = ratio_estimate((means * m).tolist(), [m] * k).interval(0.95)
    ref = sps.t.interval(0.95, k - 1, loc=means.mean(), scale=sps.sem(means))
    assert lo == pytest.approx(ref[0], rel=1e-9) and hi == pytest.approx(ref[1], rel=1e-9)


def test_edge_cases():
    assert math.isnan(ratio_estimate([], []).value)
    one = ratio_estimate([5.0], [10])
    assert one.value == 0.5 and math.isnan(one.se) and all(math.isnan(x) for x in one.interval(0.95))
    flat = ratio_estimate([2.0, 4.0, 6.0], [1, 2, 3])  # every window has mean 2: no spread
    assert flat.value == 2.0 and flat.se == 0.0 and flat.interval(0.99) == (2.0, 2.0)
    assert math.isnan(ratio_estimate([1.0, 2.0], [0, 0]).value)
    with pytest.raises(ValueError):
        ratio_estimate([1.0, 2.0], [1])
    assert math.isnan(t_quantile(0.975, 0)) and t_quantile(0.975, 10**6) == pytest.approx(1.959964, abs=1e-5)
    assert exp_interval(0.0, 800.0) == (1.0, math.inf) and math.isnan(exp_interval(math.nan, 1.0)[0])


def test_paired_estimate_is_the_ratio_estimate_of_differences():
    rng = np.random.default_rng()
    k = int(rng.integers(2, 30))
    n = rng.integers(10, 100, k)
    a, b = rng.random(k) * n, rng.random(k) * n
    p, d = paired_estimate(a, b, n), ratio_estimate(a - b, n)
    assert p.value == pytest.approx(d.value, abs=1e-15) and p.se == pytest.approx(d.se, rel=1e-12)


def test_paired_interval_is_narrow_where_separate_ones_overlap():
    """Two policies on the same text: window difficulty is shared, so it cancels in the difference."""
    rng = np.random.default_rng(7)
    k, n = 12, np.full(12, 256)
    difficulty = rng.gamma(2.0, 0.02, k)  # per-window mean KL varies a lot with the text
    a = (difficulty + rng.normal(0, 0.001, k)) * n
    b = (difficulty + 0.004 + rng.normal(0, 0.001, k)) * n
    ia, ib = ratio_estimate(a, n).interval(0.95), ratio_estimate(b, n).interval(0.95)
    assert ia[1] > ib[0] and ib[1] > ia[0]  # separate intervals overlap
    lo, hi = paired_estimate(b, a, n).interval(0.95)
    assert lo > 0 and hi > lo  # b is significantly worse


# ---------------------------------------------------------------------------
# coverage on AR(1)-correlated tokens in windows, known answer


def _mean_coverage(reps: int, k: int, m: int, phi: float, lognormal: bool, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    x, sd = _ar1(rng, reps * k, m, phi)
    if lognormal:  # skewed, positive, like per-token KL: mean of exp(0.5 z) is exp(0.125)
        x, truth = np.exp(0.5 * x / sd), math.exp(0.125)
    else:
        x, truth = 3.0 + x, 3.0
    x = x.reshape(reps, k, m)
    counts = rng.integers(m // 2, m + 1, size=(reps, k))  # windows of unequal length (the last one is short)
    window_hits = naive_hits = 0
    for r in range(reps):
        parts = [x[r, i, : counts[r, i]] for i in range(k)]
        lo, hi = ratio_estimate([p.sum() for p in parts], counts[r]).interval(0.95)
        window_hits += lo <= truth <= hi
        lo, hi = naive_estimate(np.concatenate(parts)).interval(0.95)
        naive_hits += lo <= truth <= hi
    return window_hits / reps, naive_hits / reps


@pytest.mark.parametrize("phi,lognormal", [(0.9, False), (0.5, False), (0.9, True)])
def test_window_intervals_cover_at_the_nominal_rate_and_per_token_ones_do_not(phi, lognormal):
    # 1000 replications: a binomial sd of 0.007 around 0.95
    window, naive = _mean_coverage(1000, 12, 96, phi, lognormal, seed=11)
    assert 0.93 <= window <= 0.97, window
    assert naive < {0.9: 0.55, 0.5: 0.85}[phi], naive  # treating tokens as independent under-covers


def test_p99_window_bootstrap_covers_and_is_deterministic():
    from scipy.stats import norm

    windows = [np.random.default_rng(i).random(50) for i in range(6)]
    a = bootstrap_quantile(windows, 99.0, 200, seed=3)
    assert np.array_equal(a, bootstrap_quantile(windows, 99.0, 200, seed=3))
    assert not np.array_equal(a, bootstrap_quantile(windows, 99.0, 200, seed=4))
    assert np.all(np.diff(a) >= 0) and a.min() >= min(w.min() for w in windows) and a.max() <= max(w.max() for w in windows)
    # numpy's linear percentile on a resample of every window once each in order is the plain p99
    pooled = np.concatenate(windows)
    assert bootstrap_quantile([pooled], 99.0, 1, 0)[0] == pytest.approx(np.percentile(pooled, 99.0), rel=1e-15)

    rng = np.random.default_rng(5)
    reps, k, m, phi = 120, 16, 64, 0.5
    x, sd = _ar1(rng, reps * k, m, phi)
    x = x.reshape(reps, k, m)
    truth = sd * norm.ppf(0.99)
    hits = 0
    for r in range(reps):
        lo, hi = bootstrap_interval(bootstrap_summary(bootstrap_quantile(list(x[r]), 99.0, 150, r)), 0.95)
        hits += lo <= truth <= hi
    # percentile bootstraps of a tail quantile under-cover somewhat (README: ~0.84-0.92 at nominal 0.95)
    assert 0.8 <= hits / reps <= 0.99, hits / reps


def test_p99_bootstrap_equals_pooling_every_replicate():
    """The tail-only ranking gives each pooled resample's linear-rule percentile exactly (the
    partition of the pooled values, as before the tail ranking) and numpy's to rounding:
    fresh draws with ties, NaN, empty and all-zero windows, several q (the cut-too-high
    fallback included: q 0 and 50)."""
    from qeval.uncertainty import _percentile

    rng = np.random.default_rng()
    for trial in range(150):
        k = int(rng.integers(1, 10))
        q = float(rng.choice([99.0, 99.9, 95.0, 50.0, 0.0, 100.0]))
        windows = []
        for _ in range(k):
            w = rng.gamma(0.5, 0.3, int(rng.integers(0, 200)))
            if rng.random() < 0.3:
                w = np.round(w, 1)  # ties
            if rng.random() < 0.15 and w.size:
                w[rng.integers(0, w.size)] = np.nan
            if rng.random() < 0.1:
                w[:] = 0.0
            windows.append(w.astype(np.float32))
        if sum(w.size for w in windows) == 0:
            continue
        seed = int(rng.integers(0, 2**31))
        draws = np.random.default_rng(seed).integers(0, k, size=(40, k))  # the function's own draws
        pooled = [np.concatenate([windows[i].astype(np.float64) for i in row]) for row in draws]
        want = np.sort([_percentile(x, q) for x in pooled])
        got = bootstrap_quantile(windows, q, 40, seed)
        assert np.array_equal(got, want, equal_nan=True), (trial, q, got[:4], want[:4])
        if not any(np.isnan(x).any() or x.size == 0 for x in pooled):  # np.percentile is NaN wherever a NaN is pooled
            assert np.allclose(got, np.sort([np.percentile(x, q) for x in pooled]), rtol=1e-12, atol=1e-15)


def test_bootstrap_levels_interpolate_and_clamp():
    reps = np.linspace(0.0, 1.0, 1001)
    summary = bootstrap_summary(reps)
    assert bootstrap_level(summary, 0.025) == pytest.approx(0.025)
    assert bootstrap_level(summary, 0.0375) == pytest.approx(0.0375)  # between stored levels
    assert bootstrap_level(summary, 0.0001) == pytest.approx(0.005)  # clamped to the outermost level
    lo, hi = bootstrap_interval(summary, 0.9)
    assert (lo, hi) == (pytest.approx(0.05), pytest.approx(0.95))
    assert math.isnan(bootstrap_level({}, 0.5)) and bootstrap_summary(np.zeros(0)) == {}
