"""Exhaustive checks of the element codecs: every code, every boundary."""

import pytest
import torch

from qeval.formats import get_format
from qeval.formats.elements import (
    E2M1_MAGNITUDES,
    cast_fp8,
    e2m1_decode,
    e2m1_encode,
    e8m0_decode,
    e8m0_encode,
    pack_fp4,
    round_e2m1,
    round_fp8,
    unpack_fp4,
)
from refs import bits, e2m1, e4m3, e5m2


def all_fp8(dtype):
    v = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).float()
    return v[torch.isfinite(v)]


def test_every_e2m1_code_round_trips():
    codes = torch.arange(16, dtype=torch.uint8)
    values = e2m1_decode(codes)
    assert values[:8].tolist() == list(E2M1_MAGNITUDES)
    assert torch.equal(values[8:].abs(), values[:8])
    assert torch.signbit(values[8:]).all() and not torch.signbit(values[:8]).any()
    assert torch.equal(e2m1_encode(values), codes)


@pytest.mark.parametrize("dtype,fmax", [(torch.float8_e4m3fn, 448.0), (torch.float8_e5m2, 57344.0)])
def test_every_finite_fp8_value_round_trips(dtype, fmax):
    v = all_fp8(dtype)
    assert len(v) == (254 if dtype == torch.float8_e4m3fn else 248)
    assert torch.equal(bits(cast_fp8(v, dtype).float()), bits(v))
    # through the per-tensor format: amax = max gives scale 1, so every value is kept exactly
    spec = "fp8_e4m3" if dtype == torch.float8_e4m3fn else "fp8_e5m2"
    out = get_format(spec).fake_quant(v, amax=fmax)
    assert torch.equal(bits(out), bits(v))


def test_every_e8m0_value_round_trips():
    e = torch.arange(-127, 128, dtype=torch.int32)
    scale = e8m0_encode(e)
    assert scale.dtype == torch.float8_e8m0fnu
    decoded = e8m0_decode(scale).double()
    assert torch.equal(decoded, torch.pow(torch.tensor(2.0, dtype=torch.float64), e.double()))
    nan = torch.tensor([255], dtype=torch.uint8).view(torch.float8_e8m0fnu)
    assert torch.isnan(e8m0_decode(nan)).all()


# (input / scale, expected value): every rounding boundary of formats.md, ties to even
BOUNDARIES = [
    (0.25, 0.0), (0.2500001, 0.5), (0.7499999, 0.5), (0.75, 1.0),
    (1.25, 1.0), (1.2500001, 1.5), (1.7499999, 1.5), (1.75, 2.0),
    (2.5, 2.0), (2.5000002, 3.0), (3.4999998, 3.0), (3.5, 4.0),
    (5.0, 4.0), (5.0000005, 6.0), (6.0, 6.0), (7.0, 6.0), (1e30, 6.0),
]


@pytest.mark.parametrize("scale", [1.0, 0.5, 1.125, 3.0, 2.0**-7])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_nvfp4_rounding_boundaries(scale, sign):
    """Every boundary, through the full NVFP4 path with an exact effective scale."""
    # global amax 2688 * scale gives s_g = scale; a block whose amax is 6 * scale gets s_b = 1.
    for v, expected in BOUNDARIES:
        if v > 6.0:  # would raise the block amax; saturation is tested below
            continue
        block = torch.zeros(16)
        block[0] = 6.0 * scale
        block[1] = sign * v * scale
        got = get_format("nvfp4").fake_quant(block, amax=2688.0 * scale)
        assert got[1].item() == sign * expected * scale, (v, scale)
        # independent reference on the scaled value
        assert e2m1(torch.tensor([sign * v], dtype=torch.float64)).item() == sign * expected


def test_e2m1_encode_saturates():
    v = torch.tensor([6.0, 7.0, 1e30, -1e30, float("inf")])
    assert e2m1_decode(e2m1_encode(v)).tolist() == [6.0, 6.0, 6.0, -6.0, 6.0]


def test_nvfp4_saturates_at_static_amax():
    """Values far above a calibrated amax: block scale clamps to 448, elements to 6."""
    x = torch.tensor([1e6, -3e5, 20.0, 0.5] + [0.0] * 12)
    q = get_format("nvfp4").quantize(x, amax=10.0)
    assert q.scale.float().item() == 448.0
    out = q.dequantize()
    s_g = torch.tensor(10.0) / 2688.0
    assert out[0].item() == (6.0 * (448.0 * s_g)).item()
    assert out[1].item() == -out[0].item()


def test_e2m1_encode_matches_reference_on_dense_grid():
    v = torch.linspace(-8, 8, 200_001, dtype=torch.float32)
    v = torch.cat([v, torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.0, 0.0])])
    got = e2m1_decode(e2m1_encode(v))
    assert torch.equal(bits(got), bits(e2m1(v.double())))


def test_fp8_casts_match_reference_on_dense_grid():
    v = torch.cat([torch.linspace(-500, 500, 400_001), torch.logspace(-12, 2.6, 20_001), -torch.logspace(-12, 2.6, 20_001)])
    assert torch.equal(bits(cast_fp8(v, torch.float8_e4m3fn).float()), bits(e4m3(v.double())))
    w = torch.cat([torch.linspace(-60000, 60000, 400_001), torch.logspace(-18, 4.7, 20_001)])
    assert torch.equal(bits(cast_fp8(w, torch.float8_e5m2).float()), bits(e5m2(w.double())))


