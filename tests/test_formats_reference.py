"""Every format against an independent float64 reference, bit for bit, on fresh random inputs."""

import math

import pytest
import torch

from qeval.formats import get_format
from refs import F64, bits, e2m1, e4m3, e5m2, fp8_ref, mx_ref, nvfp4_ref, samples

DISTS = ["normal", "student_t", "uniform"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SEED = 1234


def x_for(dist, dtype, shape=(48, 256), offset=0):
    return samples(dist, shape, SEED + offset + DISTS.index(dist), dtype)


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nvfp4_matches_float64_reference(dist, dtype):
    x = x_for(dist, dtype)
    q = get_format("nvfp4").quantize(x)
    ref, s_b, s_g = nvfp4_ref(x)
    assert torch.equal(bits(q.dequantize()), bits(ref))
    assert torch.equal(q.scale.double(), s_b)
    assert q.global_scale.double().item() == s_g.item()
    assert q.scale.dtype == torch.float8_e4m3fn and q.data.dtype == torch.uint8
    assert torch.equal(bits(get_format("nvfp4").fake_quant(x)), bits(ref.to(dtype)))


@pytest.mark.parametrize("dist", DISTS)
def test_nvfp4_static_amax_matches_reference(dist):
    x = x_for(dist, torch.float32)
    amax = float(x.abs().max()) * 0.5  # a calibrated amax below the data: saturation
    got = get_format("nvfp4").fake_quant(x, amax=amax)
    ref, _, _ = nvfp4_ref(x, amax=amax)
    assert torch.equal(bits(got), bits(ref))


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "spec,elem,rounding",
    [("mxfp8", "e4m3", "floor"), ("mxfp8:rceil", "e4m3", "rceil"), ("mxfp4", "e2m1", "floor"), ("mxfp4:rceil", "e2m1", "rceil")],
)
def test_mx_matches_float64_reference(dist, dtype, spec, elem, rounding):
    x = x_for(dist, dtype)
    emax, max_elem, rounder = (8, 448.0, e4m3) if elem == "e4m3" else (2, 6.0, e2m1)
    ref, e = mx_ref(x, emax, max_elem, rounder, rounding)
    q = get_format(spec).quantize(x)
    assert torch.equal(bits(q.dequantize()), bits(ref))
    assert torch.equal(q.scale.view(torch.uint8).to(F64), e + 127)
    assert q.scale.dtype == torch.float8_e8m0fnu


def _fp8_groups(x64, spec, role):
    a = x64.abs()
    if spec in ("fp8_e4m3", "fp8_e5m2"):
        return a.max().expand_as(a)
    if spec in ("fp8_e4m3:channel", "fp8_e4m3:token"):
        return a.amax(-1, keepdim=True).expand_as(a)
    # block128: pad K to 128 (zeros don't change an amax), then blocks
    n, k = a.shape
    kp = math.ceil(k / 128) * 128
    ap = torch.nn.functional.pad(a, (0, kp - k))
    if role == "activation":
        g = ap.reshape(n, kp // 128, 128).amax(-1).repeat_interleave(128, -1)
    else:
        nb = math.ceil(n / 128)
        ap = torch.nn.functional.pad(ap, (0, 0, 0, nb * 128 - n))
        g = ap.reshape(nb, 128, kp // 128, 128).amax(dim=(1, 3))
        g = g.repeat_interleave(128, 0).repeat_interleave(128, 1)[:n]
    return g[:, :k]


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "spec,role",
    [
        ("fp8_e4m3", "weight"), ("fp8_e5m2", "weight"), ("fp8_e4m3:channel", "weight"),
        ("fp8_e4m3:token", "activation"), ("fp8_e4m3:block128", "weight"), ("fp8_e4m3:block128", "activation"),
    ],
)
def test_fp8_matches_float64_reference(dist, dtype, spec, role):
    x = x_for(dist, dtype, shape=(200, 300))  # odd shape: partial 128-blocks both ways
    fmax, rounder = (57344.0, e5m2) if spec == "fp8_e5m2" else (448.0, e4m3)
    ref = fp8_ref(x, _fp8_groups(x.to(F64), spec, role), fmax, rounder)
    q = get_format(spec).quantize(x, role=role)
    assert torch.equal(bits(q.dequantize()), bits(ref))
    assert q.data.dtype == (torch.float8_e5m2 if spec == "fp8_e5m2" else torch.float8_e4m3fn)


@pytest.mark.parametrize("spec", ["bf16", "fp16"])
def test_casts_are_plain_rne(spec):
    x = samples("student_t", (64, 64), 7)
    target = torch.bfloat16 if spec == "bf16" else torch.float16
    q = get_format(spec).quantize(x)
    assert q.data.dtype == target and q.nbytes == 64 * 64 * 2
    mbits, emin, vmax = (7, -126, 3.3895313892515355e38) if spec == "bf16" else (10, -14, 65504.0)
    # fp16 overflows to inf on a plain cast; our sample stays in range
    from refs import round_minifloat

    assert torch.equal(bits(q.dequantize()), bits(round_minifloat(x.double(), mbits, emin, vmax)))


@pytest.mark.parametrize("shape", [(3, 17), (5, 1, 33), (1,), (7,), (2, 3, 4, 50)])
@pytest.mark.parametrize("spec", ["nvfp4", "mxfp4", "mxfp8", "fp8_e4m3:block128"])
def test_odd_shapes_pad_and_crop(shape, spec):
    x = samples("normal", shape, 11)
    fmt = get_format(spec)
    q = fmt.quantize(x)
    out = q.dequantize()
    assert out.shape == x.shape
    assert q.padded == (shape[-1] % fmt.block != 0)
    assert q.nbytes == fmt.nbytes(shape)
    # padding is zeros: same result as quantizing the explicitly zero-padded tensor
    k = math.ceil(shape[-1] / fmt.block) * fmt.block
    xp = torch.nn.functional.pad(x, (0, k - shape[-1]))
    assert torch.equal(bits(fmt.quantize(xp).dequantize()[..., : shape[-1]]), bits(out))


@pytest.mark.parametrize("spec", ["nvfp4", "fp8_e4m3", "fp8_e4m3:token", "fp8_e5m2", "fp8_e4m3:block128"])
def test_scale_that_underflows_is_one(spec):
    """An amax so small that amax / fmax rounds to 0 in float32 gets scale 1 (as amax 0 does):
    no 0/0 quotients, fake_quant equals quantize + dequantize, and both equal the float64 reference."""
    x = torch.tensor([1.4e-45, -1.4e-45, 0.0, -0.0, 2.8e-45, 0.0, 1.4e-45, 4.2e-45] * 16).reshape(4, 32)
    fmt = get_format(spec)
    fq = fmt.fake_quant(x, role="activation")
    assert torch.isfinite(fq).all()
    assert torch.equal(bits(fq), bits(fmt.quantize(x, role="activation").dequantize()))
    from refs import gemm_parts

    inner, outer = gemm_parts(spec, x, role="activation")
    assert (outer == 1).all()
    assert torch.equal(bits(fq), bits((inner * outer).to(torch.float32)))
    assert (fq == 0).all()  # every value is far below half the smallest step at scale 1
