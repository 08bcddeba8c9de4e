"""The public format API: names, bytes, padding, zeros, clamps, signs, non-finite input."""

import math

import pytest
import torch

from qeval.formats import FORMATS, get_format
from refs import bits, fp8_ref, e4m3, mx_ref, e2m1, nvfp4_ref, samples

ALL = list(FORMATS)


def test_unknown_spec_names_it_and_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        get_format("nvfp5")
    msg = str(err.value)
    assert "'nvfp5'" in msg and all(s in msg for s in ALL)
    assert get_format(" NVFP4 ") is get_format("nvfp4")


def test_nvfp4_bits_per_element_4096():
    # 4 bits + one E4M3 scale per 16 + one fp32 scale per tensor
    assert get_format("nvfp4").bits_per_element((4096, 4096)) == 4.5 + 32 / 4096**2


# bytes per parameter from formats.md's table, for an aligned [N, K] weight
@pytest.mark.parametrize(
    "spec,per_param,per_tensor",
    [
        ("bf16", 2.0, 0), ("fp16", 2.0, 0), ("fp8_e4m3", 1.0, 4), ("fp8_e5m2", 1.0, 4),
        ("fp8_e4m3:channel", 1 + 4 / 4096, 0), ("fp8_e4m3:block128", 1 + 4 / 16384, 0),
        ("mxfp8", 1.03125, 0), ("mxfp8:rceil", 1.03125, 0), ("nvfp4", 0.5625, 4),
        ("mxfp4", 0.53125, 0), ("mxfp4:rceil", 0.53125, 0),
    ],
)
def test_analytic_bytes_match_formats_table(spec, per_param, per_tensor):
    n, k = 1024, 4096
    assert get_format(spec).nbytes((n, k)) == n * k * per_param + per_tensor


@pytest.mark.parametrize("spec", ALL)
@pytest.mark.parametrize("shape", [(64, 256), (3, 100), (2, 5, 48)])
def test_packed_storage_bytes_equal_analytic(spec, shape):
    fmt = get_format(spec)
    for role in ("weight", "activation"):
        q = fmt.quantize(samples("normal", shape, 3), role=role)
        assert q.nbytes == fmt.nbytes(shape, role)
        assert fmt.bits_per_element(shape, role) == 8 * q.nbytes / math.prod(shape)


def test_storage_dtypes():
    x = samples("normal", (4, 64), 5)
    q = get_format("nvfp4").quantize(x)
    assert q.data.dtype == torch.uint8 and q.data.shape == (4, 32)
    assert q.scale.dtype == torch.float8_e4m3fn and q.scale.shape == (4, 4)
    assert q.global_scale.dtype == torch.float32 and q.global_scale.numel() == 1
    q = get_format("mxfp4").quantize(x)
    assert q.data.dtype == torch.uint8 and q.scale.dtype == torch.float8_e8m0fnu and q.scale.shape == (4, 2)
    q = get_format("fp8_e4m3:block128").quantize(torch.randn(300, 200))
    assert q.scale.shape == (3, 2) and q.data.dtype == torch.float8_e4m3fn


