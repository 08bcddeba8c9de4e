"""Parameter counting, weight bytes and KV-cache bytes from configs alone (qeval.deploy.memory, qeval.deploy.kv).

Expected numbers are the published totals of shared/reference/model-configs/README.md
or are computed here by hand from the config numbers and the formats.md bytes table.
"""

from __future__ import annotations

import json
import os

import pytest

from qeval.deploy.memory import ModelConfigError, count_params, load_model, weight_bytes
from qeval.deploy.kv import (
    activation_bytes,
    attention_layout,
    kv_bytes_per_element,
    kv_bytes_per_token,
    kv_cache_bytes,
)

_CACHE: dict = {}


pytestmark = pytest.mark.usefixtures("private_cache")


def loaded(name):
    if name not in _CACHE:
        _CACHE[name] = load_model(name)
    return _CACHE[name]


# published totals (model-configs/README.md), main model as transformers builds it
PUBLISHED = {
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496,
    "mixtral-8x7b": 46_702_792_704,
    "deepseek-r1": 671_026_419_200,
    "glm-5.2": 743_377_019_904,
    "smollm2-135m": 134_515_008,
    "all-minilm-l6-v2": 22_713_216,
    "gpt2": 124_439_808,
    "llama-3.2-1b": 1_235_814_400,
    "qwen3-0.6b": 596_049_920,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_totals(name):
    c = count_params(loaded(name))
    assert c.params_main == PUBLISHED[name], f"{name}: counted {c.params_main:,} vs published {PUBLISHED[name]:,}"


def test_glm_mtp_counted_separately():
    c = count_params(loaded("glm-5.2"))
    assert c.params_mtp == 9_952_920_576
    assert c.params_total == 753_329_940_480
    assert any("multi-token-prediction" in n and "transformers does not build" in n for n in c.notes)


def test_deepseek_mtp_with_its_copies():
    c = count_params(loaded("deepseek-r1"))
    assert round(c.params_total / 1e9, 1) == 684.5  # "~684.5B with the MTP layer and its copies"
    # the MTP layer is one MoE block + 2 embedding-sized copies + eh_proj + 3 norms
    h, v = 7168, 129280
    assert c.params_mtp > 2 * v * h + 2 * h * h
    # e_score_correction_bias buffers: 58 MoE layers x 256 experts (README)
    assert c.buffers == 58 * 256


def test_active_params_moe():
    # published: Mixtral 12.88B active, DeepSeek-R1 37.55B active
    assert round(count_params(loaded("mixtral-8x7b")).params_active / 1e9, 2) == 12.88
    assert round(count_params(loaded("deepseek-r1")).params_active / 1e9, 2) == 37.55
    dense = count_params(loaded("llama-3.1-8b"))
    assert dense.params_active == dense.params_main


def test_quantization_config_builds_and_is_reported():
    m = loaded("deepseek-r1")
    assert (
        m.checkpoint_precision is not None and "fp8" in m.checkpoint_precision and "128x128" in m.checkpoint_precision
    )
    assert not hasattr(m.config, "quantization_config")
    assert loaded("llama-3.1-8b").checkpoint_precision is None


def test_encoder_built_without_lm_head():
    m = loaded("all-minilm-l6-v2")
    assert not m.is_causal_lm
    assert attention_layout(m.config, m.is_causal_lm).kind == "none"


# --- a tiny model, every byte by hand ----------------------------------------
def _tiny_llama():
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        tie_word_embeddings=False,
        max_position_embeddings=512,
    )


def test_tiny_llama_exact_params_and_bytes():
    m = load_model(_tiny_llama())
    H, I, L, V, kvd = 64, 128, 2, 256, 2 * 16  # kv heads x head_dim
    linears = [(H, H), (kvd, H), (kvd, H), (H, H), (I, H), (I, H), (H, I)]  # (N, K): q k v o gate up down
    per_layer = sum(n * k for n, k in linears) + 2 * H
    params = V * H + L * per_layer + H + V * H
    c = count_params(m)
    assert c.params_main == params == c.params_total == c.params_active

    w = weight_bytes(m, c, "bf16")
    assert w.total == 2 * params

    # fp8-dynamic: per-channel FP8 weights = N*K + 4*N bytes (formats.md: 1 + 4/K per param);
    # embeddings, lm_head and norms stay BF16
    fp8 = L * sum(n * k + 4 * n for n, k in linears)
    rest = 2 * (V * H + V * H + L * 2 * H + H)
    assert weight_bytes(m, c, "fp8-dynamic").total == fp8 + rest

    # nvfp4: N*K/2 codes + N*K/16 E4M3 block scales + 4 bytes fp32 global scale per tensor
    nv = L * sum(n * k // 2 + n * k // 16 + 4 for n, k in linears)
    w4 = weight_bytes(m, c, "nvfp4")
    assert w4.total == nv + rest
    # decode reads everything but the input-embedding table (one row of it per token)
    assert w4.active_read == w4.total - 2 * V * H


def test_tiny_moe_active_params():
    from transformers import MixtralConfig

    cfg = MixtralConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        num_local_experts=4,
        num_experts_per_tok=1,
        tie_word_embeddings=False,
    )
    c = count_params(load_model(cfg))
    H, I, L, E = 32, 64, 2, 4
    expert = 3 * H * I
    assert c.experts == E and c.top_k == 1 and c.moe_layers == L
    assert c.expert_params == L * E * expert
    assert c.params_main - c.params_active == L * (E - 1) * expert


