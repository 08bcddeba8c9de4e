"""GPU recommendations (qeval.deploy.recommend, `qeval recommend`), including the product brief's claims
(shared/reference/seed-gpu-guide.txt, hardware.md "Facts from the product brief")."""

from __future__ import annotations

import json

import pytest

from qeval.cli import main
from qeval.deploy.hardware import GIB, load_catalog
from qeval.deploy.memory import count_params, load_model, weight_bytes
from qeval.deploy.recommend import recommend

_MODELS: dict = {}
_RESULTS: dict = {}


pytestmark = pytest.mark.usefixtures("private_cache")


def model(name):
    if name not in _MODELS:
        _MODELS[name] = load_model(name)
    return _MODELS[name]


def rec(name, policy, **kw):
    key = (
        name,
        json.dumps(policy, sort_keys=True) if isinstance(policy, dict) else policy,
        json.dumps(kw, sort_keys=True),
    )
    if key not in _RESULTS:
        _RESULTS[key] = recommend(model(name), policy, **kw)
    return _RESULTS[key]


def opt(result, gpu, count, mig=None, nodes=1):
    for o in result["options"]:
        if o["gpu"] == gpu and o["count"] == count and o["mig_profile"] == mig and o["nodes"] == nodes:
            return o
    raise KeyError((gpu, count, mig, nodes))


# --- the product brief ----------------------------------------------------------
@pytest.mark.parametrize("policy", ["fp8-block", "fp8-dynamic"])
def test_glm52_fp8_needs_h200_or_b200_node(policy):
    r = rec("glm-5.2", policy)
    assert r["weight_bytes"] == pytest.approx(755e9, rel=0.01)  # "~755 GB of FP8 weights"
    assert not opt(r, "h100", 8)["fits"]  # over one 8xH100 node (640 GB)
    for gpu in ("h200", "b200"):
        o = opt(r, gpu, 8)
        assert o["fits_with_headroom"], o
        assert o["kv_cache_bytes"] > 0  # "with KV-cache room left"
    assert opt(r, "h100", 16, nodes=2)["fits"]  # multi-node H100 would hold it...
    best = r["recommended"]
    assert (best["gpu"], best["count"], best["nodes"]) == ("h200", 8, 1)  # ...but one H200 node wins


def test_deepseek_r1_fp8_fits_one_h200_node():
    r = rec("deepseek-r1", "fp8-block")
    o = opt(r, "h200", 8)
    assert o["fits_with_headroom"] and o["native"]
    assert not opt(r, "h100", 8)["fits"]
    assert r["recommended"]["gpu"] == "h200" and r["recommended"]["nodes"] == 1
    assert "fp8" in r["checkpoint_precision"]


def _ratio(name, policy):
    m = model(name)
    c = count_params(m)
    w = weight_bytes(m, c, policy)
    return w.bf16_total / w.total


def test_nvfp4_about_3_5x_smaller_than_16bit():
    # every linear layer and the lm_head in NVFP4 (4.5 bits incl. scales): 16/4.5 = 3.56 is the ceiling
    everything = {"name": "nvfp4-all", "rules": [{"kind": ["linear", "lm_head"], "weights": "nvfp4"}]}
    r_all = _ratio("llama-3.1-70b", everything)
    assert 3.4 < r_all < 16 / 4.5
    # the built-in nvfp4 policy keeps embeddings and lm_head BF16: a bit less on a dense model,
    # ~3.5x on the big MoE models where those are a tiny share
    r_builtin = _ratio("llama-3.1-70b", "nvfp4")
    assert 3.0 < r_builtin < r_all
    assert 3.45 < _ratio("deepseek-r1", "nvfp4") < 16 / 4.5


def test_small_embedding_model_fits_h100_mig_slice():
    r = rec("all-minilm-l6-v2", "bf16", context=256, batch=32)
    o = opt(r, "h100", 1, mig="1g.10gb")
    assert o["fits_with_headroom"]
    assert o["decode_tokens_per_s"] is None and o["usd_per_million_tokens"] > 0  # an encoder: priced per input token
    assert r["recommended"]["mig_profile"] is not None  # a slice is the cheapest


def test_mixtral_bf16_fits_no_mig_slice():
    r = rec("mixtral-8x7b", "bf16")
    assert r["weight_bytes"] / GIB > 79.25  # more than the biggest H100 slice holds
    migs = [o for o in r["options"] if o["mig_profile"]]
    assert not any(o["fits"] for o in migs if o["gpu"] == "h100")
    # no partial slice on any GPU; only the 7g (whole-GPU) profiles of H200/B200 have the memory
    assert not any(o["fits"] for o in migs if not o["mig_profile"].startswith("7g"))
    assert r["recommended"]["mig_profile"] is None


