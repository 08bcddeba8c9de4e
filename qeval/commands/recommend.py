"""Which GPU (H100, H200, B200; MIG slice, 1-8 GPUs, several nodes) a model needs under a
precision policy, with the memory per GPU, whether the formats run natively, a
first-order speed and the price. Works from the model's config.json alone (no weights).

MODEL is a config folder, a config.json, a configs/models name (e.g. glm-5.2), a
hub ID (when online), or a recipe YAML (its model and hardware: context/batch/gpu).
"""

from __future__ import annotations

HELP = "which GPU a model needs under a policy, and what it costs"
EPILOG = """examples:
  qeval recommend glm-5.2 --policy fp8-block
  qeval recommend deepseek-r1 --policy nvfp4 --context 32768 --batch 16
  qeval recommend all-minilm-l6-v2 --policy bf16 --context 256 --batch 32
  qeval recommend configs/models/llama-3.1-70b --policy fp8-dynamic --kv fp8_e4m3 --json
  qeval recommend mixtral-8x7b --policy bf16 --prices configs/prices.yaml --objective token
defaults (context, batch, utilization, overheads, efficiencies): configs/memory.yaml
GPU facts and default prices: configs/gpus.yaml"""


def add_arguments(parser) -> None:
    parser.add_argument(
        "model", metavar="MODEL", help="config folder / config.json / configs/models name / hub ID / recipe YAML"
    )
    parser.add_argument("--policy", required=True, help="policy name (configs/policies) or YAML file")
    # numbers are read as text and checked in run(): a bad one is one line and exit 2, not argparse's usage block
    parser.add_argument(
        "--context", help="tokens per sequence the KV cache holds (default: recipe, else configs/memory.yaml)"
    )
    parser.add_argument("--batch", help="concurrent sequences (default: recipe, else configs/memory.yaml)")
    parser.add_argument(
        "--kv", metavar="FORMAT", help="KV-cache format, e.g. bf16, fp8_e4m3, nvfp4 (default: the policy's, else bf16)"
    )
    parser.add_argument(
        "--prices", metavar="FILE", help="YAML of USD per GPU-hour per GPU id (e.g. configs/prices.yaml)"
    )
    parser.add_argument(
        "--engine",
        choices=("vllm", "trtllm", "sglang"),
        help="serving engine whose memory model sizes the KV cache (default vllm; configs/memory.yaml engines:)",
    )
    parser.add_argument(
        "--utilization",
        help="the engine's memory fraction: vLLM gpu_memory_utilization (0.92), TensorRT-LLM "
        "free_gpu_memory_fraction (0.9), SGLang mem_fraction_static (0.88)",
    )
    parser.add_argument(
        "--mig", action="store_true", help="offer MIG slices even to models above the ~8B MIG guidance"
    )
    parser.add_argument("--gpus", help="comma-separated GPU ids to consider (default: all of configs/gpus.yaml)")
    parser.add_argument(
        "--objective", choices=("hour", "token"), help="cheapest per GPU-hour (default) or per million output tokens"
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow a config's own Python code (only if you trust it)"
    )
    parser.add_argument("--all", action="store_true", help="also show MIG slices that do not fit")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def run(args) -> int:
    import json
    import sys

    from qeval.deploy.recommend import recommend

    gpus = [g.strip().lower() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    try:
        result = recommend(
            args.model,
            args.policy,
            context=args.context,
            batch=args.batch,
            kv=args.kv,
            prices=args.prices,
            utilization=args.utilization,
            gpus=gpus,
            objective=args.objective,
            engine=args.engine,
            mig=args.mig,
            trust_remote_code=args.trust_remote_code,
        )
    except (ValueError, OSError) as err:  # bad input: one line, exit 2
        print(
            f"qeval recommend: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr
        )
        return 2
    if args.json:
        for w in result["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        print(json.dumps(result, indent=1))
        return 0
    from qeval.deploy.text import render

    render(result, show_all=args.all)
    return 0
