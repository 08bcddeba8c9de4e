"""Host side of the quantize kernels: shapes, buffers, tile sizes, launches.

Each ``run_*`` returns what the reference would: a :class:`QTensor` laid out
exactly as ``qeval.formats`` lays it out (same shapes, dtypes and padding), or
the fake-quantized tensor in x's dtype. Inputs are CUDA float32/bf16/fp16
tensors with fewer than 2^31 elements (the dispatcher checks).
"""

from __future__ import annotations

import functools
import math

import torch
import triton

from qeval.formats.base import QTensor
from qeval.formats.fp8 import FP8Format
from qeval.formats.mx import MXFormat
from qeval.formats.nvfp4 import NVFP4Format

from . import tuning
from ._common import LAUNCH, amax_kernel, fp8_special_codes
from .fp8 import fp8_block_kernel, fp8_row_kernel, fp8_tensor_kernel, fp8_tile2d_kernel
from .mx import mx_kernel, mxfp4_quant_pairs_kernel
from .nvfp4 import fp4_dequant_kernel, nvfp4_kernel, nvfp4_quant_pairs_kernel

import triton.language as tl

# Whether packed FP4 quantize reads element pairs (a benchmark may turn it off to compare).
PAIRS = True

_TL_FP8 = {torch.float8_e4m3fn: tl.float8e4nv, torch.float8_e5m2: tl.float8e5}
_SPECIAL: dict[torch.dtype, tuple[int, int, int]] = {}


