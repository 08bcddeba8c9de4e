"""Native mode on the CPU: FP8 W8A8 through ``torch._scaled_mm`` (the CPU build runs it) and packed weight-only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import input_ids, tiny_llama, tiny_mixtral
from qeval.formats import get_format
from qeval.quantize import quantized

NAME = "model.layers.1.mlp.up_proj"  # [128, 64]


def capture(model, name, ids):
    box = {}
    h = model.get_submodule(name).register_forward_pre_hook(lambda m, a: (box.setdefault("x", a[0].detach().clone()), None)[1])
    with torch.no_grad():
        model(input_ids=ids)
    h.remove()
    return box["x"]


@pytest.mark.parametrize("wspec, aspec", [("fp8_e4m3:channel", "fp8_e4m3:token"), ("fp8_e4m3", "fp8_e4m3:token"), ("fp8_e4m3", "fp8_e4m3")])
def test_native_fp8_linear_equals_fp8_math(wspec, aspec):
    model = tiny_llama()
    x = capture(model, NAME, input_ids())
    w = model.get_submodule(NAME).weight.detach().clone()
    policy = {"rules": [{"name": NAME, "weights": wspec, "activations": aspec, "act_scale": "dynamic"}]}
    with quantized(model, policy, mode="native"):
        q = model.get_submodule(NAME).qweight
        assert q.mode == "fp8" and q.w_data.dtype == torch.float8_e4m3fn
        assert "mode=fp8" in repr(q)
        # the stored codes times their scales are exactly the fake-quantized weight
        torch.testing.assert_close(q.dequantized(0), get_format(wspec).fake_quant(w), rtol=0, atol=0)
        with torch.no_grad():
            got = model.get_submodule(NAME)(x)
    ref = F.linear(get_format(aspec).fake_quant(x, role="activation"), get_format(wspec).fake_quant(w))
    # same products of FP8 codes; only the fp32 summation order / scale application differ
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_native_weight_only_keeps_packed_nvfp4_and_matches_emulate():
    model = tiny_llama()
    x = capture(model, NAME, input_ids())
    w = model.get_submodule(NAME).weight.detach().clone()
    with quantized(model, "nvfp4-weight-only", mode="native"):
        lin = model.get_submodule(NAME)
        q = lin.qweight
        assert q.mode == "weight_only" and q.w_data.dtype == torch.uint8
        n, k = w.shape
        stored = q.w_data.numel() + q.w_scale.numel() * q.w_scale.element_size() + 4 * q.w_global.numel()
        assert stored == n * k // 2 + n * k // 16 + 4  # 0.5625 B/param + 4 B global scale
        assert not any(p.numel() == n * k for p in lin.parameters())  # the BF16 weight is gone from the module
        with torch.no_grad():
            got = lin(x)
    torch.testing.assert_close(got, F.linear(x, get_format("nvfp4").fake_quant(w)), rtol=0, atol=0)


def test_native_fp8_static_scale_and_experts_on_cpu():
    model = tiny_mixtral()
    ids = input_ids()
    with torch.no_grad():
        with quantized(model, "fp8", mode="emulate", calibration=[ids]):
            emulated = model(input_ids=ids).logits
        with quantized(model, "fp8", mode="native", calibration=[ids]):
            exp = model.model.layers[0].mlp.experts
            assert exp.q_up.mode == "fp8" and exp.q_up.w_data.shape[0] == 4  # one FP8 matrix per expert
            native = model(input_ids=ids).logits
    torch.testing.assert_close(native, emulated, rtol=1e-4, atol=1e-4)
