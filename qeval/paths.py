"""Where qeval finds its configs and keeps its cache."""

from __future__ import annotations

import os
from pathlib import Path

# configs/ beside the package: policies, gates, GPU catalog, memory defaults, model configs, data checksums
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def cache_root() -> Path:
    """qeval's own cache: ``$QEVAL_CACHE`` or ``~/.cache/qeval`` (downloads, converted models, layouts)."""
    return Path(os.environ.get("QEVAL_CACHE") or Path.home() / ".cache" / "qeval")
