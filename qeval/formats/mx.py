"""OCP Microscaling MXFP8 (E4M3) / MXFP4 (E2M1): 32-blocks with E8M0 scales.

qeval rule (formats.md): "floor" (the OCP spec, default)
``X = 2^(floor(log2(amax_block)) - emax_elem)``; "rceil" (cuBLAS / Transformer
Engine) ``X = 2^ceil(log2(amax_block / max_elem))``. Exponents are clamped to
[-127, 127]; an all-zero block gets the smallest scale, 2^-127. Elements are
``cast_saturating(x / X)``; the log2 are taken exactly from the float32 bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Format, QTensor, Role, blocks_of, crop_last, finite_abs, pad_last
from .elements import (
    E2M1_MAX,
    E4M3_MAX,
    E8M0_BIAS,
    E8M0_NAN,
    cast_fp8,
    ceil_log2,
    div,
    e2m1_decode,
    e2m1_encode,
    e8m0_decode,
    e8m0_encode,
    floor_log2,
    pack_fp4,
    unpack_fp4,
)

BLOCK = 32
_EMAX = {"e4m3": 8, "e2m1": 2}
_MAX = {"e4m3": E4M3_MAX, "e2m1": E2M1_MAX}


def mx_exponent(amax: torch.Tensor, element: str, rounding: str) -> torch.Tensor:
    """Unbiased E8M0 exponent (int32) of each block from its float32 amax."""
    if rounding == "floor":
        e = floor_log2(amax) - _EMAX[element]
    else:
        e = ceil_log2(div(amax, _MAX[element]))
    e = torch.where(amax == 0, torch.full_like(e, -E8M0_BIAS), e)
    return e.clamp(-E8M0_BIAS, E8M0_BIAS)


@dataclass(frozen=True)
class MXFormat(Format):
    element: str = "e4m3"  # "e4m3" (MXFP8) | "e2m1" (MXFP4)
    rounding: str = "floor"  # "floor" | "rceil"

    def _quantize(self, x: torch.Tensor, amax: torch.Tensor | None, role: Role) -> QTensor:
        xp, padded = pad_last(x.float(), BLOCK)
        blocks = xp.reshape(*xp.shape[:-1], xp.shape[-1] // BLOCK, BLOCK)
        exponent = mx_exponent(finite_abs(blocks).amax(-1), self.element, self.rounding)
        scale = e8m0_encode(exponent)
        nonfinite = ~torch.isfinite(blocks).all(-1)
        if nonfinite.any():  # propagate: E8M0 NaN marks the block
            scale = torch.where(nonfinite, E8M0_NAN, scale.view(torch.uint8)).to(torch.uint8).view(torch.float8_e8m0fnu)
        v = blocks / e8m0_decode(scale).unsqueeze(-1)
        if self.element == "e4m3":
            data = cast_fp8(v, torch.float8_e4m3fn).reshape(xp.shape)
        else:
            data = pack_fp4(e2m1_encode(v).reshape(xp.shape))
        return QTensor(data, scale, None, x.shape, self, padded=padded, role=role)

    def dequantize(self, q: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.element == "e4m3":
            values = q.data.float()
        else:
            values = e2m1_decode(unpack_fp4(q.data))
        blocks = values.reshape(*values.shape[:-1], -1, BLOCK)
        x = (blocks * e8m0_decode(q.scale).unsqueeze(-1)).reshape(values.shape)
        return crop_last(x, q.shape).to(dtype)

    def nbytes(self, shape: tuple[int, ...], role: Role = "weight") -> int:
        rows = math.prod(shape[:-1])
        kb = blocks_of(shape[-1], BLOCK)
        per_elem = 1 if self.element == "e4m3" else 0.5
        return int(rows * kb * BLOCK * per_elem) + rows * kb
