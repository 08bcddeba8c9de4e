"""The kernels' fast paths give the bits of their general code, on the GPU, exhaustively.

``div_fast`` (and NVFP4's ``div_split``) against the correctly rounded division
(below), and the FP4 kernels' ``e2m1_round_sat`` / ``e2m1_code_sat`` of ``div_steps`` and
``div_split`` against ``e2m1_round`` / ``e2m1_code`` of ``div_rn``, for every finite
float32 numerator.

The quantize kernels divide by a per-group scale with ``div_fast`` (a reciprocal
per group, two FMA correction steps per element) wherever ``quotient_ok`` holds,
and with ``div_rn`` elsewhere. These tests compare the two on the GPU over
exhaustive grids: every float32 bit pattern against divisors spread over the
allowed range (all-ones and all-zeros mantissas included), and every bf16 value
against the divisors the FP8 and NVFP4 kernels actually form from a bf16 amax.
A pair where ``quotient_ok`` is false is not compared (the kernels never take
``div_fast`` there), but the tests check that such pairs are the rare ones.
Quotients below 2^-20 (every FP8 / E2M1 grid rounds them to a signed zero) need
only keep the sign and stay below 2^-19; all others must have div_rn's bits.
"""

from __future__ import annotations

import pytest
import torch

from qeval import kernels

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not kernels.available(), reason="needs CUDA and Triton")]

