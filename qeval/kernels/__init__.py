"""Fused GPU (Triton) kernels for the number formats, bit-identical to ``qeval.formats``.

The plain-torch code in ``qeval.formats`` is the definition and runs anywhere;
this package only makes CUDA tensors fast. Every entry point returns ``None``
when no kernel applies (CPU tensor, no Triton, an unsupported dtype or format),
so a caller falls back to the reference::

    from qeval import kernels
    y = kernels.fake_quant(fmt, x, role="activation")
    if y is None:
        y = fmt.fake_quant(x, role="activation")

Formats covered: NVFP4 (static or dynamic global amax), FP8 E4M3/E5M2 per
tensor / per row (channel, token) / block128 (128x128 weights, 1x128
activations), MXFP8 and MXFP4 (floor and rceil). Cast formats (bf16/fp16) are
left to torch. The kernels do not check for NaN/Inf: they behave like the
reference with ``nonfinite="propagate"`` (``Format.quantize`` checks first when
asked to raise).

Native FP8 GEMMs (Hopper and newer): :func:`fp8_linear`,
:func:`quantize_fp8_rowwise`, :func:`prepare_fp8_weight` (see ``linear.py``).
The exact emulation's activation operand: :func:`split`; its scaled GEMM:
:func:`scaled_gemm`, :func:`epilogue` (``scaled.py``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os

import torch

__all__ = [
    "available", "supports", "quantize", "fake_quant", "split", "dequantize", "global_amax", "epilogue", "scaled_gemm",
    "fp8_linear", "quantize_fp8_rowwise", "prepare_fp8_weight",
]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_FAMILIES = ("fp8", "nvfp4", "mxfp8", "mxfp4")


@functools.cache
def available() -> bool:
    """True when CUDA is usable and Triton is importable (and QEVAL_NO_KERNELS is unset or 0)."""
    if os.environ.get("QEVAL_NO_KERNELS", "") not in ("", "0"):
        return False
    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None


def on_device(t: torch.Tensor):
    """Make ``t``'s GPU current while a kernel launches (Triton launches on the current device, not
    the tensor's: a model spread over GPUs needs it); no switch when it already is (the usual case,
    where entering ``torch.cuda.device`` would cost host time at every launch)."""
    if t.device.index is None or t.device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(t.device)


def supports(fmt, x: torch.Tensor) -> bool:
    """Whether a kernel covers format ``fmt`` (a Format or spec) for tensor ``x``."""
    from qeval.formats import get_format

    fmt = get_format(fmt)
    return (
        fmt.family in _FAMILIES
        and isinstance(x, torch.Tensor)
        and x.is_cuda
        and x.dtype in _DTYPES
        and x.dim() >= 1
        and 0 < x.numel() < 2**31
        and available()
    )


def quantize(fmt, x: torch.Tensor, amax=None, role: str = "weight"):
    """``fmt.quantize(x, amax=amax, role=role)`` as a fused kernel: a QTensor, or None.

    Args:
        fmt: a Format or spec string.
        x: CUDA float32/bf16/fp16 tensor (no NaN/Inf check is made here).
        amax: static per-tensor amax (FP8 per-tensor, NVFP4 global scale); None = dynamic.
        role: "weight" or "activation" (FP8 block128 layout).
    """
    return _run(fmt, x, amax, role, fake=False)


def fake_quant(fmt, x: torch.Tensor, amax=None, role: str = "weight"):
    """``fmt.fake_quant(x, ...)`` (quantize + dequantize to x's dtype) in one kernel, or None."""
    return _run(fmt, x, amax, role, fake=True)


def split(fmt, x: torch.Tensor, amax=None, dtype: torch.dtype = torch.bfloat16):
    """``fmt.gemm_split(fmt.quantize(x, amax=amax, role="activation"))`` as plain tensors in one kernel:
    (inner values in ``dtype``, outer float32 scales), or None.

    The exact emulation's activation operand without packing codes and decoding them again:
    FP8 per tensor / per row and NVFP4 (their inner values are exact in BF16 / FP16 / FP32).
    """
    from qeval.formats import get_format

    fmt = get_format(fmt)
    if dtype not in _DTYPES or not supports(fmt, x):
        return None
    from . import launch

    with on_device(x):
        return launch.split(fmt, x, amax, dtype)


def _run(fmt, x, amax, role, fake):
    from qeval.formats import get_format

    fmt = get_format(fmt)
    if role not in ("weight", "activation") or not supports(fmt, x):
        return None
    from . import launch

    with on_device(x):
        return launch.run(fmt, x, amax, role, fake)


def dequantize(q, dtype: torch.dtype = torch.float32):
    """``q.dequantize(dtype)`` for a CUDA NVFP4 / MXFP4 QTensor in one kernel, or None.

    Same bits as the reference; meant for packed weight-only storage that is
    expanded inside each forward.
    """
    if not (available() and q.data.is_cuda and dtype in _DTYPES and q.data.numel() < 2**31):
        return None
    from . import launch

    with on_device(q.data):
        return launch.dequantize(q, dtype)


def _gemm_ok(out_dtype, *ts) -> bool:
    return available() and out_dtype in _DTYPES and all(t.is_cuda and t.dim() == 2 and 0 < t.numel() < 2**31 for t in ts)


def epilogue(acc: torch.Tensor, sx, sw, bias, out_dtype: torch.dtype):
    """``(acc * sx * sw + bias).to(out_dtype)`` in one pass over a float32 CUDA accumulator, or None.

    ``sx``: None, one value or ``[M, 1]``; ``sw``: None, one value or N values (``scaled.py``).
    """
    if not (_gemm_ok(out_dtype, acc) and acc.dtype == torch.float32 and acc.stride(1) == 1):
        return None
    from .scaled import epilogue as run

    with on_device(acc):
        return run(acc, sx, sw, bias, out_dtype)


def scaled_gemm(a: torch.Tensor, b: torch.Tensor, sx, sw, bias, out_dtype: torch.dtype):
    """``epilogue(a @ b.T accumulated in FP32, ...)`` as one Triton GEMM, or None; ``a``, ``b``: one half dtype."""
    if not (_gemm_ok(out_dtype, a, b) and a.dtype == b.dtype and a.dtype in (torch.bfloat16, torch.float16)
            and a.shape[1] == b.shape[1]):
        return None
    from .scaled import gemm as run

    with on_device(a):
        return run(a, b, sx, sw, bias, out_dtype)


def global_amax(x: torch.Tensor) -> torch.Tensor:
    """Finite max |x| of a CUDA tensor in one pass, as a float32 tensor of shape [1]."""
    from . import launch

    with on_device(x):
        return launch.global_amax(x)


def __getattr__(name):  # the FP8 GEMM helpers import Triton only when used
    if name in ("fp8_linear", "quantize_fp8_rowwise", "prepare_fp8_weight"):
        from . import linear

        return getattr(linear, name)
    raise AttributeError(name)


def _register() -> None:
    from qeval.formats.base import register_accelerator

    register_accelerator("quantize", quantize)
    register_accelerator("fake_quant", fake_quant)


_register()
