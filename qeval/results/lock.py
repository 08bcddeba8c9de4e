"""One process per run directory: an exclusive ``flock`` on ``<run>/.lock``.

A second ``qeval run --resume`` of a run that is still going would rewrite the
files the first one is reading (its baseline spill: the first process dies of
SIGBUS). The lock file names its holder (pid, host, start time) so that the
second process can say who has it. The kernel drops the lock when the holder
exits, however it exits, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

LOCK_NAME = ".lock"


class LockHeld(Exception):
    """Another process holds the run's lock; the message names it."""


def acquire(run_path: str | os.PathLike) -> int | None:
    """Lock ``run_path`` (which must exist) for this process; return the lock's file descriptor.

    Raises:
        LockHeld: another process has it (message: its pid, host and start time).
    """
    if fcntl is None:
        return None
    path = Path(run_path) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise LockHeld(f"run {run_path} is in use by {holder}; wait for it to finish, or stop it first") from None
    except BaseException:
        os.close(fd)
        raise
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    return fd


def release(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)  # closing the descriptor drops the flock
        except OSError:
            pass


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on host {info['host']} (since {info.get('since', '?')})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (no details in the lock file)"
