"""The one place a quantized module turns a tensor into its emulated value.

Every quantized module calls :func:`fake_quant` / :func:`quantize` here.
``Format.quantize`` / ``Format.fake_quant`` already route CUDA tensors to the
fused kernels of ``qeval.kernels`` (bit-identical to the plain-torch
reference; ``QEVAL_NO_KERNELS=1`` forces the reference), so this module only
fixes the policy for tensors inside a forward: NaN/Inf propagate instead of
raising, which also avoids a host sync per call.
"""

from __future__ import annotations

import torch

from qeval.formats import Format, QTensor, get_format


def fake_quant(fmt: Format | str, x: torch.Tensor, amax: torch.Tensor | None = None, role: str = "activation") -> torch.Tensor:
    """``fmt.fake_quant(x)`` in x's dtype; NaN/Inf propagate."""
    return get_format(fmt).fake_quant(x, amax=amax, role=role, nonfinite="propagate")


def quantize(fmt: Format | str, x: torch.Tensor, amax: torch.Tensor | None = None, role: str = "activation") -> QTensor:
    """Real packed storage of ``x`` (``fmt.quantize``); NaN/Inf propagate."""
    return get_format(fmt).quantize(x, amax=amax, role=role, nonfinite="propagate")


def amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| over finite entries, float32 scalar (for calibration)."""
    if not x.is_cuda:  # one pass: the plain max is the finite max when it is finite (no host sync to fear)
        m = x.detach().abs().amax().float()
        if bool(torch.isfinite(m)):
            return m
    a = x.detach().abs().float()
    return torch.where(torch.isfinite(a), a, torch.zeros((), device=a.device)).amax()
