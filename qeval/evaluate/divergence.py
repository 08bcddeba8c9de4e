"""KL(base || quant) over the full vocabulary, its p99, and top-1 agreement.

Everything is float32 per position, a chunk of positions at a time, so the
scratch memory is ``chunk x vocab`` floats whatever the run length. The
baseline's log-probabilities of a long run are not kept in RAM: the baseline
pass writes them, window by window, to a spill file (``BaselineSpill``) that
every policy's pass reads back one window at a time, or keeps them in device
memory when they fit there (``qeval.evaluate.baseline_store``).

The spill file holds float16 (2 bytes per vocabulary entry: 1M tokens of a
128k vocabulary are 256 GB, not 512) plus the exact float32 argmax of every
row (so top-1 agreement is exact). Read back, a row is renormalised
(``logp - logsumexp(logp)``) so that it is a distribution again; what float16
then adds to KL is small: on LM-shaped synthetic log-probabilities (32,768
vocabulary, KL ~2e-3) the KL mean moved by at most 4e-4 of itself (per row
at most 2e-5 nats), where the rounded rows without renormalisation moved it by
up to 3e-3 of itself (tests/test_baseline_store.py bounds it at 5e-3).
``benchmarks/bench_spill.py`` measures the same on the quickstart's real text
(float32 vs float16 spill, side by side).
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import numpy as np
import torch


def kl_rows(logp: torch.Tensor, logq: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Per-row ``sum_v p_v (log p_v - log q_v)`` in float32 (``p = exp(logp)``).

    Args:
        logp: baseline log-probabilities ``[n, vocab]``.
        logq: quantized model's log-probabilities ``[n, vocab]``.
        chunk: rows per step (bounds the temporaries to ``chunk x vocab``).
    """
    if logp.shape != logq.shape:
        raise ValueError(f"logit shapes differ: {tuple(logp.shape)} vs {tuple(logq.shape)}")
    out = torch.empty(logp.shape[0], dtype=torch.float32, device=logp.device)
    for s in range(0, logp.shape[0], chunk):
        lp = logp[s : s + chunk].float()
        lq = logq[s : s + chunk].to(lp.device).float()
        p = lp.exp()
        # p == 0 (or NaN) contributes 0 (avoids 0 * -inf); clamp tiny negatives from rounding. In place
        # in the one new difference tensor: the bits of where(p > 0, p * (lp - lq), 0), two fewer
        # vocabulary-sized temporaries (each a fresh run of page faults on a CPU)
        term = (lp - lq).mul_(p)
        term.masked_fill_((p > 0).logical_not_(), 0.0)
        out[s : s + chunk] = term.sum(-1).clamp_min(0.0)
    return out


def top1_matches(logp: torch.Tensor, logq: torch.Tensor) -> int:
    """Rows where both distributions put their maximum on the same token."""
    return int((logp.argmax(-1) == logq.to(logp.device).argmax(-1)).sum())


def percentile(values: np.ndarray, q: float = 99.0) -> float:
    """The ``q``-th percentile with linear interpolation between order statistics (numpy's default)."""
    if len(values) == 0:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


SPILL_DTYPES = {"float16": np.float16, "float32": np.float32}


def renormalized(logp: torch.Tensor) -> torch.Tensor:
    """Float32 ``logp - logsumexp(logp)`` per row: a rounded log-distribution made whole again."""
    lp = logp.float()
    return lp - torch.logsumexp(lp, dim=-1, keepdim=True)