def _special(dtype: torch.dtype) -> tuple[int, int, int]:
    if dtype not in _SPECIAL:
        _SPECIAL[dtype] = fp8_special_codes(dtype)
    return _SPECIAL[dtype]


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _tile(kp: int, group: int, cfg: dict) -> tuple[int, int]:
    bk = max(group, min(_pow2(kp), cfg["max_bk"]))
    return max(1, cfg["tile"] // bk), bk  # bm independent of m: fewer compiled variants


def _grid2(nm: int, nk: int, cfg: dict) -> tuple[tuple[int, int], bool]:
    """Grid over (row tiles, column tiles) and KFAST: axis 0 along the columns when the
    config says order "k" (and the rows fit grid axis 1's 65535)."""
    if cfg.get("order") == "k" and nm <= 65535:
        return (nk, nm), True
    return (nm, nk), False


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 2 and x.is_contiguous():  # the usual case: no reshape call (host time at every launch)
        return x
    return x.reshape(-1, x.shape[-1]).contiguous()


def _shaped(t: torch.Tensor, shape) -> torch.Tensor:
    """``t.reshape(shape)``, no call when it already has it."""
    return t if t.shape == shape else t.reshape(shape)


_SRC = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def _pairs_view(x2: torch.Tensor):
    """x2 [M, K] (K even) viewed as one integer per element pair, or None when it can't be."""
    if not PAIRS or x2.shape[-1] % 2:
        return None
    try:
        return x2.view(torch.int64 if x2.dtype == torch.float32 else torch.int32)
    except RuntimeError:  # storage offset not aligned to a pair
        return None


# Elements per thread above which the NVFP4 pair kernel gave wrong codes on an H200 (Triton 3.6):
# tiles of 64 or 128 per thread, on tensors with masked edges or NaN/Inf (cause not found).
PAIRS_NVFP4_MAX_PER_THREAD = 32


def _pairs_tile(kp: int, group: int, cfg: dict) -> tuple[int, int]:
    """(rows, pairs) per program of the packed-FP4 pair kernels; NVFP4 (group 16) held to
    PAIRS_NVFP4_MAX_PER_THREAD elements per thread, whatever the config asks."""
    bh = max(group // 2, min(_pow2(kp // 2), cfg["max_bk"] // 2))
    tile = cfg["tile"] if group != 16 else min(cfg["tile"], PAIRS_NVFP4_MAX_PER_THREAD * 32 * cfg["warps"])
    return max(1, tile // (2 * bh)), bh


def _pairs_launch(kernel, x2, xp, q, s, kp, group, extra_args, flags):
    m, kh = xp.shape
    cfg = tuning.config("fp4_pairs", x2.device)
    bm, bh = _pairs_tile(kp, group, cfg)
    iters = min(cfg["iters"], triton.cdiv(kp // 2, bh))  # column tiles per program
    grid, kfast = _grid2(triton.cdiv(m, bm), triton.cdiv(kp // 2, bh * iters), cfg)
    pair = 32 if x2.dtype == torch.float32 else 16
    kernel[grid](xp, q, s, *extra_args, m, kh, kp, xp.stride(0), q.stride(0), s.stride(0), SRC=_SRC[x2.dtype],
                 PAIR=pair, BM=bm, BH=bh, KFAST=kfast, ITERS=iters, num_warps=cfg["warps"], **flags, **LAUNCH)


def global_amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| over the finite values of a CUDA tensor, float32 shape [1] (one read pass)."""
    flat = x.contiguous().reshape(-1)
    buf = torch.zeros(1, dtype=torch.int32, device=x.device)
    n = flat.numel()
    cfg = tuning.config("amax", x.device)
    block = cfg["block"]
    iters = cfg["iters"] if n > block * cfg["iters"] * 256 else 1
    grid = (triton.cdiv(n, block * iters),)
    amax_kernel[grid](flat, buf, n, BLOCK=block, ITERS=iters, num_warps=cfg["warps"], **LAUNCH)
    return buf.view(torch.float32)


def _amax_arg(x: torch.Tensor, amax: torch.Tensor | float | None) -> torch.Tensor:
    """The amax as one float32 on x's device (the kernels load it from its pointer: any shape of one element)."""
    if amax is None:
        return global_amax(x)
    if isinstance(amax, torch.Tensor) and amax.dtype == torch.float32 and amax.device == x.device:
        return amax
    return torch.as_tensor(amax, dtype=torch.float32, device=x.device).reshape(1)


def _scalar_shape(amax) -> tuple[int, ...]:
    if amax is None:
        return ()
    return tuple(amax.shape) if isinstance(amax, torch.Tensor) else tuple(torch.as_tensor(amax).shape)


# --- NVFP4 -----------------------------------------------------------------
def run_nvfp4(fmt: NVFP4Format, x: torch.Tensor, amax, role: str, fake: bool,
              split_dtype: torch.dtype | None = None):
    """Packed QTensor, or fake-quantized x, or with ``split_dtype`` (value x block scale in that
    dtype, global scale): the exact emulation's operand."""
    x2 = _as_2d(x)
    m, k = x2.shape
    kp = triton.cdiv(k, 16) * 16
    a = _amax_arg(x2, amax)
    if fake or split_dtype is not None:
        cfg = tuning.config("nvfp4", x.device)
        bm, bk = _tile(kp, 16, cfg)
        grid, kfast = _grid2(triton.cdiv(m, bm), triton.cdiv(kp, bk), cfg)
        out = torch.empty(m, k, dtype=split_dtype or x2.dtype, device=x.device)
        gs = a if split_dtype is None else torch.empty(1, dtype=torch.float32, device=x.device)
        nvfp4_kernel[grid](x2, out, a, gs, m, k, x2.stride(0), out.stride(0), SPLIT=split_dtype is not None,
                           BM=bm, BK=bk, KFAST=kfast, num_warps=cfg["warps"], **LAUNCH)
        if split_dtype is None:
            return _shaped(out, x.shape)
        return _shaped(out, x.shape), _shaped(gs, _scalar_shape(amax))
    q = torch.empty(m, kp // 2, dtype=torch.uint8, device=x.device)
    s = torch.empty(m, kp // 16, dtype=torch.uint8, device=x.device)
    gs = torch.empty(1, dtype=torch.float32, device=x.device)
    xp = _pairs_view(x2)
    if xp is None:  # odd width or a storage offset off the pair grid: a zero-padded copy (the padding's codes are 0)
        pad = torch.zeros(m, kp, dtype=x2.dtype, device=x.device)
        pad[:, :k] = x2
        x2, xp = pad, pad.view(torch.int64 if pad.dtype == torch.float32 else torch.int32)
    _pairs_launch(nvfp4_quant_pairs_kernel, x2, xp, q, s, kp, 16, (a, gs), {})
    lead = x.shape[:-1]
    return QTensor(q.reshape(*lead, kp // 2), s.view(torch.float8_e4m3fn).reshape(*lead, kp // 16),
                   gs.reshape(_scalar_shape(amax)), x.shape, fmt, padded=kp != k, role=role)


# --- MX ----------------------------------------------------------------------
def run_mx(fmt: MXFormat, x: torch.Tensor, amax, role: str, fake: bool):
    x2 = _as_2d(x)
    m, k = x2.shape
    kp = triton.cdiv(k, 32) * 32
    cfg = tuning.config("mx" if fake else "mx_quant", x.device)
    bm, bk = _tile(kp, 32, cfg)
    grid, kfast = _grid2(triton.cdiv(m, bm), triton.cdiv(kp, bk), cfg)
    fp4 = fmt.element == "e2m1"
    inf_pos, inf_neg, nan_code = _special(torch.float8_e4m3fn)
    flags = dict(FP4=fp4, RCEIL=fmt.rounding == "rceil", INF_POS=inf_pos, INF_NEG=inf_neg, NAN_CODE=nan_code,
                 BM=bm, BK=bk, KFAST=kfast, num_warps=cfg["warps"], **LAUNCH)
    if fake:
        out = torch.empty_like(x2)
        mx_kernel[grid](x2, out, out, out, m, k, kp, x2.stride(0), out.stride(0), 0, 0, FAKE=True, **flags)
        return _shaped(out, x.shape)
    if fp4:
        q = torch.empty(m, kp // 2, dtype=torch.uint8, device=x.device)
    else:
        q = torch.empty(m, kp, dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty(m, kp // 32, dtype=torch.uint8, device=x.device)
    xp = _pairs_view(x2) if fp4 else None
    if xp is not None:
        _pairs_launch(mxfp4_quant_pairs_kernel, x2, xp, q, s, kp, 32, (), {"RCEIL": fmt.rounding == "rceil"})
    else:
        mx_kernel[grid](x2, x2, q.view(torch.uint8), s, m, k, kp, x2.stride(0), 0, q.stride(0), s.stride(0),
                        FAKE=False, **flags)
    lead = x.shape[:-1]
    return QTensor(q.reshape(*lead, q.shape[-1]), s.view(torch.float8_e8m0fnu).reshape(*lead, kp // 32),
                   None, x.shape, fmt, padded=kp != k, role=role)


# --- FP8 ---------------------------------------------------------------------
@functools.cache
def _fp8_flags(fmt: FP8Format) -> dict:
    dtype = fmt.dtype
    inf_pos, inf_neg, nan_code = _special(dtype)
    return dict(FP8=_TL_FP8[dtype], FMAX=float(torch.finfo(dtype).max), INF_POS=inf_pos, INF_NEG=inf_neg,
                NAN_CODE=nan_code)


def run_fp8(fmt: FP8Format, x: torch.Tensor, amax, role: str, fake: bool):
    if fmt.granularity == "tensor":
        return _fp8_tensor(fmt, x, amax, role, fake)
    if fmt.granularity == "row":
        return _fp8_row(fmt, x, role, fake)
    return _fp8_block(fmt, x, role, fake)


def _fp8_tensor(fmt, x, amax, role, fake, split_dtype: torch.dtype | None = None):
    flat = x.contiguous().reshape(-1)
    n = flat.numel()
    a = _amax_arg(flat, amax)
    cfg = tuning.config("fp8_tensor", x.device)
    block = cfg["tile"]
    grid = (triton.cdiv(n, block),)
    flags = dict(**_fp8_flags(fmt), BLOCK=block, num_warps=cfg["warps"], **LAUNCH)
    if fake or split_dtype is not None:
        out = torch.empty(n, dtype=split_dtype or flat.dtype, device=x.device)
        s = a if split_dtype is None else torch.empty(1, dtype=torch.float32, device=x.device)
        fp8_tensor_kernel[grid](flat, out, out, a, s, n, FAKE=True, SPLIT=split_dtype is not None, **flags)
        return _shaped(out, x.shape) if split_dtype is None else (_shaped(out, x.shape), _shaped(s, _scalar_shape(amax)))
    q = torch.empty(n, dtype=fmt.dtype, device=x.device)
    s = torch.empty(1, dtype=torch.float32, device=x.device)
    fp8_tensor_kernel[grid](flat, flat, q.view(torch.uint8), a, s, n, FAKE=False, **flags)
    return QTensor(q.reshape(x.shape), s.reshape(_scalar_shape(amax)), None, x.shape, fmt, role=role)


def fp8_row_quant(x2: torch.Tensor, fmt: FP8Format, out_rows: int | None = None, fake: bool = False,
                  split_dtype: torch.dtype | None = None):
    """Per-row FP8 of a contiguous 2-D tensor: (codes [out_rows, K], scales [out_rows, 1] float32),
    or the fake-quantized tensor, or with ``split_dtype`` (the codes' values in that dtype, scales).
    Rows past x2's are left for the caller (padding)."""
    m, k = x2.shape
    cfg = tuning.config("fp8_row", x2.device)
    single = _pow2(k) <= cfg["max_single"]  # whole row in one tile: one read of x
    if single:
        bk = _pow2(k)
        bm = max(1, cfg["tile"] // bk)
        warps = max(cfg["warps"], min(cfg["max_warps"], bk // (32 * cfg["per_thread"])))
    else:  # two sweeps; one row per program keeps the re-read in L2
        bk, bm, warps = cfg["sweep_bk"], 1, cfg["sweep_warps"]
    grid = (triton.cdiv(m, bm),)
    flags = dict(**_fp8_flags(fmt), BM=bm, BK=bk, SINGLE=single, num_warps=warps, **LAUNCH)
    if fake or split_dtype is not None:
        out = torch.empty(m, k, dtype=split_dtype or x2.dtype, device=x2.device)
        s = torch.empty(m, 1, dtype=torch.float32, device=x2.device) if split_dtype is not None else out
        fp8_row_kernel[grid](x2, out, out, s, m, k, x2.stride(0), out.stride(0), 0, FAKE=True,
                             SPLIT=split_dtype is not None, **flags)
        return out if split_dtype is None else (out, s)
    rows = out_rows or m
    q = torch.empty(rows, k, dtype=fmt.dtype, device=x2.device)
    s = torch.empty(rows, 1, dtype=torch.float32, device=x2.device)
    fp8_row_kernel[grid](x2, x2, q.view(torch.uint8), s, m, k, x2.stride(0), 0, q.stride(0), FAKE=False, **flags)
    return q, s


def _fp8_row(fmt, x, role, fake):
    x2 = _as_2d(x)
    if fake:
        return fp8_row_quant(x2, fmt, fake=True).reshape(x.shape)
    q, s = fp8_row_quant(x2, fmt)
    lead = x.shape[:-1]
    return QTensor(q.reshape(x.shape), s.reshape(*lead, 1), None, x.shape, fmt, role=role)


def _fp8_block(fmt, x, role, fake):
    k = x.shape[-1]
    kp = triton.cdiv(k, 128) * 128
    x2 = _as_2d(x)
    flags = dict(**_fp8_flags(fmt), **LAUNCH)
    if role == "weight" and x.dim() >= 2:  # 128x128 tiles of each matrix
        rows = x.shape[-2]
        mats = math.prod(x.shape[:-2])
        nb = triton.cdiv(rows, 128)
        cfg = tuning.config("fp8_tile2d", x.device)
        grid, kfast = _grid2(mats * nb, kp // 128, cfg)
        kernel, flags = fp8_tile2d_kernel, dict(flags, num_warps=cfg["warps"], CH=cfg["chunk"], KFAST=kfast)
        s = torch.empty(mats, nb, kp // 128, dtype=torch.float32, device=x.device)
        ssm, ssb = s.stride(1), s.stride(0)
        s_shape = (*x.shape[:-2], nb, kp // 128)
        extra = (ssb,)
    else:  # 1x128 groups
        rows = x2.shape[0]
        cfg = tuning.config("fp8_block", x.device)
        bm, bk = _tile(kp, 128, cfg)
        grid, kfast = _grid2(triton.cdiv(rows, bm), triton.cdiv(kp, bk), cfg)
        kernel, flags = fp8_block_kernel, dict(flags, num_warps=cfg["warps"], BM=bm, BK=bk, KFAST=kfast)
        s = torch.empty(rows, kp // 128, dtype=torch.float32, device=x.device)
        ssm = s.stride(0)
        s_shape = (*x.shape[:-1], kp // 128)
        extra = ()
    if fake:
        out = torch.empty_like(x2)
        kernel[grid](x2, out, out, out, rows, k, kp, x2.stride(0), out.stride(0), 0, 0, *(0 for _ in extra),
                     FAKE=True, **flags)
        return _shaped(out, x.shape)
    q = torch.empty(x2.shape[0], kp, dtype=fmt.dtype, device=x.device)
    kernel[grid](x2, x2, q.view(torch.uint8), s, rows, k, kp, x2.stride(0), 0, q.stride(0), ssm, *extra,
                 FAKE=False, **flags)
    return QTensor(q.reshape(*x.shape[:-1], kp), s.reshape(s_shape), None, x.shape, fmt,
                   padded=kp != k, role=role)


def dequantize(q: QTensor, dtype: torch.dtype):
    """NVFP4 / MXFP4 QTensor -> values (the reference's ``dequantize``), or None for other formats."""
    fmt = q.fmt
    if isinstance(fmt, NVFP4Format):
        group, mx = 16, False
    elif isinstance(fmt, MXFormat) and fmt.element == "e2m1":
        group, mx = 32, True
    else:
        return None
    k = q.shape[-1] if len(q.shape) else 1
    kp = q.data.shape[-1] * 2
    codes = q.data.reshape(-1, kp // 2).contiguous()
    scales = q.scale.view(torch.uint8).reshape(-1, kp // group).contiguous()
    m = codes.shape[0]
    gs = q.global_scale.reshape(1) if q.global_scale is not None else scales
    out = torch.empty(m, k, dtype=dtype, device=codes.device)
    cfg = tuning.config("fp4_dequant", codes.device)
    bm, bk = _tile(kp, group, cfg)
    grid, kfast = _grid2(triton.cdiv(m, bm), triton.cdiv(kp, bk), cfg)
    fp4_dequant_kernel[grid](codes, scales, gs, out, m, k, kp, codes.stride(0), scales.stride(0), out.stride(0),
                             MX=mx, BM=bm, BK=bk, KFAST=kfast, num_warps=cfg["warps"], **LAUNCH)
    return out.reshape(q.shape)


def split(fmt, x: torch.Tensor, amax, dtype: torch.dtype):
    """``fmt.gemm_split(fmt.quantize(x, amax))`` as (inner values in ``dtype``, outer float32 scales)
    in one kernel (plus an amax pass when dynamic per tensor), for FP8 per tensor / per row
    and NVFP4; None for other formats. The inner values are exact in BF16 / FP16 / FP32."""
    if isinstance(fmt, NVFP4Format):
        return run_nvfp4(fmt, x, amax, "activation", fake=True, split_dtype=dtype)
    if isinstance(fmt, FP8Format) and fmt.granularity == "row":
        inner, s = fp8_row_quant(_as_2d(x), fmt, split_dtype=dtype)
        return _shaped(inner, x.shape), _shaped(s, (*x.shape[:-1], 1))
    if isinstance(fmt, FP8Format) and fmt.granularity == "tensor":
        return _fp8_tensor(fmt, x, amax, "activation", fake=True, split_dtype=dtype)
    return None


def run(fmt, x: torch.Tensor, amax, role: str, fake: bool):
    """Dispatch on the format class; None when no kernel covers it."""
    if isinstance(fmt, NVFP4Format):
        return run_nvfp4(fmt, x, amax, role, fake)
    if isinstance(fmt, MXFormat):
        return run_mx(fmt, x, amax, role, fake)
    if isinstance(fmt, FP8Format):
        return run_fp8(fmt, x, amax, role, fake)
    return None
