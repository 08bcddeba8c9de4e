"""FP8 (E4M3 / E5M2) fake-quant and quantize: per tensor, per row, 1x128 and 128x128 blocks.

Mirrors ``qeval.formats.fp8``: ``s = amax / fmax`` (1 where that is 0) with
amax over finite values, ``q = cast_saturating(x / s)``, ``x_hat = fp32(q) * s``.
Both divisions are correctly rounded. A tile where ``_common.quotient_ok`` holds
(the usual case: finite, scales in range) divides by ``_common.div_fast`` (one
reciprocal per scale, FMA corrections per element, ``div_rn``'s bits) and skips
the Inf/NaN patching of the codes; any other tile runs ``div_rn``. ``SPLIT``
(the exact emulation's GEMM operand) writes the codes' values unscaled, in the
output dtype (exact: FP8 values fit BF16 and FP16), and the scales beside them.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import (abs_bits, all_ok, cast_fp8_bits, cast_fp8_finite, decode_scale, div_fast, finite_abs,
                      fp8_bits_to_f32, quotient_ok, recip, tile_ids)


@triton.jit
def to_codes(x, d, fast, FP8: tl.constexpr, FMAX: tl.constexpr, INF_POS: tl.constexpr, INF_NEG: tl.constexpr,
             NAN_CODE: tl.constexpr):
    """FP8 codes of ``x / d``; ``fast``: ``quotient_ok`` holds for the tile (``div_fast``, no
    Inf/NaN patching)."""
    if fast:
        q = cast_fp8_finite(div_fast(x, d, recip(d)), FP8)
    else:  # (no early return: Triton can't lower one inside the row sweep's loop)
        q = cast_fp8_bits(tl.math.div_rn(x, d), FP8, FMAX, INF_POS, INF_NEG, NAN_CODE)
    return q


@triton.jit
def fp8_tensor_kernel(
    x_ptr, out_ptr, q_ptr, amax_ptr, s_ptr, N,
    FAKE: tl.constexpr, FP8: tl.constexpr, FMAX: tl.constexpr,
    INF_POS: tl.constexpr, INF_NEG: tl.constexpr, NAN_CODE: tl.constexpr, BLOCK: tl.constexpr,
    SPLIT: tl.constexpr = False,
):
    """One float32 scale for the whole (flat, contiguous) tensor, from the amax at amax_ptr.
    FAKE: out = value x scale; FAKE and SPLIT: out = value, and the scale at s_ptr."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = decode_scale(tl.load(amax_ptr), FMAX)
    q = to_codes(x, s, quotient_ok(tl.max(abs_bits(x), axis=0), s), FP8, FMAX, INF_POS, INF_NEG, NAN_CODE)
    if FAKE:
        out = fp8_bits_to_f32(q, FP8)
        if not SPLIT:
            out = out * s
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(q_ptr + offs, q, mask=mask)
    if SPLIT or not FAKE:
        tl.store(s_ptr, s, mask=pid == 0)


@triton.jit
def _row_tile(x, FP8: tl.constexpr, FMAX: tl.constexpr, INF_POS: tl.constexpr, INF_NEG: tl.constexpr,
              NAN_CODE: tl.constexpr, AXIS: tl.constexpr):
    """Scales along AXIS (the last) of a tile and its codes: (codes uint8, scales)."""
    mb = tl.max(abs_bits(x), axis=AXIS)
    if tl.max(mb, axis=None) < 0x7F800000:  # finite tile: the amax is the integer max of the bits
        s = decode_scale(mb.to(tl.float32, bitcast=True), FMAX)
    else:
        s = decode_scale(tl.max(finite_abs(x), axis=AXIS), FMAX)
    q = to_codes(x, tl.expand_dims(s, AXIS), all_ok(quotient_ok(mb, s)), FP8, FMAX, INF_POS, INF_NEG, NAN_CODE)
    return q, s


