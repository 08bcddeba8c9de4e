"""The ``qeval`` command line: one thin subcommand per module, no logic here.

Each command module under ``qeval/commands/`` exports ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code). Modules
import heavy libraries inside ``run`` so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import errno
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


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``qeval run: error: ...``) and exit 2, like any bad input."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
        p.set_defaults(_run=lambda args, m=module: m.run(args))  # looked up per call (tests patch it)
    return parser


_PARSER: list = []


def _parser() -> argparse.ArgumentParser:
    """The parser, built once per process (``main`` may be called many times, as tests do)."""
    if not _PARSER:
        _PARSER.append(build_parser())
    return _PARSER[0]


def _version() -> str:
    from qeval import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, a usage error: argparse's own exit code
        return done.code if isinstance(done.code, int) else 2
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    return _run_command(args)


def _run_command(args) -> int:
    """The contract of every command: 0 pass, 1 gate failure, 2 bad input or error, 130 interrupted;
    an error is one line on stderr, never a traceback (``QEVAL_DEBUG=1`` re-raises for a developer)."""
    name = f"qeval {args.command}"
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:  # `qeval ... | head`: the reader left, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"{name}: interrupted; finished work is saved (qeval run: continue with --resume)", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the contract: one line, exit 2
        if os.environ.get("QEVAL_DEBUG"):
            raise
        print(f"{name}: error: {one_line(err)}", file=sys.stderr)
        return 2


def one_line(err: BaseException) -> str:
    """An exception as one line: a full disk and memory exhaustion said plainly, else the first line of its text."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" writing {err.filename}" if err.filename else ""
        return (f"no space left on device{where}; finished policies are kept: free space and run again with --resume")
    if isinstance(err, MemoryError):
        return "out of memory (an input too large, e.g. max_tokens, window or a nested file)"
    if isinstance(err, RecursionError):
        return "input nested too deeply"
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(err, OSError) and err.filename and str(err.filename) not in first:
        first = f"{err.filename}: {err.strerror or first}"
    kind = type(err).__name__
    known = isinstance(err, (ValueError, OSError, LookupError)) and first
    return first if known else f"{kind}: {first}" if first else kind


if __name__ == "__main__":
    sys.exit(main())
