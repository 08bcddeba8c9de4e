"""Triton building blocks shared by the quantize kernels.

Every helper mirrors one step of the plain-torch reference in
``qeval.formats`` exactly: divisions are correctly rounded (``div_rn``; Triton's
``/`` on float32 is approximate), casts round to nearest even, and the sign of
zero follows the IEEE sign bit of the quotient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FLT_MAX_BITS = 0x7F7FFFFF  # largest finite float32, as bits
INF_BITS = 0x7F800000
NAN_BITS = 0x7FC00000

# Launch options every kernel uses: no mul+add -> FMA contraction, so each
# float32 operation rounds exactly as the reference's torch op does.
LAUNCH = {"enable_fp_fusion": False}


def fp8_special_codes(dtype: torch.dtype) -> tuple[int, int, int]:
    """(code of +inf, code of -inf, code of NaN) as the reference ``cast_fp8`` writes them.

    Asked of the reference itself, so the kernels follow it (E4M3: Inf -> NaN;
    E5M2: Inf stays Inf) without restating the rule.
    """
    from qeval.formats.elements import cast_fp8

    v = cast_fp8(torch.tensor([float("inf"), float("-inf"), float("nan")]), dtype).view(torch.uint8)
    return int(v[0]), int(v[1]), int(v[2])


@triton.jit
def abs_bits(x):
    """|x| of float32 ``x`` as int32 bits (orders like the value; > INF_BITS is NaN)."""
    return x.to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def finite_abs(x):
    """|x| with NaN/Inf as 0 (the reference's ``finite_abs``), float32."""
    b = abs_bits(x)
    return tl.where(b <= 0x7F7FFFFF, b, 0).to(tl.float32, bitcast=True)


@triton.jit
def nan_like(x):
    return tl.full(x.shape, 0x7FC00000, tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def decode_scale(amax, VMAX: tl.constexpr):
    """``amax / VMAX`` correctly rounded, 1.0 where that is 0 (the reference's ``elements.decode_scale``)."""
    s = tl.math.div_rn(amax, VMAX)
    return tl.where(s == 0.0, 1.0, s)


@triton.jit
def e2m1_round(v):
    """RNE of float32 ``v`` onto the E2M1 grid, saturating at +-6, keeping the sign bit.

    Adding and subtracting 2^22 / 2^23 / 2^24 rounds to a multiple of 0.5 / 1 / 2
    in float32 (ties to even), which is the E2M1 spacing in [0, 2) / [2, 4) /
    [4, 6]; the same thresholds as the reference (ties 0.25, 1.25, 2.5, 5 down;
    0.75, 1.75, 3.5 up). NaN stays NaN.
    """
    m = tl.abs(v)
    magic = tl.where(m < 2.0, 4194304.0, tl.where(m < 4.0, 8388608.0, 16777216.0))
    r = (m + magic) - magic
    r = tl.where(m > 5.0, 6.0, r)
    sign = v.to(tl.int32, bitcast=True) & -2147483648
    return (r.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def e2m1_code(r):
    """E2M1 code (int32 0-15) of a value already on the grid (output of ``e2m1_round``).

    NaN gives the code of its sign bit with magnitude 0, as the reference's
    threshold comparisons do.
    """
    b = r.to(tl.int32, bitcast=True)
    mb = b & 0x7FFFFFFF
    exp = mb >> 23
    big = ((exp - 126) << 1) | ((mb >> 22) & 1)  # 1.0 -> 2, 1.5 -> 3, 2 -> 4, 3 -> 5, 4 -> 6, 6 -> 7
    small = tl.where(mb == 0x3F000000, 1, 0)  # 0.5 -> 1, 0 -> 0
    mag = tl.where(exp >= 127, big, small)
    mag = tl.where(mb > 0x7F800000, 0, mag)  # NaN
    return mag | (((b >> 31) & 1) << 3)


@triton.jit
def cast_fp8_bits(v, FP8: tl.constexpr, FMAX: tl.constexpr, INF_POS: tl.constexpr, INF_NEG: tl.constexpr,
                  NAN_CODE: tl.constexpr):
    """Saturating RNE float32 -> FP8, as uint8 bits (the reference's ``cast_fp8``)."""
    c = tl.where(v > FMAX, FMAX, tl.where(v < -FMAX, -FMAX, v))
    q = c.to(FP8, fp_downcast_rounding="rtne").to(tl.uint8, bitcast=True)
    b = v.to(tl.int32, bitcast=True)
    mb = b & 0x7FFFFFFF
    q = tl.where(mb == 0x7F800000, tl.where(b < 0, INF_NEG, INF_POS).to(tl.uint8), q)
    q = tl.where(mb > 0x7F800000, tl.full(q.shape, NAN_CODE, tl.uint8), q)
    return q


@triton.jit
def fp8_bits_to_f32(q, FP8: tl.constexpr):
    return q.to(FP8, bitcast=True).to(tl.float32)


@triton.jit
def pack_nibbles(code, BM: tl.constexpr, BK: tl.constexpr):
    """[BM, BK] int32 codes -> [BM, BK // 2] uint8, element 2i in the low nibble."""
    pairs = tl.reshape(code, (BM, BK // 2, 2))
    lo, hi = tl.split(pairs)
    return (lo | (hi << 4)).to(tl.uint8)


@triton.jit
def tile_ids(KFAST: tl.constexpr):
    """(row-tile, column-tile) of this program. KFAST: grid axis 0 runs along the last dim,
    so programs in flight together read neighbouring columns of the same rows."""
    if KFAST:
        return tl.program_id(1), tl.program_id(0)
    else:
        return tl.program_id(0), tl.program_id(1)


@triton.jit
def amax_kernel(x_ptr, out_ptr, N, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    """Finite max |x| over a flat tensor, as float32 bits atomically maxed into out_ptr (int32, zeroed).

    Each program reduces ITERS consecutive chunks of BLOCK, then does one atomic.
    """
    base = tl.program_id(0).to(tl.int64) * (BLOCK * ITERS)
    acc = tl.zeros([BLOCK], tl.int32)
    for i in range(ITERS):
        offs = base + i * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < N, other=0.0).to(tl.float32)
        b = abs_bits(x)
        acc = tl.maximum(acc, tl.where(b <= 0x7F7FFFFF, b, 0))
    tl.atomic_max(out_ptr, tl.max(acc, 0))


@triton.jit
def e2m1_value(code):
    """E2M1 code (int32 0-15) -> float32 value; code 8 is -0.0 (the reference's table)."""
    mag = code & 7
    bits = tl.where(mag < 2, mag * 0x3F000000, ((mag >> 1) + 126) << 23 | ((mag & 1) << 22))
    return (bits | ((code >> 3) << 31)).to(tl.float32, bitcast=True)


@triton.jit
def split_pairs(v, PAIR: tl.constexpr):
    """The halves of element pairs (2j, 2j+1) loaded through an integer view of x (int32:
    PAIR == 16, two bf16/fp16; int64: PAIR == 32, two float32), as int32 bit patterns of the
    low (even) and high (odd) element."""
    if PAIR == 32:
        lo = (v & 0xFFFFFFFF).to(tl.int32)
        hi = (v >> 32).to(tl.int32)
    else:
        lo = v & 0xFFFF
        hi = (v >> 16) & 0xFFFF
    return lo, hi


@triton.jit
def pair_floats(v, SRC: tl.constexpr, PAIR: tl.constexpr):
    """The two elements (low, high) of pair integers v (see ``split_pairs``) as float32; a
    bf16 pair costs a shift and a mask."""
    if SRC == 1:
        return (v << 16).to(tl.float32, bitcast=True), (v & -65536).to(tl.float32, bitcast=True)
    lo, hi = split_pairs(v, PAIR)
    return half_to_f32(lo, SRC), half_to_f32(hi, SRC)


@triton.jit
def pair_byte(mag_a, mag_b, v, a, b, keep, PAIR: tl.constexpr):
    """The packed FP4 byte of the element pair v = (a, b) (a in the low nibble) from their
    ``e2m1_mag`` codes: signs from the sign bits (of 16-bit elements: bits 15 and 31 of v, moved
    to bits 3 and 7 by one multiply-high, 2^20 + 2^8 shifting them by 20 and 8, and a stray
    bit 19), all masked by ``keep`` (0 for a NaN/Inf block, else 0xFF), which also drops the
    bits above the byte (one LOP3 with the OR)."""
    mag = mag_a + (mag_b << 4)
    if PAIR == 16:
        sign = tl.umulhi(v.to(tl.uint32, bitcast=True) & 0x80008000, 0x00100100).to(tl.int32, bitcast=True)
    else:
        sign = ((a.to(tl.int32, bitcast=True) >> 28) & 8) | ((b.to(tl.int32, bitcast=True) >> 24) & 0x80)
    return (mag | sign) & keep


@triton.jit
def half_to_f32(h, SRC: tl.constexpr):
    """16- or 32-bit pattern (int32) of an element of dtype SRC -> float32 value."""
    if SRC == 0:  # float32
        return h.to(tl.float32, bitcast=True)
    elif SRC == 1:  # bfloat16: its bits are the top half of the float32
        return (h << 16).to(tl.float32, bitcast=True)
    else:  # float16
        return h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


# --- fast paths ----------------------------------------------------------------
# A program takes them when every quotient x / d of its tile can be computed by
# ``div_fast`` (``quotient_ok``, decided from the tile's amax, which the scales need
# anyway: deciding after the division made the FP8 kernels wait on it, 98% -> 55% of
# copy on the H200); otherwise it runs the general code above. Both give the same bits.

D_MIN = tl.constexpr(8.673617379884035e-19)  # 2^-60: d * y, q * d and the residuals stay normal (exact)
D_MAX = tl.constexpr(1.2676506002282294e30)  # 2^100: 1 / d stays normal
RCP_448 = tl.constexpr(0.0022321429569274187)  # RN(1 / 448), E4M3's max: FP8 group scales, MXFP8 rceil


@triton.jit
def quotient_ok(mb, d):
    """Per scale group: whether ``div_fast`` gives x / d for every x of the group, given ``mb``
    its max |x| bits (int32) and ``d`` its divisor (float32): no NaN/Inf, d in [2^-60, 2^100],
    no quotient overflow."""
    return (mb < 0x7F800000) & (d >= D_MIN) & (d <= D_MAX) & (mb.to(tl.float32, bitcast=True) <= d * D_MAX)


@triton.jit
def recip(d):
    """RN(1 / d) for d in [2^-60, 2^100] (``quotient_ok``'s range; NaN stays NaN), once per scale
    group, for ``div_fast``: ``div_rn(1, d)``'s own sequence (an approximate reciprocal, then
    Newton and Markstein steps) without its range check and slow-path branch, which this range
    never needs (tests/test_kernel_fast_paths.py compares every divisor of the range)."""
    y = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [d], dtype=tl.float32, is_pure=True, pack=1)
    nd = -d
    y = tl.math.fma(y, tl.math.fma(nd, y, 1.0), y)
    return tl.math.fma(y, tl.math.fma(nd, y, 1.0), y)


@triton.jit
def div_fast(x, d, y):
    """RN(x / d) given y = RN(1 / d), on groups where ``quotient_ok`` holds: the FP8 / E2M1
    codes of ``div_rn``'s bits at a third of its instructions (the kernels are issue-bound).

    q0 = x * y is within 1.5 ulp of x / d; each step r = x - q d (exact by FMA), q + r y
    halves that, and once q is within 1 ulp the step returns the correctly rounded
    quotient (Markstein's theorem, y = RN(1 / d)). The bounds on d keep every step
    exact for |x / d| >= 2^-20; below that (a residual may underflow) the result can
    miss by an ulp, but still has x's sign and rounds to zero on every FP8 / E2M1 grid.
    The sign is ORed back in because x = -0 gives +0 + -0 = +0 in the last step."""
    q = div_steps(x, d, y)
    return (q.to(tl.int32, bitcast=True) | (x.to(tl.int32, bitcast=True) & -2147483648)).to(tl.float32, bitcast=True)


@triton.jit
def div_steps(x, d, y):
    """``div_fast`` without restoring the sign of a zero quotient (the E2M1 helpers below take
    the sign from x). Where x / d overflows, the result is NaN, Inf or above 2^100."""
    nd = -d  # once per group (before the broadcast)
    q = x * y
    q = tl.math.fma(tl.math.fma(q, nd, x), y, q)
    return tl.math.fma(tl.math.fma(q, nd, x), y, q)


@triton.jit
def recip_lo(d, y):
    """RN(1 / d - y) for y = ``recip(d)``, once per scale group: y + recip_lo is 1 / d to about
    2^-47 (the residual 1 - d y is exact by FMA), for ``div_split``."""
    return tl.math.fma(-d, y, 1.0) * y


@triton.jit
def div_split(x, d, y, ylo):
    """``div_steps`` in four operations instead of five, with the same range and overflow
    behaviour: q = x y + x ylo (ylo = ``recip_lo(d, y)``) misses x / d by less than one ulp
    (one rounding of a ~2^-46-accurate value), so a single correction step rounds it
    correctly (Markstein's theorem: y = RN(1 / d), q faithful, r = x - q d exact by FMA)."""
    q = tl.math.fma(x, y, x * ylo)
    return tl.math.fma(tl.math.fma(q, -d, x), y, q)


@triton.jit
def or_sign(r, x):
    """r (sign bit clear) with the sign of x, as one LOP3 (the compiler splits the AND and the OR
    otherwise, hoisting the AND and holding its result in a register)."""
    return tl.inline_asm_elementwise("lop3.b32 $0, $1, $2, 0x80000000, 0xF8;", "=r,r,r", [r, x],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def max_abs_nan(a, b):
    """max(|a|, |b|), NaN if either is NaN (one FMNMX.NAN with |.| operands): block maxima that
    keep a NaN block visible, without masking the sign bits first."""
    return tl.maximum(tl.abs(a), tl.abs(b), propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _e2m1_clamp(q):
    """(|q| clamped to 6, the exponent bits of max(that, 1)): NaN, from an overflowed quotient,
    clamps to 6 (min.f32 returns the number)."""
    m = tl.minimum(tl.abs(q), 6.0)
    return m, tl.maximum(m.to(tl.int32, bitcast=True) & 0x7F800000, 0x3F800000)


@triton.jit
def _e2m1_sum(q):
    """(|q| clamped to 6 plus a magic power of two, the magic's exponent bits) for RNE onto the
    E2M1 grid: the magic's last mantissa bit is the grid's spacing in |q|'s binade (0.5 below
    2, 1 below 4, 2 above)."""
    m, e = _e2m1_clamp(q)
    return m + e.to(tl.float32, bitcast=True) * 4194304.0, e


@triton.jit
def e2m1_round_sat(q, x):
    """``e2m1_round(x / d)`` (d > 0) from ``q = div_steps(x, d, 1 / d)``: the sign is x's, and a
    quotient that overflowed (NaN, Inf, huge) saturates to 6 as the exact one does."""
    s, e = _e2m1_sum(q)
    return or_sign(s - e.to(tl.float32, bitcast=True) * 4194304.0, x)


@triton.jit
def e2m1_code_sat(q, x):
    """``e2m1_code(e2m1_round(x / d))`` (0-15) from ``q = div_steps(x, d, 1 / d)``, as
    ``e2m1_round_sat``: ``e2m1_mag`` and x's sign bit as bit 3."""
    return (e2m1_mag(q) & 7) | ((x.to(tl.uint32, bitcast=True) >> 28).to(tl.int32) & 8)


@triton.jit
def e2m1_mag(q):
    """The magnitude part (0-7) of ``e2m1_code_sat`` as the low byte of the result (bits from 9 up
    hold an exponent; a caller keeps the low byte). |q| (clamped) plus 2^E (2^22 + 107), E the
    binade (0 below 2), in one FMA (the product is exact): the sum's bits are (149 + E) << 23
    | (214 + k), k grid steps of 2^(E - 1) rounded to even (214 is even), and the code is
    k + 2 E: s + (s >> 22) = k + 2 E + 512 up to multiples of 2^23, one LEA.HI."""
    m, e = _e2m1_clamp(q)
    s = tl.math.fma(e.to(tl.float32, bitcast=True), 4194411.0, m).to(tl.int32, bitcast=True)
    return s + (s >> 22)


@triton.jit
def all_ok(ok):
    """A tile's ``quotient_ok`` flags (one per scale group) reduced to one."""
    return tl.min(ok.to(tl.int32), axis=None) != 0


@triton.jit
def cast_fp8_finite(v, FP8: tl.constexpr):
    """``cast_fp8_bits`` for finite v: the saturating RNE conversion (satfinite on sm_89+)
    already clamps to +-max, and there is no Inf or NaN to patch."""
    return v.to(FP8, fp_downcast_rounding="rtne").to(tl.uint8, bitcast=True)