if kernels.available():
    import triton
    import triton.language as tl

    from qeval.kernels._common import (LAUNCH, abs_bits, div_fast, div_split, div_steps, e2m1_code, e2m1_code_sat,
                                       e2m1_round, e2m1_round_sat, quotient_ok, recip, recip_lo)

    @triton.jit
    def _quotient(x, d, SPLIT: tl.constexpr):
        """The fast quotient under test: div_steps (FP8, MX), or div_split (NVFP4)."""
        y = recip(d)
        if SPLIT:
            return div_split(x, d, y, recip_lo(d, y))
        return div_steps(x, d, y)

    @triton.jit
    def _e2m1_mismatch_kernel(d_ptr, out_ptr, BLOCK: tl.constexpr, SPLIT: tl.constexpr):
        """Program (i, j): divisor j against float32 bit patterns i * BLOCK + t. out[0] += finite x,
        out[1] += grid values that differ (bits), out[2] += codes that differ, out[3] += overflows
        (x / d beyond 2^100, where div_steps leaves Markstein's range)."""
        d = tl.load(d_ptr + tl.program_id(1))
        b = (tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)).to(tl.int32)
        x = b.to(tl.float32, bitcast=True)
        finite = (b & 0x7FFFFFFF) < 0x7F800000
        q = _quotient(x, d, SPLIT)
        ref = e2m1_round(tl.math.div_rn(x, d))
        r_bad = finite & (e2m1_round_sat(q, x).to(tl.int32, bitcast=True) != ref.to(tl.int32, bitcast=True))
        c_bad = finite & (e2m1_code_sat(q, x) != e2m1_code(ref))
        over = finite & ~quotient_ok(abs_bits(x), d)
        tl.atomic_add(out_ptr, tl.sum(finite.to(tl.int64)))
        tl.atomic_add(out_ptr + 1, tl.sum(r_bad.to(tl.int64)))
        tl.atomic_add(out_ptr + 2, tl.sum(c_bad.to(tl.int64)))
        tl.atomic_add(out_ptr + 3, tl.sum(over.to(tl.int64)))

    from qeval.kernels.fp8 import group_scales
    from qeval.kernels.mx import mx_exponent
    from qeval.kernels.nvfp4 import block_scales, block_scales_fast

    @triton.jit
    def _scale_mismatch_kernel(out_ptr, FMAX: tl.constexpr, BLOCK: tl.constexpr):
        """Program i: amax bit patterns i * BLOCK + t (finite, >= 0). FP8 scales amax / FMAX from
        group_scales where it says ok (out[0] += those, out[1] += wrong); out[3] += recip(d) != 1 / d
        for d = the pattern where it lies in [2^-60, 2^100]."""
        mb = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int32)
        finite = mb <= 0x7F7FFFFF
        amax = mb.to(tl.float32, bitcast=True)
        s, ok = group_scales(mb, FMAX)
        ref = tl.where(amax == 0.0, 1.0, tl.math.div_rn(amax, FMAX))
        tl.atomic_add(out_ptr, tl.sum((finite & ok).to(tl.int64)))
        bad = finite & ok & (s.to(tl.int32, bitcast=True) != ref.to(tl.int32, bitcast=True))
        tl.atomic_add(out_ptr + 1, tl.sum(bad.to(tl.int64)))
        d_in = (mb >= 0x21800000) & (mb <= 0x71800000)  # [2^-60, 2^100]
        wrong = d_in & (recip(amax).to(tl.int32, bitcast=True) != tl.math.div_rn(1.0, amax).to(tl.int32, bitcast=True))
        tl.atomic_add(out_ptr + 3, tl.sum(wrong.to(tl.int64)))

    @triton.jit
    def _block_scales_kernel(sg_ptr, out_ptr, base, BLOCK: tl.constexpr):
        """NVFP4 block scales of amax bit patterns base + i: per pattern, (E4M3 bits, divisor bits,
        reciprocal bits) from block_scales_fast, then the same from block_scales and div_rn(1, .)."""
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mb = (base + i).to(tl.int32)
        s_g = tl.load(sg_ptr)
        sbf, sbits, eff, y, _ = block_scales_fast(mb, s_g)
        rbf, rbits = block_scales(mb, s_g)
        reff = rbf * s_g
        o = out_ptr + i.to(tl.int64) * 6
        tl.store(o, sbits.to(tl.int32))
        tl.store(o + 1, eff.to(tl.int32, bitcast=True))
        tl.store(o + 2, y.to(tl.int32, bitcast=True))
        tl.store(o + 3, rbits.to(tl.int32))
        tl.store(o + 4, reff.to(tl.int32, bitcast=True))
        tl.store(o + 5, tl.math.div_rn(1.0, reff).to(tl.int32, bitcast=True))

    @triton.jit
    def _rceil_mismatch_kernel(out_ptr, ELEM_MAX: tl.constexpr, BLOCK: tl.constexpr):
        """Program i: amax bit patterns i * BLOCK + t (finite, >= 0); out[0] += exponents that differ
        from ceil(log2(div_rn(amax, ELEM_MAX))) with frexp's v == 0 -> 0, clamped as the kernels do."""
        mb = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int32)
        v = tl.math.div_rn(mb.to(tl.float32, bitcast=True), ELEM_MAX)
        vb = v.to(tl.int32, bitcast=True)
        be = vb >> 23
        e = tl.where((vb & 0x7FFFFF) != 0, be - 126, be - 127)
        e = tl.where(be == 0, tl.where(vb > 0x00400000, -126, -127), e)
        e = tl.where(vb == 0, 0, e)
        e = tl.minimum(tl.maximum(tl.where(mb == 0, -127, e), -127), 127)
        wrong = (mb <= 0x7F7FFFFF) & (mx_exponent(mb, 0, ELEM_MAX, True) != e)
        tl.atomic_add(out_ptr, tl.sum(wrong.to(tl.int64)))

    @triton.jit
    def _mismatch_kernel(d_ptr, out_ptr, X_SHIFT: tl.constexpr, BLOCK: tl.constexpr, SPLIT: tl.constexpr):
        """Program (i, j): divisor j against x bit patterns (i * BLOCK + t) << X_SHIFT.
        out[0] += pairs compared, out[1] += mismatches. SPLIT: div_split, with x's sign ORed
        back as div_fast does (its callers take the sign from x)."""
        i = tl.program_id(0)
        d = tl.load(d_ptr + tl.program_id(1))
        xb = (i.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)) << X_SHIFT
        x = xb.to(tl.int32).to(tl.float32, bitcast=True)
        ok = quotient_ok(abs_bits(x), d)
        if SPLIT:
            a = _quotient(x, d, True).to(tl.int32, bitcast=True) | (x.to(tl.int32, bitcast=True) & -2147483648)
        else:
            a = div_fast(x, d, recip(d)).to(tl.int32, bitcast=True)
        b = tl.math.div_rn(x, d).to(tl.int32, bitcast=True)
        big = (b & 0x7FFFFFFF) >= 0x35800000  # |x / d| >= 2^-20
        tiny_ok = ((a & 0x7FFFFFFF) < 0x36000000) & ((a < 0) == (b < 0))  # < 2^-19, same sign
        wrong = tl.where(big, a != b, ~tiny_ok)
        tl.atomic_add(out_ptr, tl.sum(ok.to(tl.int64)))
        tl.atomic_add(out_ptr + 1, tl.sum((ok & wrong).to(tl.int64)))