# --- KV cache -----------------------------------------------------------------
@pytest.mark.parametrize(
    "name, per_token",
    [
        ("llama-3.1-8b", 131_072),
        ("llama-3.1-70b", 327_680),
        ("mixtral-8x7b", 131_072),
        ("deepseek-r1", 70_272),
        ("glm-5.2", 89_856),
    ],
)
def test_kv_bytes_per_token_bf16(name, per_token):  # README values
    m = loaded(name)
    lay = attention_layout(m.config)
    assert kv_bytes_per_token(lay, None)["full"] == per_token
    assert kv_bytes_per_token(lay, "fp8_e4m3")["full"] == per_token / 2
    assert kv_bytes_per_token(lay, "nvfp4")["full"] == per_token / 2 * 0.5625


def test_kv_tp_replication():
    gqa = attention_layout(loaded("llama-3.1-8b").config)  # 8 KV heads
    full = kv_bytes_per_token(gqa, None)["full"]
    assert kv_bytes_per_token(gqa, None, tp=8)["full"] == full / 8
    assert kv_bytes_per_token(gqa, None, tp=16)["full"] == full / 8  # 1 head per GPU: replicated beyond 8
    mla = attention_layout(loaded("deepseek-r1").config)
    assert kv_bytes_per_token(mla, None, tp=8)["full"] == 70_272  # one latent, on every rank
    assert kv_bytes_per_token(mla, None, tp=8, pp=2)["full"] == 70_272 / 2  # pipeline stages split the layers


def test_kv_bytes_per_element():
    assert kv_bytes_per_element(None, 128) == 2
    assert kv_bytes_per_element("fp8_e4m3", 128) == 1
    assert kv_bytes_per_element("nvfp4", 128) == 0.5625


def test_sliding_window_hybrid_counted_separately():
    from transformers import GptOssConfig

    cfg = GptOssConfig(
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=100,
        sliding_window=128,
        num_local_experts=4,
        num_experts_per_tok=2,
        layer_types=["sliding_attention", "full_attention"] * 2,
    )
    lay = attention_layout(cfg)
    assert (lay.full_layers, lay.sliding_layers, lay.window) == (2, 2, 128)
    per_layer = 2 * 2 * 16 * 2  # K and V x kv heads x head_dim x bf16
    context, batch = 1000, 3
    expected = batch * (2 * per_layer * context + 2 * per_layer * 128)
    assert kv_cache_bytes(lay, None, context, batch) == expected
    assert kv_cache_bytes(lay, None, 100, 1) == 4 * per_layer * 100  # below the window every layer holds all tokens


def test_activations_scale_with_tokens_and_tp():
    from qeval.deploy.hardware import load_memory_defaults

    d = load_memory_defaults()
    cfg = loaded("llama-3.1-8b").config
    a1 = activation_bytes(cfg, d, 1000, 1)
    a2 = activation_bytes(cfg, d, 2000, 1)
    logits = 1 * cfg.vocab_size * d.activations.logits_bytes
    assert a2 - logits == pytest.approx(2 * (a1 - logits), rel=1e-6)
    assert activation_bytes(cfg, d, 1000, 1, tp=8) < a1


# --- bad input ----------------------------------------------------------------
def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "zebra_lm_9000", "hidden_size": 8}))
    with pytest.raises(ModelConfigError, match="model_type.*zebra_lm_9000") as e:
        load_model(tmp_path)
    assert "trust-remote-code" not in str(e.value)  # no code shipped: nothing to trust
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "zebra_lm_9000", "auto_map": {"AutoConfig": "cfg.ZebraConfig"}})
    )
    with pytest.raises(ModelConfigError, match="--trust-remote-code only if you trust") as e:
        load_model(tmp_path / "config.json")
    assert "\n" not in str(e.value)


def test_missing_model_is_one_line_error():
    with pytest.raises(ModelConfigError, match="no model config") as e:
        load_model("./no/such/dir")
    assert "\n" not in str(e.value)


