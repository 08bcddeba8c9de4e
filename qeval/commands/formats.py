"""List the number formats qeval implements, with their storage cost.

Bits per element include every scale, for a weight of the given shape.
"""

from __future__ import annotations

import json

HELP = "list the number formats and their bits per element"
EPILOG = "examples:\n  qeval formats\n  qeval formats --shape 4096 14336 --json"


def add_arguments(parser) -> None:
    parser.add_argument("--shape", type=int, nargs="+", default=[4096, 4096], help="weight shape [N K] (default 4096 4096)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    from rich.table import Table

    from qeval.console import print_wide

    from qeval.formats import FORMATS

    shape = tuple(args.shape)
    rows = [
        {
            "format": f.spec,
            "family": f.family,
            "block": f.block,
            "bits_per_element": f.bits_per_element(shape),
            "bytes": f.nbytes(shape),
            "description": f.description,
        }
        for f in FORMATS.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"qeval formats (weight shape {shape})")
    for col in ("format", "block", "bits/elem", "bytes", "description"):
        table.add_column(col, justify="right" if col in ("block", "bits/elem", "bytes") else "left")
    for r in rows:
        table.add_row(r["format"], str(r["block"] or "-"), f"{r['bits_per_element']:.4f}", f"{r['bytes']:,}", r["description"])
    print_wide(table)
    return 0
