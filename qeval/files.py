"""Files: read one, or fail with one line naming it and why; write one atomically.

Every loader in qeval (recipes, policies, gates, results, catalogs) reads
through here, so a bad file always reads the same way to a user::

    recipes/x.yaml: not valid YAML at line 3: mapping values are not allowed here

``error`` is the caller's exception class, so each package keeps its own.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml


def read_bytes(path: str | os.PathLike, what: str = "file", error: type[Exception] = ValueError) -> bytes:
    """The bytes of ``path``; a missing or unreadable file raises ``error`` (one line)."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected a {what}") from None
    except OSError as err:
        raise error(f"{path}: cannot read {what} ({err.strerror or err})") from None


def decode_utf8(raw: bytes, where: str | os.PathLike, what: str = "file", error: type[Exception] = ValueError) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(f"{where}: {what} is not UTF-8 text (byte {err.start})") from None


# A config file is small: past these it is a mistake or an attack ("billion laughs": a few
# anchors that each repeat the previous one expand to gigabytes when read as plain data).
MAX_YAML_BYTES = 10 * 2**20
MAX_YAML_NODES = 1_000_000  # nodes after expanding aliases
# libyaml's parser when pyyaml has it: the same safe constructor, ~10x faster, nesting capped at 1000
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _expanded_size(node, memo: dict, active: set) -> int:
    """Nodes ``node`` expands to with every alias copied out (shared nodes counted once per use)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise ValueError("an alias refers to a node that contains it")
    active.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo, active) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo, active) + _expanded_size(v, memo, active) for k, v in node.value)
    active.discard(key)
    memo[key] = size
    return size


def _safe_load_bounded(text: str) -> Any:
    """``yaml.safe_load`` that refuses a document expanding past ``MAX_YAML_NODES`` nodes."""
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set())
        if size > MAX_YAML_NODES:
            raise ValueError(f"expands to {size:,} values through aliases (at most {MAX_YAML_NODES:,})")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_yaml(raw: bytes, where: str | os.PathLike, what: str = "file", error: type[Exception] = ValueError) -> Any:
    """``yaml.safe_load`` of UTF-8 bytes, with the line of the first problem in a one-line error.

    Bounded: a file over ``MAX_YAML_BYTES``, or one whose aliases expand past
    ``MAX_YAML_NODES`` values, or that refers to itself, is refused.
    """
    if len(raw) > MAX_YAML_BYTES:
        raise error(f"{where}: {what} is {len(raw):,} bytes; a YAML {what} is at most {MAX_YAML_BYTES:,}")
    text = decode_utf8(raw, where, what, error)
    try:
        return _safe_load_bounded(text)
    except ValueError as err:
        raise error(f"{where}: {what} refused: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise error(f"{where}: not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise error(f"{where}: YAML nested too deeply") from None


def read_yaml(path: str | os.PathLike, what: str = "file", error: type[Exception] = ValueError) -> Any:
    return parse_yaml(read_bytes(path, what, error), path, what, error)


def read_json(path: str | os.PathLike, what: str = "file", error: type[Exception] = ValueError) -> Any:
    raw = read_bytes(path, what, error)
    text = decode_utf8(raw, path, what, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply") from None


def json_default(obj: Any) -> Any:
    # numpy / torch scalars and tensors, paths, sets: the things metrics code returns
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "model_dump"):  # pydantic models
        return obj.model_dump(mode="json")
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The temp file lives in the same directory (``os.replace`` is atomic only
    within one file system) and is removed if anything fails.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a results file is as readable as any other
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Serialise ``obj`` first (so a bad value raises before the disk is touched), then write atomically."""
    text = json.dumps(obj, indent=2, default=json_default) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))
