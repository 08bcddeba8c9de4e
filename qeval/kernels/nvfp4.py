"""NVFP4 fake-quant and packed quantize in one Triton pass each (plus an amax pass when dynamic).

Mirrors ``qeval.formats.nvfp4`` step for step: ``s_g = amax / 2688`` (1 if that is 0),
``s_b = e4m3(clamp(amax_b / (6 s_g), 2^-9, 448))`` (1 for an all-zero block,
NaN for a block holding NaN/Inf), ``q = RNE_E2M1(x / (fp32(s_b) * s_g))``.
Where the global scale keeps every block's divisor in ``div_steps``' range
(``global_ok``: one decision per tensor) the division is ``div_steps`` (packed:
``div_split``, one correction step from a reciprocal split in two floats) and the
grid value / code ``e2m1_round_sat`` / ``e2m1_mag``, with the same bits. ``SPLIT`` (the exact
emulation's GEMM operand) writes ``value x block scale`` (at most 6 significant
bits: exact in BF16/FP16) and the global scale, instead of the fake-quantized value.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import (decode_scale, div_split, div_steps, e2m1_code, e2m1_mag, e2m1_round, e2m1_round_sat,
                      e2m1_value, max_abs_nan, nan_like, pair_byte, pair_floats, recip, recip_lo, tile_ids)

G = 16
S_G_MIN = tl.constexpr(4.440892098500626e-16)  # 2^-51: e4m3 scale (>= 2^-9) x s_g >= 2^-60
S_G_MAX = tl.constexpr(2.4758800785707605e27)  # 2^91: 448 x s_g <= 2^100


@triton.jit
def global_ok(s_g):
    """Whether every block's divisor ``e4m3(s_b) * s_g`` (s_b in [2^-9, 448]) lies where ``div_steps``
    is exact: one decision per tensor, from the global scale alone (a quotient that overflows
    saturates in ``e2m1_round_sat`` / ``e2m1_code_sat``; a NaN/Inf block is patched after)."""
    return (s_g >= S_G_MIN) & (s_g <= S_G_MAX)


@triton.jit
def _scale_and_bits(sb8, nonfinite):
    """The E4M3 block scales ``sb8`` as float32 and as bits: NaN and 0x7F for a NaN/Inf block."""
    sbf = tl.where(nonfinite, nan_like(sb8.to(tl.float32)), sb8.to(tl.float32))
    sbits = tl.where(nonfinite, 0x7F, sb8.to(tl.uint8, bitcast=True).to(tl.int32)).to(tl.uint8)
    return sbf, sbits


@triton.jit
def block_scales(mb, s_g):
    """Per 16-block, from its max |x| bits ``mb``: the scale ``fp32(e4m3(clamp(amax_b / (6 s_g))))``
    (1 for an all-zero block, NaN for one holding NaN/Inf) and its E4M3 bits (0x7F for NaN)."""
    nonfinite = mb >= 0x7F800000
    sb = tl.math.div_rn(mb.to(tl.float32, bitcast=True), 6.0 * s_g)
    sb = tl.where(sb == 0.0, 1.0, sb)
    sb = tl.where(sb < 0.001953125, 0.001953125, sb)
    sb = tl.where(sb > 448.0, 448.0, sb)
    return _scale_and_bits(sb.to(tl.float8e4nv, fp_downcast_rounding="rtne"), nonfinite)


@triton.jit
def block_scales_fast(mb, s_g):
    """``block_scales`` where ``global_ok(s_g)``: amax_b / (6 s_g) by ``div_steps`` (its bits wherever
    the quotient is normal; a smaller one only has to be told apart from 0, which is exact on
    amax_b's side; an overflowing one clamps to 448 through min.f32), and the divisor's reciprocal.
    Returns (scale, its E4M3 bits, divisor e4m3(scale) * s_g, its reciprocal split in two floats
    for ``div_split``)."""
    d6 = 6.0 * s_g
    bamax = mb.to(tl.float32, bitcast=True)
    zero = (bamax * 3.7778931862957162e22) * 3.7778931862957162e22 <= d6  # amax_b / d6 <= 2^-150 (2^75 x 2^75)
    sb = tl.maximum(tl.minimum(div_steps(bamax, d6, recip(d6)), 448.0), 0.001953125)
    sbf, sbits = _scale_and_bits(tl.where(zero, 1.0, sb).to(tl.float8e4nv, fp_downcast_rounding="rtne"),
                                 mb >= 0x7F800000)
    eff = sbf * s_g
    y = recip(eff)
    return sbf, sbits, eff, y, recip_lo(eff, y)


@triton.jit
def nvfp4_kernel(
    x_ptr, out_ptr, amax_ptr, gs_ptr, M, K, sxm, som,
    BM: tl.constexpr, BK: tl.constexpr, KFAST: tl.constexpr, SPLIT: tl.constexpr = False,
):
    """NVFP4 fake-quant (SPLIT: value x block scale, and the global scale at gs_ptr) of a
    [BM, BK] tile, read as two [BM, BK / 16, 8] halves (the first and the last 8 elements of
    each 16-block) loaded alike, so that one thread holds whole blocks: the block max and
    scale are computed once per block, with no shuffles."""
    NB: tl.constexpr = BK // 16
    pid_m, pid_k = tile_ids(KFAST)
    rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)[:, None, None]
    c0 = (pid_k * NB + tl.arange(0, NB))[None, :, None] * 16 + tl.arange(0, 8)[None, None, :]
    c1 = c0 + 8
    ok0 = (rm < M) & (c0 < K)
    ok1 = (rm < M) & (c1 < K)
    x0 = tl.load(x_ptr + rm * sxm + c0, mask=ok0, other=0.0).to(tl.float32)
    x1 = tl.load(x_ptr + rm * sxm + c1, mask=ok1, other=0.0).to(tl.float32)

    s_g = decode_scale(tl.load(amax_ptr), 2688.0)
    mb = tl.reduce(max_abs_nan(x0, x1), 2, max_abs_nan).to(tl.int32, bitcast=True)  # NaN/Inf: >= INF bits
    if global_ok(s_g):
        # div_steps and e2m1_round_sat's add, not div_split and an FMA: with those it ran 4% slower (H200)
        sbf, sbits, eff, y, _ = block_scales_fast(mb, s_g)
        r0 = e2m1_round_sat(div_steps(x0, eff[:, :, None], y[:, :, None]), x0)
        r1 = e2m1_round_sat(div_steps(x1, eff[:, :, None], y[:, :, None]), x1)
    else:
        sbf, sbits = block_scales(mb, s_g)
        eff = sbf * s_g
        r0 = e2m1_round(tl.math.div_rn(x0, eff[:, :, None]))
        r1 = e2m1_round(tl.math.div_rn(x1, eff[:, :, None]))
    if SPLIT:
        tl.store(gs_ptr, s_g, mask=(pid_m == 0) & (pid_k == 0))
        m = sbf[:, :, None]
    else:
        m = eff[:, :, None]
    ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + rm * som + c0, (r0 * m).to(ty), mask=ok0)
    tl.store(out_ptr + rm * som + c1, (r1 * m).to(ty), mask=ok1)


@triton.jit
def nvfp4_quant_pairs_kernel(
    xp_ptr, q_ptr, s_ptr, amax_ptr, gs_ptr, M, KH, KP, sxm, sqm, ssm,
    SRC: tl.constexpr, PAIR: tl.constexpr, BM: tl.constexpr, BH: tl.constexpr, KFAST: tl.constexpr,
    ITERS: tl.constexpr,
):
    """Packed NVFP4 quantize of an even-K tensor read as element pairs (one integer per
    output byte): the same numbers as ``nvfp4_kernel``. ``xp_ptr`` is x viewed as int32
    (16-bit x) or int64 (float32 x). Each 16-block is read as two halves of 4 pairs, loaded
    alike, so one thread holds the block's even (a) and odd (b) elements. A program sweeps
    ITERS neighbouring column tiles, so that its setup (the global scale, addresses) is
    paid once: it was a fifth of the instructions of a one-tile program."""
    NB: tl.constexpr = BH // 8
    pid_m, pid_k = tile_ids(KFAST)
    rows = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    rm = rows[:, None, None]
    s_g = decode_scale(tl.load(amax_ptr), 2688.0)
    fast = global_ok(s_g)
    for it in range(ITERS):
        kt = pid_k * ITERS + it
        c0 = (kt * NB + tl.arange(0, NB))[None, :, None] * 8 + tl.arange(0, 4)[None, None, :]
        c1 = c0 + 4
        v0 = tl.load(xp_ptr + rm * sxm + c0, mask=(rm < M) & (c0 < KH), other=0)
        v1 = tl.load(xp_ptr + rm * sxm + c1, mask=(rm < M) & (c1 < KH), other=0)
        a0, b0 = pair_floats(v0, SRC, PAIR)
        a1, b1 = pair_floats(v1, SRC, PAIR)
        mb = tl.reduce(max_abs_nan(max_abs_nan(a0, b0), max_abs_nan(a1, b1)), 2, max_abs_nan).to(tl.int32, bitcast=True)
        if fast:
            sbf, sbits, eff, y, ylo = block_scales_fast(mb, s_g)
            eff = eff[:, :, None]
            y = y[:, :, None]
            ylo = ylo[:, :, None]
            keep = tl.where(mb >= 0x7F800000, 0, 0xFF)[:, :, None]  # a NaN/Inf block: every code 0, as div_rn's NaN gives
            p0 = _pair_codes(v0, a0, b0, eff, y, ylo, keep, PAIR)
            p1 = _pair_codes(v1, a1, b1, eff, y, ylo, keep, PAIR)
        else:
            sbf, sbits = block_scales(mb, s_g)
            eff = (sbf * s_g)[:, :, None]
            p0 = _codes_rn(a0, eff) | (_codes_rn(b0, eff) << 4)
            p1 = _codes_rn(a1, eff) | (_codes_rn(b1, eff) << 4)
        tl.store(q_ptr + rm * sqm + c0, p0.to(tl.uint8), mask=(rm < M) & (c0 < KP // 2))
        tl.store(q_ptr + rm * sqm + c1, p1.to(tl.uint8), mask=(rm < M) & (c1 < KP // 2))
        rs = kt * NB + tl.arange(0, NB)
        tl.store(s_ptr + rows[:, None] * ssm + rs[None, :], sbits, mask=(rows[:, None] < M) & (rs[None, :] < KP // 16))
    tl.store(gs_ptr, s_g, mask=(pid_m == 0) & (pid_k == 0))


@triton.jit
def _pair_codes(v, a, b, eff, y, ylo, keep, PAIR: tl.constexpr):
    """The packed byte of the pair v = (a, b): codes of a / eff and b / eff (``pair_byte``)."""
    return pair_byte(e2m1_mag(div_split(a, eff, y, ylo)), e2m1_mag(div_split(b, eff, y, ylo)), v, a, b, keep, PAIR)


@triton.jit
def _codes_rn(x, d):
    return e2m1_code(e2m1_round(tl.math.div_rn(x, d)))


@triton.jit
def fp4_dequant_kernel(
    q_ptr, s_ptr, gs_ptr, out_ptr, M, K, KP, sqm, ssm, som,
    MX: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, KFAST: tl.constexpr,
):
    """Packed E2M1 codes + block scales -> values in out's dtype (NVFP4: E4M3 scales times
    the global scale; MX: E8M0 scales), as the reference's ``dequantize``."""
    G: tl.constexpr = 32 if MX else 16
    NB: tl.constexpr = BK // G
    pid_m, pid_k = tile_ids(KFAST)
    rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    row_ok = rm[:, None] < M
    rp = pid_k * (BK // 2) + tl.arange(0, BK // 2)
    p = tl.load(q_ptr + rm[:, None] * sqm + rp[None, :], mask=row_ok & (rp[None, :] < KP // 2), other=0)
    p3 = tl.reshape(p.to(tl.int32), (BM, NB, G // 2))
    rs = pid_k * NB + tl.arange(0, NB)
    sb = tl.load(s_ptr + rm[:, None] * ssm + rs[None, :], mask=row_ok & (rs[None, :] < KP // G), other=0)
    if MX:
        b = sb.to(tl.int32)
        bits = tl.where(b == 255, 0x7FC00000, tl.where(b == 0, 0x00400000, b << 23))
        scale = bits.to(tl.float32, bitcast=True)
    else:
        scale = sb.to(tl.float8e4nv, bitcast=True).to(tl.float32) * tl.load(gs_ptr)
    lo = e2m1_value(p3 & 15) * scale[:, :, None]
    hi = e2m1_value(p3 >> 4) * scale[:, :, None]
    v = tl.reshape(tl.join(lo, hi), (BM, BK))
    rk = pid_k * BK + tl.arange(0, BK)
    tl.store(out_ptr + rm[:, None] * som + rk[None, :], v.to(out_ptr.dtype.element_ty), mask=row_ok & (rk[None, :] < K))
