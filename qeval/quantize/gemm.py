"""The emulated GEMM, shaped like the tensor core's: exact block-scaled operands, FP32 accumulation, scales after.

A Blackwell NVFP4 GEMM multiplies E2M1 codes by their E4M3 block scales inside
the tensor core (a product of at most 6 significant bits, exact), accumulates
in FP32, and applies the FP32 global scales once, to the accumulator, in the
epilogue. FP8 ``_scaled_mm`` applies its per-tensor / row-wise scales the same
way, and block-wise FP8 (DeepSeek-V3) scales each 128-long partial sum of K.
``emulation="exact"`` (the default) follows that structure: operands are
``Format.gemm_split``'s inner values, held in the model's dtype when every
value is exactly representable there (checked; float32 otherwise). The old
``"fake_quant"`` emulation instead multiplies the codes by all their scales and
rounds the product back into the model's dtype (in BF16 most NVFP4 weights then
leave the grid), then runs a plain matmul in that dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qeval.formats import QTensor, get_format

from . import quantizer

EMULATIONS = ("exact", "fake_quant")
KGROUP = 128  # FP8 block128: K-group of the per-group scales

# Inner operands always exactly representable in a half dtype, so activations need no per-call check:
# FP8 codes (E4M3 2^-9..448, E5M2 2^-16..57344 fit BF16 and FP16); NVFP4 code x E4M3 block scale (<= 6
# significant bits, 2^-10..2688). MX of a BF16 input: rounding a BF16 value to a grid at least as coarse
# stays in BF16, which has float32's exponent range. MX in FP16 can overflow (rceil rounds 65504 up to
# 2^16), and a cast format may not fit: those are checked on the data.
_ALWAYS_EXACT = {(fam, dt) for fam in ("fp8", "nvfp4") for dt in (torch.bfloat16, torch.float16)}
_EXACT_FOR_SAME_DTYPE = {("mxfp8", torch.bfloat16), ("mxfp4", torch.bfloat16)}


def _exactly(op: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``op`` (float32) in ``dtype`` when that loses nothing (NaN stays NaN), else ``op`` itself."""
    if dtype == op.dtype:
        return op
    cand = op.to(dtype)
    back = cand.to(op.dtype)
    if bool(((back == op) | (back.isnan() & op.isnan())).all()):
        return cand
    return op


def _dequantize(q: QTensor, dtype: torch.dtype) -> torch.Tensor:
    if q.fmt.family == "fp8" and q.data.dtype.itemsize == 1:  # the codes themselves (scale 1): one cast
        return q.data[..., : q.shape[-1]].to(dtype)
    if q.data.is_cuda:  # one fused kernel for packed FP4 (same bits as the reference)
        from qeval import kernels

        out = kernels.dequantize(q, dtype)
        if out is not None:
            return out
    return q.dequantize(dtype)


