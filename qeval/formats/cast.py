"""BF16 / FP16: plain RNE casts, no scales. BF16 is the baseline precision."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Format, QTensor, Role


@dataclass(frozen=True)
class CastFormat(Format):
    dtype: torch.dtype = torch.bfloat16

    def _quantize(self, x: torch.Tensor, amax: torch.Tensor | None, role: Role) -> QTensor:
        return QTensor(x.to(self.dtype), None, None, x.shape, self, role=role)

    def dequantize(self, q: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return q.data.to(dtype)

    def nbytes(self, shape: tuple[int, ...], role: Role = "weight") -> int:
        return math.prod(shape) * self.dtype.itemsize
