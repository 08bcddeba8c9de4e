"""Where qeval finds its configs and keeps its cache."""

from __future__ import annotations

import os
from pathlib import Path

# policies, gates, GPU catalog, memory defaults, model configs, data checksums: the
# repository's configs/, which qeval/configs links to and which a wheel carries inside.
CONFIGS = Path(__file__).resolve().parent / "configs"


def cache_root() -> Path:
    """qeval's own cache: ``$QEVAL_CACHE`` or ``~/.cache/qeval`` (downloads, converted models, layouts)."""
    return Path(os.environ.get("QEVAL_CACHE") or Path.home() / ".cache" / "qeval")