def operand(q: QTensor, dtype: torch.dtype, src: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(inner GEMM operand in ``dtype`` if exact there else float32, outer float32 scale or None).

    ``src``: the dtype of the tensor ``q`` was quantized from, when known.
    Where exactness is not guaranteed by the table above, the values are checked
    (a host sync on a GPU).
    """
    inner, outer = q.fmt.gemm_split(q)
    key = (q.fmt.family, dtype)
    if dtype == torch.float32 or key in _ALWAYS_EXACT or (src == dtype and key in _EXACT_FOR_SAME_DTYPE):
        return _dequantize(inner, dtype), outer
    return _exactly(_dequantize(inner, torch.float32), dtype), outer


def weight_operands(spec: str, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stacked ``[E, N, K]`` inner operands (one dtype for all) and outer scales ``[E, ...]`` of ``w``."""
    parts = [operand(quantizer.quantize(spec, w[e], role="weight"), w.dtype, src=w.dtype) for e in range(w.shape[0])]
    dtype = w.dtype if all(p[0].dtype == w.dtype for p in parts) else torch.float32  # float32 if any needs it
    op = torch.stack([p[0].to(dtype) for p in parts])
    outer = None if parts[0][1] is None else torch.stack([p[1] for p in parts])
    return op, outer


def _mm32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a [M, K] @ b [N, K].T`` with exact products and an FP32 accumulator, FP32 out."""
    if a.is_cuda and a.dtype == b.dtype and a.dtype in (torch.bfloat16, torch.float16) and _HALF_MM_FP32_OUT:
        try:
            return torch.mm(a, b.t(), out_dtype=torch.float32)  # half tensor cores, FP32 accumulate and output
        except (TypeError, RuntimeError, NotImplementedError):  # older torch: no out_dtype
            _HALF_MM_FP32_OUT.clear()
    return torch.mm(a.float(), b.float().t())


_HALF_MM_FP32_OUT = [True]


def _grouped(outer: torch.Tensor | None) -> bool:
    return outer is not None and outer.dim() >= 1 and outer.shape[-1] > 1


def gemm(
    x_op: torch.Tensor,
    x_outer: torch.Tensor | None,
    w_op: torch.Tensor,
    w_outer: torch.Tensor | None,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``x [M, K] @ w [N, K].T`` as the hardware computes it, cast once to ``out_dtype``.

    ``x_outer``: ``[]`` or ``[M, 1]`` (epilogue) or ``[M, K/128]`` (per K-group);
    ``w_outer``: ``[]`` or ``[N, 1]`` or ``[N, K/128]``; None = 1.
    """
    if _grouped(x_outer) or _grouped(w_outer):  # block-wise FP8: scale each K-group's partial sum
        k = x_op.shape[-1]
        acc = None
        for g, k0 in enumerate(range(0, k, KGROUP)):
            part = _mm32(x_op[:, k0 : k0 + KGROUP], w_op[:, k0 : k0 + KGROUP])
            if _grouped(x_outer):
                part = part * x_outer[:, g : g + 1]
            if _grouped(w_outer):
                part = part * w_outer[:, g].reshape(1, -1)
            acc = part if acc is None else acc + part
        x_outer = None if _grouped(x_outer) else x_outer
        w_outer = None if _grouped(w_outer) else w_outer
    else:
        if x_op.is_cuda and x_outer is None and w_outer is None and x_op.dtype == w_op.dtype == out_dtype:
            # nothing to scale: the half GEMM's own epilogue rounds the FP32 accumulator (+ bias) once
            return F.linear(x_op, w_op, bias)
        if CUDA_GEMM == "triton" and x_op.is_cuda:
            from qeval import kernels

            out = kernels.scaled_gemm(x_op, w_op, x_outer, w_outer, bias, out_dtype)
            if out is not None:
                return out
        acc = _mm32(x_op, w_op)
    # acc is this function's own new tensor: the epilogue may work in it (on a CPU a new [M, N]
    # tensor costs more than the pass itself)
    return epilogue(acc, x_outer, w_outer, bias, out_dtype, inplace=True)


# How a CUDA GEMM gets its epilogue: "cublas" (torch.mm with FP32 output, then one fused pass), "triton"
# (one Triton GEMM, scales applied in registers), "torch" (the plain ops below, a few passes over the FP32
# accumulator). Same float32 operations in each. benchmarks/bench_emulation.py on an H200, 8B-shaped model,
# fp8-dynamic: 1.15x / 1.20x / 1.33x the BF16 forward (cuBLAS's GEMM outruns the Triton one by more than
# the FP32 round trip costs).
CUDA_GEMM = "cublas"


def epilogue(acc: torch.Tensor, x_outer, w_outer, bias, out_dtype: torch.dtype, inplace: bool = False) -> torch.Tensor:
    """``(acc * x_outer * w_outer + bias).to(out_dtype)`` in float32, one rounding at the end.

    On a GPU one fused kernel (``qeval.kernels.epilogue``) does the same operations in one pass.
    ``inplace``: the plain-torch path may overwrite ``acc``.
    """
    if acc.is_cuda and CUDA_GEMM != "torch":
        from qeval import kernels

        out = kernels.epilogue(acc, x_outer, w_outer, bias, out_dtype)
        if out is not None:
            return out
    return epilogue_torch(acc, x_outer, w_outer, bias, out_dtype, inplace)


def epilogue_torch(acc: torch.Tensor, x_outer, w_outer, bias, out_dtype: torch.dtype, inplace: bool = False) -> torch.Tensor:
    """The definition of :func:`epilogue` in plain torch ops (the CPU path); ``inplace``: it may overwrite ``acc``."""
    if w_outer is not None and w_outer.dim() >= 1:
        w_outer = w_outer.reshape(1, -1)  # per output row of W -> per output column
    if x_outer is not None and w_outer is not None and x_outer.numel() == 1 and w_outer.numel() == 1:
        scales = [(x_outer * w_outer).reshape(())]  # one FP32 alpha, as cuBLAS takes it
    else:
        scales = [s for s in (x_outer, w_outer) if s is not None]
    out = acc  # the first op makes one new [M, N] tensor (none if inplace), the rest work in place
    for s in scales:
        out = out * s if out is acc and not inplace else out.mul_(s)
    if bias is not None:
        out = out + bias.float() if out is acc and not inplace else out.add_(bias.float())
    return out.to(out_dtype)


def act_operand(spec: str, x2: torch.Tensor, amax, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The activation's inner operand (in ``dtype`` when exact there) and outer scale."""
    fmt = get_format(spec)
    if fmt.family in ("mxfp8", "mxfp4") and x2.dtype in (torch.bfloat16, torch.float32) and dtype in (x2.dtype, torch.float32):
        # MX has no outer scale: its inner operand is the fake-quantized value, exact in a BF16 / FP32
        # input's own dtype (see _EXACT_FOR_SAME_DTYPE); one fused kernel on CUDA
        return quantizer.fake_quant(fmt, x2, amax=amax, role="activation").to(dtype), None
    if x2.is_cuda and fmt.family in ("fp8", "nvfp4"):
        from qeval import kernels

        # one kernel writes the inner values (exact in any float dtype): no codes to pack and convert again
        out = kernels.split(fmt, x2, amax, dtype)
        if out is not None:
            return out
    if fmt.family in ("fp8", "nvfp4") and not x2.is_cuda and dtype == torch.float32:
        # the inner operand as float32 numbers directly: on a CPU, packing codes and decoding them
        # (FP8 element by element, E2M1 through a table) costs more than the GEMM's own overhead
        return fmt.split_values(x2, amax=amax, role="activation", nonfinite="propagate")
    return operand(quantizer.quantize(fmt, x2, amax=amax, role="activation"), dtype, src=x2.dtype)
