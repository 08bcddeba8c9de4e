"""A built wheel works on its own: configs travel inside it (not only with `pip install -e`).

Builds the wheel, unpacks it (no deps) into a fresh venv that borrows this
environment's third-party packages through a .pth line, and runs the CLI from
another directory, where no source tree is in reach.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("qeval-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # third-party packages from this environment; not qeval itself (its editable finder is a
    # .pth *file*, which a path added by a .pth line does not run)
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # a wheel install is its files unpacked into purelib; pip itself would see the editable
    # qeval of this environment through deps.pth and skip (or uninstall) it
    with zipfile.ZipFile(wheel) as z:
        z.extractall(purelib)
    return wheel, venv, tmp


def _run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(venv / "bin" / "python"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_wheel_carries_the_configs(installed):
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("qeval/configs/gpus.yaml", "qeval/configs/policies/nvfp4.yaml",
                     "qeval/configs/models/llama-3.1-8b/config.json", "qeval/configs/gates/default.yaml"):
        assert expected in names, expected
    shipped = {n.removeprefix("qeval/configs/") for n in names if n.startswith("qeval/configs/") and not n.endswith("/")}
    in_repo = {str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*") if p.is_file()}
    assert shipped == in_repo


def test_installed_cli_runs_from_elsewhere(installed):
    _, venv, tmp = installed
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    where = _run(venv, elsewhere, "-c", "import qeval, qeval.paths; print(qeval.__file__); print(qeval.paths.CONFIGS)")
    assert where.returncode == 0, where.stderr
    assert str(ROOT) not in where.stdout, f"imported the source tree, not the wheel: {where.stdout}"
    formats = _run(venv, elsewhere, "-m", "qeval", "formats")
    assert formats.returncode == 0, formats.stderr[-2000:]
    assert "nvfp4" in formats.stdout
    plan = _run(venv, elsewhere, "-m", "qeval", "plan", "llama-3.1-8b", "--policy", "nvfp4")
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "q_proj" in plan.stdout or "self_attn" in plan.stdout
