"""NVFP4: E2M1 elements in 16-blocks, E4M3 block scales, one float32 global scale.

qeval rule (formats.md, the Model Optimizer NVFP4 export convention):
``s_g = amax / (6 * 448)`` (1 when that is 0: amax 0, or under 2^-149 x 2688);
``s_b = e4m3(clamp(amax_block / (6 * s_g), 2^-9, 448))``, 1.0 for an all-zero block;
``q = RNE_E2M1(x / (fp32(s_b) * s_g))``; ``x_hat = e2m1(q) * (fp32(s_b) * s_g)``.
The block's effective scale ``fp32(s_b) * s_g`` is one float32 product, used
for both the division and the decode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .base import Format, QTensor, Role, block_max, blocks_of, crop_last, finite_abs, pad_last
from .elements import (E2M1_MAX, E4M3_MAX, decode_scale, e2m1_decode, e2m1_encode, pack_fp4, round_e2m1, round_fp8,
                       saturation_needed, unpack_fp4)

BLOCK = 16
SCALE_MIN = 2.0**-9


@dataclass(frozen=True)
class NVFP4Format(Format):
    def _scaled(self, x: torch.Tensor, amax: torch.Tensor | None):
        """(blocks / effective scale ``[.., K/16, 16]``, the E4M3 block scales as float32 values,
        global scale, effective scale, padded?, a free float32 tensor of the blocks' shape or None,
        saturate?: False where no quotient can round past 6, so the clamp can be skipped)."""
        xp, padded = pad_last(x, BLOCK)
        blocks = xp.reshape(*xp.shape[:-1], xp.shape[-1] // BLOCK, BLOCK)
        scratch = blocks.abs()
        block_amax = block_max(scratch)  # a NaN or Inf in a block shows in its amax, and in their max
        top = block_amax.amax() if block_amax.numel() else block_amax.new_zeros(())
        all_finite = math.isfinite(float(top.detach()))
        if not all_finite:  # the scales come from the finite values only
            finite = torch.isfinite(block_amax)
            block_amax = finite_abs(blocks).amax(-1)
            top = block_amax.amax()
        s_g = decode_scale(amax if amax is not None else top, E2M1_MAX * E4M3_MAX)
        s_b = block_amax.float() / (E2M1_MAX * s_g)
        s_b = s_b.masked_fill_(s_b == 0, 1.0).clamp_(SCALE_MIN, E4M3_MAX)
        s_b = round_fp8(s_b, torch.float8_e4m3fn, finite=True, inplace=True)  # E4M3's values, no FP8 tensor
        if not all_finite:  # propagate: the block's scale becomes NaN
            s_b = s_b.masked_fill_(~finite, float("nan"))
        eff = s_b * s_g
        saturate = True
        if all_finite and block_amax.numel():  # |x / eff| <= block amax / eff, division being monotonic
            saturate = saturation_needed((block_amax / eff).max(), E2M1_MAX, 1)
        v = blocks / eff.unsqueeze(-1)
        return v, s_b, s_g, eff, padded, scratch if scratch.dtype == v.dtype else None, saturate

    def _quantize(self, x: torch.Tensor, amax: torch.Tensor | None, role: Role) -> QTensor:
        v, s_b, s_g, _, padded, _, _ = self._scaled(x, amax)
        packed = pack_fp4(e2m1_encode(v).reshape(*v.shape[:-2], -1))
        return QTensor(packed, s_b.to(torch.float8_e4m3fn), s_g, x.shape, self, padded=padded, role=role)

    def _fake_quant(self, x: torch.Tensor, amax: torch.Tensor | None, role: Role) -> torch.Tensor:
        # the bits of decode(encode) x scales, in float32 arithmetic (no codes, no table lookup)
        v, _, _, eff, _, scratch, sat = self._scaled(x, amax)
        out = round_e2m1(v, inplace=True, scratch=scratch, saturate=sat).mul_(eff.unsqueeze(-1))
        return crop_last(out.reshape(*v.shape[:-2], -1), x.shape).to(x.dtype)

    def _split_values(self, x: torch.Tensor, amax: torch.Tensor | None, role: Role):
        v, s_b, s_g, _, _, scratch, sat = self._scaled(x, amax)
        # code x block scale: <= 6 significant bits, exact
        inner = round_e2m1(v, inplace=True, scratch=scratch, saturate=sat).mul_(s_b.unsqueeze(-1))
        return crop_last(inner.reshape(*v.shape[:-2], -1), x.shape), s_g

    def dequantize(self, q: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        codes = unpack_fp4(q.data)
        blocks = e2m1_decode(codes).reshape(*codes.shape[:-1], -1, BLOCK)
        eff = q.scale.float() * q.global_scale
        x = (blocks * eff.unsqueeze(-1)).reshape(codes.shape)
        return crop_last(x, q.shape).to(dtype)

    def gemm_split(self, q: QTensor) -> tuple[QTensor, torch.Tensor]:
        """(codes x E4M3 block scales, exact in BF16/FP16/FP32; the float32 global scale)."""
        return replace(q, global_scale=torch.ones_like(q.global_scale)), q.global_scale

    def nbytes(self, shape: tuple[int, ...], role: Role = "weight") -> int:
        rows = math.prod(shape[:-1])
        kb = blocks_of(shape[-1], BLOCK)
        return rows * kb * (BLOCK // 2) + rows * kb + 4
