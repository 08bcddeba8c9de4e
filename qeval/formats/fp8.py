"""FP8 E4M3 / E5M2 with float32 decode scales: per tensor, per row, or 128-blocks.

qeval rule (formats.md): ``s = amax / fp8_max`` (1 when amax == 0),
``q = fp8(clamp(x / s, -max, max))``, ``x_hat = fp32(q) * s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .base import Format, QTensor, Role, blocks_of, crop_last, finite_abs, pad_last
from .elements import FP8_DTYPES, FP8_MAX, cast_fp8, div

BLOCK = 128


def decode_scale(amax: torch.Tensor, fmax: float) -> torch.Tensor:
    """``amax / fmax`` in float32, with 1.0 where amax is 0."""
    amax = amax.float()
    return torch.where(amax == 0, torch.ones_like(amax), div(amax, fmax))


def _abs_max(xf: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, bool]:
    """(max |x| over finite entries, per row or whole; True when every entry was finite).

    One pass (``aminmax``) when all is finite, the usual case; a NaN or Inf
    shows in that small result, and only then ``finite_abs`` runs.
    """
    if xf.numel() == 0:
        return finite_abs(xf).amax(dim=dim, keepdim=dim is not None), True
    lo, hi = torch.aminmax(xf, dim=dim, keepdim=dim is not None)
    m = torch.maximum(hi, -lo)
    if bool(torch.isfinite(m).all()):
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

    def _quantize(self, x: torch.Tensor, amax: torch.Tensor | None, role: Role) -> QTensor:
        xf = x.float()
        fmax = FP8_MAX[self.dtype]
        padded, finite = False, False
        if self.granularity == "tensor":
            if amax is None:
                amax, finite = _abs_max(xf, None)
            scale = decode_scale(amax, fmax)
            expanded = scale
        elif self.granularity == "row":
            a, finite = _abs_max(xf, -1)
            scale = decode_scale(a, fmax)
            expanded = scale
        else:
            xf, padded = pad_last(xf, BLOCK)
            scale = decode_scale(self._block_amax(xf, role), fmax)
            expanded = self._expand(scale, xf.shape, role)
        q = cast_fp8(xf / expanded, self.dtype, finite=finite)
        return QTensor(q, scale, None, x.shape, self, padded=padded, role=role)

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
        inner = replace(q, scale=torch.ones_like(q.scale))
        outer = q.scale
        if self.granularity == "block128" and q.role == "weight" and q.data.dim() >= 2:
            n = q.data.shape[-2]  # [.., N/128, K/128] -> one row of group scales per output row
            outer = outer.repeat_interleave(BLOCK, dim=-2)[..., :n, :]
        return inner, outer

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
