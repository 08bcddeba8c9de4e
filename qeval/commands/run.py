"""Evaluate a recipe: the baseline and every policy, saved as each finishes.

Writes results/<recipe>/<run-id>/ (policies/*.json, results.json, report.md,
report.html, pareto.png) and prints the comparison table. Exit codes: 0 done
(whatever the gate says: use `qeval gate` for a CI verdict), 2 bad input or
error (one line), 130 interrupted. Everything that can be checked is checked
before the first forward pass (--dry-run stops there).

Quick mode, in lm-evaluation-harness's terms, without a recipe file:
--model (a hub ID or local folder, or `hf` with pretrained= in --model_args),
--policies, --tasks and --output_path. It writes the recipe it runs to
<output_path>/<name>.yaml first, so `qeval run <that file>` repeats the run.
"""

from __future__ import annotations

HELP = "evaluate a recipe (or --model ... --tasks ... quick mode): baseline + every policy, metrics, bytes, the gate"
EPILOG = """examples:
  qeval run recipes/quickstart.yaml
  qeval run recipes/quickstart.yaml --policies fp8-dynamic,nvfp4 --limit-tokens 1024
  qeval run recipes/quickstart.yaml --dry-run                # validate only: exit 0 or one line + exit 2
  qeval run recipes/quickstart.yaml --resume                 # continue the latest run
  qeval run recipes/quickstart.yaml --resume --run-id 20261125-183000
  qeval run --model ./my-model --model_args dtype=bfloat16,device=cuda --policies fp8-dynamic,nvfp4 \\
            --tasks word_analogy --num_fewshot 0 --limit 200 --output_path results/quick
  accelerate launch --num_processes 2 -m qeval run recipes/x.yaml   # windows split across GPUs
"""


def add_arguments(parser) -> None:
    parser.add_argument("recipe", nargs="?", help="recipe YAML file (see recipes/); omit it with --model")
    parser.add_argument("--resume", action="store_true", help="reuse finished policies of the latest run (or --run-id)")
    parser.add_argument("--run-id", help="run directory name (default: UTC time YYYYmmdd-HHMMSS)")
    parser.add_argument("--results-dir", default="results", help="where runs are written (default: results)")
    parser.add_argument("--policies", help="comma-separated policies: a subset of the recipe's, or (quick mode) the list")
    parser.add_argument("--limit-tokens", type=int, help="cap evaluation tokens (also caps task examples): quick trials")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or per-step lines (model loading too)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate everything (recipe, model files, policies planned on the meta device, tasks, "
                             "device) and run nothing")
    quick = parser.add_argument_group("quick mode (lm-eval style; writes the equivalent recipe to --output_path)")
    quick.add_argument("--model", help="hub ID or local folder, or `hf` with pretrained=... in --model_args")
    quick.add_argument("--model_args", "--model-args", default="", help="comma-separated key=value: pretrained, dtype, "
                       "device, device_map, revision, trust_remote_code, gguf_file, max_length (the context)")
    quick.add_argument("--tasks", help="comma-separated lm-eval task names (offline: word_analogy, ...)")
    quick.add_argument("--output_path", "--output-path", help="results folder (also holds the written recipe)")
    quick.add_argument("--num_fewshot", "--num-fewshot", type=int, help="few-shot examples per task (lm-eval's)")
    quick.add_argument("--apply_chat_template", "--apply-chat-template", action="store_true", help="lm-eval's chat template option")
    quick.add_argument("--log_samples", "--log-samples", action="store_true", help="keep per-example samples (samples/*.jsonl)")
    quick.add_argument("--limit", type=float, help="examples per task (a fraction if < 1), as lm-eval's --limit")
    quick.add_argument("--batch_size", "--batch-size", type=int, default=8, help="lm-eval batch size (default 8)")
    quick.add_argument("--eval_data", "--eval-data", help="text for perplexity/KL/top-1: gensim-wiki, gensim-lee or a "
                       "file (default: gensim-wiki when no --tasks are given)")
    quick.add_argument("--calibration", help="text for static activation scales (default gensim-lee)")
    quick.add_argument("--max_tokens", "--max-tokens", type=int, default=4096, help="tokens of --eval_data (default 4096)")
    quick.add_argument("--gate", help="gate thresholds: a configs/gates name or a YAML file")
    quick.add_argument("--mode", choices=["emulate", "native"], default="emulate")
    quick.add_argument("--seed", type=int, default=0)


# options that only quick mode reads (a recipe has its own fields for them)
_QUICK_ONLY = ("model_args", "tasks", "output_path", "num_fewshot", "apply_chat_template", "log_samples", "limit",
               "eval_data", "calibration", "gate")


def run(args) -> int:
    import sys
    from pathlib import Path

    from qeval.data.errors import DataError
    from qeval.evaluate.distributed import DistributedSetupError
    from qeval.results.gate import GateError
    from qeval.models import ModelLoadError
    from qeval.pipeline.recipe import RecipeError
    from qeval.results.store import ResultsError
    from qeval.pipeline.runner import RunOptions, run_recipe

    policies = [p.strip() for p in args.policies.split(",") if p.strip()] if args.policies else None
    try:
        recipe, results_dir = args.recipe, Path(args.results_dir)
        quick_only = [k for k in _QUICK_ONLY if getattr(args, k) not in (None, False, "")]
        if args.recipe is not None and not args.model and quick_only:
            raise RecipeError(f"--{quick_only[0]} belongs to quick mode (--model ...); a recipe sets it in its own fields")
        if args.model or args.recipe is None:
            from qeval.pipeline.quick import QuickError, write_quick_recipe

            try:
                recipe = write_quick_recipe(args, policies)
            except QuickError as err:
                raise RecipeError(str(err)) from None
            policies = None  # the recipe holds exactly these
            results_dir = Path(args.output_path)
        options = RunOptions(
            resume=args.resume, run_id=args.run_id, results_dir=results_dir, policies=policies,
            limit_tokens=args.limit_tokens, progress=not args.no_progress, print_table=True,
            dry_run=args.dry_run,
        )
        path = run_recipe(recipe, options)
    except (RecipeError, ModelLoadError, ResultsError, DataError, GateError, DistributedSetupError) as err:
        print(f"qeval run: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:  # e.g. an inline policy file that vanished after validation
        print(f"qeval run: error: {err}", file=sys.stderr)
        return 2
    if path is None:
        print(f"{recipe}: valid; nothing was run (--dry-run)")
    return 0
