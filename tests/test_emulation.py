"""Exact emulation: a quantized linear computes what the tensor core computes.

The reference (``refs.gemm_parts``, float64, no qeval code) splits each operand
into element codes x in-GEMM block scales (exact) and the scales applied outside
the tensor core; the hardware's output is the exact dot product of the quantized
values. The emulated layer must equal it within FP32 accumulation-order error
(plus one rounding into the model's dtype); the old fake-quant emulation, which
rounds code x every scale back into the model's dtype first, is shown to miss it
by more wherever a per-tensor / per-row scale exists. Run with ``-s`` for the table.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qeval.quantize import quantized
from refs import F64, gemm_parts, samples

K, N = 320, 96  # K: 20 NVFP4 blocks, 10 MX blocks, 2.5 FP8 128-groups (padded)

CASES = [  # (weights, activations)
    ("nvfp4", "nvfp4"),
    ("nvfp4", None),  # W4A16
    ("fp8_e4m3", "fp8_e4m3"),
    ("fp8_e4m3:channel", "fp8_e4m3:token"),
    ("fp8_e4m3:block128", "fp8_e4m3:block128"),
    ("fp8_e5m2", "fp8_e5m2"),
    ("mxfp8", "mxfp8"),
    ("mxfp4", "mxfp4"),
    ("mxfp4:rceil", "mxfp4:rceil"),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
_ROWS: list[str] = []


class One(nn.Module):
    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.proj = nn.Linear(w.shape[1], w.shape[0], dtype=w.dtype, device=w.device)
        with torch.no_grad():
            self.proj.weight.copy_(w)
            self.proj.bias.copy_(b)

    def forward(self, x):
        return self.proj(x)


def layer_case(seed: int, dtype: torch.dtype):
    """Weights with heavy tails and outliers, an odd number of tokens, a bias; fresh per seed."""
    w = (samples("student_t", (N, K), seed) * 0.05).to(dtype)
    x = (samples("student_t", (3, 5, K), seed + 1) * 2.0).to(dtype)
    b = (samples("normal", (N,), seed + 2) * 0.1).to(dtype)
    return w, x, b


def hardware_reference(wspec, aspec, w, x, b):
    """(y float64, bound on |FP32-accumulated result - y| before the final cast)."""
    x2 = x.reshape(-1, K)
    wi, wo = gemm_parts(wspec, w, "weight")
    if aspec is None:
        xi, xo = x2.to(F64), torch.ones_like(x2, dtype=F64)
    else:
        xi, xo = gemm_parts(aspec, x2, "activation")
    xd, wd = xi * xo, wi * wo
    y = xd @ wd.T + b.to(F64)
    u = 2.0**-24
    acc = (K + 4) * u * (xd.abs() @ wd.abs().T) + u * y.abs()  # sum of K products, <= 3 scale multiplies, bias
    return y.reshape(*x.shape[:-1], N), acc.reshape(*x.shape[:-1], N)


def run_layer(w, b, x, wspec, aspec, emulation):
    model = One(w, b)
    policy = {"name": "t", "rules": [{"name": "proj", "weights": wspec, "activations": aspec or "none", "act_scale": "dynamic"}]}
    with quantized(model, policy, emulation=emulation), torch.no_grad():
        return model(x)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("wspec, aspec", CASES, ids=lambda s: str(s))
def test_exact_emulation_equals_fp64_hardware_reference(wspec, aspec, dtype):
    seed = 11 + 3 * CASES.index((wspec, aspec)) + DTYPES.index(dtype)
    w, x, b = layer_case(seed, dtype)
    y, acc = hardware_reference(wspec, aspec, w, x, b)
    fi = torch.finfo(dtype)
    # one rounding into the model's dtype after the FP32 epilogue (none for float32)
    out_round = 0.0 if dtype == torch.float32 else 0.5 * fi.eps * (y.abs() + acc) + fi.smallest_normal * fi.eps
    bound = acc + out_round
    got = run_layer(w, b, x, wspec, aspec, "exact")
    old = run_layer(w, b, x, wspec, aspec, "fake_quant")
    assert got.dtype == dtype and got.shape == y.shape
    err_new = (got.to(F64) - y).abs()
    err_old = (old.to(F64) - y).abs()
    over_old = int((err_old > bound).sum())
    rounded = y.to(dtype)  # the correctly rounded hardware result
    same_new, same_old = float((got == rounded).double().mean()), float((old == rounded).double().mean())
    _ROWS.append(
        f"{wspec:>18} x {str(aspec):>18} {str(dtype)[6:]:>8}: max err/bound exact {float((err_new / bound).max()):6.3f}"
        f", fake_quant {float((err_old / bound).max()):8.3f} ({over_old}/{y.numel()} over); "
        f"mean |err| {float(err_new.mean()):.2e} vs {float(err_old.mean()):.2e}; "
        f"correctly rounded {same_new:.1%} vs {same_old:.1%}"
    )
    print("\n" + _ROWS[-1])
    assert bool((err_new <= bound).all()), f"max err/bound {float((err_new / bound).max())}"
    scaled_outside = wspec.startswith("fp8") or wspec == "nvfp4"  # a per-tensor / per-row scale exists
    if scaled_outside and dtype != torch.float32:
        # folding that scale into each value and rounding to BF16/FP16 costs far more than accumulation order
        assert over_old > y.numel() // 20 and float(err_old.mean()) > float(err_new.mean())
        assert same_new > 0.99 and same_old < same_new - 0.2
    elif not scaled_outside:
        # MX: codes x powers of two are exact in any dtype here, so the two emulations agree
        assert bool((err_old <= bound).all())


def _exact64(spec: str, w: torch.Tensor) -> torch.Tensor:
    inner, outer = gemm_parts(spec, w, "weight")
    return inner * outer


SPECS = ["nvfp4", "fp8_e4m3", "fp8_e4m3:channel", "fp8_e4m3:block128", "fp8_e5m2", "mxfp8", "mxfp8:rceil", "mxfp4", "mxfp4:rceil"]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("spec", SPECS)
def test_no_weight_leaves_the_grid_in_exact_emulation(spec, dtype):
    """Weights the emulated layer multiplies by (its operand x its outer scales, in float64) vs the exact grid values."""
    w = (samples("student_t", (N, K), 7) * 0.043).to(dtype)
    grid = _exact64(spec, w)
    counts = {}
    for emulation in ("exact", "fake_quant"):
        model = One(w, torch.zeros(N, dtype=dtype))
        policy = {"name": "t", "rules": [{"name": "proj", "weights": spec, "activations": "none"}]}
        with quantized(model, policy, emulation=emulation):
            q = model.proj.qweight
            counts[emulation] = int((q.dequantized(0, torch.float64) != grid).sum())
            if emulation == "exact" and (spec == "nvfp4" or spec.startswith("fp8")):
                assert q.w_hat.dtype == dtype  # held in the model's dtype, no float32 copy
    print(f"\noff-grid weights {spec:>18} {str(dtype)[6:]:>8}: exact {counts['exact']}, fake_quant {counts['fake_quant']} of {w.numel()}")
    assert counts["exact"] == 0
    if spec in ("nvfp4", "fp8_e4m3", "fp8_e4m3:channel", "fp8_e5m2") and dtype != torch.float32:
        assert counts["fake_quant"] > w.numel() // 2  # the finding: most leave the grid in BF16


@pytest.mark.parametrize("spec", ["mxfp4:rceil", "mxfp8:rceil"])
def test_operand_falls_back_to_float32_where_the_dtype_cannot_hold_it(spec):
    """FP16 weights near 65504 under rceil: the scale rounds up and the block max becomes 2^16, beyond FP16.

    The operand is then kept in float32 (exact); fake-quant in FP16 turns it into inf.
    """
    w = (samples("normal", (N, K), 3) * 0.02).to(torch.float16)
    w[5, 64:96] = 65504.0
    model = One(w, torch.zeros(N, dtype=torch.float16))
    policy = {"name": "t", "rules": [{"name": "proj", "weights": spec, "activations": "none"}]}
    grid = _exact64(spec, w)
    assert float(grid.abs().max()) == 2.0**16
    with quantized(model, policy):
        q = model.proj.qweight
        assert q.w_hat.dtype == torch.float32
        assert int((q.dequantized(0, torch.float64) != grid).sum()) == 0
    with quantized(model, policy, emulation="fake_quant"):
        assert model.proj.qweight.w_hat.isinf().sum() == 32


def test_static_activation_scale_and_zero_input():
    """NVFP4 W4A4 with a calibrated global activation scale; an all-zero input gives exactly the bias."""
    w, x, b = layer_case(40, torch.bfloat16)
    model = One(w, b)
    policy = {"name": "t", "rules": [{"name": "proj", "weights": "nvfp4", "activations": "nvfp4", "act_scale": "static"}]}
    calib = [{"x": x * 0.5}]
    with quantized(model, policy, calibration=calib), torch.no_grad():
        amax = float(model.proj.qweight.act_amax)
        got = model(x)
        zero = model(torch.zeros_like(x))
    assert amax == float((x * 0.5).abs().max())
    xi, xo = gemm_parts("nvfp4", x.reshape(-1, K), "activation", amax=amax)
    wi, wo = gemm_parts("nvfp4", w, "weight")
    y = ((xi * xo) @ (wi * wo).T + b.to(F64)).reshape(got.shape)
    bound = (K + 4) * 2.0**-24 * ((xi * xo).abs() @ (wi * wo).abs().T).reshape(got.shape) + 2.0**-8 * y.abs() * 1.01
    assert bool(((got.to(F64) - y).abs() <= bound).all())
    assert torch.equal(zero, b.expand_as(zero))


def test_readme_formats_example_runs():
    """The Python example of the README's formats section runs as printed (its asserts hold)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Number formats", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "gemm_split" in code and "assert" in code
    exec(compile(code, "README.md", "exec"), {})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("path", ["cublas", "triton", "torch"])
