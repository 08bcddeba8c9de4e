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
        assert o["headroom_bytes"] == o["kv_budget_bytes"] - o["kv_cache_bytes"] == o["usable_bytes"] - o["need_bytes"]
        assert o["fits"] == (o["kv_budget_bytes"] >= o["kv_cache_bytes"])
        assert o["usable_bytes"] <= o["capacity_bytes"]
    o = opt(r, "h100", 4)
    assert o["weights_bytes"] == -(-r["weight_bytes"] // 4)
    # 8 KV heads over TP4: 2 heads per GPU; 80 layers x 2 x 2 x 128 x 2 bytes per token
    assert o["kv_cache_bytes"] == 4 * 4096 * 80 * 2 * 2 * 128 * 2
    # vLLM: 0.92 x total - weights - activation peak - non-torch (1 GiB context + 0.5 GiB NCCL); graphs outside
    total = 81559 * 2**20
    expect = 0.92 * total - o["weights_bytes"] - o["activation_bytes"] - 1.5 * 2**30
    assert o["kv_budget_bytes"] == pytest.approx(expect, abs=1)


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


# --- the serving engine's memory model (issue #13) ------------------------------------
# vLLM's startup log states its formula with its own numbers: "the current vLLM instance can use
# total_gpu_memory (X GiB) x gpu_memory_utilization (u) = Y GiB; model weights take W GiB; non_torch_memory
# takes N GiB; PyTorch activation peak memory takes A GiB; the rest of the memory reserved for KV Cache is K GiB".
VLLM_LOGS = [
    # vllm-project/vllm#12330: Llama-3-8B on one A100 40GB
    dict(total=39.50, util=0.90, weights=14.96, non_torch=0.10, activation=9.37, kv=11.12),
    # vllm-project/vllm#14447 (a TP worker of a MoE model on a 24 GB card)
    dict(total=23.58, util=0.99, weights=21.21, non_torch=0.20, activation=0.37, kv=1.57),
]


@pytest.mark.parametrize("log", VLLM_LOGS)
def test_vllm_kv_cache_matches_its_own_log(log):
    from qeval.deploy.hardware import load_memory_defaults
    from qeval.deploy.kv import kv_budget

    vllm = load_memory_defaults().engines["vllm"]
    g = GIB
    args = (log["total"] * g, log["weights"] * g, log["activation"] * g, log["non_torch"] * g)
    got = kv_budget(vllm, *args, graphs=0, fraction=log["util"])
    assert got / g == pytest.approx(log["kv"], rel=0.02)
    if log["util"] <= 0.9:  # CUDA graphs are captured after the KV cache is sized, in the remainder
        assert kv_budget(vllm, *args, graphs=2 * g, fraction=log["util"]) == got


def test_engines_split_memory_as_documented():
    from qeval.deploy.hardware import load_memory_defaults
    from qeval.deploy.kv import kv_budget

    e = load_memory_defaults().engines
    cap, w, act, nt, cg = 80 * GIB, 40 * GIB, 2 * GIB, GIB, GIB
    # TensorRT-LLM: free_gpu_memory_fraction (0.9) of what is free after weights, activations and runtime
    assert kv_budget(e["trtllm"], cap, w, act, nt, cg) == pytest.approx(0.9 * (80 - 40 - 2 - 1 - 1) * GIB, abs=1)
    # SGLang: mem_fraction_static x total - weights (the rest holds activations and graphs)
    assert kv_budget(e["sglang"], cap, w, act, nt, cg) == pytest.approx((0.88 * 80 - 40) * GIB, abs=1)
    # ... and when the rest is too small for them, they come out of the pool
    assert kv_budget(e["sglang"], cap, w, act, nt, cg, fraction=0.99) == pytest.approx((80 - 40 - 4) * GIB, abs=1)
    # no engine hands out more than the card, whatever the fraction
    for eng in e.values():
        assert kv_budget(eng, cap, w, act, nt, cg, fraction=1.0) <= cap - w - act - nt - cg


def test_llama70b_bf16_on_two_h100_like_nim():
    # NIM ships an h100x2-throughput-bf16 profile for Llama-3.1-70B: more than one 8K sequence fits
    r = rec("llama-3.1-70b", "bf16", context=8192, batch=2)
    o = opt(r, "h100", 2)
    assert o["fits_with_headroom"] and o["max_batch"] >= 2
    trt = opt(rec("llama-3.1-70b", "bf16", context=8192, batch=2, engine="trtllm"), "h100", 2)
    assert trt["fits"] and trt["kv_budget_bytes"] != o["kv_budget_bytes"]


def test_engine_choice_in_json(capsys):
    assert main(["recommend", "smollm2-135m", "--policy", "bf16", "--engine", "sglang", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["engine"] == "sglang" and out["utilization"] == 0.88


# --- decode rates: batch x per-sequence, whatever the parallelism --------------------------
@pytest.mark.parametrize(
    "name,policy,kw",
    [
        ("deepseek-r1", "fp8-block", {}),
        ("glm-5.2", "fp8-block", {}),
        ("llama-3.1-70b", "bf16", {"context": 32768, "batch": 16}),
        ("mixtral-8x7b", "bf16", {"batch": 4}),
        ("llama-3.1-8b", "fp8-dynamic", {}),
    ],
)
def test_decode_rate_is_batch_times_per_sequence(name, policy, kw):
    r = rec(name, policy, **kw)
    multi = 0
    for o in r["options"]:
        assert o["decode_tokens_per_s"] == pytest.approx(r["batch"] * o["decode_tokens_per_s_per_sequence"], rel=1e-12)
        multi += o["nodes"] > 1
    if name in ("deepseek-r1", "glm-5.2"):
        assert multi  # the identity was checked on pipeline-parallel options too


def test_pipeline_is_not_faster_per_gpu_than_one_node():
    # the case: DeepSeek-R1 fp8-block on 2 x 8 H100 reported 1,080 tok/s = 1.70 x 8 x 79.42
    r = rec("deepseek-r1", "fp8-block")
    two = opt(r, "h100", 16, nodes=2)
    assert two["decode_tokens_per_s"] == pytest.approx(8 * two["decode_tokens_per_s_per_sequence"])
    one = opt(r, "h200", 8)
    # a stage reads half the weights per step, but a token passes both stages: no pipeline speedup
    assert two["decode_tokens_per_s"] < 1.0 * one["decode_tokens_per_s"] * (3.35 / 4.8) * 1.01


# --- MIG only where it makes sense ----------------------------------------------------------
def test_mixtral_fp8_gets_no_mig_slice_and_says_why():
    r = rec("mixtral-8x7b", "fp8-dynamic")
    migs = [o for o in r["options"] if o["mig_profile"]]
    assert any(o["fits"] for o in migs)  # memory alone would allow H200 3g.71gb...
    assert not any(o["eligible"] for o in migs)  # ...but it is not offered
    assert r["recommended"]["mig_profile"] is None
    assert "MIG slices not offered" in r["why"] and "46.7B" in r["why"]
    forced = rec("mixtral-8x7b", "fp8-dynamic", mig=True)
    assert any(o["eligible"] and o["fits"] for o in forced["options"] if o["mig_profile"])


def test_small_model_offered_a_slice_with_reason():
    r = rec("llama-3.2-1b", "bf16", context=4096, batch=4)
    assert r["recommended"]["mig_profile"] is not None
    assert "A MIG slice suits this model" in r["why"]


def test_slow_slice_not_offered():
    # an 8B model at batch 64 of 8K: a 1g slice would decode each sequence at a crawl
    r = rec("llama-3.1-8b", "fp8-dynamic", context=2048, batch=64, mig=False)
    slow = [o for o in r["options"] if o["mig_profile"] and o["decode_tokens_per_s_per_sequence"] < 20]
    assert slow  # the 1g slices at least
    for o in slow:
        assert not o["eligible"] and "tokens/s per sequence" in o["notes"][-1]
    fast = [o for o in r["options"] if o["mig_profile"] and o["decode_tokens_per_s_per_sequence"] >= 20]
    assert all(o["eligible"] for o in fast)


# --- wording and choices ----------------------------------------------------------------------
def test_no_multi_node_rows_when_one_node_holds_it():
    for name in ("llama-3.1-8b", "llama-3.1-70b", "mixtral-8x7b"):
        r = rec(name, "bf16")
        assert not [o for o in r["options"] if o["nodes"] > 1], name


@pytest.mark.parametrize("name,policy", [("llama-3.1-8b", "bf16"), ("glm-5.2", "fp8-block"), ("deepseek-r1", "nvfp4")])
def test_next_option_up_is_never_slower(name, policy):
    import re

    r = rec(name, policy)
    up = r["alternatives"]["up"]
    if up:
        speed = re.search(r"decodes ([0-9.]+)x as fast", up)
        assert speed and float(speed.group(1)) > 1.0, up


def test_bf16_policy_not_called_smaller(capsys):
    assert main(["recommend", "llama-3.2-1b", "--policy", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "1.00x" not in out and "as BF16" in out


@pytest.mark.parametrize(
    "flag,value", [("--batch", "0"), ("--context", "0"), ("--batch", "-3"), ("--context", "1.5"), ("--batch", "many"),
                   ("--utilization", "0"), ("--utilization", "1.5"), ("--utilization", "x")]
)
def test_bad_numbers_refused_in_one_line(flag, value, capsys):
    assert main(["recommend", "smollm2-135m", "--policy", "bf16", flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag.lstrip("-") in err and value in err


def test_bad_numbers_refused_by_the_api():
    for bad in (0, -1, 2.5, True, "x"):
        with pytest.raises(ValueError, match="whole number"):
            recommend(model("smollm2-135m"), "bf16", batch=bad)


def test_offline_hub_id_fails_fast_in_one_line(monkeypatch, tmp_path, capsys):
    import time

    from qeval.deploy import load

    # a Hub endpoint nothing listens on, and an empty Hugging Face cache
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    calls = []
    real = load.socket.create_connection
    monkeypatch.setattr(load.socket, "create_connection", lambda *a, **k: calls.append(a) or real(*a, **k))
    t = time.perf_counter()
    assert main(["recommend", "some-org/some-model", "--policy", "bf16"]) == 2
    elapsed = time.perf_counter() - t
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unreachable" in err and "some-org/some-model" in err
    assert len(calls) == 1  # one connectivity check, no retries
    assert elapsed < 10  # huggingface_hub's retries alone took ~30 s here; the bench reports the real figure


def test_offline_hub_id_found_in_local_cache(monkeypatch, tmp_path):
    from qeval.deploy.memory import MODELS_DIR

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--acme--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text((MODELS_DIR / "smollm2-135m" / "config.json").read_text())
    r = recommend("acme/tiny-llama", "bf16", context=512, batch=1)
    assert r["params_total"] == 134_515_008
