"""Policy loading, validation errors, and plan() counts/bytes against hand-computed numbers.

Byte expectations come from shapes and the formats.md bytes table (NVFP4 0.5625
B/param + 4 B per tensor, FP8 per-channel 1 + 4 B per row, MXFP4 0.53125,
BF16 2), not from qeval's format code.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import tiny_bert, tiny_gpt2, tiny_llama, tiny_mixtral, tiny_qwen3_moe
from qeval.policy import Plan, builtin_policies, load_policy, plan

H, I, V, L = 64, 128, 128, 3  # tiny_llama dims
KV = 32  # 2 kv heads x 16
LLAMA_LINEARS = {  # name -> (N, K) per layer
    "self_attn.q_proj": (H, H), "self_attn.k_proj": (KV, H), "self_attn.v_proj": (KV, H),
    "self_attn.o_proj": (H, H), "mlp.gate_proj": (I, H), "mlp.up_proj": (I, H), "mlp.down_proj": (H, I),
}


def nvfp4_bytes(n, k):
    return n * k * 9 // 16 + 4


def fp8_channel_bytes(n, k):
    return n * k + 4 * n


def write(tmp_path, data, name="p.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# --- loading -------------------------------------------------------------------
def test_every_builtin_policy_loads_and_plans_on_llama():
    names = builtin_policies()
    for required in ("bf16", "fp8-dynamic", "fp8-block", "nvfp4", "nvfp4-weight-only", "mxfp4", "mxfp8", "mixed-fp4-fp8"):
        assert required in names
    model = tiny_llama()
    for name in names:
        p = plan(model, load_policy(name))
        assert p.total_params == sum(x.numel() for x in model.parameters())


def test_load_by_path_and_dict_agree(tmp_path):
    data = {"name": "x", "rules": [{"kind": "mlp", "weights": "nvfp4"}]}
    a, b = load_policy(write(tmp_path, data)), load_policy(data)
    assert a.rules == b.rules and a.source.endswith("p.yaml")


def test_typo_format_names_file_rule_field_and_choices(tmp_path):
    path = write(tmp_path, {"rules": [{"kind": "mlp", "weights": "nvfp4"}, {"kind": "attention", "weights": "nvpf4"}]})
    with pytest.raises(ValueError) as err:
        load_policy(path)
    msg = str(err.value)
    assert str(path) in msg and "rules[1].weights" in msg and "'nvpf4'" in msg
    assert "nvfp4" in msg and "fp8_e4m3:block128" in msg and "none" in msg  # the valid choices
    assert "\n" not in msg


def test_bad_regex_is_reported(tmp_path):
    path = write(tmp_path, {"rules": [{"name": "re:model.layers.(0|1.mlp", "weights": "nvfp4"}]})
    with pytest.raises(ValueError, match=r"rules\[0\]\.name: bad regex"):
        load_policy(path)


@pytest.mark.parametrize(
    "rule, field, needle",
    [
        ({"kind": "mlps", "weights": "nvfp4"}, "kind", "valid choices: linear, attention"),
        ({"kind": "mlp", "weights": "nvfp4", "kv_cache": "fp4"}, "kv_cache", "fp8_e4m3, nvfp4, none"),
        ({"kind": "mlp", "weights": "nvfp4", "act_scale": "auto"}, "act_scale", "static"),
        ({"kind": "mlp", "weights": "nvfp4", "layers": ["1-3"]}, "layers", "a..b"),
        ({"kind": "mlp", "weigths": "nvfp4"}, "weigths", "unknown field"),
        ({"weights": "nvfp4"}, "rules[0]", "at least one of name, kind"),
    ],
)
def test_bad_fields_are_named(rule, field, needle):
    with pytest.raises(ValueError) as err:
        load_policy({"name": "bad", "rules": [rule]})
    assert field in str(err.value) and needle in str(err.value)


def test_unknown_policy_name_lists_builtins():
    with pytest.raises(FileNotFoundError, match="mixed-fp4-fp8"):
        load_policy("nvfp5")


def test_rule_matching_nothing_hints_closest_names():
    policy = {"name": "t", "rules": [{"name": "model.layers.*.mlp.gate_prj", "weights": "nvfp4"}]}
    with pytest.raises(ValueError) as err:
        plan(tiny_llama(), policy)
    msg = str(err.value)
    assert "rules[0]" in msg and "matches no module" in msg and "model.layers.0.mlp.gate_proj" in msg
    # optional: true allows it
    policy["rules"][0]["optional"] = True
    assert plan(tiny_llama(), policy).bytes_after == plan(tiny_llama(), "bf16").bytes_after


def test_experts_rule_on_dense_model_needs_optional():
    with pytest.raises(ValueError, match="kinds in this model"):
        plan(tiny_llama(), {"rules": [{"kind": "experts", "weights": "nvfp4"}]})


# --- plan: counts and bytes by hand -------------------------------------------------
def test_plan_llama_mixed_counts_and_bytes():
    # first block BF16, attention FP8 per-channel, MLP NVFP4, last block MXFP4 weight-only
    policy = {
        "name": "t",
        "rules": [
            {"first": 1, "weights": "none"},
            {"layers": [-1], "kind": "linear", "weights": "mxfp4"},
            {"kind": "attention", "weights": "fp8_e4m3:channel", "activations": "fp8_e4m3:token"},
            {"name": "re:mlp\\.(gate|up|down)_proj$", "weights": "nvfp4", "activations": "nvfp4"},
        ],
    }
    p = plan(tiny_llama(), policy)
    by_fmt = p.summary()["weights"]
    assert by_fmt == {"bf16": 7 + 2, "mxfp4": 7, "fp8_e4m3:channel": 4, "nvfp4": 3}  # +2: embed, lm_head

    expected_after = 0
    for leaf, (n, k) in LLAMA_LINEARS.items():
        expected_after += 2 * n * k  # layer 0: BF16
        expected_after += n * k * 17 // 32  # layer 2: MXFP4 0.53125 B/param
        expected_after += fp8_channel_bytes(n, k) if "attn" in leaf else nvfp4_bytes(n, k)  # layer 1
    expected_after += 2 * (V * H) * 2  # embeddings + lm_head (untied) BF16
    expected_after += 2 * H * (2 * L + 1)  # RMSNorm weights
    total = L * sum(n * k for n, k in LLAMA_LINEARS.values()) + 2 * V * H + H * (2 * L + 1)
    assert p.total_params == total
    assert p.bytes_before == 2 * total
    assert p.bytes_after == expected_after
    e = p.entry("model.layers.1.self_attn.q_proj")
    assert (e.kind, e.layer, e.rule, e.weights, e.activations) == ("attention", 1, 2, "fp8_e4m3:channel", "fp8_e4m3:token")
    assert p.entry("model.layers.2.mlp.up_proj").rule == 1
    assert p.entry("model.layers.0.mlp.up_proj").weights is None


def test_plan_moe_counts_fused_experts_per_expert():
    model = tiny_mixtral()  # E=4, I=96, H=64, 2 layers
    E, Im = 4, 96
    p = plan(model, "nvfp4")
    experts = [e for e in p.entries if e.kind == "experts"]
    assert len(experts) == 2 and all(e.weights == "nvfp4" for e in experts)
    per_layer = E * (nvfp4_bytes(2 * Im, H) + nvfp4_bytes(H, Im))
    assert all(e.bytes_after == per_layer for e in experts)
    assert all(e.params == E * 3 * Im * H for e in experts)
    routers = [e for e in p.entries if e.kind == "router"]
    assert len(routers) == 2 and all(e.weights is None and e.bytes_after == 2 * E * H for e in routers)
    assert p.summary()["weights"]["nvfp4"] == 2 * 4 + 2  # 4 attention projections + experts per layer
    lm = p.entry("lm_head")
    assert lm.weights is None and lm.bytes_after == 2 * V * H


def test_plan_qwen3_moe_kinds():
    p = plan(tiny_qwen3_moe(), "mixed-fp4-fp8")
    kinds = {e.name: e.kind for e in p.entries}
    assert kinds["model.layers.0.mlp.experts"] == "experts"
    assert kinds["model.layers.0.mlp.gate"] == "router"


def test_broad_rules_never_catch_protected_modules():
    model = tiny_mixtral()
    p = plan(model, {"rules": [{"kind": "linear", "weights": "fp8_e4m3"}, {"name": "*", "weights": "nvfp4"}]})
    for e in p.entries:
        if e.kind in ("lm_head", "embedding", "router"):
            assert e.weights is None, e.name
    p = plan(model, {"rules": [{"name": "lm_head", "weights": "fp8_e4m3"}, {"kind": "router", "weights": "fp8_e4m3"}]})
    assert p.entry("lm_head").weights == "fp8_e4m3"
    assert p.entry("lm_head").bytes_after == V * H + 4
    assert p.entry("model.layers.1.mlp.gate").weights == "fp8_e4m3"


def test_tied_weights_counted_once():
    model = tiny_llama(tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    p = plan(model, "nvfp4")
    assert p.total_params == sum(x.numel() for x in model.parameters())  # parameters() dedups
    assert p.entry("lm_head").params == 0 and p.entry("lm_head").tied_to == "model.embed_tokens"


def test_gpt2_conv1d_uses_gemm_shape():
    p = plan(tiny_gpt2(), {"rules": [{"kind": "attention", "weights": "fp8_e4m3:channel"}]})
    e = p.entry("transformer.h.0.attn.c_attn")  # Conv1D weight stored [K=64, N=192]
    assert e.bytes_after == fp8_channel_bytes(192, 64) + 2 * 192  # + BF16 bias


def test_bert_kinds_and_layers():
    p = plan(tiny_bert(), {"rules": [{"last": 1, "kind": "mlp", "weights": "nvfp4"}]})
    assert p.entry("encoder.layer.1.intermediate.dense").weights == "nvfp4"
    assert p.entry("encoder.layer.0.intermediate.dense").weights is None
    assert p.entry("encoder.layer.0.attention.self.query").kind == "attention"
    assert p.entry("pooler.dense").kind == "linear"


def test_kv_cache_in_plan():
    p = plan(tiny_llama(), {"kv_cache": "fp8_e4m3", "rules": [{"layers": [0], "kind": "attention", "weights": "none", "kv_cache": "none"}]})
    assert p.kv_cache == "fp8_e4m3" and p.kv_cache_by_layer == {1: "fp8_e4m3", 2: "fp8_e4m3"}
    assert p.entry("model.layers.0.self_attn.k_proj").kv_cache is None


def test_plan_json_round_trip_and_meta_device_agrees():
    model = tiny_llama()
    p = plan(model, "mixed-fp4-fp8")
    again = Plan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again == p
    with torch.device("meta"):
        meta = tiny_llama()
    assert plan(meta, "mixed-fp4-fp8").to_dict() == p.to_dict()


def test_plan_command_table_and_json_round_trip(tmp_path, capsys):
    from qeval.cli import main

    model = tiny_llama()
    model.config.save_pretrained(tmp_path)
    assert main(["plan", str(tmp_path), "--policy", "mixed-fp4-fp8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert Plan.from_dict(data) == plan(model, "mixed-fp4-fp8")
    assert main(["plan", str(tmp_path / "config.json"), "--policy", "mixed-fp4-fp8"]) == 0
    out = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in out and "nvfp4" in out and "fp8_e4m3:channel" in out
    assert "total: 127,424 params" in out
    assert main(["plan", str(tmp_path), "--policy", "nvpf4"]) == 2
    assert "nvfp4" in capsys.readouterr().err


def test_per_expert_linears_and_linear_router_kinds():
    from torch import nn

    from qeval.quantize import QuantLinear, quantized

    class Expert(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.w2 = nn.Linear(32, 64, bias=False), nn.Linear(64, 32, bias=False)

    class MoE(nn.Module):  # the older per-expert layout: experts.N.w1, a linear router called "gate"
        def __init__(self):
            super().__init__()
            self.gate = nn.Linear(32, 4, bias=False)
            self.experts = nn.ModuleList(Expert() for _ in range(4))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = MoE()

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(Block() for _ in range(2))

    model = Toy()
    p = plan(model, "nvfp4-weight-only")
    assert p.entry("layers.0.mlp.experts.3.w2").kind == "experts"
    assert p.entry("layers.0.mlp.experts.3.w2").layer == 0
    assert p.entry("layers.1.mlp.gate").kind == "router" and p.entry("layers.1.mlp.gate").weights is None
    assert p.summary()["weights"] == {"nvfp4": 16, "bf16": 2}
    assert p.bytes_after == 16 * nvfp4_bytes(64, 32) + 2 * 2 * 4 * 32
    with quantized(model, "nvfp4-weight-only"):
        assert isinstance(model.layers[1].mlp.experts[2].w1, QuantLinear)
        assert isinstance(model.layers[1].mlp.gate, nn.Linear)
