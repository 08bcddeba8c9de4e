"""Measure how much each group of layers hurts when it alone is quantized.

For every quantizable group (each linear, or each decoder block's attention /
MLP / experts) and every candidate format: KL(baseline || model with that group
alone quantized), on the recipe's CALIBRATION text (the eval text stays for
judging). Writes results/<recipe>/sensitivity/<granularity>-<key>/sensitivity.json
(saved after every group: an interrupted run resumes) and sensitivity.png
(layers on x, KL per format on a log scale), and prints the table.
Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

HELP = "per-group KL of each candidate format (for qeval search)"
EPILOG = """examples:
  qeval sensitivity recipes/quickstart.yaml
  qeval sensitivity recipes/quickstart.yaml --granularity linear --formats nvfp4-weight-only,fp8-dynamic
  qeval sensitivity recipes/quickstart.yaml --tokens 2048      # score more of the calibration text
"""


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="recipe YAML file (its model, calibration text and mode)")
    parser.add_argument("--granularity", choices=("block", "linear"), default="block",
                        help="a group is a block's attention / MLP / experts (default), or each linear")
    parser.add_argument("--formats", help="comma-separated uniform policies to try per group (bf16 is always one); "
                                          "default nvfp4-weight-only,fp8-dynamic")
    parser.add_argument("--tokens", type=int, help="calibration-text tokens to score (default n_batches x seq_len)")
    parser.add_argument("--out", help="folder for the results (default results/<recipe>/sensitivity)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    import sys

    from qeval.data.errors import DataError
    from qeval.models import ModelLoadError
    from qeval.pipeline.recipe import RecipeError
    from qeval.search import SearchInputError, load_sensitivity, sensitivity
    from qeval.search.show import print_sensitivity

    formats = [f.strip() for f in args.formats.split(",") if f.strip()] if args.formats else None
    try:
        path = sensitivity(args.recipe, args.granularity, formats, args.tokens, args.out, not args.no_progress)
    except (SearchInputError, RecipeError, ModelLoadError, DataError, FileNotFoundError) as err:
        print(f"qeval sensitivity: error: {err}", file=sys.stderr)
        return 2
    print_sensitivity(load_sensitivity(path))
    print(f"sensitivity: {path}")
    return 0
