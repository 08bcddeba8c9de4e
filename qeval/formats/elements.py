"""Element codecs: the bit-level number formats (E4M3, E5M2, E2M1, E8M0).

These functions know single numbers, not blocks or scales. They are the
plain-torch reference that every faster path (``qeval.kernels``) must match
bit for bit.
"""

from __future__ import annotations

import math

import torch

E4M3_MAX = 448.0
E5M2_MAX = 57344.0
E2M1_MAX = 6.0
E8M0_BIAS = 127
E8M0_NAN = 255

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
FP8_MAX = {torch.float8_e4m3fn: E4M3_MAX, torch.float8_e5m2: E5M2_MAX}

# E2M1 magnitudes by code 0-7; codes 8-15 are the negatives (bit 3 = sign).
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_E2M1_TABLE = torch.tensor(E2M1_MAGNITUDES + tuple(-m for m in E2M1_MAGNITUDES), dtype=torch.float32)
# RNE decision points: a magnitude goes up past a point when it is greater
# (ties at 0.25, 1.25, 2.5, 5 go down to the even code) or greater-or-equal
# (ties at 0.75, 1.75, 3.5 go up to the even code).
_E2M1_UP_IF_GREATER = (0.25, 1.25, 2.5, 5.0)
_E2M1_UP_IF_AT_LEAST = (0.75, 1.75, 3.5)


_DIVISORS: dict = {}  # (value, dtype, device) -> a 0-dim tensor: built once, not per call


def div(a: torch.Tensor, divisor: float) -> torch.Tensor:
    """Correctly rounded ``a / divisor`` on any device.

    On CUDA, torch computes ``tensor / python_scalar`` as a multiply by the
    reciprocal, which can be an ulp off; dividing by a tensor is exact IEEE
    division everywhere.
    """
    key = (divisor, a.dtype, a.device)
    d = _DIVISORS.get(key)
    if d is None:
        d = _DIVISORS.setdefault(key, torch.tensor(divisor, dtype=a.dtype, device=a.device))
    return a / d


def decode_scale(amax: torch.Tensor, vmax: float) -> torch.Tensor:
    """``amax / vmax`` in float32, with 1.0 where that is 0 (amax 0, or so small that the
    quotient underflows: no 0/0 quotients downstream). FP8's scale and NVFP4's global scale."""
    s = div(amax.float(), vmax)
    return s.masked_fill_(s == 0, 1.0)  # s: a new tensor


def saturation_needed(bound: torch.Tensor, vmax: float, mbits: int) -> bool:
    """Whether magnitudes up to ``bound`` (a 0-dim tensor; NaN or Inf allowed) may round past ``vmax``,
    the top of a grid with ``mbits`` mantissa bits, unless clamped first. Below the midpoint between
    ``vmax`` and the next step of its binade, RNE alone gives at most ``vmax`` (E2M1's and E5M2's
    midpoints tie to the step above), so the clamp is then a no-op. One sync; the CPU fast paths skip
    a pass over the data when it says False."""
    step = 2.0 ** (math.floor(math.log2(vmax)) - mbits)
    return not float(bound.detach()) < vmax + step / 2  # NaN: True


def cast_fp8(v: torch.Tensor, dtype: torch.dtype, finite: bool = False) -> torch.Tensor:
    """Saturating RNE cast of float32 ``v`` to an FP8 dtype.

    Finite values are clamped to +-max first: torch before 2.12 turned 500 into
    NaN in E4M3, and newer releases saturate, so qeval does not rely on either.
    NaN stays NaN; Inf becomes NaN in E4M3 (it has no Inf) and stays Inf in E5M2.
    ``finite=True``: the caller knows ``v`` holds no Inf (skips a pass and a sync).
    """
    fmax = FP8_MAX[dtype]
    out = v.clamp(-fmax, fmax)
    return (out if finite else _fp8_inf(v, out, dtype)).to(dtype)


