"""Evaluate a recipe: the baseline and every policy, saved as each finishes.

Writes results/<recipe>/<run-id>/ (policies/*.json, results.json, report.md,
pareto.png) and prints the comparison table. Exit codes: 0 done (whatever the
gate says: use `qeval gate` for a CI verdict), 2 bad input or error (one line),
130 interrupted. Everything that can be checked is checked before the first
forward pass (--dry-run stops there).
"""

from __future__ import annotations

HELP = "evaluate a recipe: baseline + every policy, with metrics, bytes, timings and the gate"
EPILOG = """examples:
  qeval run recipes/quickstart.yaml
  qeval run recipes/quickstart.yaml --policies fp8-dynamic,nvfp4 --limit-tokens 1024
  qeval run recipes/quickstart.yaml --dry-run                # validate only: exit 0 or one line + exit 2
  qeval run recipes/quickstart.yaml --resume                 # continue the latest run
  qeval run recipes/quickstart.yaml --resume --run-id 20261125-183000
  accelerate launch --num_processes 2 -m qeval run recipes/x.yaml   # windows split across GPUs
"""


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="recipe YAML file (see recipes/)")
    parser.add_argument("--resume", action="store_true", help="reuse finished policies of the latest run (or --run-id)")
    parser.add_argument("--run-id", help="run directory name (default: UTC time YYYYmmdd-HHMMSS)")
    parser.add_argument("--results-dir", default="results", help="where runs are written (default: results)")
    parser.add_argument("--policies", help="comma-separated subset of the recipe's policies")
    parser.add_argument("--limit-tokens", type=int, help="cap evaluation tokens (also caps task examples): quick trials")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate everything (recipe, model files, policies planned on the meta device, tasks, "
                             "device) and run nothing")


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
    options = RunOptions(
        resume=args.resume, run_id=args.run_id, results_dir=Path(args.results_dir), policies=policies,
        limit_tokens=args.limit_tokens, progress=not args.no_progress, dry_run=args.dry_run,
    )
    try:
        path = run_recipe(args.recipe, options)
    except (RecipeError, ModelLoadError, ResultsError, DataError, GateError, DistributedSetupError) as err:
        print(f"qeval run: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:  # e.g. an inline policy file that vanished after validation
        print(f"qeval run: error: {err}", file=sys.stderr)
        return 2
    if path is None:
        print(f"{args.recipe}: valid; nothing was run (--dry-run)")
    return 0
