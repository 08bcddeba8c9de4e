"""Restoring a quantized model, errors that leave the model unchanged, and the KV-cache hook."""

from __future__ import annotations

import pytest
import torch

from conftest import input_ids, tiny_bert, tiny_gpt2, tiny_gpt_oss, tiny_llama, tiny_mixtral, tiny_qwen3_moe
from qeval.formats import get_format
from qeval.quantize import dequantize_model, quantize_model, quantized

BUILDERS = [tiny_llama, tiny_gpt2, tiny_bert, tiny_mixtral, tiny_qwen3_moe, tiny_gpt_oss]


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids)[0]


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__)
def test_dequantize_restores_logits_and_tensors_exactly(build):
    model = build()
    ids = input_ids()
    before = logits(model, ids)
    params = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    keys = set(model.state_dict())
    for policy, mode in (("nvfp4-kv", "emulate"), ("mixed-fp4-fp8", "emulate"), ("fp8-dynamic", "native"), ("mxfp4", "native")):
        if policy == "mxfp4":  # weight-only in native mode: packed weights
            policy = {"rules": [{"kind": "linear", "weights": "mxfp4"}]}
        quantize_model(model, policy, mode=mode, calibration=[input_ids(seed=9)])
        during = logits(model, ids)
        if mode == "emulate":
            assert set(model.state_dict()) == keys  # same names, same original tensors
        dequantize_model(model)
        after = logits(model, ids)
        assert torch.equal(after, before), policy
        if policy != "mixed-fp4-fp8" or build is tiny_llama:  # 2-layer models keep mixed all-BF16
            assert not torch.equal(during, before), policy
    for n, p in model.named_parameters():
        orig, copy = params[n]
        assert p is orig and torch.equal(p, copy)


def test_context_manager_restores_on_error():
    model = tiny_llama()
    ids = input_ids()
    before = logits(model, ids)
    with pytest.raises(RuntimeError, match="boom"):
        with quantized(model, "nvfp4-weight-only"):
            raise RuntimeError("boom")
    assert torch.equal(logits(model, ids), before)
    assert not hasattr(model, "_qeval_state")


def test_static_scales_need_calibration_and_model_is_unchanged():
    model = tiny_llama()
    ids = input_ids()
    before = logits(model, ids)
    mods = dict(model.named_modules())
    with pytest.raises(ValueError, match="calibration"):
        quantize_model(model, "nvfp4")
    assert dict(model.named_modules()) == mods
    assert torch.equal(logits(model, ids), before)
    assert model.config._attn_implementation != "qeval_kv:sdpa"


def test_native_nvfp4_without_blackwell_names_device_format_and_alternatives():
    model = tiny_llama()
    mods = dict(model.named_modules())
    with pytest.raises(ValueError) as err:
        quantize_model(model, "nvfp4", mode="native", calibration=[input_ids()])
    msg = str(err.value)
    assert "NVFP4" in msg and "Blackwell" in msg and "CPU" in msg
    assert "mode='emulate'" in msg and "weight-only" in msg
    assert dict(model.named_modules()) == mods


def test_quantizing_twice_is_refused():
    model = tiny_llama()
    quantize_model(model, "nvfp4-weight-only")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model, "nvfp4-weight-only")
    dequantize_model(model)
    with pytest.raises(ValueError, match="not quantized"):
        dequantize_model(model)


def test_bad_mode():
    with pytest.raises(ValueError, match="emulate"):
        quantize_model(tiny_llama(), "bf16", mode="fast")


# --- KV cache ---------------------------------------------------------------------
def record_attention_inputs(monkeypatch, impl="sdpa"):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    seen = []
    orig = ALL_ATTENTION_FUNCTIONS._global_mapping[impl]

    def recorder(module, q, k, v, mask, **kw):
        seen.append((module.layer_idx, k.detach().clone(), v.detach().clone()))
        return orig(module, q, k, v, mask, **kw)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, impl, recorder)
    return seen


@pytest.mark.parametrize("kv", ["fp8_e4m3", "nvfp4"])
def test_kv_cache_quantizes_keys_and_values(monkeypatch, kv):
    model = tiny_llama()
    assert model.config._attn_implementation == "sdpa"
    ids = input_ids()
    seen = record_attention_inputs(monkeypatch)
    logits(model, ids)
    _, k0, v0 = seen[0]
    seen.clear()
    policy = {"kv_cache": kv, "rules": [{"kind": "attention", "weights": "none", "act_scale": "dynamic"}]}
    with quantized(model, policy) as plan:
        assert plan.kv_cache == kv
        logits(model, ids)
    assert len(seen) == 3  # every layer went through the hook
    layer, k, v = seen[0]
    fmt = get_format(kv)
    assert layer == 0
    torch.testing.assert_close(k, fmt.fake_quant(k0, role="activation"), rtol=0, atol=0)
    torch.testing.assert_close(v, fmt.fake_quant(v0, role="activation"), rtol=0, atol=0)
    assert not torch.equal(k, k0)
    assert model.config._attn_implementation == "sdpa"


def test_kv_cache_static_scale_from_calibration(monkeypatch):
    model = tiny_llama()
    calib = input_ids(seed=4)
    seen = record_attention_inputs(monkeypatch)
    logits(model, calib)
    k_amax = seen[0][1].abs().max()
    with quantized(model, "nvfp4-kv", calibration=[calib]):
        kvq = model.model.layers[0].self_attn._qeval_kv
        assert kvq.static and float(kvq.k_amax) == float(k_amax)
        assert "fp8_e4m3" in repr(kvq)
    assert not hasattr(model.model.layers[0].self_attn, "_qeval_kv")


def test_kv_cache_during_generation():
    model = tiny_llama()
    ids = input_ids(batch=1, seq=5)
    with quantized(model, {"kv_cache": "fp8_e4m3", "rules": [{"kind": "attention", "weights": "none", "act_scale": "dynamic"}]}):
        out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 9)


def test_accelerate_hook_follows_the_replacement():
    from accelerate.hooks import ModelHook, add_hook_to_module

    calls = []

    class Count(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            calls.append(type(module).__name__)
            return args, kwargs

    model = tiny_llama()
    add_hook_to_module(model.lm_head, Count())
    with quantized(model, {"rules": [{"kind": "lm_head", "weights": "fp8_e4m3"}]}):
        logits(model, input_ids())
    assert calls == ["QuantLinear"]
    logits(model, input_ids())
    assert calls == ["QuantLinear", "Linear"]


@pytest.mark.parametrize("build", [tiny_llama, tiny_mixtral], ids=lambda b: b.__name__)
def test_emulate_with_offloaded_originals(build):
    model = build()
    ids = input_ids()
    before = logits(model, ids)
    with quantized(model, "nvfp4-weight-only"):
        kept = logits(model, ids)
        n_kept = sum(p.numel() for p in model.parameters())
    with quantized(model, "nvfp4-weight-only", offload_original=True):
        off = logits(model, ids)
        n_off = sum(p.numel() for p in model.parameters())
        assert "weight" not in dict(model.model.layers[0].self_attn.q_proj.named_parameters())
    assert torch.equal(off, kept)
    assert n_off < n_kept  # the originals left the module tree (and, on a GPU, the device)
    assert torch.equal(logits(model, ids), before)