def _fp8_inf(v: torch.Tensor, out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``out`` (v clamped) with v's Inf restored: NaN in E4M3 (it has no Inf), Inf in E5M2."""
    inf = torch.isinf(v)
    if inf.any():
        keep = v if dtype == torch.float8_e5m2 else torch.full_like(v, float("nan"))
        out = torch.where(inf, keep, out)
    return out


# (mantissa bits, exponent of the smallest normal) of each FP8 element
FP8_GRID = {torch.float8_e4m3fn: (3, -6), torch.float8_e5m2: (2, -14)}


def _round_grid(v: torch.Tensor, mbits: int, emin: int, vmax: float, inplace: bool = False,
                scratch: torch.Tensor | None = None, saturate: bool = True) -> torch.Tensor:
    """RNE of float32 ``v`` to a minifloat grid (``mbits`` mantissa bits, smallest normal
    ``2^emin``, subnormals below, saturating at +-vmax), as float32, NaN kept.

    Each value's quantum is the power of two ``2^(max(e, emin) - mbits)`` built from
    its float32 exponent bits; dividing by it is exact and ``round`` is RNE, so the
    result has the bits of the element codec (signed zeros included).
    ``inplace``: round ``v`` itself (contiguous float32, the caller's to overwrite);
    ``scratch``: a float32/int32 tensor of ``v``'s shape to hold the quanta. On a CPU a
    fresh tensor of activation size costs more (page faults) than a pass over one,
    so the hot path allocates as little as it can; multiplying by the quantum's
    reciprocal instead of dividing measured no faster.
    ``saturate=False``: skip the clamp to +-vmax, for a caller that knows every value is
    below ``vmax + quantum / 2`` (``saturation_needed``), where RNE alone stays within vmax.
    """
    if saturate:
        out = v.clamp_(-vmax, vmax) if inplace else v.clamp(-vmax, vmax)
    else:
        out = v if inplace else v.clone()
    quantum = torch.bitwise_and(out.view(torch.int32), 0x7F800000,
                                out=None if scratch is None else scratch.view(torch.int32))
    quantum = quantum.clamp_(min=(127 + emin) << 23).sub_(mbits << 23).view(torch.float32)
    return out.div_(quantum).round_().mul_(quantum)


def round_fp8(v: torch.Tensor, dtype: torch.dtype, finite: bool = False, inplace: bool = False,
              saturate: bool = True) -> torch.Tensor:
    """``cast_fp8(v, dtype).float()`` computed in float32 arithmetic, without the FP8 dtype.

    CPU builds of torch convert FP8 to float32 one element at a time (several
    times the cost of this function). ``inplace`` (with ``finite``): overwrite
    ``v`` (contiguous float32) with the result. ``saturate=False`` (with ``finite``):
    see ``_round_grid``.
    """
    mbits, emin = FP8_GRID[dtype]
    if finite:
        return _round_grid(v, mbits, emin, FP8_MAX[dtype], inplace, saturate=saturate)
    return _fp8_inf(v, _round_grid(v, mbits, emin, FP8_MAX[dtype]), dtype)


def round_e2m1(v: torch.Tensor, inplace: bool = False, scratch: torch.Tensor | None = None,
               saturate: bool = True) -> torch.Tensor:
    """``e2m1_decode(e2m1_encode(v))`` for finite or NaN float32 ``v`` (NaN stays NaN), in
    float32 arithmetic: no codes, no table lookup. ``inplace``, ``scratch``, ``saturate``: see ``_round_grid``."""
    return _round_grid(v, 1, 0, E2M1_MAX, inplace, scratch, saturate)


def e2m1_encode(v: torch.Tensor) -> torch.Tensor:
    """Round float32 ``v`` to E2M1 codes (uint8 0-15), RNE, saturating at +-6.

    The sign bit of the code is the IEEE sign bit of ``v``: -0.0 and small
    negatives that round to zero give code 8 (negative zero), as a hardware
    conversion does. NaN gives a code of 6 magnitude; callers mark such blocks
    through their scale.
    """
    mag = v.abs()
    code = torch.zeros(v.shape, dtype=torch.uint8, device=v.device)
    for point in _E2M1_UP_IF_GREATER:
        code += mag > point
    for point in _E2M1_UP_IF_AT_LEAST:
        code += mag >= point
    code |= torch.signbit(v).to(torch.uint8) << 3
    return code


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (uint8 0-15) to float32 values; code 8 is -0.0."""
    table = _E2M1_TABLE.to(codes.device)
    return table[codes.long()]


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes two per byte along the last dim: element 2i low nibble, 2i+1 high."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_fp4 needs an even last dimension, got {tuple(codes.shape)}")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_fp4`: uint8 [..., n] -> codes uint8 [..., 2n]."""
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def e8m0_encode(exponent: torch.Tensor) -> torch.Tensor:
    """Unbiased integer exponents in [-127, 127] to E8M0 storage (float8_e8m0fnu)."""
    biased = (exponent + E8M0_BIAS).to(torch.uint8)
    return biased.view(torch.float8_e8m0fnu)


def e8m0_decode(scale: torch.Tensor) -> torch.Tensor:
    """E8M0 storage to float32 powers of two, built from the bits (exact); 255 is NaN."""
    biased = scale.view(torch.uint8).to(torch.int32)
    # 2^(b-127) is the float32 with biased exponent b; b = 0 is the subnormal 2^-127.
    bits = torch.where(biased > 0, biased << 23, torch.full_like(biased, 1 << 22))
    value = bits.view(torch.float32)
    return torch.where(biased == E8M0_NAN, torch.full_like(value, float("nan")), value)


def floor_log2(v: torch.Tensor) -> torch.Tensor:
    """Exact floor(log2(v)) for positive finite float32 ``v`` (subnormals too), as int32."""
    _, exp = torch.frexp(v)
    return exp - 1


def ceil_log2(v: torch.Tensor) -> torch.Tensor:
    """Exact ceil(log2(v)) for positive finite float32 ``v``, as int32."""
    mant, exp = torch.frexp(v)
    return torch.where(mant == 0.5, exp - 1, exp)
