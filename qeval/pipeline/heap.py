"""Keep glibc's allocator in one regime while a CPU run evaluates: large blocks from the heap, kept there.

By default glibc serves every block above its mmap threshold (dynamic, at most
32 MiB on 64-bit) with a fresh ``mmap`` and unmaps it on ``free``; each page is
then faulted in again on first touch. A pass's vocabulary-sized tensors (the
quickstart's logits and log-probabilities are 50-100 MB) are all above that, so
every window paid its page faults afresh, and how many depended on what ran
before (a heap hole freed by ``dequantize_model``): ~450k faults per pass, up to
~1 s of system time out of 3-4 s, more in some passes than in others.

``steady()`` turns mmap off (``M_MMAP_MAX`` 0) and trimming off
(``M_TRIM_THRESHOLD`` at its largest), so freed blocks stay in the heap and the
next window reuses them without a fault. ``trim()`` (called by
``qeval.pipeline.peaks.reset`` at the start of each pass) gives the free pages
back with ``malloc_trim(0)``, so that the pass's host peak counts what the pass
itself holds, not what an earlier pass left free; the first window of each pass
faults its pages in once.

glibc has no getter for these settings: on exit they go back to glibc's
defaults (``M_MMAP_MAX`` 65536, ``M_TRIM_THRESHOLD`` 128 KiB); the dynamic mmap
threshold, which any ``mallopt`` of these switches off, stays frozen at its
last value. Where the environment tunes malloc itself (``MALLOC_*_`` variables
or ``glibc.malloc`` in ``GLIBC_TUNABLES``), where libc is not glibc (musl,
macOS) or lacks these calls, nothing is changed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>
GLIBC_DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}  # malloc/malloc.c
STEADY = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}  # mallopt takes an int
_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")

_active: list = []  # the libc of the steady() scope now open, if any


def glibc():
    """This process's glibc (with ``mallopt`` and ``malloc_trim``), or None."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.malloc_trim.argtypes = [ctypes.c_int, ctypes.c_int], [ctypes.c_size_t]
    except (AttributeError, OSError, ValueError, TypeError):  # no confstr name, no libc, no symbol
        return None
    return libc


def tuned_by_environment(environ=os.environ) -> bool:
    """Whether the user set glibc's malloc parameters for this process (then qeval leaves them)."""
    return any(k in environ for k in _ENV) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def _set(libc, values: dict) -> bool:
    return all([bool(libc.mallopt(k, v)) for k, v in values.items()])


@contextlib.contextmanager
def steady(enabled: bool = True):
    """Within: glibc serves large blocks from its heap and keeps what is freed (see the module's note).

    Yields whether the regime is on. ``enabled=False`` (a GPU run), an unsupported
    libc or a malloc tuned by the environment: nothing changes, yields False.
    """
    libc = glibc() if enabled and not _active and not tuned_by_environment() else None
    if libc is None or not _set(libc, STEADY):
        if libc is not None:
            _set(libc, GLIBC_DEFAULTS)  # one of the two failed: leave none half set
        yield False
        return
    _active.append(libc)
    try:
        yield True
    finally:
        _active.clear()
        _set(libc, GLIBC_DEFAULTS)
        libc.malloc_trim(0)


def trim() -> bool:
    """Inside ``steady()``: return the heap's free pages to the system (``malloc_trim(0)``). Else nothing."""
    if not _active:
        return False
    _active[0].malloc_trim(0)
    return True
