"""Choose one format per group to minimise the predicted KL within a budget, and write it as a policy.

The predicted KL of a policy is the sum of its groups' KLs from `qeval
sensitivity` (run first, or resumed, automatically). The choice is solved
exactly (a multiple-choice knapsack as an integer programme) under a budget of
whole-model weight bytes (--max-bytes, as `qeval plan` counts them), effective
bits per weight of the searched linears (--bits), or a GPU it must fit with the
KV cache for --context x --batch (--fit, the recommender's own accounting).
Writes results/<recipe>/search/<name>.yaml (an ordinary policy) and <name>.json.
--evaluate then measures each searched policy on the calibration text (is the
sum a good prediction?) and runs it on the EVAL text beside the recipe's
policies. Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

HELP = "search a per-layer policy under a byte, bits or GPU budget (writes a policy YAML)"
EPILOG = """examples:
  qeval search recipes/quickstart.yaml --max-bytes 131MiB --evaluate
  qeval search recipes/quickstart.yaml --bits 5.5 --granularity linear
  qeval search recipes/quickstart.yaml --fit 1xH100 --context 8192 --batch 8
  qeval search --sensitivity results/x/sensitivity/block-abc/sensitivity.json --fit h100:3g.40gb --model llama-3.1-8b
"""


def _list(text):
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def add_arguments(parser) -> None:
    parser.add_argument("recipe", nargs="?", help="recipe YAML file (not needed with --sensitivity)")
    parser.add_argument("--sensitivity", help="a sensitivity.json from `qeval sensitivity` (skips measuring)")
    parser.add_argument("--max-bytes", help="comma-separated budgets of whole-model weight bytes: 131MiB,1.2GB")
    parser.add_argument("--bits", help="comma-separated budgets of bits per weight over the searched linears: 5.5")
    parser.add_argument("--fit", help="comma-separated GPU targets the model must fit with headroom: 1xH100,h200")
    parser.add_argument("--context", type=int, help="tokens per sequence for --fit (default: the recommender's)")
    parser.add_argument("--batch", type=int, help="concurrent sequences for --fit")
    parser.add_argument("--model", help="model config for --fit (default: the recipe's model)")
    parser.add_argument("--granularity", choices=("block", "linear"), default="block", help="groups (see sensitivity)")
    parser.add_argument("--formats", help="comma-separated candidate formats (uniform policies; bf16 always)")
    parser.add_argument("--tokens", type=int, help="calibration-text tokens for the sensitivity pass")
    parser.add_argument("--out", help="folder for the policies (default results/<recipe>/search)")
    parser.add_argument("--evaluate", action="store_true", help="measure the policies: calibration text and eval text")
    parser.add_argument("--policies", help="with --evaluate: the recipe's policies to run beside (default: all)")
    parser.add_argument("--no-tasks", action="store_true", help="with --evaluate: skip the recipe's lm-eval tasks")
    parser.add_argument("--limit-tokens", type=int, help="with --evaluate: cap eval tokens (quick trials)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    import sys

    from qeval.data.errors import DataError
    from qeval.models import ModelLoadError
    from qeval.pipeline.recipe import RecipeError
    from qeval.search import SearchInputError
    from qeval.search.flow import SearchRequest, run_search
    from qeval.search.show import print_comparison, print_search

    try:
        bits = [float(b) for b in _list(args.bits)]
    except ValueError:
        print(f"qeval search: error: --bits: not a number: {args.bits!r}", file=sys.stderr)
        return 2
    req = SearchRequest(
        recipe=args.recipe, sensitivity=args.sensitivity, max_bytes=_list(args.max_bytes), bits=bits,
        fit=_list(args.fit), context=args.context, batch=args.batch, model=args.model,
        granularity=args.granularity, formats=_list(args.formats) or None, tokens=args.tokens, out=args.out,
        evaluate=args.evaluate, policies=_list(args.policies) or None, limit_tokens=args.limit_tokens,
        tasks=not args.no_tasks, progress=not args.no_progress,
    )
    try:
        rows, results = run_search(req)
    except (SearchInputError, RecipeError, ModelLoadError, DataError, FileNotFoundError) as err:
        print(f"qeval search: error: {err}", file=sys.stderr)
        return 2
    print_search(rows)
    for r in rows:
        fit = r.get("fit")
        if fit:
            nxt = fit.get("next_cheaper") or {}
            print(f"{r['name']}: fits {fit['target']}: {'yes' if fit['fits'] else 'NO'} "
                  f"(needs {fit['need_bytes'] / 2**30:.2f} of {fit['usable_bytes'] / 2**30:.2f} GiB usable); "
                  f"next cheaper option {nxt.get('option', '-')}: {'fits' if nxt.get('fits') else 'does not fit'}")
        print(f"policy: {r['policy_file']}")
    if results is not None:
        print_comparison(results, [r["name"] for r in rows])
    return 0
