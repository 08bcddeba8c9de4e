"""Published deployments the recommender must agree with (qeval issue #13).

Each row: a model, a precision policy, a deployment someone ships or documents (GPU, GPU count,
nodes), the context x batch it serves where the source gives one, and the verdict the source
implies: "fits" (the recommender must find that option fits: eligible, memory within the serving
engine's budget) or "too small" (it must find it does not). The source is named in the comment.
"""

from __future__ import annotations

import json

import pytest

from qeval.deploy.memory import MODELS_DIR, load_model
from qeval.deploy.recommend import recommend

pytestmark = pytest.mark.usefixtures("private_cache")

# Llama-3.1-405B's public config numbers (meta-llama/Llama-3.1-405B config.json); not bundled in configs/models
LLAMA_405B = dict(
    json.loads((MODELS_DIR / "llama-3.1-70b" / "config.json").read_text()),
    hidden_size=16384, intermediate_size=53248, num_hidden_layers=126, num_attention_heads=128,
)
TRT_PERF = "TensorRT-LLM docs/source/performance/perf-overview.md (trtllm-bench, ISL/OSL 20000/2000 row)"

# (model, policy, gpu, gpus, nodes, context, batch, engine, verdict, source)
DEPLOYMENTS = [
    ("llama-3.1-8b", "fp8-dynamic", "h100", 1, 1, 22000, 1, "trtllm", "fits", TRT_PERF + ": Llama 3.1 8B, H100 TP1 FP8"),
    ("llama-3.1-8b", "fp8-dynamic", "h200", 1, 1, 22000, 1, "trtllm", "fits", TRT_PERF + ": Llama 3.1 8B, H200 TP1 FP8"),
    ("llama-3.1-70b", "fp8-dynamic", "h200", 1, 1, 22000, 1, "trtllm", "fits", TRT_PERF + ": Llama 3.3 70B, H200 TP1 FP8"),
    ("llama-3.1-70b", "fp8-dynamic", "h100", 2, 1, 22000, 1, "trtllm", "fits", TRT_PERF + ": Llama 3.3 70B, H100 TP2 FP8"),
    ("llama-3.1-70b", "nvfp4", "b200", 1, 1, 22000, 1, "trtllm", "fits", TRT_PERF + ": Llama 3.3 70B, B200 TP1 FP4"),
    ("llama-3.1-405b", "fp8-dynamic", "h100", 8, 1, 22000, 1, "trtllm", "fits", TRT_PERF + ": Llama 3.1 405B, H100 TP8 FP8"),
    ("llama-3.1-405b", "fp8-dynamic", "h200", 8, 1, 22000, 1, "trtllm", "fits", TRT_PERF + ": Llama 3.1 405B, H200 TP8 FP8"),
    ("llama-3.1-405b", "nvfp4", "b200", 4, 1, 22000, 1, "trtllm", "fits", TRT_PERF + ": Llama 3.1 405B, B200 TP4 FP4"),
    # NVIDIA NIM for llama-3.1-70b-instruct ships an h100x2-throughput-bf16 profile (qeval issue #13)
    ("llama-3.1-70b", "bf16", "h100", 2, 1, 8192, 2, "vllm", "fits", "NVIDIA NIM model profile h100x2-throughput-bf16"),
    # 810 GB of BF16 weights: over one 8xH100 node (640 GB); vLLM's distributed-serving docs run 405B over 2 nodes
    ("llama-3.1-405b", "bf16", "h100", 8, 1, 8192, 1, "vllm", "too small", "vLLM docs, distributed serving: 405B BF16 spans 2 nodes"),
    ("llama-3.1-405b", "bf16", "h100", 16, 2, 8192, 1, "vllm", "fits", "vLLM docs, distributed serving: TP8 x PP2 on 2 nodes"),
    # GPU brief (shared/reference/seed-gpu-guide.txt): R1 runs on a single 8xH200 node
    ("deepseek-r1", "fp8-block", "h200", 8, 1, 8192, 8, "vllm", "fits", "GPU brief; SGLang DeepSeek docs: 8 x H200, FP8"),
    # SGLang's DeepSeek V3/R1 docs: FP8 weights on 2 x 8 x H100 (one node of 640 GB is too small)
    ("deepseek-r1", "fp8-block", "h100", 8, 1, 8192, 8, "vllm", "too small", "SGLang DeepSeek docs: FP8 needs 2 x 8 x H100"),
    ("deepseek-r1", "fp8-block", "h100", 16, 2, 8192, 8, "vllm", "fits", "SGLang DeepSeek docs: FP8 on 2 x 8 x H100"),
    # nvidia/DeepSeek-R1-FP4 (NVFP4 experts) served by TensorRT-LLM on 8 x B200
    ("deepseek-r1", "nvfp4", "b200", 8, 1, 8192, 8, "trtllm", "fits", "nvidia/DeepSeek-R1-FP4 model card: 8 x B200, TensorRT-LLM"),
    # GPU brief: GLM 5.2 needs ~755 GB in FP8, over one 8xH100 node; fits one 8xH200 node
    ("glm-5.2", "fp8-block", "h100", 8, 1, 8192, 8, "vllm", "too small", "GPU brief (seed-gpu-guide.txt): over one H100 node"),
    ("glm-5.2", "fp8-block", "h200", 8, 1, 8192, 8, "vllm", "fits", "GPU brief (seed-gpu-guide.txt): fits one H200 node"),
    # NVIDIA NIM for mixtral-8x7b-instruct: BF16 on 2 x H100; the brief: no MIG slice for Mixtral scale
    ("mixtral-8x7b", "bf16", "h100", 2, 1, 8192, 4, "vllm", "fits", "NVIDIA NIM mixtral-8x7b support matrix: H100 x2 BF16"),
    ("mixtral-8x7b", "fp8-dynamic", "h200", "3g.71gb", 1, 4096, 1, "vllm", "not offered", "GPU brief + NIM: Mixtral needs a full GPU"),
    # GPU brief: embedding models under 3B parameters suit MIG slices
    ("all-minilm-l6-v2", "bf16", "h100", "1g.10gb", 1, 256, 32, "vllm", "fits", "GPU brief: MIG for small embedding models"),
    # qeval issue #13: an 8B model must not get a 2-node row, and a 1B model belongs on a slice
    ("llama-3.2-1b", "bf16", "h100", "1g.10gb", 1, 4096, 4, "vllm", "fits", "NIM: MIG for models of ~8B and below"),
]