def _count(divisors: torch.Tensor, x_bits: int, split: bool = False) -> tuple[int, int]:
    """(pairs compared, mismatches) of every x with the given bit width (its top bits:
    32 = every float32, 16 = every bf16) against each divisor."""
    d = divisors.to(torch.float32).cuda().contiguous()
    out = torch.zeros(2, dtype=torch.int64, device="cuda")
    block = 4096
    grid = (triton.cdiv(1 << x_bits, block), d.numel())
    _mismatch_kernel[grid](d, out, X_SHIFT=32 - x_bits, BLOCK=block, SPLIT=split, num_warps=8, **LAUNCH)
    compared, bad = out.tolist()
    return compared, bad


def _spread_divisors(n: int, gen: torch.Generator) -> torch.Tensor:
    """Divisors over quotient_ok's range [2^-60, 2^100]: random exponents and mantissas, and
    for each exponent drawn the all-ones and all-zeros mantissas (the hardest reciprocals)."""
    e = torch.randint(-60, 100, (n,), generator=gen)
    m = torch.randint(0, 1 << 23, (n,), generator=gen)
    rand = ((e + 127) << 23 | m).to(torch.int32).view(torch.float32)
    ones = ((e + 127) << 23 | ((1 << 23) - 1)).to(torch.int32).view(torch.float32)
    pow2 = ((e + 127) << 23).to(torch.int32).view(torch.float32)
    return torch.cat([rand, ones, pow2, torch.tensor([2.0**-60, 2.0**100])])


