"""The README stands on its own: no pointers outside the repository, every repository path it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# top-level folders of this repository; a path starting with one of them must exist here
OURS = ("qeval", "configs", "recipes", "benchmarks", "tests", ".ci")
PEERS = {"tests/quantization/reference_mxfp4.py"}  # vLLM's file, named as vLLM's in the README
_PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./*<>-]*)" % "|".join(re.escape(d) for d in OURS))


def _repo_paths(text: str) -> set[str]:
    out = set()
    for m in _PATH.finditer(text):
        path = m.group(1).rstrip(".")
        cut = re.split(r"[*<]", path)[0]  # a glob or a placeholder: the folder before it must exist
        out.add(cut.rstrip("/") or path)
    return out


def test_readme_points_nowhere_outside_the_repository():
    for outside in ("shared/reference", "reference/", "/work/"):
        assert outside not in README, f"README points outside the repository: {outside!r}"
    assert not re.search(r"\.\./\w", README), "README points to a path above the repository"
    links = re.findall(r"\]\(([^)#]+)\)", README)  # Markdown links: a web address or a file here
    missing = [l for l in links if not l.startswith(("http://", "https://")) and not (ROOT / l).exists()]
    assert not missing, missing


def test_every_repository_path_in_the_readme_exists():
    paths = _repo_paths(README)
    assert "qeval/cli.py" in paths and "recipes/quickstart.yaml" in paths  # the pattern finds what it should
    missing = sorted(p for p in paths - PEERS if not (ROOT / p).exists())
    assert not missing, missing


def test_the_path_check_catches_a_missing_file():
    assert _repo_paths("see `qeval/nowhere.py` and configs/gates/*.yaml") == {"qeval/nowhere.py", "configs/gates"}
    assert not (ROOT / "qeval/nowhere.py").exists()
