"""Cross-checks against peer libraries: NVIDIA Model Optimizer (NVFP4) and torchao (MX).

Both must agree bit for bit on finite inputs, except where the peer's own
convention differs; each such difference is tested to be exactly the
documented one (README "Where peers differ").
"""

import pytest
import torch

from qeval.formats import get_format
from refs import samples

DISTS = ["normal", "student_t", "uniform"]


@pytest.fixture(scope="module")
def modelopt_nvfp4():
    qtensor = pytest.importorskip("modelopt.torch.quantization.qtensor")
    return qtensor.NVFP4QTensor


@pytest.fixture(scope="module")
def torchao_mx():
    mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
    return mx.to_mx, mx.ScaleCalculationMode


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nvfp4_weights_agree_with_model_optimizer(modelopt_nvfp4, dist, dtype):
    x = samples(dist, (128, 512), 99 + DISTS.index(dist), dtype)
    packed, s_b, s_g = modelopt_nvfp4.quantize(x.clone(), 16)
    q = get_format("nvfp4").quantize(x)
    assert torch.equal(packed._quantized_data, q.data)
    assert torch.equal(s_b.view(torch.uint8), q.scale.view(torch.uint8))
    assert torch.equal(s_g.float().reshape(()), q.global_scale.reshape(()))
    theirs = packed.dequantize(dtype=torch.float32, scale=s_b, double_scale=s_g, block_sizes={-1: 16})
    assert torch.equal(theirs, q.dequantize())  # by value: their code 8 decodes to +0.0


def test_nvfp4_model_optimizer_sign_of_zero_is_the_only_code_difference(modelopt_nvfp4):
    """Model Optimizer takes the sign as x < 0, so -0.0 gets code 0; qeval uses the IEEE sign bit (code 8)."""
    x = samples("normal", (16, 64), 5)
    x[::3, ::5] = -0.0
    packed, _, _ = modelopt_nvfp4.quantize(x.clone(), 16)
    ours = get_format("nvfp4").quantize(x).data

    def codes(p):
        return torch.stack((p & 15, p >> 4), -1).flatten(-2)

    theirs_c, ours_c = codes(packed._quantized_data), codes(ours)
    negzero = (x == 0) & torch.signbit(x)
    assert negzero.sum() > 0
    assert torch.equal(theirs_c[~negzero], ours_c[~negzero])
    assert (theirs_c[negzero] == 0).all() and (ours_c[negzero] == 8).all()


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("spec,elem,mode", [
    ("mxfp8", "fp8", "FLOOR"), ("mxfp8:rceil", "fp8", "RCEIL"), ("mxfp4", "fp4", "FLOOR"), ("mxfp4:rceil", "fp4", "RCEIL"),
])
def test_mx_agrees_with_torchao(torchao_mx, dist, dtype, spec, elem, mode):
    to_mx, Mode = torchao_mx
    x = samples(dist, (64, 512), 7 + DISTS.index(dist), dtype)
    elem_dtype = torch.float8_e4m3fn if elem == "fp8" else torch.float4_e2m1fn_x2
    scale, data = to_mx(x.contiguous(), elem_dtype, 32, getattr(Mode, mode))
    q = get_format(spec).quantize(x)
    assert torch.equal(scale.view(torch.uint8), q.scale.view(torch.uint8))
    assert torch.equal(data.view(torch.uint8), q.data.view(torch.uint8))


@pytest.mark.parametrize("spec,elem_dtype", [("mxfp8", torch.float8_e4m3fn), ("mxfp4", torch.float4_e2m1fn_x2)])
def test_torchao_floor_divides_tiny_blocks_by_min_normal(torchao_mx, spec, elem_dtype):
    """torchao stores exponent -127 for a tiny block but divides by 2^-126 (fp32 min normal):
    its elements come out at half the value qeval (and the OCP rule) gives."""
    to_mx, Mode = torchao_mx
    x = torch.zeros(1, 32)
    x[0, :3] = torch.tensor([2.0**-126, -(2.0**-127), 2.0**-128])
    scale, data = to_mx(x, elem_dtype, 32, Mode.FLOOR)
    q = get_format(spec).quantize(x)
    assert scale.view(torch.uint8).item() == q.scale.view(torch.uint8).item() == 0
    fmt = get_format(spec)
    ours = q.dequantize()
    from qeval.formats.base import QTensor

    theirs = fmt.dequantize(QTensor(data.view(q.data.dtype), q.scale, None, q.shape, fmt))
    expected_half = get_format(spec).fake_quant(x / 2)
    assert torch.equal(theirs, expected_half) and not torch.equal(theirs, ours)


def test_torchao_rceil_rounds_log2_in_float32(torchao_mx):
    """torchao's rceil takes ceil(log2(amax / max)) with a float32 log2, which rounds to the
    integer k for values a few ulps above 2^k: its scale is then 2^k, not 2^(k+1). Everywhere
    else the exponents agree."""
    to_mx, Mode = torchao_mx
    descale = []
    for k in range(-30, 30):
        d = torch.tensor(2.0**k)
        for _ in range(4):
            descale.append(d.item())
            d = torch.nextafter(d, torch.tensor(float("inf")))
    descale = torch.tensor(descale)
    x = torch.zeros(len(descale), 32)
    x[:, 0] = descale * 448.0  # exact: 448 = 7 * 2^6
    assert torch.equal(x[:, 0] / 448.0, descale)
    scale, _ = to_mx(x, torch.float8_e4m3fn, 32, Mode.RCEIL)
    ours = get_format("mxfp8:rceil").quantize(x).scale.view(torch.uint8).int()
    theirs = scale.view(torch.uint8).int().flatten()
    ours = ours.flatten()
    log2_is_int = torch.log2(descale) == torch.log2(descale).round()
    power_of_two = torch.frexp(descale).mantissa == 0.5
    differs = log2_is_int & ~power_of_two
    assert differs.sum() > 0
    assert torch.equal(theirs[differs], ours[differs] - 1)
    assert torch.equal(theirs[~differs], ours[~differs])