def test_nvfp4_on_hopper_is_not_native():
    r = rec("llama-3.1-70b", "nvfp4", gpus=["h100", "h200"])
    best = r["recommended"]
    assert best is not None and best["native"] is False
    assert any("W4A16" in n for n in best["notes"])
    b = rec("llama-3.1-70b", "nvfp4", gpus=["b200"])["recommended"]
    assert b["native"] is True and b["compute_precision"] == "fp4/bf16"  # lm_head stays BF16


def test_fp8_is_native_everywhere():
    r = rec("llama-3.1-8b", "fp8-dynamic")
    assert all(o["native"] for o in r["options"])


# --- the model's own numbers -------------------------------------------------------
def test_memory_breakdown_adds_up():
    r = rec("llama-3.1-70b", "fp8-dynamic", context=4096, batch=4)
    for o in r["options"]:
        assert o["need_bytes"] == o["weights_bytes"] + o["kv_cache_bytes"] + o["activation_bytes"] + o["overhead_bytes"]
        assert o["headroom_bytes"] == o["usable_bytes"] - o["need_bytes"]
        assert o["fits"] == (o["need_bytes"] <= o["usable_bytes"])
    o = opt(r, "h100", 4)
    assert o["weights_bytes"] == -(-r["weight_bytes"] // 4)
    # 8 KV heads over TP4: 2 heads per GPU; 80 layers x 2 x 2 x 128 x 2 bytes per token
    assert o["kv_cache_bytes"] == 4 * 4096 * 80 * 2 * 2 * 128 * 2
    assert o["usable_bytes"] == int(81559 * 2**20 * 0.9)


def test_decode_speed_and_cost():
    r = rec("llama-3.1-8b", "bf16", context=2048, batch=1)
    o = opt(r, "h100", 1)
    # memory-bound: bytes read per token / (bandwidth x efficiency); efficiency 0.7 from configs/memory.yaml
    bytes_read = r["weight_bytes_read_per_token"] + 2048 * 131_072
    assert o["decode_tokens_per_s"] == pytest.approx(3.35e12 * 0.7 / bytes_read, rel=1e-9)
    assert o["usd_per_million_tokens"] == pytest.approx(2.75 * 1e6 / (o["decode_tokens_per_s"] * 3600))
    # more bandwidth -> faster; B200 > H200 > H100
    speeds = [opt(r, g, 1)["decode_tokens_per_s"] for g in ("h100", "h200", "b200")]
    assert speeds == sorted(speeds)


def test_moe_decode_reads_only_active_experts():
    r = rec("mixtral-8x7b", "bf16", batch=1)
    read = r["weight_bytes_read_per_token"]
    assert read < 0.35 * r["weight_bytes"]  # 12.9B of 46.7B params
    assert read == pytest.approx(2 * 12_879_925_248 - 2 * 32000 * 4096, rel=1e-3)  # minus the embedding table


def test_json_schema_and_recommended_is_an_option(capsys):
    rc = main(["recommend", "glm-5.2", "--policy", "fp8-block", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "model",
        "params_total",
        "params_active",
        "weight_bytes",
        "kv_bytes_per_token",
        "options",
        "recommended",
    ):
        assert key in out
    for o in out["options"]:
        for key in ("gpu", "count", "mig_profile", "fits", "native", "decode_tokens_per_s", "usd_per_million_tokens"):
            assert key in o
    assert out["recommended"] in out["options"]
    assert out["params_total"] == 753_329_940_480 and out["kv_bytes_per_token"] == 89_856
    assert any(o["mig_profile"] for o in out["options"]) and any(o["nodes"] > 1 for o in out["options"])


def test_human_table(capsys):
    assert main(["recommend", "glm-5.2", "--policy", "fp8-block"]) == 0
    out = capsys.readouterr().out
    assert "Recommended:" in out and "H200" in out and "next option down" in out and "multi-token-prediction" in out


def test_prices_change_the_recommendation(tmp_path):
    # at an H200 price above two B200 nodes' worth... make B200 the cheapest per hour
    f = tmp_path / "p.yaml"
    f.write_text("h100: 9\nh200: 9\nb200: 1\n")
    r = recommend(model("glm-5.2"), "fp8-block", prices=f)
    assert r["recommended"]["gpu"] == "b200"


def test_recipe_yaml_as_model(tmp_path):
    from qeval.deploy.memory import MODELS_DIR

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model:\n  id: {MODELS_DIR / 'smollm2-135m'}\npolicies: [bf16]\nhardware:\n  context: 1024\n  batch: 2\n  gpu: h100\n"
    )
    r = recommend(str(recipe), "nvfp4")
    assert (r["context"], r["batch"]) == (1024, 2)
    assert r["params_total"] == 134_515_008
    assert {o["gpu"] for o in r["options"]} == {"h100"}


# --- bad input ---------------------------------------------------------------------
def test_policy_matching_nothing(capsys):
    bad = {"name": "typo", "rules": [{"name": "model.layers.*.mlp.gate_prj", "weights": "nvfp4"}]}
    with pytest.raises(ValueError, match="matches no module"):
        recommend(model("smollm2-135m"), bad)


def test_context_above_max_warns(capsys):
    r = rec("llama-3.2-1b", "bf16", context=1_000_000, batch=1)
    assert any("max_position_embeddings" in w and "1000000" in w for w in r["warnings"])
    assert main(["recommend", "llama-3.2-1b", "--policy", "bf16", "--context", "1000000", "--json"]) == 0
    assert "warning: context 1000000" in capsys.readouterr().err


def test_cli_prices_missing_gpu(tmp_path, capsys):
    f = tmp_path / "prices.yaml"
    f.write_text("h100: 2\n")
    assert main(["recommend", "smollm2-135m", "--policy", "bf16", "--prices", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no price for GPU 'h200'" in err and len(err.splitlines()) == 1


def test_cli_unknown_model_type(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "zebra_lm_9000"}')
    assert main(["recommend", str(tmp_path), "--policy", "bf16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model_type" in err and "zebra_lm_9000" in err and len(err.splitlines()) == 1


def test_cli_bad_kv_format(capsys):
    assert main(["recommend", "smollm2-135m", "--policy", "bf16", "--kv", "fp3"]) == 2
    assert "unknown format 'fp3'" in capsys.readouterr().err


def test_kv_format_shrinks_kv_cache():
    bf = opt(rec("llama-3.1-8b", "bf16", context=8192, batch=8), "h100", 1)
    nv = opt(rec("llama-3.1-8b", "bf16", context=8192, batch=8, kv="nvfp4"), "h100", 1)
    assert nv["kv_cache_bytes"] == pytest.approx(bf["kv_cache_bytes"] * 0.5625 / 2)
    assert not nv["native"]  # NVFP4 KV on Hopper is not native


def test_catalog_default_prices_used():
    r = rec("smollm2-135m", "bf16")
    cat = load_catalog()
    for o in r["options"]:
        if o["mig_profile"] is None:
            assert o["usd_per_hour"] == pytest.approx(cat.gpus[o["gpu"]].price_per_hour * o["count"])


def test_model_spec_dict_and_config_object():
    from qeval.deploy.memory import MODELS_DIR

    by_spec = recommend({"id": str(MODELS_DIR / "qwen3-0.6b")}, "bf16", context=512, batch=1)
    assert by_spec["params_total"] == 596_049_920
    assert recommend(model("qwen3-0.6b").config, "bf16", context=512, batch=1)["params_total"] == 596_049_920


def test_mig_never_tensor_parallel():
    r = rec("llama-3.1-8b", "fp8-dynamic")
    for o in r["options"]:
        if o["mig_profile"]:
            assert o["count"] == 1 and o["tp"] == 1 and o["nodes"] == 1
        if o["nodes"] > 1:
            assert o["tp"] == 8 and o["pp"] == o["nodes"]  # TP inside a node, pipeline across nodes


def test_policy_that_quantizes_nothing_warns():
    only_optional = {"name": "nothing", "rules": [{"kind": "experts", "weights": "nvfp4", "optional": True}]}
    r = recommend(model("smollm2-135m"), only_optional, context=512, batch=1)
    assert any("quantizes no module" in w for w in r["warnings"])
    assert r["weight_bytes"] == 2 * 134_515_008


def test_objective_token_prefers_b200_for_steady_traffic():
    # memory-bound decode: B200 has more bandwidth per dollar (7.7 TB/s / $5.50 vs 4.8 / $3.75), so per
    # million tokens it wins even though per hour a Hopper node is cheaper (the brief's B200 FAQ)
    hour = rec("deepseek-r1", "nvfp4")["recommended"]
    token = rec("deepseek-r1", "nvfp4", objective="token")["recommended"]
    assert hour["gpu"] in ("h100", "h200") and not hour["native"]
    assert token["gpu"] == "b200" and token["native"]
    assert token["usd_per_million_tokens"] < hour["usd_per_million_tokens"]
    assert token["usd_per_hour"] > hour["usd_per_hour"]


def test_default_context_capped_at_model_maximum():
    r = rec("all-minilm-l6-v2", "bf16")
    assert r["context"] == 512 and not r["warnings"]