@pytest.mark.parametrize("dtype,ref,fmax", [(torch.float8_e4m3fn, e4m3, 448.0), (torch.float8_e5m2, e5m2, 57344.0)])
def test_round_fp8_equals_the_cast_bit_for_bit(dtype, ref, fmax):
    """round_fp8 (float32 arithmetic, the CPU fast path) against the float64 reference and the FP8 cast:
    every value, every midpoint and its float32 neighbours, subnormals, signed zeros, saturation, fresh randoms."""
    grid = all_fp8(dtype)
    grid = grid[grid >= 0].unique()
    mids = (grid[1:] + grid[:-1]) / 2
    pts = torch.cat([grid, mids])
    pts = torch.cat([pts, torch.nextafter(pts, torch.tensor(1e30)), torch.nextafter(pts, torch.tensor(-1e30))])
    g = torch.Generator().manual_seed(torch.randint(1 << 30, ()).item())
    rand = torch.randn(200_000, generator=g) * 10.0 ** torch.randint(-12, 6, (200_000,), generator=g).float()
    tiny = torch.tensor([1e-45, 1e-40, 2.0**-126, -(2.0**-149), 0.0, -0.0])  # float32 subnormals, zeros
    v = torch.cat([pts, -pts, rand, tiny, torch.tensor([fmax * 1.03, -fmax * 7, 3e38, -3e38])])
    got = round_fp8(v, dtype)
    assert torch.equal(bits(got), bits(ref(v.double())))
    assert torch.equal(bits(got), bits(cast_fp8(v, dtype).float()))
    special = torch.tensor([float("inf"), float("-inf"), float("nan")])
    assert torch.equal(round_fp8(special, dtype).isnan(), cast_fp8(special, dtype).float().isnan())
    assert torch.equal(round_fp8(special, dtype).nan_to_num(0.0), cast_fp8(special, dtype).float().nan_to_num(0.0))


def test_round_e2m1_equals_encode_decode_bit_for_bit():
    """round_e2m1 (float32 arithmetic, the CPU fast path) against the float64 reference and the codec."""
    v = torch.linspace(-8, 8, 200_001, dtype=torch.float32)
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 7.0])
    g = torch.Generator().manual_seed(torch.randint(1 << 30, ()).item())
    rand = torch.randn(100_000, generator=g) * 10.0 ** torch.randint(-40, 3, (100_000,), generator=g).float()
    v = torch.cat([v, ties, -ties, torch.nextafter(ties, torch.tensor(9.0)), torch.nextafter(ties, torch.tensor(0.0)),
                   rand, torch.tensor([0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38])])
    got = round_e2m1(v)
    assert torch.equal(bits(got), bits(e2m1(v.double())))
    assert torch.equal(bits(got), bits(e2m1_decode(e2m1_encode(v))))
    assert round_e2m1(torch.tensor([float("nan")])).isnan().all()


@pytest.mark.parametrize("spec", ["fp8_e4m3", "fp8_e4m3:channel", "fp8_e4m3:token", "fp8_e5m2", "fp8_e4m3:block128",
                                  "nvfp4", "mxfp8"])
@pytest.mark.parametrize("role", ["weight", "activation"])
def test_split_values_equal_the_decoded_gemm_split(spec, role):
    """``split_values`` (FP8 and NVFP4: no packed codes) gives the inner operand and outer scales
    ``gemm_split(quantize(x))`` decodes to; the default path (MX) is that definition itself."""
    g = torch.Generator().manual_seed(torch.randint(1 << 30, ()).item())
    x = torch.randn(131, 300, generator=g) * 10.0 ** torch.randint(-8, 4, (131, 1), generator=g).float()
    x[3, :5] = 0.0
    x[7] = -0.0
    x[9, 4] = float("nan")
    fmt = get_format(spec)
    inner, outer = fmt.gemm_split(fmt.quantize(x, role=role, nonfinite="propagate"))
    codes, scale = fmt.split_values(x, role=role, nonfinite="propagate")
    want = inner.dequantize(torch.float32)
    assert codes.shape == x.shape and torch.equal(bits(codes.nan_to_num(0.0)), bits(want.nan_to_num(0.0)))
    assert torch.equal(codes.isnan(), want.isnan())
    assert (scale is None and outer is None) or torch.equal(scale, outer)
    with pytest.raises(ValueError, match="non-finite"):
        fmt.split_values(x, role=role)


def test_fp8_cast_saturates_instead_of_nan():
    v = torch.tensor([500.0, -1e9, 448.0, 464.0, 480.0])
    assert cast_fp8(v, torch.float8_e4m3fn).float().tolist() == [448.0, -448.0, 448.0, 448.0, 448.0]
    special = torch.tensor([float("inf"), float("-inf"), float("nan")])
    assert torch.isnan(cast_fp8(special, torch.float8_e4m3fn).float()).all()  # E4M3 has no Inf
    assert cast_fp8(special, torch.float8_e5m2).float()[:2].tolist() == [float("inf"), float("-inf")]


def test_pack_low_nibble_first():
    codes = torch.tensor([[1, 2, 15, 8]], dtype=torch.uint8)
    packed = pack_fp4(codes)
    assert packed.tolist() == [[0x21, 0x8F]]
    assert torch.equal(unpack_fp4(packed), codes)
    with pytest.raises(ValueError):
        pack_fp4(torch.zeros(3, dtype=torch.uint8))
