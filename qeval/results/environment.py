"""The environment a run ran in, for ``results.json["environment"]``."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from qeval.results.schema import Environment


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """The commit of the qeval checkout, or None (installed from a wheel, no git)."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def _device_name() -> str:
    # Only ask torch if it is already imported: capturing the environment must
    # not initialise CUDA in a process that never used it.
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment(seed: int | None = None, device: str | None = None, started: str | None = None) -> Environment:
    """Versions, device and git commit, for ``results.json["environment"]``.

    Args:
        seed: the recipe's seed.
        device: device description; default: GPU 0's name if torch already uses CUDA, else ``"cpu"``.
        started: ISO time the run started; default: now.
    """
    from qeval import __version__

    return {
        "qeval": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "lm_eval": _version("lm_eval") or _version("lm-eval"),
        "device": device or _device_name(),
        "git_commit": _git_commit(),
        "seed": seed,
        "started": started or now_utc(),
    }
