"""QuantWeight: one GEMM weight (or a stack of expert weights) in a format, with its input quantizer.

Storage per mode (the memory a quantized model costs):

- ``emulate``: the fake-quantized weight (quantize, then dequantize once) is
  kept as a buffer in the model's dtype, beside the untouched original (which
  stays registered as the parent's parameter, so restoring is exact): one
  extra copy of every quantized weight, e.g. +2 bytes/param in BF16.
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

from . import native, quantizer


class QuantWeight(nn.Module):
    def __init__(self, w_gemm: torch.Tensor, weights: str | None, activations: str | None, act_scale: str, name: str):
        """``w_gemm``: the original weight viewed as ``[N, K]`` or ``[E, N, K]`` (no copy)."""
        super().__init__()
        self.name = name
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
        """The weight as the GEMM sees it ([N, K]); for tests and inspection."""
        if self.mode == "emulate":
            return self.w_hat[e].to(dtype)
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

    def extra_repr(self) -> str:
        act = self.activations or "bf16"
        if self.activations is not None:
            act += f" ({'static' if self.static else 'dynamic'})"
        n, k = self.shape
        e = f"{self.w_orig.shape[0] if self.w_orig is not None else self._stack()}x" if self.stacked else ""
        return f"{e}{n}x{k}, weights={self.weights or 'bf16'}, activations={act}, mode={self.mode}"

    def _stack(self) -> int:
        t = getattr(self, "w_hat", None)
        if t is None:
            t = getattr(self, "w_data", None)
        return 0 if t is None else t.shape[0]
