"""A calibration forward runs once per model, calibration batches and forward; later static policies reuse
its amax, which equal a fresh calibration's bit for bit; anything that could change them calibrates again."""

from __future__ import annotations

import pytest
import torch

from conftest import input_ids, tiny_gpt2, tiny_llama
from qeval.quantize import dequantize_model, quantize_model
from qeval.quantize.weight import QuantWeight

EMBED = {"name": "embed-too", "rules": [{"kind": "linear", "weights": "nvfp4", "activations": "nvfp4"},
                                        {"kind": "embedding", "weights": "fp8_e4m3"}]}


def _forwards(model) -> list:
    calls = []
    model.register_forward_pre_hook(lambda m, a, kw: calls.append(1), with_kwargs=True)
    return calls


def _amax(model) -> dict:
    return {m.name: m.act_amax.clone() for m in model.modules() if isinstance(m, QuantWeight) and m.static}


def _fresh(model, policy, calib) -> dict:
    """The amax a calibration computes afresh (no memo)."""
    quantize_model(model, policy, calibration=calib)
    out = _amax(model)
    dequantize_model(model)
    return out


def _scale_(p) -> None:
    with torch.no_grad():
        p.mul_(1.5)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].view(torch.int32), b[k].view(torch.int32)) for k in a)


def test_later_static_policies_reuse_the_first_calibration_bit_for_bit():
    model = tiny_llama(layers=3)
    calib = [input_ids(seed=5), input_ids(seed=6)]
    want = {p: _fresh(model, p, calib) for p in ("nvfp4", "mixed-fp4-fp8", "fp8")}
    calls, memo = _forwards(model), {}
    for i, policy in enumerate(["nvfp4", "mixed-fp4-fp8", "fp8", "nvfp4"]):
        quantize_model(model, policy, calibration=calib, calibration_memo=memo)
        assert _same(_amax(model), want[policy])
        assert all(m.calibrated for m in model.modules() if isinstance(m, QuantWeight))
        dequantize_model(model)
        assert len(calls) == len(calib)  # the first policy's forward only: the others read what it recorded


def test_a_different_forward_or_input_calibrates_again():
    model = tiny_llama(layers=2)
    calls = _forwards(model)
    up = model.model.layers[0].mlp.up_proj.weight
    cases = [  # (policy, the batches it gets given the primed ones, a change made after priming)
        ("nvfp4", lambda c: c, None),  # control: nothing changed, nothing computed
        ("nvfp4", lambda c: [input_ids(seed=7)], None),  # other batches
        ("nvfp4", lambda c: c, lambda c: _scale_(up)),  # weights changed in place
        ("nvfp4", lambda c: c, lambda c: c[0].add_(1).remainder_(128)),  # a batch changed in place
        (EMBED, lambda c: c, None),  # an embedding swapped in place changes the forward
        ("nvfp4-kv", lambda c: c, None),  # a KV-cache quantizer may change the attention's path
        ("nvfp4", lambda c: iter(c), None),  # an iterator is read once, never keyed
    ]
    for i, (policy, given, change) in enumerate(cases):
        calib, memo = [input_ids(seed=5)], {}
        quantize_model(model, "nvfp4", calibration=calib, calibration_memo=memo)  # records every linear's input
        dequantize_model(model)
        if change is not None:
            change(calib)
        want = _fresh(model, policy, list(given(calib)))
        calls.clear()
        quantize_model(model, policy, calibration=given(calib), calibration_memo=memo)
        assert len(calls) == (0 if i == 0 else 1), policy
        assert _same(_amax(model), want), policy
        dequantize_model(model)
    # a policy needing more inputs than were recorded; without a memo, never reused
    calib, memo = [input_ids(seed=5)], {}
    quantize_model(model, "mixed-fp4-fp8", calibration=calib, calibration_memo=memo)  # MLP inputs only
    dequantize_model(model)
    want = _fresh(model, "nvfp4", calib)
    calls.clear()
    quantize_model(model, "nvfp4", calibration=calib, calibration_memo=memo)
    assert len(calls) == 1 and _same(_amax(model), want)
    dequantize_model(model)
    calls.clear()
    for _ in range(2):
        quantize_model(model, "nvfp4", calibration=calib)
        dequantize_model(model)
    assert len(calls) == 2


def test_conv1d_models_never_reuse():
    """GPT-2's Conv1D computes with addmm, its replacement with F.linear: the forward depends on the policy."""
    model = tiny_gpt2()
    calib = [input_ids(seed=5)]
    calls, memo = _forwards(model), {}
    for _ in range(2):
        quantize_model(model, "nvfp4", calibration=calib, calibration_memo=memo)
        dequantize_model(model)
    assert len(calls) == 2


@pytest.mark.parametrize("threads", [1])
def test_thread_count_is_part_of_the_key(threads):
    model = tiny_llama(layers=2)
    calib = [input_ids(seed=5)]
    calls, memo = _forwards(model), {}
    quantize_model(model, "nvfp4", calibration=calib, calibration_memo=memo)
    dequantize_model(model)
    before = torch.get_num_threads()
    torch.set_num_threads(threads if before != threads else threads + 1)
    try:
        quantize_model(model, "nvfp4", calibration=calib, calibration_memo=memo)
        dequantize_model(model)
    finally:
        torch.set_num_threads(before)
    assert len(calls) == 2
