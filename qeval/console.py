"""Terminal output shared by the commands."""

from __future__ import annotations


def print_wide(table, console=None) -> None:
    """Print a table at its natural width: never squeeze cells into ellipses.

    A narrow terminal soft-wraps the long lines instead, which keeps every number
    readable; pipes and CI logs get the full lines.
    """
    from rich.console import Console
    from rich.measure import Measurement

    console = console or Console()
    needed = Measurement.get(console, console.options.update_width(10_000), table).maximum
    width = console.width
    console.width = max(width, needed)
    try:
        console.print(table)
    finally:
        console.width = width


def as_number(x) -> float | None:
    """``x`` as a float if it is a real number (not a bool), else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)