@triton.jit
def _store_rows(q, s, out_ptr, q_ptr, rm, rk, som, sqm, mask, FAKE: tl.constexpr, SPLIT: tl.constexpr,
                FP8: tl.constexpr):
    """A row tile's codes, or (FAKE) its values times the row scales s (SPLIT: the values only)."""
    if FAKE:
        out = fp8_bits_to_f32(q, FP8)
        if not SPLIT:
            out = out * s[:, None]
        tl.store(out_ptr + rm[:, None] * som + rk[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(q_ptr + rm[:, None] * sqm + rk[None, :], q, mask=mask)


@triton.jit
def fp8_row_kernel(
    x_ptr, out_ptr, q_ptr, s_ptr, M, K, sxm, som, sqm,
    FAKE: tl.constexpr, FP8: tl.constexpr, FMAX: tl.constexpr,
    INF_POS: tl.constexpr, INF_NEG: tl.constexpr, NAN_CODE: tl.constexpr,
    BM: tl.constexpr, BK: tl.constexpr, SINGLE: tl.constexpr, SPLIT: tl.constexpr = False,
):
    """One scale per row (per token / per output channel). SINGLE: the row fits one tile
    (one read); else an amax sweep, then a quantize sweep (its re-read mostly hits L2).
    FAKE: out = value x scale; FAKE and SPLIT: out = value, and the scales at s_ptr."""
    pid = tl.program_id(0)
    rm = (pid * BM + tl.arange(0, BM)).to(tl.int64)
    row_ok = rm[:, None] < M
    if SINGLE:
        rk = tl.arange(0, BK)
        mask = row_ok & (rk[None, :] < K)
        x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :], mask=mask, other=0.0).to(tl.float32)
        q, s = _row_tile(x, FP8, FMAX, INF_POS, INF_NEG, NAN_CODE, 1)
        _store_rows(q, s, out_ptr, q_ptr, rm, rk, som, sqm, mask, FAKE, SPLIT, FP8)
    else:
        amax = tl.zeros([BM], tl.float32)
        mb = tl.zeros([BM], tl.int32)  # max |x| bits, NaN/Inf included: decides the fast path
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :], mask=row_ok & (rk[None, :] < K), other=0.0)
            x = x.to(tl.float32)
            amax = tl.maximum(amax, tl.max(finite_abs(x), axis=1))
            mb = tl.maximum(mb, tl.max(abs_bits(x), axis=1))
        s = decode_scale(amax, FMAX)
        fast = all_ok(quotient_ok(mb, s))
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            mask = row_ok & (rk[None, :] < K)
            x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :], mask=mask, other=0.0).to(tl.float32)
            q = to_codes(x, s[:, None], fast, FP8, FMAX, INF_POS, INF_NEG, NAN_CODE)
            _store_rows(q, s, out_ptr, q_ptr, rm, rk, som, sqm, mask, FAKE, SPLIT, FP8)
    if SPLIT or not FAKE:
        tl.store(s_ptr + rm, s, mask=rm < M)


@triton.jit
def fp8_block_kernel(
    x_ptr, out_ptr, q_ptr, s_ptr, M, K, KP, sxm, som, sqm, ssm, ssb,
    FAKE: tl.constexpr, TILE2D: tl.constexpr, FP8: tl.constexpr, FMAX: tl.constexpr,
    INF_POS: tl.constexpr, INF_NEG: tl.constexpr, NAN_CODE: tl.constexpr,
    BM: tl.constexpr, BK: tl.constexpr, KFAST: tl.constexpr,
):
    """128-blocks along K. TILE2D: one scale per 128x128 tile of a [L, M, K] stack
    (weights; program axis 0 runs over L * ceil(M / 128)); else one per 1x128 group."""
    NB: tl.constexpr = BK // 128
    pid_m, pid_k = tile_ids(KFAST)
    if TILE2D:
        mt = tl.cdiv(M, BM)
        mat = pid_m // mt
        rm = ((pid_m % mt) * BM + tl.arange(0, BM)).to(tl.int64)
        base = mat.to(tl.int64) * M
    else:
        rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
        base = 0
    rk = pid_k * BK + tl.arange(0, BK)
    row_ok = rm[:, None] < M
    x = tl.load(x_ptr + (base + rm[:, None]) * sxm + rk[None, :], mask=row_ok & (rk[None, :] < K), other=0.0)
    x = x.to(tl.float32)
    if TILE2D:
        mb = tl.max(tl.max(abs_bits(x), axis=1), axis=0)
        amax = mb.to(tl.float32, bitcast=True)
        if mb < 0x7F800000:
            s = decode_scale(amax, FMAX)
        else:
            s = decode_scale(tl.max(tl.max(finite_abs(x), axis=1), axis=0), FMAX)
        q = to_codes(x, s, quotient_ok(mb, s), FP8, FMAX, INF_POS, INF_NEG, NAN_CODE)
        if FAKE:
            deq = fp8_bits_to_f32(q, FP8) * s
    else:
        xb = tl.reshape(x, (BM, NB, 128))
        qb, s = _row_tile(xb, FP8, FMAX, INF_POS, INF_NEG, NAN_CODE, 2)
        q = tl.reshape(qb, (BM, BK))
        if FAKE:
            deq = tl.reshape(fp8_bits_to_f32(qb, FP8) * s[:, :, None], (BM, BK))
    if FAKE:
        tl.store(out_ptr + (base + rm[:, None]) * som + rk[None, :], deq.to(out_ptr.dtype.element_ty),
                 mask=row_ok & (rk[None, :] < K))
    else:
        tl.store(q_ptr + (base + rm[:, None]) * sqm + rk[None, :], q, mask=row_ok & (rk[None, :] < KP))
        if TILE2D:
            # scale layout [L, ceil(M/128), KP/128]: ssb = stride of one matrix, ssm = of one row-block
            tl.store(s_ptr + mat.to(tl.int64) * ssb + (pid_m % mt) * ssm + pid_k, s)
        else:
            rs = pid_k * NB + tl.arange(0, NB)
            tl.store(s_ptr + rm[:, None] * ssm + rs[None, :], s, mask=row_ok & (rs[None, :] < KP // 128))