@pytest.mark.parametrize("split", [False, True], ids=["div_steps", "div_split"])
def test_e2m1_fast_helpers_every_float32_numerator(split):
    """All 2^32 float32 patterns as x, against divisors over the FP4 kernels' range [2^-60, 2^100]
    (1 and powers of two among them: MX's exact scaling): the grid value and the code from
    ``div_steps`` / ``div_split`` equal those of the correctly rounded quotient, overflowing
    quotients included."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    d = torch.cat([_spread_divisors(4, gen), torch.tensor([1.0, 0.25, 2.0**-40])]).cuda()
    out = torch.zeros(4, dtype=torch.int64, device="cuda")
    block = 8192
    _e2m1_mismatch_kernel[(2**32 // block, d.numel())](d, out, BLOCK=block, SPLIT=split, num_warps=8, **LAUNCH)
    finite, r_bad, c_bad, over = out.tolist()
    assert finite == d.numel() * (2**32 - 2**24), finite  # every pattern but Inf / NaN
    assert r_bad == 0 and c_bad == 0, f"{r_bad} values, {c_bad} codes of {finite} differ (divisors {d.tolist()})"
    assert over > 0, "no overflowing quotient was exercised"


@pytest.mark.parametrize("elem_max", [6.0, 448.0], ids=["mxfp4", "mxfp8"])
def test_rceil_exponent_every_float32_amax(elem_max):
    """MX "rceil": the exponent from div_steps (and amax thresholds below 2^-126) equals the one
    from the correctly rounded amax / max for every finite float32 amax."""
    import struct
    from fractions import Fraction

    from qeval.kernels import mx

    # the thresholds in qeval/kernels/mx.py, re-derived in exact arithmetic
    def largest_le(t):  # largest float32 bit pattern whose value is <= t (binary search)
        lo, hi = 0, 0x7F7FFFFF
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if Fraction(struct.unpack("<f", struct.pack("<i", mid))[0]) <= t:
                lo = mid
            else:
                hi = mid - 1
        return lo

    d = Fraction(int(elem_max))
    z, h = largest_le(d / 2**150), largest_le(d * (Fraction(1, 2**127) + Fraction(1, 2**150)))
    n = largest_le(d * (Fraction(1, 2**126) - Fraction(1, 2**150))) + 1
    name = "6" if elem_max == 6.0 else "448"
    assert (z, h, n) == tuple(getattr(mx, f"RCEIL_{name}_{k}").value for k in "ZHN")
    assert getattr(mx, f"RCP_{name}").value == torch.tensor(1 / elem_max, dtype=torch.float32).item()
    out = torch.zeros(1, dtype=torch.int64, device="cuda")
    block = 8192
    _rceil_mismatch_kernel[(0x7F800000 // block,)](out, ELEM_MAX=elem_max, BLOCK=block, num_warps=8, **LAUNCH)
    assert out.item() == 0, f"{out.item()} exponents differ"


@pytest.mark.parametrize("fmax", [448.0, 57344.0], ids=["e4m3", "e5m2"])
def test_group_scales_and_reciprocals_every_float32_amax(fmax):
    """Every finite float32 amax: FP8 group scales by div_steps where group_scales takes them,
    and recip(d) for every d in [2^-60, 2^100]: the correctly rounded bits."""
    out = torch.zeros(4, dtype=torch.int64, device="cuda")
    block = 8192
    _scale_mismatch_kernel[(0x7F800000 // block,)](out, FMAX=fmax, BLOCK=block, num_warps=8, **LAUNCH)
    taken, bad, _, bad_recip = out.tolist()
    assert bad_recip == 0, f"recip(d) differs from div_rn(1, d) for {bad_recip} divisor patterns"
    assert bad == 0, f"{bad} scales differ"
    # every amax in [fmax 2^-60, fmax 2^100] takes the fast path: 5/8 of the patterns
    assert taken == 0x50000001 + 1, taken  # the range, and amax 0


def test_nvfp4_block_scales_every_float32_amax():
    """NVFP4's fast block scales (E4M3 bits, divisor, its reciprocal) against block_scales and
    div_rn for every finite float32 block amax, under global scales over global_ok's range
    (both ends, and random ones). Compared on the host, a chunk of patterns at a time."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    e = torch.randint(-51, 91, (2,), generator=gen)
    rand = ((e + 127) << 23 | torch.randint(0, 1 << 23, (2,), generator=gen)).to(torch.int32).view(torch.float32)
    s_g = torch.cat([rand, torch.tensor([2.0**-51, 2.0**91, 448.0 / 2688])]).cuda()
    chunk, block = 1 << 26, 8192
    buf = torch.empty(chunk, 6, dtype=torch.int32, device="cuda")
    for g in s_g.split(1):
        bad = torch.zeros((), dtype=torch.int64, device="cuda")
        for base in range(0, 0x7F800000, chunk):
            _block_scales_kernel[(chunk // block,)](g, buf, base, BLOCK=block, num_warps=8, **LAUNCH)
            n = min(chunk, 0x7F800000 - base)
            bad += (buf[:n, :3] != buf[:n, 3:]).any(dim=1).sum()
        assert bad.item() == 0, f"{bad.item()} block amaxes give other scales under global scale {g.item()}"


@pytest.mark.parametrize("split", [False, True], ids=["div_fast", "div_split"])
def test_div_fast_every_float32_numerator(split):
    """All 2^32 float32 patterns as x, against 3 x 12 + 2 divisors: no mismatch."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    d = _spread_divisors(12, gen)
    compared, bad = _count(d, 32, split)
    assert bad == 0, f"{bad} of {compared} quotients differ from div_rn (divisors {d.tolist()})"
    assert compared > 0.3 * d.numel() * 2**32, compared  # most finite pairs are compared


@pytest.mark.parametrize("vmax,split", [(448.0, False), (57344.0, False), (6.0, False), (6.0, True)],
                         ids=["e4m3", "e5m2", "e2m1", "e2m1-div_split"])
def test_div_fast_kernel_divisors_of_every_bf16_amax(vmax, split):
    """The FP8 kernels' divisor amax / vmax for every positive finite bf16 amax (and, for
    E2M1, NVFP4's e4m3(block scale) x global scale, by div_split as well), against every
    bf16 x: no mismatch."""
    amax = (torch.arange(1, 0x7F80, dtype=torch.int32) << 16).view(torch.float32)
    if vmax == 6.0:
        gen = torch.Generator().manual_seed(torch.seed() % 2**31)
        s_g = amax[torch.randint(0, amax.numel(), (48,), generator=gen)] / 2688.0
        codes = torch.arange(1, 0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
        d = (codes[:, None] * s_g[None, :]).flatten()
    else:
        d = amax / vmax
    d = d[d > 0]
    compared, bad = _count(d, 16, split)
    assert bad == 0, f"{bad} of {compared} quotients differ from div_rn"
    assert compared > 0.2 * d.numel() * 2**16, compared
