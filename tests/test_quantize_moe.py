"""Fused 3-D MoE experts under a policy: the quantized experts equal a loop written here.

The reference loop quantizes each expert's weight on its own (per-expert
scales) and the tokens routed to it, for Mixtral / Qwen3-MoE (``[E, N, K]``,
concatenated gate|up) and gpt-oss (transposed ``[E, K, N]``, interleaved
gate/up with a clamped SwiGLU, biases).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import input_ids, tiny_gpt_oss, tiny_mixtral, tiny_qwen3_moe
from qeval.formats import get_format
from qeval.quantize import QuantExperts, quantized

BUILDERS = {"mixtral": tiny_mixtral, "qwen3_moe": tiny_qwen3_moe, "gpt_oss": tiny_gpt_oss}


def swiglu_gpt_oss(gate_up, alpha, limit):
    gate, up = gate_up[..., ::2], gate_up[..., 1::2]
    gate = gate.clamp(max=limit)
    up = up.clamp(-limit, limit)
    return (up + 1) * (gate * torch.sigmoid(gate * alpha))


def reference(experts, hidden, top_k_index, top_k_weights, spec, family):
    fmt = get_format(spec)
    out = torch.zeros_like(hidden)
    gu, dn = experts.gate_up_proj.detach(), experts.down_proj.detach()
    if family == "gpt_oss":
        gu, dn = gu.transpose(1, 2), dn.transpose(1, 2)
    for e in range(gu.shape[0]):
        tok, pos = torch.where(top_k_index == e)
        if tok.numel() == 0:
            continue
        x = hidden[tok]
        b1 = experts.gate_up_proj_bias[e] if family == "gpt_oss" else None
        h = F.linear(fmt.fake_quant(x, role="activation"), fmt.fake_quant(gu[e]), b1)
        if family == "gpt_oss":
            h = swiglu_gpt_oss(h, experts.alpha, experts.limit)
        else:
            g, u = h.chunk(2, dim=-1)
            h = F.silu(g) * u
        b2 = experts.down_proj_bias[e] if family == "gpt_oss" else None
        h = F.linear(fmt.fake_quant(h, role="activation"), fmt.fake_quant(dn[e]), b2)
        out.index_add_(0, tok, h * top_k_weights[tok, pos, None])
    return out


@pytest.mark.parametrize("family", list(BUILDERS))
@pytest.mark.parametrize("spec", ["nvfp4", "fp8_e4m3:block128", "mxfp4"])
def test_fused_experts_match_reference_loop(family, spec):
    model = BUILDERS[family]()
    name = "model.layers.1.mlp.experts"
    experts = model.get_submodule(name)
    box = {}
    hook = experts.register_forward_pre_hook(lambda m, a: box.setdefault("args", [t.detach().clone() for t in a]) and None)
    with torch.no_grad():
        model(input_ids=input_ids())
    hook.remove()
    hidden, idx, weights = box["args"]
    policy = {"rules": [{"kind": "experts", "weights": spec, "activations": spec, "act_scale": "dynamic"}]}
    with quantized(model, policy):
        q = model.get_submodule(name)
        assert isinstance(q, QuantExperts)
        assert spec in repr(q)
        with torch.no_grad():
            got = q(hidden, idx, weights)
            expected = reference(experts, hidden, idx, weights, spec, family)
            plain = experts(hidden, idx, weights)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(got, plain, rtol=1e-4, atol=1e-5)  # the quantization is really applied
    assert model.get_submodule(name) is experts


def test_experts_static_scale_is_shared_max_over_routed_tokens():
    model = tiny_mixtral()
    name = "model.layers.0.mlp.experts"
    box = []
    hook = model.get_submodule(name).register_forward_pre_hook(lambda m, a: box.append(a[0].abs().max()) and None)
    calib = [input_ids(seed=3)]
    with torch.no_grad():
        model(input_ids=calib[0])
    hook.remove()
    with quantized(model, {"rules": [{"kind": "experts", "weights": "nvfp4", "activations": "nvfp4"}]}, calibration=calib):
        q = model.get_submodule(name)
        # every token is routed to some expert, so the gate_up input amax is the block input's amax
        assert float(q.q_up.act_amax) == float(box[0])
        assert float(q.q_down.act_amax) > 0
