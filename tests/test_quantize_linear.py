"""A quantized linear computes fake_quant_act(x) @ fake_quant_w(W).T + b, for every format and family.

With ``emulation="fake_quant"`` bit for bit; with the default exact emulation
(scales in the epilogue, ``tests/test_emulation.py`` checks it against an FP64
reference) within float32 rounding of it on these float32 models.

The reference is built here from the format objects (``qeval.formats``, the
definition of every number) and the original module's weight; the module
under test is found by name after ``quantize_model``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import input_ids, tiny_bert, tiny_gpt2, tiny_llama, tiny_mixtral, tiny_qwen3_moe
from qeval.formats import format_specs, get_format
from qeval.quantize import QuantLinear, dequantize_model, quantize_model, quantized

# family -> (builder, a linear to check, is its weight stored [in, out] (Conv1D)?)
FAMILIES = {
    "llama": (tiny_llama, "model.layers.1.mlp.down_proj", False),
    "gpt2": (tiny_gpt2, "transformer.h.1.attn.c_attn", True),
    "bert": (tiny_bert, "encoder.layer.1.intermediate.dense", False),
    "mixtral": (tiny_mixtral, "model.layers.1.self_attn.o_proj", False),
    "qwen3_moe": (tiny_qwen3_moe, "model.layers.0.self_attn.q_proj", False),
}


def capture_input(model, name, ids):
    box = {}
    mod = model.get_submodule(name)
    h = mod.register_forward_pre_hook(lambda m, args: (box.setdefault("x", args[0].detach().clone()), None)[1])
    with torch.no_grad():
        model(input_ids=ids)
    h.remove()
    return box["x"]


def reference(w_stored, bias, x, wspec, aspec, transposed, amax=None):
    w = w_stored.t() if transposed else w_stored
    wq = get_format(wspec).fake_quant(w, role="weight")
    xq = get_format(aspec).fake_quant(x, role="activation", amax=amax)
    return F.linear(xq, wq, bias)


_CACHE: dict = {}


def family_case(family):
    """(model, x, w, b) built once per family; every test restores the model on exit."""
    if family not in _CACHE:
        build, name, _ = FAMILIES[family]
        model = build()
        x = capture_input(model, name, input_ids())
        orig = model.get_submodule(name)
        b = None if orig.bias is None else orig.bias.detach().clone()
        _CACHE[family] = (model, x, orig.weight.detach().clone(), b)
    return _CACHE[family]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("spec", format_specs())
def test_quantized_linear_matches_reference(family, spec):
    _, name, transposed = FAMILIES[family]
    model, x, w, b = family_case(family)
    orig = model.get_submodule(name)
    policy = {"name": "one", "rules": [{"name": name, "weights": spec, "activations": spec, "act_scale": "dynamic"}]}
    with quantized(model, policy, emulation="fake_quant") as plan:
        q = model.get_submodule(name)
        assert isinstance(q, QuantLinear) and plan.entry(name).weights == spec
        assert spec in repr(q) and "fake_quant" in repr(q)  # extra_repr shows the formats
        with torch.no_grad():
            got = q(x)
    with quantized(model, policy):
        assert "(exact)" in repr(model.get_submodule(name))
        with torch.no_grad():
            exact = model.get_submodule(name)(x)
    expected = reference(w, b, x, spec, spec, transposed)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(exact, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    # the output really changed (not a pass-through), except for the lossless-ish casts
    if spec not in ("bf16", "fp16"):
        assert not torch.equal(got, F.linear(x, w.t() if transposed else w, b))
    assert model.get_submodule(name) is orig


@pytest.mark.parametrize("spec", ["fp8_e4m3", "nvfp4", "fp8_e5m2"])
def test_static_activation_scale_from_calibration(spec):
    model = tiny_llama()
    name = "model.layers.2.self_attn.o_proj"
    calib = [input_ids(seed=5), input_ids(seed=6)]
    amax = max(capture_input(model, name, c).abs().max() for c in calib)  # independent amax
    ids = input_ids()
    x = capture_input(model, name, ids)
    w = model.get_submodule(name).weight.detach().clone()
    quantize_model(model, {"rules": [{"name": name, "weights": spec, "activations": spec}]}, calibration=calib,
                   emulation="fake_quant")
    q = model.get_submodule(name)
    assert q.qweight.static and float(q.qweight.act_amax) == float(amax)
    with torch.no_grad():
        got = q(x)
    torch.testing.assert_close(got, reference(w, None, x, spec, spec, False, amax=amax), rtol=0, atol=0)
    # static differs from dynamic when the batch amax differs from the calibrated one
    assert float(x.abs().max()) != float(amax)
    assert not torch.equal(got, reference(w, None, x, spec, spec, False))


def test_weight_only_rule_leaves_activations_alone():
    model = tiny_llama()
    name = "model.layers.0.mlp.up_proj"
    x = capture_input(model, name, input_ids())
    w = model.get_submodule(name).weight.detach().clone()
    fmt = get_format("nvfp4")
    with quantized(model, "nvfp4-weight-only", emulation="fake_quant"), torch.no_grad():
        got = model.get_submodule(name)(x)
    torch.testing.assert_close(got, F.linear(x, fmt.fake_quant(w)), rtol=0, atol=0)
    # exact emulation: x times codes x block scales, the global scale on the output
    inner, outer = fmt.gemm_split(fmt.quantize(w))
    quantize_model(model, "nvfp4-weight-only")
    with torch.no_grad():
        got = model.get_submodule(name)(x)
    torch.testing.assert_close(got, F.linear(x, inner.dequantize()) * outer, rtol=0, atol=0)


def test_lm_head_and_router_only_when_named():
    model = tiny_mixtral()
    quantize_model(model, "nvfp4", calibration=[input_ids()])
    assert not isinstance(model.lm_head, QuantLinear)
    assert type(model.model.layers[0].mlp.gate).__name__ == "MixtralTopKRouter"
    dequantize_model(model)
    w = model.model.layers[0].mlp.gate.weight
    quantize_model(model, {"rules": [{"kind": ["lm_head", "router"], "weights": "fp8_e4m3"}]})
    assert isinstance(model.lm_head, QuantLinear)
    router_w = model.model.layers[0].mlp.gate.weight  # non-linear router: weight swapped for its fake-quant
    torch.testing.assert_close(router_w, get_format("fp8_e4m3").fake_quant(w.detach()), rtol=0, atol=0)
    dequantize_model(model)
    assert model.model.layers[0].mlp.gate.weight is w
