"""The one place a quantized module turns a tensor into its emulated value.

Every quantized module calls :func:`fake_quant` / :func:`quantize` here, so a
faster path has a single place to plug in: CUDA tensors go through
``qeval.kernels`` (Triton, bit-identical to ``qeval.formats``) when it covers
the format, everything else through the plain-torch reference in
``qeval.formats``. Set ``QEVAL_NO_KERNELS=1`` to force the reference.
"""

from __future__ import annotations

import os

import torch

from qeval.formats import Format, QTensor, get_format

_USE_KERNELS = os.environ.get("QEVAL_NO_KERNELS", "") in ("", "0")


def _kernels():
    if not _USE_KERNELS:
        return None
    try:
        from qeval import kernels
    except ImportError:
        return None
    return kernels if kernels.available() else None


def fake_quant(fmt: Format | str, x: torch.Tensor, amax: torch.Tensor | None = None, role: str = "activation") -> torch.Tensor:
    """``fmt.fake_quant(x)`` in x's dtype; NaN/Inf propagate (no host sync in a forward)."""
    fmt = get_format(fmt)
    if x.is_cuda and (k := _kernels()) is not None:
        y = k.fake_quant(fmt, x, amax=amax, role=role)
        if y is not None:
            return y
    return fmt.fake_quant(x, amax=amax, role=role, nonfinite="propagate")


def quantize(fmt: Format | str, x: torch.Tensor, amax: torch.Tensor | None = None, role: str = "activation") -> QTensor:
    """Real packed storage of ``x`` (``fmt.quantize``), kernel path on CUDA when available."""
    fmt = get_format(fmt)
    if x.is_cuda and (k := _kernels()) is not None:
        q = k.quantize(fmt, x, amax=amax, role=role)
        if q is not None:
            return q
    return fmt.quantize(x, amax=amax, role=role, nonfinite="propagate")


def amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| over finite entries, float32 scalar (for calibration)."""
    a = x.detach().abs().float()
    return torch.where(torch.isfinite(a), a, torch.zeros((), device=a.device)).amax()
