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

from ._common import (RCP_448, abs_bits, all_ok, cast_fp8_bits, cast_fp8_finite, decode_scale, div_fast, div_steps,
                      finite_abs, fp8_bits_to_f32, max_abs_nan, quotient_ok, recip, tile_ids)


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


# Group scales amax / FMAX by div_steps: exact (div_rn's bits; tests/test_kernel_fast_paths.py
# compares every amax) where amax lies in [FMAX 2^-60, FMAX 2^100], where the scale also
# lies in quotient_ok's range and no quotient overflows; an all-zero group has scale 1.
RCP_57344 = tl.constexpr(1.743861685099546e-05)


@triton.jit
def group_scales(mb, FMAX: tl.constexpr):
    """(scales, ok) from groups' max |x| bits ``mb``; ``ok``: the fast path holds for the group."""
    if FMAX == 448.0:
        s = div_steps(mb.to(tl.float32, bitcast=True), FMAX, RCP_448)
        ok = (mb <= 0x75E00000) & ((mb >= 0x25E00000) | (mb == 0))
    else:
        s = div_steps(mb.to(tl.float32, bitcast=True), FMAX, RCP_57344)
        ok = (mb <= 0x79600000) & ((mb >= 0x29600000) | (mb == 0))
    return tl.where(mb == 0, 1.0, s), ok


@triton.jit
def max_bits(x, axis):
    """max |x| along axis as int32 bits, >= INF bits where the group holds NaN/Inf."""
    return tl.reduce(tl.abs(x), axis, max_abs_nan).to(tl.int32, bitcast=True)


@triton.jit
def _row_tile(x, FP8: tl.constexpr, FMAX: tl.constexpr, INF_POS: tl.constexpr, INF_NEG: tl.constexpr,
              NAN_CODE: tl.constexpr, AXIS: tl.constexpr):
    """Scales along AXIS (the last) of a tile and its codes: (codes uint8, scales)."""
    mb = max_bits(x, AXIS)
    s, ok = group_scales(mb, FMAX)
    if all_ok(ok):
        q = to_codes(x, tl.expand_dims(s, AXIS), True, FP8, FMAX, INF_POS, INF_NEG, NAN_CODE)
    else:
        if tl.max(mb, axis=None) < 0x7F800000:  # finite tile: the amax is the max of the bits
            s = decode_scale(mb.to(tl.float32, bitcast=True), FMAX)
        else:
            s = decode_scale(tl.max(finite_abs(x), axis=AXIS), FMAX)
        q = to_codes(x, tl.expand_dims(s, AXIS), False, FP8, FMAX, INF_POS, INF_NEG, NAN_CODE)
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
        mb = tl.zeros([BM], tl.int32)  # max |x| bits, NaN/Inf included
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :], mask=row_ok & (rk[None, :] < K), other=0.0)
            mb = tl.maximum(mb, max_bits(x.to(tl.float32), 1))
        s, ok = group_scales(mb, FMAX)
        fast = all_ok(ok)
        if not fast:
            if tl.max(mb, axis=None) < 0x7F800000:
                s = decode_scale(mb.to(tl.float32, bitcast=True), FMAX)
            else:  # a row holds NaN/Inf: its scale comes from the finite values (one more sweep)
                amax = tl.zeros([BM], tl.float32)
                for k0 in range(0, K, BK):
                    rk = k0 + tl.arange(0, BK)
                    x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :], mask=row_ok & (rk[None, :] < K), other=0.0)
                    amax = tl.maximum(amax, tl.max(finite_abs(x.to(tl.float32)), axis=1))
                s = decode_scale(amax, FMAX)
        n = tl.cdiv(K, BK)
        for i in range(0, n):  # last chunk first: the most recently read is likeliest still in L2
            rk = (n - 1 - i) * BK + tl.arange(0, BK)
            mask = row_ok & (rk[None, :] < K)
            x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :], mask=mask, other=0.0).to(tl.float32)
            q = to_codes(x, s[:, None], fast, FP8, FMAX, INF_POS, INF_NEG, NAN_CODE)
            _store_rows(q, s, out_ptr, q_ptr, rm, rk, som, sqm, mask, FAKE, SPLIT, FP8)
    if SPLIT or not FAKE:
        tl.store(s_ptr + rm, s, mask=rm < M)