@pytest.mark.parametrize("spec", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fake_quant_is_the_two_step_path(spec, dtype):
    x = samples("student_t", (8, 96), 9, dtype)
    fq = get_format(spec).fake_quant(x)
    assert fq.dtype == dtype and fq.shape == x.shape
    assert torch.equal(bits(fq), bits(get_format(spec).quantize(x).dequantize(dtype)))


@pytest.mark.parametrize("spec", ALL)
def test_all_zero_tensor(spec):
    x = torch.zeros(4, 64)
    q = get_format(spec).quantize(x)
    assert torch.equal(bits(q.dequantize()), bits(x))
    if spec == "nvfp4":
        assert q.global_scale.item() == 1.0 and (q.scale.float() == 1.0).all()
    if spec.startswith("mx"):
        assert (q.scale.view(torch.uint8) == 0).all()  # smallest scale, 2^-127
    if spec.startswith("fp8"):
        assert (q.scale == 1.0).all()


def test_nvfp4_zero_block_among_nonzero_blocks():
    x = samples("normal", (2, 64), 21)
    x[0, 16:32] = 0
    q = get_format("nvfp4").quantize(x)
    assert q.scale[0, 1].float().item() == 1.0  # Model Optimizer's convention for a zero block
    assert (q.dequantize()[0, 16:32] == 0).all()


def test_nvfp4_tiny_block_scale_clamps_at_2_pow_minus_9():
    x = torch.zeros(1, 32)
    x[0, 0] = 1000.0  # the tensor amax
    x[0, 16:32] = torch.linspace(-1e-4, 1e-4, 16)  # a block ~1e-7 of it
    q = get_format("nvfp4").quantize(x)
    assert q.scale[0, 1].float().item() == 2.0**-9
    ref, _, _ = nvfp4_ref(x)
    assert torch.equal(bits(q.dequantize()), bits(ref))
    # without the clamp the block scale would underflow E4M3 to zero
    unclamped = (1e-4 / (6 * (1000.0 / 2688.0)))
    assert torch.tensor(unclamped).to(torch.float8_e4m3fn).float().item() == 0.0


def test_subnormal_inputs_match_reference():
    tiny = torch.tensor([1e-40, -3e-41, 1.4e-45, 2e-39, 0.0, -0.0] + [1e-39] * 26, dtype=torch.float32)
    x = tiny.reshape(1, 32)
    ref_nv, _, _ = nvfp4_ref(x)
    assert torch.equal(bits(get_format("nvfp4").fake_quant(x)), bits(ref_nv))
    ref_mx, _ = mx_ref(x, 8, 448.0, e4m3)
    assert torch.equal(bits(get_format("mxfp8").fake_quant(x)), bits(ref_mx))
    ref_mx4, _ = mx_ref(x, 2, 6.0, e2m1)
    assert torch.equal(bits(get_format("mxfp4").fake_quant(x)), bits(ref_mx4))
    ref_fp8 = fp8_ref(x, x.double().abs().max().expand(x.shape), 448.0, e4m3)
    assert torch.equal(bits(get_format("fp8_e4m3").fake_quant(x)), bits(ref_fp8))
    # bf16 keeps subnormals of its own range
    b = torch.tensor([2.0**-130, -(2.0**-133)], dtype=torch.bfloat16)
    assert torch.equal(get_format("bf16").fake_quant(b), b)


@pytest.mark.parametrize("spec", ["nvfp4", "mxfp4", "mxfp8", "fp8_e4m3", "fp8_e4m3:token", "bf16"])
def test_negative_zero_keeps_its_sign(spec):
    x = torch.tensor([[1.0, -0.0, 0.0, -1e-9] + [0.5] * 28])
    out = get_format(spec).fake_quant(x)
    assert torch.signbit(out[0, 1]) and not torch.signbit(out[0, 2])
    if spec in ("nvfp4", "mxfp4"):  # a tiny negative rounds to -0 (E2M1 code 8)
        assert out[0, 3].item() == 0.0 and torch.signbit(out[0, 3])


@pytest.mark.parametrize("spec", ALL)
def test_nonfinite_input_is_refused_by_default(spec):
    x = torch.ones(2, 32)
    x[1, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        get_format(spec).quantize(x)


@pytest.mark.parametrize("spec", ["nvfp4", "mxfp4", "mxfp8", "fp8_e4m3", "fp8_e4m3:channel", "fp8_e4m3:block128", "fp8_e5m2", "bf16"])
def test_nonfinite_propagate(spec):
    x = samples("normal", (2, 64), 31)
    x[1, 3] = float("nan")
    x[1, 40] = float("inf")
    fmt = get_format(spec)
    out = fmt.fake_quant(x, nonfinite="propagate")
    assert torch.isnan(out[1, 3])
    assert not torch.isfinite(out[1, 40])
    # finite values are quantized as if the bad ones were zero (amax ignores them)
    clean = x.clone()
    clean[1, 3] = 0
    clean[1, 40] = 0
    expected = fmt.fake_quant(clean)
    if fmt.family in ("nvfp4", "mxfp4", "mxfp8"):  # NaN block scale: the whole block is lost
        blk = fmt.block
        bad = torch.zeros_like(x, dtype=torch.bool)
        for col in (3, 40):
            bad[1, (col // blk) * blk: (col // blk + 1) * blk] = True
        assert torch.isnan(out[bad]).all()
        assert torch.equal(bits(out[~bad]), bits(expected[~bad]))
    else:
        keep = torch.isfinite(x)
        assert torch.equal(bits(out[keep]), bits(expected[keep]))


def test_bad_arguments():
    fmt = get_format("nvfp4")
    with pytest.raises(ValueError, match="role"):
        fmt.quantize(torch.ones(16), role="bias")
    with pytest.raises(ValueError, match="nonfinite"):
        fmt.quantize(torch.ones(16), nonfinite="ignore")
    with pytest.raises(TypeError):
        fmt.quantize(torch.ones(16, dtype=torch.int32))
