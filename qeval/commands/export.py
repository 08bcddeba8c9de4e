"""Write the packed checkpoint a serving engine loads: a recipe's model under one policy.

Layouts: compressed-tensors (vLLM auto-detects it; transformers reads it) and
modelopt (NVIDIA Model Optimizer's HF layout: TensorRT-LLM, vLLM
--quantization modelopt). A policy the layout cannot express is refused before
anything is written, naming the module and the reason. The folder is written
atomically. Exit codes: 0 written, 2 bad input or a policy the layout cannot
express.
"""

from __future__ import annotations

HELP = "export a recipe's model under a policy as a compressed-tensors or Model Optimizer checkpoint"
EPILOG = """examples:
  qeval export recipes/quickstart.yaml --policy nvfp4-weight-only --format compressed-tensors --out ckpt/smollm-nvfp4a16
  qeval export results/quickstart/20261130-060000 --policy fp8-dynamic --format modelopt --out ckpt/smollm-fp8
  vllm serve ckpt/smollm-nvfp4a16                       # compressed-tensors is detected from config.json
then gate it: a recipe policy entry {name: shipped, checkpoint: ckpt/smollm-nvfp4a16}
"""


def add_arguments(parser) -> None:
    parser.add_argument("recipe", metavar="RECIPE_OR_RUN", help="recipe YAML, or a run directory (results/<recipe>/<run-id>)")
    parser.add_argument("--policy", required=True, help="one of the recipe's policies, a built-in policy or a YAML path")
    parser.add_argument("--format", dest="layout", required=True, choices=["compressed-tensors", "modelopt"],
                        help="checkpoint layout")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")


def run(args) -> int:
    import sys

    from qeval.data.errors import DataError
    from qeval.export import ExportError
    from qeval.models import ModelLoadError
    from qeval.pipeline.checkpoint import export_recipe
    from qeval.pipeline.recipe import RecipeError

    try:
        report = export_recipe(args.recipe, args.policy, args.out, args.layout, overwrite=args.force)
    except (ExportError, RecipeError, ModelLoadError, DataError, FileNotFoundError) as err:
        print(f"qeval export: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # a policy that does not validate, static scales without calibration
        print(f"qeval export: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    off32 = sum(a for a, _ in report.inexact.values())
    off16 = sum(b for _, b in report.inexact.values())
    print(f"wrote {report.path} ({report.layout}): {len(report.quantized)} quantized linears, "
          f"{len(report.ignored)} kept in high precision, {report.kv_layers} KV-cache scales, "
          f"{report.bytes / 2**20:.2f} MiB")
    if off32:
        print(f"note: under compressed-tensors' encode global scale, its reader decodes {off32} NVFP4 elements one "
              f"float32 rounding apart from qeval ({off16} after rounding to BF16); qeval's own reader gets them "
              "exactly (qeval/export/conventions.py)")
    return 0
