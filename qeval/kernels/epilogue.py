"""The exact emulation's GEMM epilogue on CUDA (``qeval.quantize.gemm``), in one pass.

``out = (acc * scales + bias).to(out dtype)`` over a float32 accumulator, with
the scales per tensor, per row of the activation and/or per output column, in
the same order of float32 operations as the plain-torch epilogue (no FMA
contraction), so both give the same bits. Unfused, the same work is three or
four passes over a float32 ``[M, N]`` tensor.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import LAUNCH

_BM, _BN = 32, 128


@triton.jit
def epilogue_kernel(
    acc_ptr, sx_ptr, sw_ptr, b_ptr, out_ptr, M, N, sam, som,
    SX: tl.constexpr, SW: tl.constexpr, ALPHA: tl.constexpr, BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
):
    """SX: 0 none, 1 one value, 2 one per row; SW: 0 none, 1 one value, 2 one per column;
    ALPHA: both are one value, multiplied together first (one alpha, as cuBLAS takes it)."""
    rm = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)
    rn = (tl.program_id(1) * BN + tl.arange(0, BN)).to(tl.int64)
    ok = (rm[:, None] < M) & (rn[None, :] < N)
    acc = tl.load(acc_ptr + rm[:, None] * sam + rn[None, :], mask=ok, other=0.0)
    if ALPHA:
        acc = acc * (tl.load(sx_ptr) * tl.load(sw_ptr))
    else:
        if SX == 1:
            acc = acc * tl.load(sx_ptr)
        if SX == 2:
            acc = acc * tl.load(sx_ptr + rm, mask=rm < M, other=1.0)[:, None]
        if SW == 1:
            acc = acc * tl.load(sw_ptr)
        if SW == 2:
            acc = acc * tl.load(sw_ptr + rn, mask=rn < N, other=1.0)[None, :]
    if BIAS:
        acc = acc + tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rm[:, None] * som + rn[None, :], acc.to(out_ptr.dtype.element_ty), mask=ok)


def _mode(s: torch.Tensor | None, n: int) -> tuple[int, torch.Tensor | None]:
    if s is None:
        return 0, None
    if s.numel() == 1:
        return 1, s.reshape(1).float().contiguous()
    if s.numel() != n:
        raise ValueError(f"epilogue scale has {s.numel()} values, expected 1 or {n}")
    return 2, s.reshape(n).float().contiguous()


def epilogue(acc: torch.Tensor, sx, sw, bias, out_dtype: torch.dtype) -> torch.Tensor:
    """``acc [M, N]`` float32 CUDA; ``sx``: one value or ``[M, 1]``; ``sw``: one value or N values."""
    m, n = acc.shape
    mx, sx = _mode(sx, m)
    mw, sw = _mode(sw, n)
    out = torch.empty(m, n, dtype=out_dtype, device=acc.device)
    dummy = acc  # never read when the flag says so
    grid = (triton.cdiv(m, _BM), triton.cdiv(n, _BN))
    epilogue_kernel[grid](
        acc, dummy if sx is None else sx, dummy if sw is None else sw, dummy if bias is None else bias.contiguous(), out,
        m, n, acc.stride(0), out.stride(0), SX=mx, SW=mw, ALPHA=(mx == 1 and mw == 1), BIAS=bias is not None,
        BM=_BM, BN=_BN, num_warps=4, **LAUNCH,
    )
    return out
