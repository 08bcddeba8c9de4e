"""The model's files on disk: are they whole, and what are they (a fingerprint for ``--resume``).

A safetensors file is an 8-byte little-endian header length, a JSON header
(tensor name -> dtype, shape, ``data_offsets``) and the data. A file cut short
by a failed copy or download, or overwritten with something else, is found by
reading the header alone (no tensor is read), before any model work.

The fingerprint of a model folder names every file with its size and
modification time, plus the sha256 of each weight file's header (safetensors)
or first MiB (GGUF and others): enough to notice a replaced or re-saved model
without reading gigabytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
# files of a model folder that change what is evaluated (weights, config, tokenizer)
_RELEVANT = WEIGHT_SUFFIXES + (".json", ".model", ".txt", ".tiktoken", ".py")


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file, or None when its header and size agree."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{size} bytes, too short for a safetensors header"
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                return f"header length {n} does not fit the file's {size} bytes (truncated or not safetensors)"
            header = json.loads(f.read(n))
    except OSError as err:
        return f"cannot read ({err.strerror or err})"
    except (ValueError, UnicodeDecodeError):
        return "header is not valid JSON (corrupt or not safetensors)"
    if not isinstance(header, dict):
        return "header is not a JSON object (corrupt or not safetensors)"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return f"tensor {name!r} has no valid data_offsets (corrupt)"
        end = max(end, offsets[1])
    if 8 + n + end != size:
        return f"holds {size} bytes but its header describes {8 + n + end} (truncated or corrupt)"
    return None


def check_weight_files(folder: Path) -> None:
    """ValueError (one line) for the first safetensors file in ``folder`` that is not whole."""
    for file in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(file)
        if problem:
            raise ValueError(f"model file {file} is unusable: {problem}")


def _head_sha(path: Path) -> str:
    """sha256 of a safetensors file's header, or of the first MiB of any other file."""
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            data = head + f.read(min(n, MAX_HEADER))
        else:
            data = f.read(2**20)
    return hashlib.sha256(data).hexdigest()


def fingerprint(folder: Path | None, only: str | None = None) -> list:
    """``[[name, size, mtime_ns, head sha256], ...]`` of the files that define a model.

    ``only``: a single file of the folder (a GGUF file shipped beside other models).
    """
    if folder is None:
        return []
    files = [folder / only] if only else sorted(p for p in folder.iterdir() if p.is_file())
    out = []
    for p in files:
        if not p.name.endswith(_RELEVANT) or p.name.startswith("."):
            continue
        st = os.stat(p)
        out.append([p.name, st.st_size, st.st_mtime_ns, _head_sha(p)])
    return out
