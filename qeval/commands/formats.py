"""List the number formats qeval implements, with their storage cost.

Bits per element include every scale, for a weight of the given shape.
"""

from __future__ import annotations

import json

HELP = "list the number formats and their bits per element"
EPILOG = "examples:\n  qeval formats\n  qeval formats --shape 4096 14336 --json"


DEFAULT_SHAPE = (4096, 4096)
# The table for the default shape, without importing torch (~3 s): `qeval formats` is asked
# often and answers at once. tests/test_commands.py checks it against qeval.formats.
STATIC = [
    ("bf16", "bf16", None, 16.0, 33554432, "bfloat16 cast (the baseline)"),
    ("fp16", "fp16", None, 16.0, 33554432, "float16 cast"),
    ("fp8_e4m3", "fp8", None, 8.000001907348633, 16777220, "FP8 E4M3, one fp32 scale per tensor"),
    ("fp8_e4m3:channel", "fp8", None, 8.0078125, 16793600, "FP8 E4M3, one scale per output row (weights)"),
    ("fp8_e4m3:token", "fp8", None, 8.0078125, 16793600, "FP8 E4M3, one dynamic scale per row (activations)"),
    ("fp8_e4m3:block128", "fp8", 128, 8.001953125, 16781312, "FP8 E4M3, 128x128 weight blocks / 1x128 activation groups"),
    ("fp8_e5m2", "fp8", None, 8.000001907348633, 16777220, "FP8 E5M2, one fp32 scale per tensor"),
    ("nvfp4", "nvfp4", 16, 4.500001907348633, 9437188, "E2M1, 16-blocks, E4M3 block scales, fp32 global scale"),
    ("mxfp8", "mxfp8", 32, 8.25, 17301504, "OCP MXFP8: E4M3, 32-blocks, E8M0 scales (floor)"),
    ("mxfp8:rceil", "mxfp8", 32, 8.25, 17301504, "MXFP8 with round-up (rceil) scales"),
    ("mxfp4", "mxfp4", 32, 4.25, 8912896, "OCP MXFP4: E2M1, 32-blocks, E8M0 scales (floor)"),
    ("mxfp4:rceil", "mxfp4", 32, 4.25, 8912896, "MXFP4 with round-up (rceil) scales"),
]
_KEYS = ("format", "family", "block", "bits_per_element", "bytes", "description")


def add_arguments(parser) -> None:
    parser.add_argument("--shape", type=int, nargs="+", default=list(DEFAULT_SHAPE),
                        help="weight shape [N K] (default 4096 4096)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def computed_rows(shape: tuple[int, ...]) -> list[dict]:
    from qeval.formats import FORMATS

    return [
        {"format": f.spec, "family": f.family, "block": f.block, "bits_per_element": f.bits_per_element(shape),
         "bytes": f.nbytes(shape), "description": f.description}
        for f in FORMATS.values()
    ]


def run(args) -> int:
    shape = tuple(args.shape)
    rows = [dict(zip(_KEYS, r)) for r in STATIC] if shape == DEFAULT_SHAPE else computed_rows(shape)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    from qeval.console import print_wide

    table = Table(title=f"qeval formats (weight shape {shape})")
    for col in ("format", "block", "bits/elem", "bytes", "description"):
        table.add_column(col, justify="right" if col in ("block", "bits/elem", "bytes") else "left")
    for r in rows:
        table.add_row(r["format"], str(r["block"] or "-"), f"{r['bits_per_element']:.4f}", f"{r['bytes']:,}", r["description"])
    print_wide(table)
    return 0