@triton.jit
def fp8_block_kernel(
    x_ptr, out_ptr, q_ptr, s_ptr, M, K, KP, sxm, som, sqm, ssm,
    FAKE: tl.constexpr, FP8: tl.constexpr, FMAX: tl.constexpr,
    INF_POS: tl.constexpr, INF_NEG: tl.constexpr, NAN_CODE: tl.constexpr,
    BM: tl.constexpr, BK: tl.constexpr, KFAST: tl.constexpr,
):
    """One scale per 1x128 group along K (activations)."""
    NB: tl.constexpr = BK // 128
    pid_m, pid_k = tile_ids(KFAST)
    rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    rk = pid_k * BK + tl.arange(0, BK)
    row_ok = rm[:, None] < M
    x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :], mask=row_ok & (rk[None, :] < K), other=0.0)
    qb, s = _row_tile(tl.reshape(x.to(tl.float32), (BM, NB, 128)), FP8, FMAX, INF_POS, INF_NEG, NAN_CODE, 2)
    if FAKE:
        deq = tl.reshape(fp8_bits_to_f32(qb, FP8) * s[:, :, None], (BM, BK))
        tl.store(out_ptr + rm[:, None] * som + rk[None, :], deq.to(out_ptr.dtype.element_ty),
                 mask=row_ok & (rk[None, :] < K))
    else:
        tl.store(q_ptr + rm[:, None] * sqm + rk[None, :], tl.reshape(qb, (BM, BK)), mask=row_ok & (rk[None, :] < KP))
        rs = pid_k * NB + tl.arange(0, NB)
        tl.store(s_ptr + rm[:, None] * ssm + rs[None, :], s, mask=row_ok & (rs[None, :] < KP // 128))


@triton.jit
def fp8_tile2d_kernel(
    x_ptr, out_ptr, q_ptr, s_ptr, M, K, KP, sxm, som, sqm, ssm, ssb,
    FAKE: tl.constexpr, FP8: tl.constexpr, FMAX: tl.constexpr,
    INF_POS: tl.constexpr, INF_NEG: tl.constexpr, NAN_CODE: tl.constexpr, CH: tl.constexpr, KFAST: tl.constexpr,
):
    """One scale per 128x128 tile of a [L, M, K] stack (weights; program axis 0 runs over
    L * ceil(M / 128)), in two sweeps of CH-row chunks: the tile's amax, then its codes, last
    chunk first (the re-read mostly hits L2). Holding one chunk at a time keeps registers few,
    so many tiles are in flight (holding the whole tile allowed one per SM: 58% of copy)."""
    pid_m, pid_k = tile_ids(KFAST)
    mt = tl.cdiv(M, 128)
    mat = pid_m // mt
    r0 = (pid_m % mt) * 128
    base = mat.to(tl.int64) * M
    rk = pid_k * 128 + tl.arange(0, 128)
    mb = tl.zeros([CH], tl.int32)
    for c in range(0, 128, CH):
        rm = (r0 + c + tl.arange(0, CH)).to(tl.int64)
        x = tl.load(x_ptr + (base + rm[:, None]) * sxm + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K),
                    other=0.0)
        mb = tl.maximum(mb, max_bits(x.to(tl.float32), 1))
    m = tl.max(mb, axis=0)
    s, fast = group_scales(m, FMAX)
    if not fast:
        if m < 0x7F800000:
            s = decode_scale(m.to(tl.float32, bitcast=True), FMAX)
        else:  # NaN/Inf in the tile: the scale comes from its finite values (one more sweep)
            amax = tl.zeros([CH], tl.float32)
            for c in range(0, 128, CH):
                rm = (r0 + c + tl.arange(0, CH)).to(tl.int64)
                x = tl.load(x_ptr + (base + rm[:, None]) * sxm + rk[None, :],
                            mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
                amax = tl.maximum(amax, tl.max(finite_abs(x.to(tl.float32)), axis=1))
            s = decode_scale(tl.max(amax, axis=0), FMAX)
    for i in range(0, 128 // CH):
        rm = (r0 + 128 - CH * (i + 1) + tl.arange(0, CH)).to(tl.int64)
        row_ok = rm[:, None] < M
        x = tl.load(x_ptr + (base + rm[:, None]) * sxm + rk[None, :], mask=row_ok & (rk[None, :] < K), other=0.0)
        q = to_codes(x.to(tl.float32), s, fast, FP8, FMAX, INF_POS, INF_NEG, NAN_CODE)
        if FAKE:
            tl.store(out_ptr + (base + rm[:, None]) * som + rk[None, :],
                     (fp8_bits_to_f32(q, FP8) * s).to(out_ptr.dtype.element_ty), mask=row_ok & (rk[None, :] < K))
        else:
            tl.store(q_ptr + (base + rm[:, None]) * sqm + rk[None, :], q, mask=row_ok & (rk[None, :] < KP))
    if not FAKE:
        # scale layout [L, ceil(M/128), KP/128]: ssb = stride of one matrix, ssm = of one row-block
        tl.store(s_ptr + mat.to(tl.int64) * ssb + (pid_m % mt) * ssm + pid_k, s)