def row_layout(rows_per_window: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Window index -> ``(first row, stop row)`` of its rows, windows in index order."""
    offset, out = 0, {}
    for idx in sorted(rows_per_window):
        out[idx] = (offset, offset + rows_per_window[idx])
        offset += rows_per_window[idx]
    return out


def spill_bytes(rows: int, vocab: int, dtype: str = "float16") -> int:
    """Bytes a spill of ``rows`` positions takes: log-probs + one int64 argmax per row (+ two headers)."""
    return rows * vocab * np.dtype(SPILL_DTYPES[dtype]).itemsize + rows * 8 + 256


class BaselineSpill:
    """Baseline log-probabilities of every scored position, on disk, read back per window.

    One memory-mapped file ``[rows, vocab]`` of ``dtype`` (rows in window
    order), one ``[rows]`` int64 file of each row's argmax (taken in float32
    before rounding), and a small JSON marker written only once both are
    complete, so that a resumed run reuses a finished spill and redoes a
    partial one. ``read`` gives float32 log-probs (renormalised when stored in
    float16); ``argmax`` the baseline's top-1 token per row.
    """

    where = "disk"

    def __init__(self, path: Path, key: dict, dtype: str = "float32"):
        if dtype not in SPILL_DTYPES:
            raise ValueError(f"spill dtype must be one of {sorted(SPILL_DTYPES)}, got {dtype!r}")
        self.path = Path(path)
        self.marker = self.path.with_suffix(".json")
        self.top_path = self.path.with_name(self.path.stem + ".argmax.npy")
        self.dtype = dtype
        self.key = {**key, "dtype": dtype}
        self._mm = None
        self._top = None
        self._offsets: dict[int, tuple[int, int]] = {}

    def complete(self) -> bool:
        if not (self.path.exists() and self.top_path.exists() and self.marker.exists()):
            return False
        try:
            return json.loads(self.marker.read_text()) == self.key
        except (OSError, ValueError):
            return False

    def open_write(self, rows_per_window: dict[int, int], vocab: int) -> None:
        self._offsets = row_layout(rows_per_window)
        total = max(sum(rows_per_window.values()), 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.marker.exists():
            self.marker.unlink()
        self._mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=SPILL_DTYPES[self.dtype], shape=(total, vocab))
        self._top = np.lib.format.open_memmap(self.top_path, mode="w+", dtype=np.int64, shape=(total,))
        for path in (self.path, self.top_path):
            self._reserve(path)

    def _reserve(self, path: Path) -> None:
        """Allocate the file's blocks now: a full disk is an OSError here, not a SIGBUS (rc 135, no
        message) when a page of the sparse file is written later."""
        try:
            with open(path, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as err:
            if err.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve
                return
            self.remove()
            raise OSError(err.errno, err.strerror or "cannot allocate", str(path)) from None

    def open_read(self, rows_per_window: dict[int, int]) -> None:
        self._offsets = row_layout(rows_per_window)
        self._mm = np.load(self.path, mmap_mode="r")
        self._top = np.load(self.top_path, mmap_mode="r")

    def write(self, window_index: int, logp: torch.Tensor) -> None:
        a, b = self._offsets[window_index]
        logp = logp.detach()
        self._top[a:b] = logp.argmax(-1).cpu().numpy()
        # round on the device: half the bytes cross to the host
        self._mm[a:b] = logp.to(getattr(torch, self.dtype)).cpu().numpy()

    def read(self, window_index: int, device=None) -> torch.Tensor:
        a, b = self._offsets[window_index]
        t = torch.from_numpy(np.array(self._mm[a:b]))
        t = t.to(device) if device is not None else t
        return renormalized(t) if self.dtype != "float32" else t

    def argmax(self, window_index: int, device=None) -> torch.Tensor:
        a, b = self._offsets[window_index]
        t = torch.from_numpy(np.array(self._top[a:b]))
        return t.to(device) if device is not None else t

    def finish(self) -> None:
        if self._mm is not None and self._mm.mode != "r":
            self._mm.flush()
            self._top.flush()
            tmp = self.marker.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.key))
            os.replace(tmp, self.marker)
        self._mm = self._top = None

    def close(self) -> None:
        self._mm = self._top = None

    def remove(self) -> None:
        self._mm = self._top = None
        for p in (self.path, self.top_path, self.marker):
            if p.exists():
                p.unlink()


def summarize_kl(kl_values: np.ndarray, kl_sum: float, top1: int, n: int) -> dict:
    """The metric dict for one policy from gathered per-position values."""
    return {
        "kl_mean": kl_sum / n if n else math.nan,
        "kl_p99": percentile(kl_values, 99.0),
        "top1_agreement": top1 / n if n else math.nan,
    }
