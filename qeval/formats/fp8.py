"""FP8 E4M3 / E5M2 with float32 decode scales: per tensor, per row, or 128-blocks.

qeval rule (formats.md): ``s = amax / fp8_max`` (1 when that is 0: amax 0, or under 2^-149 x fp8_max),
``q = fp8(clamp(x / s, -max, max))``, ``x_hat = fp32(q) * s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .base import Format, QTensor, Role, blocks_of, crop_last, finite_abs, pad_last
from .elements import FP8_DTYPES, FP8_GRID, FP8_MAX, cast_fp8, decode_scale, round_fp8, saturation_needed

BLOCK = 128


def _abs_max(xf: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, bool]:
    """(max |x| over finite entries, per row or whole; True when every entry was finite).

    One reduction when all is finite, the usual case; a NaN or Inf
    shows in the largest of that small result, and only then ``finite_abs`` runs.
    """
    if xf.numel() == 0:
        return finite_abs(xf).amax(dim=dim, keepdim=dim is not None), True
    if dim is None:
        lo, hi = torch.aminmax(xf)
    else:  # a reduction per row: aminmax is several times slower than amax + amin on a CPU
        lo, hi = xf.amin(dim, keepdim=True), xf.amax(dim, keepdim=True)
    m = torch.maximum(hi, lo.neg_())  # lo: a new tensor
    if math.isfinite(float(m.detach().max())):  # max propagates NaN
        return m, True
    return (finite_abs(xf).amax() if dim is None else finite_abs(xf).amax(dim, keepdim=True)), False


@dataclass(frozen=True)
class FP8Format(Format):
    element: str = "e4m3"
    granularity: str = "tensor"  # "tensor" | "row" | "block128"

    @property
    def dtype(self) -> torch.dtype:
        return FP8_DTYPES[self.element]

    def _weight_blocks(self, x: torch.Tensor, role: Role) -> bool:
        return role == "weight" and x.dim() >= 2

    def _scaled(self, x: torch.Tensor, amax: torch.Tensor | None, role: Role):
        """(x / scale in float32, padded; the decode scale, stored and expanded to x; padded?, all finite?,
        saturate?: False where no value can round past the grid's top, so the clamp can be skipped)."""
        xf = x.float()
        fmax = FP8_MAX[self.dtype]
        padded, finite, bound = False, False, None
        if self.granularity == "tensor":
            if amax is None:
                amax, finite = _abs_max(xf, None)
                bound = amax
            scale = decode_scale(amax, fmax)
            expanded = scale
        elif self.granularity == "row":
            a, finite = _abs_max(xf, -1)
            scale = decode_scale(a, fmax)
            expanded = scale
            bound = a
        else:
            xf, padded = pad_last(xf, BLOCK)
            scale = decode_scale(self._block_amax(xf, role), fmax)
            expanded = self._expand(scale, xf.shape, role)
        saturate = True
        if finite and bound is not None and bound.numel():  # |x / s| <= amax / s, division being monotonic
            saturate = saturation_needed((bound / scale).max(), fmax, FP8_GRID[self.dtype][0])
        return xf / expanded, scale, expanded, padded, finite, saturate

    def _quantize(self, x: torch.Tensor, amax: torch.Tensor | None, role: Role) -> QTensor:
        y, scale, _, padded, finite, _ = self._scaled(x, amax, role)
        return QTensor(cast_fp8(y, self.dtype, finite=finite), scale, None, x.shape, self, padded=padded, role=role)

    def _fake_quant(self, x: torch.Tensor, amax: torch.Tensor | None, role: Role) -> torch.Tensor:
        # the same bits as the codes decoded and scaled, without FP8 tensors (slow to decode on a CPU)
        y, _, expanded, _, finite, sat = self._scaled(x, amax, role)  # y: a new tensor, rounded in place
        return crop_last(round_fp8(y, self.dtype, finite, inplace=True, saturate=sat).mul_(expanded), x.shape).to(x.dtype)

    def _split_values(self, x: torch.Tensor, amax: torch.Tensor | None, role: Role):
        # the codes as float32 numbers without FP8 tensors (slow to decode on a CPU)
        y, scale, _, _, finite, sat = self._scaled(x, amax, role)  # y: a new tensor, rounded in place
        return crop_last(round_fp8(y, self.dtype, finite, inplace=True, saturate=sat), x.shape), self._outer(scale, role, x)

    def _block_amax(self, xp: torch.Tensor, role: Role) -> torch.Tensor:
        a = finite_abs(xp)
        kb = xp.shape[-1] // BLOCK
        if not self._weight_blocks(xp, role):  # 1 x 128 groups
            return a.reshape(*xp.shape[:-1], kb, BLOCK).amax(-1)
        n = xp.shape[-2]
        nb = blocks_of(n, BLOCK)
        a = torch.nn.functional.pad(a, (0, 0, 0, nb * BLOCK - n))
        return a.reshape(*xp.shape[:-2], nb, BLOCK, kb, BLOCK).amax(dim=(-3, -1))

    def _expand(self, scale: torch.Tensor, padded_shape: torch.Size, role: Role) -> torch.Tensor:
        s = scale.repeat_interleave(BLOCK, dim=-1)
        if len(padded_shape) >= 2 and role == "weight":
            s = s.repeat_interleave(BLOCK, dim=-2)[..., : padded_shape[-2], :]
        return s

    def dequantize(self, q: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        scale = q.scale
        if self.granularity == "block128":
            scale = self._expand(scale, q.data.shape, q.role)
        out = q.data.to(torch.float32).mul_(scale) if scale.dtype == torch.float32 else q.data.float() * scale
        return crop_last(out, q.shape).to(dtype)

    def gemm_split(self, q: QTensor) -> tuple[QTensor, torch.Tensor]:
        """(the E4M3/E5M2 codes, the float32 scales: per tensor, per row or per 128-group of K)."""
        return replace(q, scale=torch.ones_like(q.scale)), self._outer(q.scale, q.role, q.data)

    def _outer(self, scale: torch.Tensor, role: Role, x: torch.Tensor) -> torch.Tensor:
        if self.granularity == "block128" and role == "weight" and x.dim() >= 2:
            n = x.shape[-2]  # [.., N/128, K/128] -> one row of group scales per output row
            return scale.repeat_interleave(BLOCK, dim=-2)[..., :n, :]
        return scale

    def nbytes(self, shape: tuple[int, ...], role: Role = "weight") -> int:
        numel = math.prod(shape)
        rows = numel // shape[-1]
        if self.granularity == "tensor":
            return numel + 4
        if self.granularity == "row":
            return numel + 4 * rows
        kb = blocks_of(shape[-1], BLOCK)
        data = rows * kb * BLOCK
        if role == "weight" and len(shape) >= 2:
            lead = math.prod(shape[:-2])
            return data + 4 * lead * blocks_of(shape[-2], BLOCK) * kb
        return data + 4 * rows * kb
