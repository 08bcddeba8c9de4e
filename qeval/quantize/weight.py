"""QuantWeight: one GEMM weight (or a stack of expert weights) in a format, with its input quantizer.

Storage per mode (the memory a quantized model costs):

- ``emulate`` (``emulation="exact"``, the default; see ``gemm.py``): the
  weight's GEMM operand, codes x block scales (exact in the model's dtype, else
  float32), plus its per-tensor / per-row scales for the epilogue;
  ``emulation="fake_quant"``: the fake-quantized weight (quantize, then
  dequantize once) in the model's dtype. Either is kept as a buffer beside the
  untouched original (which stays registered as the parent's parameter, so
  restoring is exact): one extra copy of every quantized weight, e.g. +2
  bytes/param in BF16.
- ``weight_only`` (native, ``activations: none``): packed codes + scales
  (0.56 B/param for NVFP4, ~1 for FP8), dequantized inside each forward;
  the original is moved to the CPU until :func:`dequantize_model`.
- ``fp8`` (native W8A8): float8_e4m3fn codes + float32 scales (~1 B/param),
  ``torch._scaled_mm``; original on the CPU.
- ``nvfp4`` (native W4A4, Blackwell): packed E2M1 codes + E4M3 block scales.

Activations entering the GEMM are quantized per the rule: with a static
global scale (``act_amax``, recorded by a calibration pass) when the format
has one and the rule says ``act_scale: static``, else dynamically per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qeval.formats import QTensor, get_format

from . import gemm, native, quantizer


# The latest CPU activation operand and what it was computed from. q/k/v (and gate/up) projections read one
# input tensor with one format and, calibrated on that same input, one amax: they share its quantization.
_LAST_ACT: list = [None]


def _cpu_act_operand(spec: str, x2: torch.Tensor, amax: torch.Tensor | None):
    """``gemm.act_operand(spec, x2, amax, float32)``, reused when the previous call had the same input.

    The same input: the same memory (held here, so no other tensor can take its place) with the same
    version counter (bumped by any in-place change), shape, strides and dtype; the same spec and amax value.
    """
    if x2.is_inference():  # no version counter: never reused
        return gemm.act_operand(spec, x2, amax, torch.float32)
    key = (spec, x2.data_ptr(), x2.shape, x2.stride(), x2.dtype, x2._version)
    last = _LAST_ACT[0]
    if last is not None and last[0] == key and (
        (amax is None and last[2] is None) or (amax is not None and last[2] is not None and torch.equal(amax, last[2]))
    ):
        return last[3]
    out = gemm.act_operand(spec, x2, amax, torch.float32)
    _LAST_ACT[0] = (key, x2, None if amax is None else amax.clone(), out)
    return out


class QuantWeight(nn.Module):
    def __init__(
        self, w_gemm: torch.Tensor, weights: str | None, activations: str | None, act_scale: str, name: str,
        emulation: str = "exact",
    ):
        """``w_gemm``: the original weight viewed as ``[N, K]`` or ``[E, N, K]`` (no copy)."""
        super().__init__()
        if emulation not in gemm.EMULATIONS:
            raise ValueError(f"emulation must be one of {gemm.EMULATIONS}, got {emulation!r}")
        self.name = name
        self.emulation = emulation
        self.weights, self.activations, self.act_scale = weights, activations, act_scale
        self.stacked = w_gemm.dim() == 3
        self.shape = tuple(w_gemm.shape[-2:])  # (N, K)
        self.w_orig = w_gemm if self.stacked else w_gemm.unsqueeze(0)  # plain attribute: calibration only
        self.static = activations is not None and act_scale == "static" and native.fmt_static(activations)
        self.register_buffer("act_amax", torch.zeros((), dtype=torch.float32, device=w_gemm.device), persistent=False)
        self.calibrating = False
        self.calibrated = False
        self.mode: str | None = None

    # --- building ------------------------------------------------------------------
    def finalize(self, mode: str) -> None:
        """Quantize the weight once into the storage of ``mode`` (emulate or native)."""
        w = self.w_orig
        if mode == "emulate":
            self.mode = "emulate"
            if self.weights is None:
                self.register_buffer("w_hat", w, persistent=False)
            elif self.emulation == "exact":  # w_hat: codes x block scales; w_outer: the epilogue's scales
                op, outer = gemm.weight_operands(self.weights, w)
                self.register_buffer("w_hat", op, persistent=False)
                self.register_buffer("w_outer", outer, persistent=False)
            else:
                fq = [quantizer.fake_quant(self.weights, w[e], role="weight") for e in range(w.shape[0])]
                # one weight: a view, not a second copy through stack
                self.register_buffer("w_hat", fq[0].unsqueeze(0) if len(fq) == 1 else torch.stack(fq), persistent=False)
        else:
            self.mode = native.native_kind(self.name, self.weights, self.activations, w.device, self.shape)
            qs = [quantizer.quantize(self.weights, w[e], role="weight") for e in range(w.shape[0])]
            self.padded = qs[0].padded
            self.register_buffer("w_data", torch.stack([q.data for q in qs]), persistent=False)
            self.register_buffer("w_scale", None if qs[0].scale is None else torch.stack([q.scale for q in qs]), persistent=False)
            gs = qs[0].global_scale
            self.register_buffer("w_global", None if gs is None else torch.stack([q.global_scale for q in qs]), persistent=False)
        self.w_orig = None

    def qtensor(self, e: int = 0) -> QTensor:
        scale = None if self.w_scale is None else self.w_scale[e]
        glob = None if self.w_global is None else self.w_global[e]
        return QTensor(self.w_data[e], scale, glob, torch.Size(self.shape), get_format(self.weights), self.padded, "weight")

    def dequantized(self, e: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight the layer multiplies by ([N, K], its scales applied); for tests and inspection."""
        if self.mode == "emulate":
            w = self.w_hat[e].to(torch.float64 if dtype == torch.float64 else torch.float32)
            outer = getattr(self, "w_outer", None)
            if outer is not None:
                s = outer[e].to(w.dtype)
                if s.dim() and s.shape[-1] > 1:  # per 128-group of K
                    s = s.repeat_interleave(gemm.KGROUP, dim=-1)[..., : w.shape[-1]]
                w = w * s
            return w.to(dtype)
        return self.qtensor(e).dequantize(dtype)

    # --- forward -----------------------------------------------------------------------
    def _amax(self):
        return self.act_amax if self.static else None

    def forward(self, x: torch.Tensor, e: int = 0, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.calibrating:
            if self.static:
                torch.maximum(self.act_amax, quantizer.amax(x), out=self.act_amax)
            return F.linear(x, self.w_orig[e].to(x.dtype), bias)
        if self.mode == "emulate":
            if self.emulation == "exact" and (self.weights is not None or self.activations is not None):
                return self._exact(x, e, bias)
            if self.activations is not None:
                x = quantizer.fake_quant(self.activations, x, amax=self._amax(), role="activation")
            return F.linear(x, self.w_hat[e], bias)
        if self.mode == "weight_only":
            return F.linear(x, self.qtensor(e).dequantize(x.dtype), bias)
        n, k = self.shape
        x2 = x.reshape(-1, k)
        qx = quantizer.quantize(self.activations, x2, amax=self._amax(), role="activation")
        if self.mode == "fp8":
            out = native.fp8_linear(x2, qx, self.w_data[e], self.w_scale[e], x.dtype)
        else:
            out = native.nvfp4_linear(qx, self.qtensor(e), x.dtype)
        out = out.reshape(*x.shape[:-1], n)
        return out + bias if bias is not None else out

    def _exact(self, x: torch.Tensor, e: int, bias: torch.Tensor | None) -> torch.Tensor:
        n, k = self.shape
        x2 = x.reshape(-1, k)
        w_op = self.w_hat[e]
        outer = getattr(self, "w_outer", None)
        w_outer = None if outer is None else outer[e]
        if self.activations is None:
            x_op, x_outer = x2, None
        elif x.is_cuda:
            x_op, x_outer = gemm.act_operand(self.activations, x2, self._amax(), w_op.dtype)
        else:  # on the CPU the GEMM runs in float32 anyway: no cast to the weight's dtype
            x_op, x_outer = _cpu_act_operand(self.activations, x2, self._amax())
        out = gemm.gemm(x_op, x_outer, w_op, w_outer, bias, x.dtype)
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], n)

    def extra_repr(self) -> str:
        act = self.activations or "bf16"
        if self.activations is not None:
            act += f" ({'static' if self.static else 'dynamic'})"
        n, k = self.shape
        e = f"{self.w_orig.shape[0] if self.w_orig is not None else self._stack()}x" if self.stacked else ""
        emu = f" ({self.emulation})" if self.mode == "emulate" else ""
        return f"{e}{n}x{k}, weights={self.weights or 'bf16'}, activations={act}, mode={self.mode}{emu}"

    def _stack(self) -> int:
        t = getattr(self, "w_hat", None)
        if t is None:
            t = getattr(self, "w_data", None)
        return 0 if t is None else t.shape[0]
