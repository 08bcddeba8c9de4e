"""Show policies from one or several runs side by side.

Each RESULTS is a results.json or a run directory. Rows are labelled by run
(<recipe>/<run-id>) when there is more than one; every run's baseline is shown
first. Columns default to every metric that has a value; pick them with
--metrics (keys: weight_bytes, savings_vs_bf16, perplexity,
perplexity_increase_pct, kl_mean, kl_p99, top1_agreement,
embedding_cosine_mean, embedding_cosine_min, similarity_spearman, quantize_s,
eval_s, gate, tasks, task:<name>).
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


def run(args) -> int:
    from qeval.results.report import markdown_table, rich_table, select_columns, table_rows
    from qeval.results.store import ResultsError, load_results

    try:
        runs = [load_results(item) for item in args.results]
        columns = select_columns(runs, args.metrics)
    except (ResultsError, ValueError) as err:
        print(f"qeval compare: error: {err}", file=sys.stderr)
        return 2
    headers, rows = table_rows(runs, columns, label_runs=len(runs) > 1)
    if args.markdown:
        print(markdown_table(headers, rows))
    else:
        from qeval.console import print_wide

        print_wide(rich_table(headers, rows, title="qeval compare"))
    return 0
