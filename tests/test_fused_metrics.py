"""qeval.evaluate.fused.row_metrics against the torch path it replaces on a GPU.

KL against float64 math (the fused sum runs in another order than torch's, so
not bit for bit), finiteness and argmax exactly, on log-softmax rows with
planted NaN/Inf, -inf entries, tied maxima and vocabularies that are not a
multiple of the kernel's block.
"""

from __future__ import annotations

import pytest
import torch

from qeval.evaluate.divergence import kl_rows
from qeval.evaluate.fused import row_metrics


def test_cpu_tensors_take_the_torch_path():
    lp = torch.log_softmax(torch.randn(3, 10), -1)
    assert row_metrics(lp, lp) is None


def _rows(n: int, v: int, gen: torch.Generator, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(n, v, generator=gen, dtype=torch.float64) * 3
    noisy = logits + torch.randn(n, v, generator=gen, dtype=torch.float64) * 0.3
    noisy[1, 5] = noisy[1, v - 1] = noisy[1].max() + 1  # a tie for the maximum: the first index wins
    noisy[2, :] = 0.0  # a flat row: every entry ties
    lp = torch.log_softmax(logits, -1).float()
    lq = torch.log_softmax(noisy, -1).float()
    lp[3, 7] = float("nan")
    lq[4, v // 2] = float("inf")
    lq[5, 0] = float("-inf")
    lp[6, 1] = float("-inf")
    return lp.to(dtype), lq.to(dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("v", [10, 2048, 5003, 128256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_metrics_match_torch(v, dtype):
    gen = torch.Generator().manual_seed(torch.seed() % 2**31 + v)
    lp, lq = _rows(64 if v < 100_000 else 9, v, gen, dtype)
    got = row_metrics(lp.cuda(), lq.cuda())
    assert got is not None
    kl, fin, arg = (t.cpu() for t in got)
    want_fin = torch.isfinite(lp).all(-1) & torch.isfinite(lq).all(-1)
    assert torch.equal(fin, want_fin)
    assert not fin[3:7].any() and fin[:3].all()
    assert torch.equal(arg[fin], lq.float().argmax(-1)[fin])
    assert arg[1] == 5 and arg[2] == 0
    p64, q64 = lp.double()[fin], lq.double()[fin]
    ref = (p64.exp() * (p64 - q64)).sum(-1).clamp_min(0)
    torch.testing.assert_close(kl[fin].double(), ref, rtol=2e-5, atol=1e-7)
    # and against the torch float32 path it replaces, on the same GPU
    torch.testing.assert_close(kl[fin], kl_rows(lp.cuda(), lq.cuda()).cpu()[fin], rtol=2e-5, atol=1e-7)
