"""Show policies from one or several runs side by side.

Each RESULTS is a results.json or a run directory. Rows are labelled by run
(<recipe>/<run-id>) when there is more than one; every run's baseline is shown
first. With several runs, the lines after the table say what changed against
the first run, per policy, and whether the runs used different gates (and a
warning says when they were measured on different models, texts or tokens).
Columns default to every metric that has a value; pick them with --metrics
(keys: weight_bytes, savings_vs_bf16, perplexity, perplexity_increase_pct,
kl_mean, kl_p99, top1_agreement, embedding_cosine_mean, embedding_cosine_min,
similarity_spearman, kv_cache, quantize_s, eval_s, gate, tasks, task:<name>).
Perplexity, KL and top-1 show ± half their confidence interval.

Then every pair of policies scored on the same tokens (the same text and
windows, also across runs) gets its paired difference a - b per metric, with
the paired interval and whether it is significant: paired differences cancel
the text's own variation, so they are often significant where the separate
intervals overlap. Needs results of schema 2 (older runs show no pairs).
"""

from __future__ import annotations

import sys

HELP = "show policies from one or several runs side by side"
EPILOG = """examples:
  qeval compare results/quickstart/20261125-183000
  qeval compare results/quickstart/run-a results/quickstart/run-b --metrics weight_bytes kl_mean top1_agreement
  qeval compare results/*/*/results.json --markdown > comparison.md
"""


def add_arguments(parser) -> None:
    parser.add_argument("results", nargs="+", metavar="RESULTS", help="results.json file(s) or run directories")
    parser.add_argument("--metrics", nargs="+", metavar="KEY", help="columns to show, in this order")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table instead of a terminal table")
    parser.add_argument("--confidence", type=float, default=0.95, metavar="C",
                        help="two-sided confidence of the paired intervals (default 0.95)")


def run(args) -> int:
    from qeval.results.intervals import paired_table
    from qeval.results.schema import run_label
    from qeval.results.table import changes_vs_first, markdown_table, rich_table, select_columns, table_rows
    from qeval.results.store import ResultsError, load_results

    if not 0 < args.confidence < 1:
        print(f"qeval compare: error: --confidence must be between 0 and 1, got {args.confidence}", file=sys.stderr)
        return 2
    try:
        runs = [load_results(item) for item in args.results]
        columns = select_columns(runs, args.metrics)
    except (ResultsError, ValueError) as err:
        print(f"qeval compare: error: {err}", file=sys.stderr)
        return 2
    from qeval.results.provenance import differences

    for line in differences(runs):  # different models / texts / token counts side by side
        print(f"qeval compare: warning: {line}", file=sys.stderr)
    headers, rows = table_rows(runs, columns, label_runs=len(runs) > 1)
    named = [((f"{run_label(r)}:" if len(runs) > 1 else "") + str(p.get("name")), p)
             for r in runs for p in r.get("policies") or []]
    pair_headers, pairs = paired_table(named, args.confidence)
    if args.markdown:
        print(markdown_table(headers, rows))
        if pairs:
            print("\nPaired differences (a - b on the same tokens):\n")
            print(markdown_table(pair_headers, pairs))
    else:
        from qeval.console import print_wide

        print_wide(rich_table(headers, rows, title="qeval compare"))
        if pairs:
            print_wide(rich_table(pair_headers, pairs, title="paired differences (a - b on the same tokens)"))
    # what changed against the first run (timings differ on every run: they would bury what matters)
    changes = changes_vs_first(runs, [c for c in columns if c.key not in ("quantize_s", "eval_s")])
    if changes:
        print("\n".join(changes if not args.markdown else [""] + [f"- {c}" for c in changes]))
    return 0
