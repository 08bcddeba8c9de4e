"""The CPU pass's row checks and KL without vocabulary-sized temporaries give the bits of the plain definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qeval.evaluate.divergence import kl_rows
from qeval.evaluate.stream import finite_rows

NAN, INF = float("nan"), float("inf")


def _rows(n: int, v: int, dtype, g) -> torch.Tensor:
    x = (torch.randn(n, v, generator=g) * 10.0 ** torch.randint(-3, 30, (n, 1), generator=g).float()).to(dtype)
    for i in range(n):  # NaN / +Inf / -Inf at fresh positions (vector lanes and tails alike) in most rows
        kind = int(torch.randint(0, 5, (), generator=g))
        if kind < 3:
            j = torch.randint(0, v, (int(torch.randint(1, 4, (), generator=g)),), generator=g)
            x[i, j] = (NAN, INF, -INF)[kind]
    if n > 4:
        x[0, 0], x[1, -1], x[2] = NAN, -INF, NAN
        x[3] = -INF
        x[4] = 0.0
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(37, 1031), (8, 49157), (1, 16), (0, 64), (300, 7)])
def test_finite_rows_is_isfinite_all(dtype, shape):
    g = torch.Generator().manual_seed(torch.randint(1 << 30, ()).item())
    x = _rows(*shape, dtype, g)
    want = np.isfinite(x.float().numpy()).all(-1) if x.numel() else np.ones(shape[0], dtype=bool)
    got = finite_rows(x)
    assert got.dtype == torch.bool and got.shape == (shape[0],)
    assert np.array_equal(got.numpy(), want)
    assert torch.equal(got, torch.isfinite(x).all(-1))


def _kl_where(logp, logq, chunk):  # the definition kl_rows had, allocation by allocation
    out = torch.empty(logp.shape[0])
    for s in range(0, logp.shape[0], chunk):
        lp, lq = logp[s : s + chunk].float(), logq[s : s + chunk].float()
        p = lp.exp()
        out[s : s + chunk] = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum(-1).clamp_min(0.0)
    return out


@pytest.mark.parametrize("chunk", [256, 7])
def test_kl_rows_keeps_the_bits_of_its_definition(chunk):
    g = torch.Generator().manual_seed(torch.randint(1 << 30, ()).item())
    n, v = 41, 3001
    logp = torch.log_softmax(torch.randn(n, v, generator=g) * 4, -1)
    logq = torch.log_softmax(logp + torch.randn(n, v, generator=g) * 0.3, -1)
    logp[0, :100] = -INF  # p == 0: contributes 0, also where log q is -inf
    logq[0, :50] = -INF
    logq[1, 5] = -INF  # p > 0 where q == 0: +inf
    logp[2, 9] = NAN  # NaN p: contributes 0 (where's reading), NaN q: NaN
    logq[3, 11] = NAN
    logp[4] = logq[4]  # identical rows: 0 (tiny negatives clamped)
    got = kl_rows(logp, logq, chunk)
    want = _kl_where(logp, logq, chunk)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(0.0, posinf=1.0).view(torch.int32), want.nan_to_num(0.0, posinf=1.0).view(torch.int32))
    assert got[1] == INF and got[3].isnan() and got[4] == 0.0
    # and the float64 sum it approximates, on the finite rows
    p64 = logp.double().exp()
    ref = torch.where(p64 > 0, p64 * (logp.double() - logq.double()), torch.zeros((), dtype=torch.float64)).sum(-1)
    ok = torch.isfinite(ref)
    assert torch.allclose(got[ok].double(), ref[ok].clamp_min(0.0), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rows,chunk", [(37, 256), (37, 5), (1, 1)])
def test_log_softmax_rows_in_place_gives_the_same_bits(rows, chunk):
    from qeval.evaluate.perplexity import log_softmax_rows

    g = torch.Generator().manual_seed(torch.randint(1 << 30, ()).item())
    logits = torch.randn(rows, 1009, generator=g) * 30
    logits[0, 3] = -INF
    want = torch.log_softmax(logits, -1)
    assert torch.equal(log_softmax_rows(logits, chunk).view(torch.int32), want.view(torch.int32))
    own = logits.clone()
    got = log_softmax_rows(own, chunk, out=own)
    assert got.data_ptr() == own.data_ptr() and torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_a_pass_stores_the_log_softmax_of_the_logits_bit_for_bit():
    """lm_pass rounds log-probabilities in the logits' own memory: what it stores is log_softmax of the logits."""
    from conftest import tiny_llama
    from qeval.evaluate.baseline_store import DeviceSpill
    from qeval.evaluate.perplexity import sliding_windows, window_logits
    from qeval.evaluate.stream import lm_pass

    model = tiny_llama()
    g = torch.Generator().manual_seed(torch.randint(1 << 30, ()).item())
    ids = torch.randint(0, 128, (70,), generator=g)
    windows = sliding_windows(70, 32, 24)
    spill = DeviceSpill("cpu", "float32")
    with torch.no_grad():
        lm_pass(model, ids, windows, spill, baseline=True, chunk=5, progress=False)
        spill.open_read({w.index: w.n_targets for w in windows})
        for w in windows:
            want = torch.log_softmax(window_logits(model, ids, w), -1)
            assert torch.equal(spill.read(w.index).view(torch.int32), want.view(torch.int32))
        spill.close()