_LOADED: dict = {}


def _model(name, tmp_path_factory):
    if name not in _LOADED:
        if name == "llama-3.1-405b":
            d = tmp_path_factory.mktemp("llama-3.1-405b")
            (d / "config.json").write_text(json.dumps(LLAMA_405B))
            _LOADED[name] = load_model(str(d))
        else:
            _LOADED[name] = load_model(name)
    return _LOADED[name]


def _find(result, gpu, gpus, nodes):
    for o in result["options"]:
        if o["gpu"] != gpu or o["nodes"] != nodes:
            continue
        if isinstance(gpus, str) and o["mig_profile"] == gpus:
            return o
        if not isinstance(gpus, str) and o["mig_profile"] is None and o["count"] == gpus:
            return o
    return None


def test_at_least_twelve_deployments():
    assert len(DEPLOYMENTS) >= 12 and all(d[-1] for d in DEPLOYMENTS)  # every row names its source


def test_llama_405b_config_counts_as_published(tmp_path_factory):
    from qeval.deploy.memory import count_params

    assert count_params(_model("llama-3.1-405b", tmp_path_factory)).params_total == 405_853_388_800


@pytest.mark.parametrize("row", DEPLOYMENTS, ids=lambda r: f"{r[0]}-{r[1]}-{r[2]}x{r[3]}-{r[8]}")
def test_recommender_agrees_with_deployment(row, tmp_path_factory):
    name, policy, gpu, gpus, nodes, context, batch, engine, verdict, _source = row
    r = recommend(_model(name, tmp_path_factory), policy, context=context, batch=batch, engine=engine, gpus=[gpu])
    o = _find(r, gpu, gpus, nodes)
    if verdict == "fits":
        assert o is not None, f"no {gpus} x {gpu} option over {nodes} node(s)"
        assert o["fits"] and o["eligible"], (o["need_bytes"], o["usable_bytes"], o["notes"])
        assert o["max_batch"] is None or o["max_batch"] >= batch
        best = r["recommended"]
        # the pick is never a bigger deployment of the same GPU than the published one
        assert best is not None and (best["nodes"], best["count"]) <= (nodes, o["count"])
    elif verdict == "too small":
        assert o is not None and not o["fits"]
    else:  # "not offered": memory would allow the slice, the MIG guidance does not
        assert o is not None and o["fits"] and not o["eligible"]
        assert r["recommended"]["mig_profile"] is None
