"""The ``qeval`` command line: one thin subcommand per module, no logic here.

Each command module under ``qeval/commands/`` exports ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code). Modules
import heavy libraries inside ``run`` so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Import-time noise from third-party libraries that transformers pulls in
# (torchao's optional CUDA extensions, torch's pytree deprecation notes):
# nothing a qeval user can act on.
_QUIET_LOGGERS = ("torchao", "torch.utils._pytree")

# subcommand -> module; order is the order shown in --help
COMMANDS = {
    "formats": "qeval.commands.formats",
    "plan": "qeval.commands.plan",
    "run": "qeval.commands.run",
    "compare": "qeval.commands.compare",
    "gate": "qeval.commands.gate",
    "recommend": "qeval.commands.recommend",
    "sensitivity": "qeval.commands.sensitivity",
    "search": "qeval.commands.search",
    "export": "qeval.commands.export",
}


def _available_commands():
    for name, module_path in COMMANDS.items():
        try:
            module = importlib.import_module(module_path)
        except ModuleNotFoundError as err:
            if err.name == module_path:  # command not written yet
                continue
            raise
        yield name, module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qeval",
        description=(
            "Quantization quality evaluation: how much quality a precision policy loses, "
            "how much memory it saves, and which GPU it needs."
        ),
    )
    parser.add_argument("--version", action="version", version=f"qeval {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _available_commands():
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=doc or module.HELP,
            epilog=getattr(module, "EPILOG", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _version() -> str:
    from qeval import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:  # `qeval ... | head`: the reader left, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
