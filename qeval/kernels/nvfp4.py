"""NVFP4 fake-quant and packed quantize in one Triton pass (plus an amax pass when dynamic).

Mirrors ``qeval.formats.nvfp4`` step for step: ``s_g = amax / 2688`` (1 if that is 0),
``s_b = e4m3(clamp(amax_b / (6 s_g), 2^-9, 448))`` (1 for an all-zero block,
NaN for a block holding NaN/Inf), ``q = RNE_E2M1(x / (fp32(s_b) * s_g))``.
A tile where ``_common.quotient_ok`` holds takes the short code path
(``div_fast``, ``e2m1_code_finite``), with the same bits. ``SPLIT`` (the exact
emulation's GEMM operand) writes ``value x block scale`` (at most 6 significant
bits: exact in BF16/FP16) and the global scale, instead of the fake-quantized value.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import (all_ok, decode_scale, div_fast, e2m1_code, e2m1_code_finite, e2m1_round, e2m1_value, half_to_f32,
                      load_pairs, nan_like, pack_nibbles, quotient_ok, recip, tile_ids)

G = 16


@triton.jit
def nvfp4_kernel(
    x_ptr, out_ptr, q_ptr, s_ptr, amax_ptr, gs_ptr,
    M, K, KP, sxm, som, sqm, ssm,
    FAKE: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, KFAST: tl.constexpr, SPLIT: tl.constexpr = False,
):
    NB: tl.constexpr = BK // 16
    pid_m, pid_k = tile_ids(KFAST)
    rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    rk = pid_k * BK + tl.arange(0, BK)
    row_ok = rm[:, None] < M
    x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :], mask=row_ok & (rk[None, :] < K), other=0.0)
    xb = tl.reshape(x.to(tl.float32), (BM, NB, 16))

    amax = tl.load(amax_ptr)
    s_g = decode_scale(amax, 2688.0)

    bits = xb.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    mb = tl.max(bits, axis=2)  # NaN/Inf blocks come out >= INF bits
    nonfinite = mb >= 0x7F800000
    bamax = mb.to(tl.float32, bitcast=True)
    sb = tl.math.div_rn(bamax, 6.0 * s_g)
    sb = tl.where(sb == 0.0, 1.0, sb)
    sb = tl.where(sb < 0.001953125, 0.001953125, sb)
    sb = tl.where(sb > 448.0, 448.0, sb)
    sb8 = sb.to(tl.float8e4nv, fp_downcast_rounding="rtne")
    sbf = tl.where(nonfinite, nan_like(sb), sb8.to(tl.float32))
    eff = sbf * s_g

    fast = all_ok(quotient_ok(mb, eff))
    if fast:
        q = div_fast(xb, eff[:, :, None], recip(eff)[:, :, None])
    else:
        q = tl.math.div_rn(xb, eff[:, :, None])
    if FAKE:
        r = e2m1_round(q)
        if SPLIT:
            out = tl.reshape(r * sbf[:, :, None], (BM, BK))
            tl.store(gs_ptr, s_g, mask=(pid_m == 0) & (pid_k == 0))
        else:
            out = tl.reshape(r * eff[:, :, None], (BM, BK))
        tl.store(out_ptr + rm[:, None] * som + rk[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=row_ok & (rk[None, :] < K))
    else:
        if fast:
            code = tl.reshape(e2m1_code_finite(q), (BM, BK))
        else:
            code = tl.reshape(e2m1_code(e2m1_round(q)), (BM, BK))
        packed = pack_nibbles(code, BM, BK)
        rp = pid_k * (BK // 2) + tl.arange(0, BK // 2)
        tl.store(q_ptr + rm[:, None] * sqm + rp[None, :], packed, mask=row_ok & (rp[None, :] < KP // 2))
        sbits = tl.where(nonfinite, 0x7F, sb8.to(tl.uint8, bitcast=True).to(tl.int32)).to(tl.uint8)
        rs = pid_k * NB + tl.arange(0, NB)
        tl.store(s_ptr + rm[:, None] * ssm + rs[None, :], sbits, mask=row_ok & (rs[None, :] < KP // 16))
        tl.store(gs_ptr, s_g, mask=(pid_m == 0) & (pid_k == 0))


@triton.jit
def nvfp4_quant_pairs_kernel(
    xp_ptr, q_ptr, s_ptr, amax_ptr, gs_ptr, M, KH, KP, sxm, sqm, ssm,
    SRC: tl.constexpr, PAIR: tl.constexpr, BM: tl.constexpr, BH: tl.constexpr, KFAST: tl.constexpr,
):
    """Packed NVFP4 quantize of an even-K tensor read as element pairs (one integer per
    output byte): the same numbers as ``nvfp4_kernel``, without shuffling nibbles
    across threads. ``xp_ptr`` is x viewed as int32 (16-bit x) or int64 (float32 x)."""
    NB: tl.constexpr = BH // 8
    pid_m, pid_k = tile_ids(KFAST)
    rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    rh = pid_k * BH + tl.arange(0, BH)
    row_ok = rm[:, None] < M
    lo, hi = load_pairs(xp_ptr, rm[:, None] * sxm + rh[None, :], row_ok & (rh[None, :] < KH), PAIR)
    xe = tl.reshape(half_to_f32(lo, SRC), (BM, NB, 8))
    xo = tl.reshape(half_to_f32(hi, SRC), (BM, NB, 8))

    amax = tl.load(amax_ptr)
    s_g = decode_scale(amax, 2688.0)
    mb = tl.maximum(tl.max(xe.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=2),
                    tl.max(xo.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=2))
    nonfinite = mb >= 0x7F800000
    sb = tl.math.div_rn(mb.to(tl.float32, bitcast=True), 6.0 * s_g)
    sb = tl.where(sb == 0.0, 1.0, sb)
    sb = tl.where(sb < 0.001953125, 0.001953125, sb)
    sb = tl.where(sb > 448.0, 448.0, sb)
    sb8 = sb.to(tl.float8e4nv, fp_downcast_rounding="rtne")
    eff = tl.where(nonfinite, nan_like(sb), sb8.to(tl.float32)) * s_g

    if all_ok(quotient_ok(mb, eff)):
        y = recip(eff)[:, :, None]
        ce = e2m1_code_finite(div_fast(xe, eff[:, :, None], y))
        co = e2m1_code_finite(div_fast(xo, eff[:, :, None], y))
    else:
        ce = e2m1_code(e2m1_round(tl.math.div_rn(xe, eff[:, :, None])))
        co = e2m1_code(e2m1_round(tl.math.div_rn(xo, eff[:, :, None])))
    packed = tl.reshape(ce | (co << 4), (BM, BH)).to(tl.uint8)
    tl.store(q_ptr + rm[:, None] * sqm + rh[None, :], packed, mask=row_ok & (rh[None, :] < KP // 2))
    sbits = tl.where(nonfinite, 0x7F, sb8.to(tl.uint8, bitcast=True).to(tl.int32)).to(tl.uint8)
    rs = pid_k * NB + tl.arange(0, NB)
    tl.store(s_ptr + rm[:, None] * ssm + rs[None, :], sbits, mask=row_ok & (rs[None, :] < KP // 16))
    tl.store(gs_ptr, s_g, mask=(pid_m == 0) & (pid_k == 0))


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
