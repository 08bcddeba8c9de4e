"""The walls between qeval's packages, read from the imports of every module.

Data flows one way: recipe -> model + policy -> quantized model -> metrics ->
results -> report / gate; config -> bytes -> GPU. Every import counts, also
those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "qeval"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) for every qeval import in ``path``."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source if source is not None else path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "qeval"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "qeval":
                continue
            # `from qeval.x import y` may import the submodule qeval.x.y
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((node.lineno, sub if _exists(sub) else target))
    return out


def _exists(module: str) -> bool:
    rel = Path(*module.split("."))
    return (PKG.parent / rel).with_suffix(".py").is_file() or (PKG.parent / rel / "__init__.py").is_file()


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}
GRAPH = {m: _imports(p) for m, p in MODULES.items()}


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


# (who, may not import any of these)
WALLS = [
    ("qeval.formats", ["qeval"], "formats know numbers and nothing else of qeval"),
    ("qeval.evaluate", ["qeval.formats", "qeval.policy", "qeval.quantize", "qeval.kernels", "qeval.deploy",
                        "qeval.pipeline", "qeval.results", "qeval.search", "qeval.export"], "metrics take a model and tokens"),
    ("qeval.quantize", ["qeval.evaluate", "qeval.pipeline", "qeval.results", "qeval.cli", "qeval.commands",
                        "qeval.deploy", "qeval.search", "qeval.export"], "quantizers know modules"),
    ("qeval.policy", ["qeval.quantize", "qeval.evaluate", "qeval.pipeline", "qeval.results", "qeval.deploy",
                      "qeval.kernels", "qeval.search", "qeval.export"], "policies know which layer gets what"),
    ("qeval.deploy", ["qeval.quantize", "qeval.evaluate", "qeval.pipeline", "qeval.results", "qeval.kernels",
                      "qeval.search", "qeval.export"],
     "bytes and hardware come from the config alone"),
    ("qeval.results", ["qeval.quantize", "qeval.evaluate", "qeval.pipeline", "qeval.kernels", "qeval.policy",
                       "qeval.formats", "qeval.search", "qeval.export"], "results know what a run leaves behind"),
    ("qeval.export", ["qeval.evaluate", "qeval.pipeline", "qeval.results", "qeval.deploy", "qeval.data",
                      "qeval.kernels", "qeval.tasks", "qeval.search"], "checkpoints are written from a model and a policy"),
    ("qeval.kernels", ["qeval.quantize", "qeval.policy", "qeval.evaluate", "qeval.pipeline", "qeval.results",
                       "qeval.deploy", "qeval.search", "qeval.export"], "kernels plug into formats"),
    ("qeval.data", ["qeval.formats", "qeval.policy", "qeval.quantize", "qeval.evaluate", "qeval.pipeline",
                    "qeval.results", "qeval.deploy", "qeval.search", "qeval.export"], "data knows text and files"),
    ("qeval.pipeline", ["qeval.search"], "the search strings the pipeline's parts together, not the reverse"),
]
ALLOWED_ROOT = {"qeval.paths", "qeval.files", "qeval.console", "qeval.uncertainty"}  # shared utilities (uncertainty: statistics for metrics and results)


@pytest.mark.parametrize("who,forbidden,why", WALLS, ids=[w[0] for w in WALLS])
def test_wall(who, forbidden, why):
    bad = []
    for mod, imports in GRAPH.items():
        if not _in(mod, who):
            continue
        for line, target in imports:
            if _in(target, who) or target == "qeval" and who != "qeval.formats":
                continue
            if who == "qeval.formats" or _in(target, *forbidden):
                bad.append(f"{MODULES[mod].relative_to(PKG.parent)}:{line} imports {target}")
    assert not bad, f"{who}: {why}\n" + "\n".join(bad)


def test_nothing_imports_the_cli():
    bad = [
        f"{MODULES[mod].relative_to(PKG.parent)}:{line} imports {target}"
        for mod, imports in GRAPH.items()
        for line, target in imports
        if _in(target, "qeval.cli", "qeval.commands") and not _in(mod, "qeval.cli", "qeval.commands", "qeval.__main__")
    ]
    assert not bad, "\n".join(bad)


def test_no_loose_modules_at_the_root():
    loose = {m for m in MODULES if m.count(".") == 1 and not MODULES[m].name == "__init__.py"}
    assert loose <= ALLOWED_ROOT | {"qeval.cli", "qeval.__main__"}, sorted(loose - ALLOWED_ROOT)


def test_root_utilities_import_no_package():
    for mod in ALLOWED_ROOT:
        targets = [t for _, t in GRAPH[mod] if t != "qeval"]
        assert targets == [], f"{mod} imports {targets}"


def _edges() -> dict[str, set[str]]:
    # the package root's lazy table (strings) is no import; __init__ re-exports are
    edges = {}
    for mod, imports in GRAPH.items():
        edges[mod] = {t for _, t in imports if t in MODULES and t != mod and t != "qeval"}
    return edges


def test_no_import_loops():
    edges = _edges()
    # a package's __init__ that re-exports its modules is not a loop with them
    def real(a, b):
        return not (MODULES[b].name == "__init__.py" and a.startswith(b + "."))

    state, stack, loops = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if not real(m, t):
                continue
            if state.get(t) == 1:
                loops.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not loops, "import loops:\n" + "\n".join(loops)


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PKG.parent)): n for p in MODULES.values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def test_the_wall_test_can_fail():
    """Planted imports from formats are found, lazy and relative ones too (the walker is not blind)."""
    src = "def f():\n    from qeval import kernels\n    from ..policy import plan\n    import qeval.results.gate\n"
    found = [t for _, t in _imports(PKG / "formats" / "planted.py", src)]
    assert found == ["qeval.kernels", "qeval.policy", "qeval.results.gate"]
