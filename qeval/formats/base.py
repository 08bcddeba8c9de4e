"""The format object and the quantized tensor it produces.

A :class:`Format` knows how to turn a float tensor into real packed storage
(:class:`QTensor`) and back, and what that storage costs in bytes. Blocks run
along the last dimension (the GEMM reduction dim K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

Role = Literal["weight", "activation"]
NonFinite = Literal["raise", "propagate"]
_ROLES = ("weight", "activation")
_NONFINITE = ("raise", "propagate")


@dataclass
class QTensor:
    """A tensor in a quantized format, holding its real storage.

    Attributes:
        data: element codes (float8 tensor, uint8 with two FP4 codes per byte,
            or bf16/fp16 for plain casts). Block formats store the last dim
            padded with zeros to a whole number of blocks.
        scale: per-block / per-row / per-tensor scales in their real dtype
            (float8_e4m3fn for NVFP4 blocks, float8_e8m0fnu for MX, float32 for
            FP8), or None.
        global_scale: NVFP4's float32 per-tensor decode scale, or None.
        shape: the logical shape (without padding).
        fmt: the :class:`Format` that produced it.
        padded: True when the last dim was padded to a whole block.
        role: "weight" or "activation" (changes the block layout of FP8 block128).
    """

    data: torch.Tensor
    scale: torch.Tensor | None
    global_scale: torch.Tensor | None
    shape: torch.Size
    fmt: "Format"
    padded: bool = False
    role: Role = "weight"

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.fmt.dequantize(self, dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the codes plus every scale."""
        return sum(t.numel() * t.element_size() for t in (self.data, self.scale, self.global_scale) if t is not None)

    def __repr__(self) -> str:
        pad = ", padded" if self.padded else ""
        return f"QTensor({self.fmt.spec}, shape={tuple(self.shape)}, nbytes={self.nbytes}{pad})"