# --- the skeleton cache ------------------------------------------------------------
@pytest.mark.parametrize("name", ["gpt2", "smollm2-135m", "mixtral-8x7b", "deepseek-r1", "glm-5.2", "all-minilm-l6-v2"])
def test_skeleton_cache_is_equivalent(name, tmp_path, monkeypatch):
    from qeval.policy import plan
    from qeval.deploy.recommend import recommend

    import shutil

    from qeval.deploy.memory import MODELS_DIR

    monkeypatch.setenv("QEVAL_CACHE", str(tmp_path))
    folder = tmp_path / name  # a copy without the shipped layout: the user cache's path
    folder.mkdir()
    shutil.copy(MODELS_DIR / name / "config.json", folder / "config.json")
    real = load_model(folder)  # built by transformers, then cached
    assert type(real.model).__module__ != "qeval.deploy.cache.skeleton"
    assert len(list((tmp_path / "layouts").glob("*.json"))) == 1
    again = load_model(folder)  # rebuilt from the cache, without transformers' modeling code
    assert type(again.model).__module__ == "qeval.deploy.cache.skeleton"
    shipped = load_model(name)  # the bundled config: from its shipped layout, even on a cold call
    assert type(shipped.model).__module__ == "qeval.deploy.cache.skeleton"
    assert again.checkpoint_precision == real.checkpoint_precision and again.is_causal_lm == real.is_causal_lm
    for policy in ("bf16", "nvfp4", "mixed-fp4-fp8"):
        assert plan(again.model, policy).to_dict() == plan(real.model, policy).to_dict()
    assert count_params(again) == count_params(real)
    assert attention_layout(again.config, again.is_causal_lm) == attention_layout(real.config, real.is_causal_lm)
    assert recommend(again, "fp8-dynamic") == recommend(real, "fp8-dynamic")
    assert count_params(shipped) == count_params(real)
    assert plan(shipped.model, "nvfp4").to_dict() == plan(real.model, "nvfp4").to_dict()
    assert attention_layout(shipped.config, True) == attention_layout(real.config, True)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shipped_layout_is_a_fresh_transformers_build(name):
    """configs/models/<name>/layout.json.gz must equal what transformers builds today
    (if not: `python -m qeval.deploy.load` rewrites them)."""
    import gzip

    from qeval.deploy.cache import SHIPPED, dump
    from qeval.deploy.hardware import load_memory_defaults
    from qeval.deploy.memory import MODELS_DIR

    shipped = json.loads(gzip.decompress((MODELS_DIR / name / SHIPPED).read_bytes()))
    fresh = dump(load_model(name, use_cache=False), load_memory_defaults())
    fresh.pop("source")
    assert shipped.pop("config_sha256") and shipped == fresh


def test_cold_recommend_on_a_bundled_config_skips_transformers_modeling():
    import subprocess
    import sys

    code = (
        "import sys; from qeval.deploy.recommend import recommend; r = recommend('deepseek-r1', 'nvfp4'); "
        "assert r['params_total'] == 684489845504, r['params_total']; "
        "bad = [m for m in sys.modules if m.startswith(('transformers.models.deepseek_v3', 'transformers.modeling_utils'))]; "
        "assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-2000:]


def test_skeleton_cache_off_and_invalidated(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("QEVAL_LAYOUT_CACHE", "off")
    assert type(load_model("smollm2-135m").model).__module__ != "qeval.deploy.cache.skeleton"
    monkeypatch.delenv("QEVAL_LAYOUT_CACHE")
    monkeypatch.setenv("QEVAL_CACHE", str(tmp_path / "cache"))
    cfg_dir = tmp_path / "m"
    from qeval.deploy.memory import MODELS_DIR

    shutil.copytree(MODELS_DIR / "smollm2-135m", cfg_dir)
    load_model(cfg_dir)
    raw = json.loads((cfg_dir / "config.json").read_text())
    raw["num_hidden_layers"] = 2  # an edited config must not reuse the old skeleton
    (cfg_dir / "config.json").write_text(json.dumps(raw))
    m = load_model(cfg_dir)
    assert type(m.model).__module__ != "qeval.deploy.cache.skeleton"
    assert count_params(m).params_main < 134_515_008


def test_prefill_flops_params_count_tied_lm_head():
    # prefill computes every GEMM once per token: all params but the embedding lookup; a tied
    # lm_head is a real GEMM over the embedding matrix, so it counts even though stored once
    tied = loaded("smollm2-135m")
    c = count_params(tied)
    w = weight_bytes(tied, c, "bf16")
    assert sum(w.compute_groups.values()) == c.params_main  # - embedding + tied lm_head (same size)
    assert w.active_read == w.total  # the tied table is read in full for the logits
    untied = loaded("llama-3.1-8b")
    c = count_params(untied)
    assert sum(weight_bytes(untied, c, "bf16").compute_groups.values()) == c.params_main - 128256 * 4096
