"""MXFP8 / MXFP4 (32-blocks, E8M0 scales, "floor" or "rceil") in one Triton pass.

Mirrors ``qeval.formats.mx``: the exponent comes exactly from the float32 bits
of the block amax (floor) or of ``amax / max_elem`` (rceil, a correctly rounded
division); elements are ``x * 2^-e``, which equals the reference's division by
the power of two (one rounding of the same real number). A tile with no NaN/Inf
skips the special-value patching of the codes.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import (RCP_448, cast_fp8_bits, cast_fp8_finite, div_steps, e2m1_code_sat, e2m1_mag, e2m1_round_sat,
                      fp8_bits_to_f32, max_abs_nan, nan_like, pack_nibbles, pair_byte, pair_floats, tile_ids)

G = 32
# rceil: RN(1 / max) and the largest amax bits with amax / max rounding to 0 and to <= 2^-127,
# and the smallest rounding to >= 2^-126 (exact rational arithmetic, scripted in the test)
RCP_6 = tl.constexpr(0.16666667163372040)
RCEIL_6_Z, RCEIL_6_H, RCEIL_6_N = tl.constexpr(0x3), tl.constexpr(0x1400001), tl.constexpr(0x1C00000)
RCEIL_448_Z, RCEIL_448_H, RCEIL_448_N = tl.constexpr(0xE0), tl.constexpr(0x4600001), tl.constexpr(0x4E00000)


@triton.jit
def mx_exponent(mb, EMAX: tl.constexpr, ELEM_MAX: tl.constexpr, RCEIL: tl.constexpr):
    """Unbiased E8M0 exponent (int32, in [-127, 127]) from block-amax bits ``mb``."""
    if RCEIL:
        # v = amax / ELEM_MAX correctly rounded: div_steps where v is normal (its bits are div_rn's,
        # tests/test_kernel_fast_paths.py checks every float32 amax); below, only which of 0,
        # (0, 2^-127] or (2^-127, 2^-126) v falls in matters, decided on amax's bits.
        if ELEM_MAX == 6.0:
            v = div_steps(mb.to(tl.float32, bitcast=True), ELEM_MAX, RCP_6)
            z, h, n = RCEIL_6_Z, RCEIL_6_H, RCEIL_6_N
        else:
            v = div_steps(mb.to(tl.float32, bitcast=True), ELEM_MAX, RCP_448)
            z, h, n = RCEIL_448_Z, RCEIL_448_H, RCEIL_448_N
        vb = v.to(tl.int32, bitcast=True)
        be = vb >> 23
        # exact ceil(log2 v) from the bits (frexp semantics: v == 0 gives 0)
        e = tl.where((vb & 0x7FFFFF) != 0, be - 126, be - 127)
        e = tl.where(mb < n, tl.where(mb > h, -126, tl.where(mb > z, -127, 0)), e)
    else:
        e = (mb >> 23) - 127 - EMAX  # a subnormal amax lands below -127 and is clamped
    e = tl.where(mb == 0, -127, e)
    return tl.minimum(tl.maximum(e, -127), 127)


@triton.jit
def mx_kernel(
    x_ptr, out_ptr, q_ptr, s_ptr,
    M, K, KP, sxm, som, sqm, ssm,
    FAKE: tl.constexpr, FP4: tl.constexpr, RCEIL: tl.constexpr,
    INF_POS: tl.constexpr, INF_NEG: tl.constexpr, NAN_CODE: tl.constexpr,
    BM: tl.constexpr, BK: tl.constexpr, KFAST: tl.constexpr,
):
    NB: tl.constexpr = BK // 32
    pid_m, pid_k = tile_ids(KFAST)
    rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    rk = pid_k * BK + tl.arange(0, BK)
    row_ok = rm[:, None] < M
    x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :], mask=row_ok & (rk[None, :] < K), other=0.0)
    xb = tl.reshape(x.to(tl.float32), (BM, NB, 32))

    mb = tl.max(xb.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=2)
    nonfinite = mb >= 0x7F800000
    if FP4:
        e = mx_exponent(mb, 2, 6.0, RCEIL)
    else:
        e = mx_exponent(mb, 8, 448.0, RCEIL)
    # 2^-e and 2^e as float32 (2^-127 is the subnormal with bit 22 set)
    inv = tl.where(e == 127, 0x00400000, (127 - e) << 23).to(tl.float32, bitcast=True)
    scl = tl.where(e == -127, 0x00400000, (e + 127) << 23).to(tl.float32, bitcast=True)
    inv = tl.where(nonfinite, nan_like(inv), inv)
    scl = tl.where(nonfinite, nan_like(scl), scl)

    v = xb * inv[:, :, None]
    finite = tl.max(mb, axis=None) < 0x7F800000
    if FP4:
        if FAKE:
            deq = e2m1_round_sat(v, xb)  # a NaN/Inf block's scl is NaN
    else:
        if finite:
            qb = cast_fp8_finite(v, tl.float8e4nv)
        else:
            qb = cast_fp8_bits(v, tl.float8e4nv, 448.0, INF_POS, INF_NEG, NAN_CODE)
        deq = fp8_bits_to_f32(qb, tl.float8e4nv)
    if FAKE:
        out = tl.reshape(deq * scl[:, :, None], (BM, BK))
        tl.store(out_ptr + rm[:, None] * som + rk[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=row_ok & (rk[None, :] < K))
    else:
        if FP4:
            code = tl.reshape(tl.where(nonfinite[:, :, None], 0, e2m1_code_sat(v, xb)), (BM, BK))
            packed = pack_nibbles(code, BM, BK)
            rp = pid_k * (BK // 2) + tl.arange(0, BK // 2)
            tl.store(q_ptr + rm[:, None] * sqm + rp[None, :], packed, mask=row_ok & (rp[None, :] < KP // 2))
        else:
            q = tl.reshape(qb, (BM, BK))
            tl.store(q_ptr + rm[:, None] * sqm + rk[None, :], q, mask=row_ok & (rk[None, :] < KP))
        sbits = tl.where(nonfinite, 255, e + 127).to(tl.uint8)
        rs = pid_k * NB + tl.arange(0, NB)
        tl.store(s_ptr + rm[:, None] * ssm + rs[None, :], sbits, mask=row_ok & (rs[None, :] < KP // 32))


@triton.jit
def mxfp4_quant_pairs_kernel(
    xp_ptr, q_ptr, s_ptr, M, KH, KP, sxm, sqm, ssm,
    RCEIL: tl.constexpr, SRC: tl.constexpr, PAIR: tl.constexpr, BM: tl.constexpr, BH: tl.constexpr,
    KFAST: tl.constexpr, ITERS: tl.constexpr,
):
    """Packed MXFP4 quantize of an even-K tensor read as element pairs, ITERS column tiles
    per program (see ``nvfp4_quant_pairs_kernel``); the same numbers as ``mx_kernel``."""
    NB: tl.constexpr = BH // 16
    pid_m, pid_k = tile_ids(KFAST)
    rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    row_ok = rm[:, None] < M
    for it in range(ITERS):
        kt = pid_k * ITERS + it
        rh = kt * BH + tl.arange(0, BH)
        v = tl.reshape(tl.load(xp_ptr + rm[:, None] * sxm + rh[None, :], mask=row_ok & (rh[None, :] < KH), other=0),
                       (BM, NB, 16))
        xe, xo = pair_floats(v, SRC, PAIR)
        mb = tl.reduce(max_abs_nan(xe, xo), 2, max_abs_nan).to(tl.int32, bitcast=True)
        nonfinite = mb >= 0x7F800000
        e = mx_exponent(mb, 2, 6.0, RCEIL)
        inv = tl.where(e == 127, 0x00400000, (127 - e) << 23).to(tl.float32, bitcast=True)[:, :, None]
        keep = tl.where(nonfinite, 0, 0xFF)[:, :, None]  # NaN/Inf block: codes 0, as NaN x 2^-e gives
        pair = pair_byte(e2m1_mag(xe * inv), e2m1_mag(xo * inv), v, xe, xo, keep, PAIR)
        packed = tl.reshape(pair, (BM, BH)).to(tl.uint8)
        tl.store(q_ptr + rm[:, None] * sqm + rh[None, :], packed, mask=row_ok & (rh[None, :] < KP // 2))
        sbits = tl.where(nonfinite, 255, e + 127).to(tl.uint8)
        rs = kt * NB + tl.arange(0, NB)
        tl.store(s_ptr + rm[:, None] * ssm + rs[None, :], sbits, mask=row_ok & (rs[None, :] < KP // 32))
