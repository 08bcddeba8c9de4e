"""The kernels' fast paths give the bits of their general code, on the GPU, exhaustively.

``div_fast`` against the correctly rounded division (below), and
``e2m1_code_finite`` against ``e2m1_code(e2m1_round(v))`` for every finite float32.

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

    from qeval.kernels._common import (LAUNCH, abs_bits, div_fast, e2m1_code, e2m1_code_finite, e2m1_round,
                                       quotient_ok, recip)

    @triton.jit
    def _e2m1_mismatch_kernel(out_ptr, BLOCK: tl.constexpr):
        """Program i: float32 bit patterns i * BLOCK + t; out[0] += finite ones, out[1] += codes that differ."""
        b = (tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)).to(tl.int32)
        v = b.to(tl.float32, bitcast=True)
        finite = (b & 0x7FFFFFFF) < 0x7F800000
        wrong = finite & (e2m1_code_finite(v) != e2m1_code(e2m1_round(v)))
        tl.atomic_add(out_ptr, tl.sum(finite.to(tl.int64)))
        tl.atomic_add(out_ptr + 1, tl.sum(wrong.to(tl.int64)))

    @triton.jit
    def _mismatch_kernel(d_ptr, out_ptr, X_SHIFT: tl.constexpr, BLOCK: tl.constexpr):
        """Program (i, j): divisor j against x bit patterns (i * BLOCK + t) << X_SHIFT.
        out[0] += pairs compared, out[1] += mismatches."""
        i = tl.program_id(0)
        d = tl.load(d_ptr + tl.program_id(1))
        xb = (i.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)) << X_SHIFT
        x = xb.to(tl.int32).to(tl.float32, bitcast=True)
        ok = quotient_ok(abs_bits(x), d)
        a = div_fast(x, d, recip(d)).to(tl.int32, bitcast=True)
        b = tl.math.div_rn(x, d).to(tl.int32, bitcast=True)
        big = (b & 0x7FFFFFFF) >= 0x35800000  # |x / d| >= 2^-20
        tiny_ok = ((a & 0x7FFFFFFF) < 0x36000000) & ((a < 0) == (b < 0))  # < 2^-19, same sign
        wrong = tl.where(big, a != b, ~tiny_ok)
        tl.atomic_add(out_ptr, tl.sum(ok.to(tl.int64)))
        tl.atomic_add(out_ptr + 1, tl.sum((ok & wrong).to(tl.int64)))


def _count(divisors: torch.Tensor, x_bits: int) -> tuple[int, int]:
    """(pairs compared, mismatches) of every x with the given bit width (its top bits:
    32 = every float32, 16 = every bf16) against each divisor."""
    d = divisors.to(torch.float32).cuda().contiguous()
    out = torch.zeros(2, dtype=torch.int64, device="cuda")
    block = 4096
    grid = (triton.cdiv(1 << x_bits, block), d.numel())
    _mismatch_kernel[grid](d, out, X_SHIFT=32 - x_bits, BLOCK=block, num_warps=8, **LAUNCH)
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


def test_e2m1_code_finite_every_float32():
    """All 2^32 float32 patterns: the fast E2M1 code equals round-then-encode wherever v is finite."""
    out = torch.zeros(2, dtype=torch.int64, device="cuda")
    block = 8192
    _e2m1_mismatch_kernel[(2**32 // block,)](out, BLOCK=block, num_warps=8, **LAUNCH)
    finite, bad = out.tolist()
    assert finite == 2**32 - 2**24, finite  # every pattern but the all-ones exponents (Inf, NaN)
    assert bad == 0, f"{bad} of {finite} codes differ"


def test_div_fast_every_float32_numerator():
    """All 2^32 float32 patterns as x, against 3 x 12 + 2 divisors: no mismatch."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    d = _spread_divisors(12, gen)
    compared, bad = _count(d, 32)
    assert bad == 0, f"{bad} of {compared} quotients differ from div_rn (divisors {d.tolist()})"
    assert compared > 0.3 * d.numel() * 2**32, compared  # most finite pairs are compared


@pytest.mark.parametrize("vmax", [448.0, 57344.0, 6.0], ids=["e4m3", "e5m2", "e2m1"])
def test_div_fast_kernel_divisors_of_every_bf16_amax(vmax):
    """The FP8 kernels' divisor amax / vmax for every positive finite bf16 amax (and, for
    E2M1, NVFP4's e4m3(block scale) x global scale), against every bf16 x: no mismatch."""
    amax = (torch.arange(1, 0x7F80, dtype=torch.int32) << 16).view(torch.float32)
    if vmax == 6.0:
        gen = torch.Generator().manual_seed(torch.seed() % 2**31)
        s_g = amax[torch.randint(0, amax.numel(), (48,), generator=gen)] / 2688.0
        codes = torch.arange(1, 0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
        d = (codes[:, None] * s_g[None, :]).flatten()
    else:
        d = amax / vmax
    d = d[d > 0]
    compared, bad = _count(d, 16)
    assert bad == 0, f"{bad} of {compared} quotients differ from div_rn"
    assert compared > 0.2 * d.numel() * 2**16, compared
