"""A policy pass's per-row metrics in one read of both log-probability tensors (CUDA, Triton).

For each window the policy pass needs, per row: the KL divergence (``kl_rows``),
whether both rows are finite, and the policy's argmax (top-1). In torch these are
about ten passes over ``[rows, vocab]`` float32 (a 2,048-token window of a 128k
vocabulary is 1 GB per pass); :func:`row_metrics` reads each tensor once. The
torch code (``divergence.kl_rows``, ``isfinite``, ``argmax``) is the reference and
runs wherever this does not (CPU, no Triton, a row that is not contiguous);
tests/test_fused_metrics.py compares the two on the GPU.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch path runs
    triton = None

BLOCK = 2048

if triton is not None:

    @triton.jit
    def _row_metrics_kernel(lp_ptr, lq_ptr, kl_ptr, fin_ptr, arg_ptr, V, slp, slq, BLOCK: tl.constexpr):
        """Program r, row r: kl = max(0, sum_v where(p > 0, p (lp - lq), 0)), p = exp(lp);
        fin = every lp and lq finite; arg = first index of max lq (torch.argmax)."""
        row = tl.program_id(0).to(tl.int64)
        acc = tl.zeros([BLOCK], tl.float32)
        bad = tl.zeros([BLOCK], tl.int32)
        best = tl.full([BLOCK], float("-inf"), tl.float32)
        best_i = tl.zeros([BLOCK], tl.int32)
        for v0 in range(0, V, BLOCK):
            cols = v0 + tl.arange(0, BLOCK)
            m = cols < V
            lp = tl.load(lp_ptr + row * slp + cols, mask=m, other=float("-inf")).to(tl.float32)
            lq = tl.load(lq_ptr + row * slq + cols, mask=m, other=float("-inf")).to(tl.float32)
            p = tl.exp(lp)
            acc += tl.where(p > 0, p * (lp - lq), 0.0)
            fin = (tl.abs(lp) < float("inf")) & (tl.abs(lq) < float("inf"))
            bad += (m & ~fin).to(tl.int32)
            take = lq > best  # strictly greater: each lane keeps its first maximum
            best = tl.where(take, lq, best)
            best_i = tl.where(take, cols, best_i)
        tl.store(kl_ptr + row, tl.maximum(tl.sum(acc, 0), 0.0))
        tl.store(fin_ptr + row, (tl.sum(bad, 0) == 0).to(tl.int8))
        top = tl.max(best, 0)  # the first index overall is the smallest among lanes holding the max
        tl.store(arg_ptr + row, tl.min(tl.where(best == top, best_i, V), 0).to(tl.int64))


def row_metrics(logp: torch.Tensor, logq: torch.Tensor):
    """(KL per row float32, both rows finite bool, argmax of logq int64) of two ``[n, vocab]``
    log-probability tensors on one GPU, or None where the torch path must run."""
    if (triton is None or not logp.is_cuda or logp.device != logq.device or logp.shape != logq.shape
            or logp.dim() != 2 or logp.stride(-1) != 1 or logq.stride(-1) != 1 or logp.shape[-1] >= 2**31):
        return None
    n, v = logp.shape
    kl = torch.empty(n, dtype=torch.float32, device=logp.device)
    fin = torch.empty(n, dtype=torch.int8, device=logp.device)
    arg = torch.empty(n, dtype=torch.int64, device=logp.device)
    if n:
        with torch.cuda.device(logp.device):
            _row_metrics_kernel[(n,)](logp, logq, kl, fin, arg, v, logp.stride(0), logq.stride(0), BLOCK=BLOCK,
                                      num_warps=8)
    return kl, fin.bool(), arg
