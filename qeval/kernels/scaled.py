"""The exact emulation's GEMM on CUDA (``qeval.quantize.gemm``): the scales applied where the accumulator is.

``out = (acc * sx * sw + bias).to(out dtype)`` with ``acc`` the FP32
accumulator of ``a [M, K] @ b [N, K].T`` (BF16/FP16 operands, exact products),
``sx`` one value or one per row of ``a``, ``sw`` one value or one per row of
``b`` (per output column); both one value: multiplied together first (one
alpha, as cuBLAS takes it). The float32 operations run in the same order as the
plain-torch epilogue, without FMA contraction, so for the same accumulator both
give the same bits.

Two ways to get there, chosen by the caller:

- :func:`epilogue`: one pass over an FP32 accumulator that cuBLAS wrote
  (``torch.mm(..., out_dtype=torch.float32)``); unfused, the same work is
  three or four passes over that float32 ``[M, N]`` tensor.
- :func:`gemm`: a Triton GEMM whose epilogue does it in registers, so the FP32
  accumulator never reaches memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import LAUNCH

_BM, _BN = 32, 256  # epilogue tile


@triton.jit
def _scale(acc, rm, rn, M, N, sx_ptr, sw_ptr, b_ptr,
           SX: tl.constexpr, SW: tl.constexpr, ALPHA: tl.constexpr, BIAS: tl.constexpr):
    """SX: 0 none, 1 one value, 2 one per row; SW: 0 none, 1 one value, 2 one per column."""
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
    return acc


@triton.jit
def epilogue_kernel(
    acc_ptr, sx_ptr, sw_ptr, b_ptr, out_ptr, M, N, sam, som,
    SX: tl.constexpr, SW: tl.constexpr, ALPHA: tl.constexpr, BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
):
    rm = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)
    rn = (tl.program_id(1) * BN + tl.arange(0, BN)).to(tl.int64)
    ok = (rm[:, None] < M) & (rn[None, :] < N)
    acc = tl.load(acc_ptr + rm[:, None] * sam + rn[None, :], mask=ok, other=0.0)
    acc = _scale(acc, rm, rn, M, N, sx_ptr, sw_ptr, b_ptr, SX, SW, ALPHA, BIAS)
    tl.store(out_ptr + rm[:, None] * som + rn[None, :], acc.to(out_ptr.dtype.element_ty), mask=ok)


def _configs():
    # Hopper-sized tiles (wgmma wants 4 or 8 warps, 64-multiples); the autotuner keeps the fastest per shape
    shapes = [(128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 64, 4, 4), (64, 128, 64, 4, 4)]
    return [triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_warps=w, num_stages=s) for bm, bn, bk, w, s in shapes]


@triton.autotune(configs=_configs(), key=["M", "N", "K", "SX", "SW", "BIAS"])
@triton.jit
def gemm_kernel(
    a_ptr, b_ptr, out_ptr, sx_ptr, sw_ptr, bias_ptr, M, N, K, sam, sak, sbn, sbk, som,
    SX: tl.constexpr, SW: tl.constexpr, ALPHA: tl.constexpr, BIAS: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    per_group = GROUP_M * num_n  # grouped order: neighbouring programs share tiles of a in L2
    first_m = (pid // per_group) * GROUP_M
    group_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a_ptrs = a_ptr + (rm % M).to(tl.int64)[:, None] * sam + rk[None, :] * sak  # wrapped rows: loads need no mask
    b_ptrs = b_ptr + (rn % N).to(tl.int64)[None, :] * sbn + rk[:, None] * sbk
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BK)):
        a = tl.load(a_ptrs, mask=rk[None, :] < K - kb * BK, other=0.0)
        b = tl.load(b_ptrs, mask=rk[:, None] < K - kb * BK, other=0.0)
        acc = tl.dot(a, b, acc)  # exact products, FP32 accumulator
        a_ptrs += BK * sak
        b_ptrs += BK * sbk
    rm64, rn64 = rm.to(tl.int64), rn.to(tl.int64)
    acc = _scale(acc, rm64, rn64, M, N, sx_ptr, sw_ptr, bias_ptr, SX, SW, ALPHA, BIAS)
    ok = (rm64[:, None] < M) & (rn64[None, :] < N)
    tl.store(out_ptr + rm64[:, None] * som + rn64[None, :], acc.to(out_ptr.dtype.element_ty), mask=ok)


def _mode(s: torch.Tensor | None, n: int) -> tuple[int, torch.Tensor | None]:
    if s is None:
        return 0, None
    count = s.numel()
    if count != 1 and count != n:
        raise ValueError(f"epilogue scale has {count} values, expected 1 or {n}")
    if s.dtype != torch.float32 or not s.is_contiguous():  # the kernel reads `count` float32s from s's pointer:
        s = s.float().contiguous()  # any contiguous shape ([n], [n, 1]) is laid out the same
    return (1 if count == 1 else 2), s


def _flags(m: int, n: int, sx, sw, bias, dummy: torch.Tensor):
    mx, sx = _mode(sx, m)
    mw, sw = _mode(sw, n)
    bias = None if bias is None else bias.contiguous()
    ptrs = tuple(dummy if t is None else t for t in (sx, sw, bias))  # never read when the flag says so
    return ptrs, {"SX": mx, "SW": mw, "ALPHA": mx == 1 and mw == 1, "BIAS": bias is not None}


def epilogue(acc: torch.Tensor, sx, sw, bias, out_dtype: torch.dtype) -> torch.Tensor:
    """``acc [M, N]`` float32 (unit stride along N); ``sx``: one value or ``[M, 1]``; ``sw``: one value or N values."""
    m, n = acc.shape
    ptrs, flags = _flags(m, n, sx, sw, bias, acc)
    out = torch.empty(m, n, dtype=out_dtype, device=acc.device)
    grid = (triton.cdiv(m, _BM), triton.cdiv(n, _BN))
    epilogue_kernel[grid](acc, *ptrs, out, m, n, acc.stride(0), out.stride(0), **flags, BM=_BM, BN=_BN, num_warps=8, **LAUNCH)
    return out


def gemm(a: torch.Tensor, b: torch.Tensor, sx, sw, bias, out_dtype: torch.dtype) -> torch.Tensor:
    """``epilogue(a @ b.T in FP32, sx, sw, bias, out_dtype)`` in one kernel; ``a [M, K]``, ``b [N, K]``, one half dtype."""
    m, k = a.shape
    n = b.shape[0]
    out = torch.empty(m, n, dtype=out_dtype, device=a.device)
    ptrs, flags = _flags(m, n, sx, sw, bias, out)

    def grid(meta):
        return (triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"]),)

    gemm_kernel[grid](a, b, out, *ptrs, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0),
                      **flags, **LAUNCH)
    return out