@dataclass(frozen=True)
class Format:
    """Base class of every number format; subclasses implement the codec.

    Attributes:
        spec: the canonical name (``get_format(spec)`` gives this object back).
        family: hardware family used for native-support lookups
            (``bf16``, ``fp16``, ``fp8``, ``mxfp8``, ``mxfp4``, ``nvfp4``).
        block: block length along the last dim, or None.
        static_scale: True when a per-tensor scale can be fixed ahead of time
            (``amax=`` from calibration); False for purely dynamic scales.
    """

    spec: str
    family: str
    block: int | None = None
    static_scale: bool = False
    description: str = field(default="", compare=False)

    # --- codec, implemented by subclasses -------------------------------
    def _quantize(self, x: torch.Tensor, amax: torch.Tensor | None, role: Role) -> QTensor:
        raise NotImplementedError

    def dequantize(self, q: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def nbytes(self, shape: tuple[int, ...], role: Role = "weight") -> int:
        """Analytic bytes of codes + scales for a tensor of ``shape``."""
        raise NotImplementedError

    def gemm_split(self, q: QTensor) -> tuple[QTensor, torch.Tensor | None]:
        """Split ``q`` into what a tensor core multiplies and what is applied outside it.

        Returns ``(inner, outer)``. ``inner.dequantize()`` is the GEMM operand:
        element codes times the block scales the hardware applies inside the
        tensor core (NVFP4's E4M3, MX's E8M0), a product with few significant
        bits, so it is exact in float32 (and usually in BF16/FP16). ``outer``
        is the float32 scale left over: None (nothing), shape ``[]`` (per
        tensor: NVFP4's global scale, FP8 per-tensor) or ``[rows, 1]`` (per
        row), applied to the GEMM's FP32 accumulator in the epilogue; or, for
        FP8 block128, ``[rows, ceil(K / 128)]``, one scale per 128-group of K,
        applied to each group's partial sum (DeepSeek-V3 style). In real
        arithmetic ``inner * outer == q.dequantize()``.
        """
        return q, None

    # --- public API -------------------------------------------------------
    def quantize(
        self,
        x: torch.Tensor,
        *,
        amax: torch.Tensor | float | None = None,
        role: Role = "weight",
        nonfinite: NonFinite = "raise",
    ) -> QTensor:
        """Quantize ``x`` into real packed storage.

        Args:
            x: a float tensor (fp32, bf16 or fp16), at least 1-D.
            amax: a fixed per-tensor amax (static scale from calibration). Used
                by per-tensor FP8 and by NVFP4's global scale; ignored by
                purely dynamic formats.
            role: "weight" or "activation"; only FP8 block128 lays out blocks
                differently (128x128 for 2-D weights, 1x128 for activations).
            nonfinite: "raise" (default) refuses NaN/Inf; "propagate" keeps
                them: NaN stays NaN (a block holding one decodes to NaN).
        """
        x, amax = self._checked(x, amax, role, nonfinite)
        if x.is_cuda and (q := _kernel("quantize", self, x, amax, role)) is not None:
            return q
        return self._quantize(x, amax, role)

    def fake_quant(
        self,
        x: torch.Tensor,
        *,
        amax: torch.Tensor | float | None = None,
        role: Role = "weight",
        nonfinite: NonFinite = "raise",
    ) -> torch.Tensor:
        """``quantize(x).dequantize()`` in x's dtype (same bits, always)."""
        x, amax = self._checked(x, amax, role, nonfinite)
        if x.is_cuda and (y := _kernel("fake_quant", self, x, amax, role)) is not None:
            return y
        return self._fake_quant(x, amax, role)

    def _fake_quant(self, x: torch.Tensor, amax: torch.Tensor | None, role: Role) -> torch.Tensor:
        """The reference fake-quant; a format may compute the same bits without packing them."""
        return self._quantize(x, amax, role).dequantize(x.dtype)

    def split_values(
        self,
        x: torch.Tensor,
        *,
        amax: torch.Tensor | float | None = None,
        role: Role = "weight",
        nonfinite: NonFinite = "raise",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``gemm_split(quantize(x))`` as numbers: ``(inner operand in float32, outer scale)``.

        The same values as decoding the inner part; FP8 and NVFP4 compute them in
        float32 arithmetic without packing codes (much cheaper on a CPU).
        """
        x, amax = self._checked(x, amax, role, nonfinite)
        return self._split_values(x, amax, role)

    def _split_values(self, x: torch.Tensor, amax: torch.Tensor | None, role: Role):
        inner, outer = self.gemm_split(self._quantize(x, amax, role))
        return inner.dequantize(torch.float32), outer

    def _checked(self, x: torch.Tensor, amax, role: Role, nonfinite: NonFinite):
        """Validate the arguments; returns (x, amax as a float32 tensor or None)."""
        if role not in _ROLES:
            raise ValueError(f"role must be one of {_ROLES}, got {role!r}")
        if nonfinite not in _NONFINITE:
            raise ValueError(f"nonfinite must be one of {_NONFINITE}, got {nonfinite!r}")
        if not torch.is_floating_point(x) or x.dtype.itemsize == 1:
            raise TypeError(f"{self.spec}: expected a float32/bf16/fp16 tensor, got {x.dtype}")
        if x.dim() == 0:
            x = x.reshape(1)
        if nonfinite == "raise":
            bad = (~torch.isfinite(x)).sum().item()
            if bad:
                raise ValueError(
                    f"{self.spec}: input has {bad} non-finite value(s) (NaN/Inf); "
                    "pass nonfinite='propagate' to keep them"
                )
        if amax is not None:
            amax = torch.as_tensor(amax, dtype=torch.float32, device=x.device)
        return x, amax

    def bits_per_element(self, shape: tuple[int, ...], role: Role = "weight") -> float:
        """Effective bits per element of a tensor of ``shape``, scales included."""
        return 8 * self.nbytes(tuple(shape), role) / math.prod(shape)

    def __str__(self) -> str:
        return self.spec


# Faster paths plug in here: ``qeval.kernels`` registers its fused CUDA
# kernels when imported. Formats never import them, so the definition of a
# number knows nothing of the accelerator that computes it.
_ACCELERATORS: dict[str, Callable] = {}


def register_accelerator(kind: Literal["quantize", "fake_quant"], fn: Callable) -> None:
    """Route ``Format.quantize`` / ``Format.fake_quant`` on CUDA tensors through ``fn``.

    ``fn(fmt, x, amax=..., role=...)`` returns the same bits as the reference,
    or None where it does not apply (the reference then runs).
    """
    _ACCELERATORS[kind] = fn


def _kernel(kind: str, fmt: Format, x: torch.Tensor, amax, role: Role):
    fn = _ACCELERATORS.get(kind)
    return None if fn is None else fn(fmt, x, amax=amax, role=role)


# --- helpers shared by the block formats ---------------------------------
def pad_last(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, bool]:
    """Zero-pad the last dim to a multiple of ``multiple``."""
    rem = x.shape[-1] % multiple
    if rem == 0:
        return x, False
    return torch.nn.functional.pad(x, (0, multiple - rem)), True


def crop_last(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return x[..., : shape[-1]] if x.shape[-1] != shape[-1] else x


def block_max(a: torch.Tensor) -> torch.Tensor:
    """``a.amax(-1)`` for a contiguous ``[.., blocks, B]`` (NaN propagating), as a max-pool of
    window B over each row: several times faster on a CPU than the reduction kernel, or than
    halving with ``torch.maximum`` (strided views of a short last dim vectorize badly)."""
    b = a.shape[-1]
    row = b * a.shape[-2] if a.dim() >= 2 else b
    if a.numel() == 0 or not a.is_contiguous():
        return a.amax(-1)
    return torch.nn.functional.max_pool1d(a.reshape(-1, 1, row), b, b).reshape(a.shape[:-1])


def finite_abs(x: torch.Tensor) -> torch.Tensor:
    """|x| with non-finite entries as 0, so that amax ignores them."""
    a = x.abs()
    return torch.where(torch.isfinite(a), a, torch.zeros((), dtype=a.dtype, device=a.device))


def blocks_of(n: int, block: int) -> int:
    return -(-n // block)