@pytest.mark.parametrize("wspec, aspec", CASES, ids=lambda s: str(s))
def test_exact_emulation_on_cuda_equals_fp64_hardware_reference(wspec, aspec, path, monkeypatch):
    """The same check on the GPU: fused Triton quantize/dequantize, BF16 tensor-core GEMM with FP32 accumulation,
    the scales applied by each of the CUDA epilogue paths (``gemm.CUDA_GEMM``)."""
    from qeval.quantize import gemm

    monkeypatch.setattr(gemm, "CUDA_GEMM", path)
    seed = 101 + CASES.index((wspec, aspec))
    w, x, b = layer_case(seed, torch.bfloat16)
    y, acc = hardware_reference(wspec, aspec, w, x, b)
    bound = acc + 0.5 * 2.0**-7 * (y.abs() + acc) + 2.0**-140
    got = run_layer(w.cuda(), b.cuda(), x.cuda(), wspec, aspec, "exact").cpu()
    old = run_layer(w.cuda(), b.cuda(), x.cuda(), wspec, aspec, "fake_quant").cpu()
    err, err_old = (got.to(F64) - y).abs(), (old.to(F64) - y).abs()
    print(f"\ncuda ({path}) {wspec} x {aspec}: max err/bound exact {float((err / bound).max()):.3f}, "
          f"fake_quant {float((err_old / bound).max()):.3f}; correctly rounded {float((got == y.to(got.dtype)).double().mean()):.1%}"
          f" vs {float((old == y.to(old.dtype)).double().mean()):.1%}")
    assert bool((err <= bound).all())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_epilogue_and_scaled_gemm_give_the_bits_of_the_torch_epilogue():
    """The fused epilogue kernel: the torch epilogue's bits on any accumulator (NaN, Inf, -0, subnormal, huge);
    the Triton GEMM: the same bits wherever its FP32 accumulator is exact (small integer products: every
    partial sum is exact in FP32, whatever the order), at shapes that are not multiples of its tiles."""
    from qeval import kernels
    from qeval.quantize.gemm import epilogue_torch

    g = torch.Generator(device="cuda").manual_seed(3)
    m, n, k = 37, 300, 200
    acc = torch.randn(m, n, device="cuda", generator=g) * 100
    acc[0, :5] = torch.tensor([float("nan"), float("inf"), -0.0, 1e-40, 3e38])
    a = torch.randint(-8, 9, (m, k), device="cuda", generator=g).bfloat16()
    b = torch.randint(-8, 9, (n, k), device="cuda", generator=g).bfloat16()
    exact = a.double() @ b.double().T
    one, rows, cols = (torch.rand(s, device="cuda", generator=g) + 0.1 for s in ((), (m, 1), (n, 1)))
    bias = torch.randn(n, device="cuda", generator=g)
    for sx, sw, bb in [(None, None, None), (one, one * 7e-3, bias), (rows, cols, None), (one, cols, bias.bfloat16()),
                       (rows, None, bias), (None, one, None)]:
        for dt in DTYPES:
            got, ref = kernels.epilogue(acc, sx, sw, bb, dt), epilogue_torch(acc, sx, sw, bb, dt)
            nan = ref.isnan()
            assert got.dtype == dt and torch.equal(got.isnan(), nan)  # NaN payloads may differ
            assert torch.equal(got[~nan].view(torch.uint8), ref[~nan].view(torch.uint8))
            got = kernels.scaled_gemm(a, b, sx, sw, bb, dt)
            ref = epilogue_torch(exact.float(), sx, sw, bb, dt)
            assert got.dtype == dt and torch.equal(got.view(torch.uint8), ref.view(torch.uint8))
