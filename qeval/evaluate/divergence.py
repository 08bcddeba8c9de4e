"""KL(base || quant) over the full vocabulary, its p99, and top-1 agreement.

Everything is float32 per position, a chunk of positions at a time, so the
scratch memory is ``chunk x vocab`` floats whatever the run length. The
baseline's log-probabilities of a long run are not kept in RAM: the baseline
pass writes them, window by window, to a spill file (``BaselineSpill``) that
every policy's pass reads back one window at a time.
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
        # p == 0 contributes 0 (avoids 0 * -inf); clamp tiny negatives from rounding
        term = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p))
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


class BaselineSpill:
    """Baseline log-probabilities of every scored position, on disk, read back per window.

    One float32 memory-mapped file ``[rows, vocab]`` (rows in window order) plus
    a small JSON marker written only once the file is complete, so that a
    resumed run reuses a finished spill and redoes a partial one.
    """

    def __init__(self, path: Path, key: dict):
        self.path = Path(path)
        self.marker = self.path.with_suffix(".json")
        self.key = key
        self._mm = None
        self._offsets: dict[int, tuple[int, int]] = {}

    def complete(self) -> bool:
        if not (self.path.exists() and self.marker.exists()):
            return False
        try:
            return json.loads(self.marker.read_text()) == self.key
        except (OSError, ValueError):
            return False

    def open_write(self, rows_per_window: dict[int, int], vocab: int) -> None:
        self._layout(rows_per_window)
        total = sum(rows_per_window.values())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.marker.exists():
            self.marker.unlink()
        self._mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=(max(total, 1), vocab))
        self._reserve()

    def _reserve(self) -> None:
        """Allocate the file's blocks now: a full disk is an OSError here, not a SIGBUS (rc 135, no
        message) when a page of the sparse file is written later."""
        try:
            with open(self.path, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as err:
            if err.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve
                return
            self.remove()
            raise OSError(err.errno, err.strerror or "cannot allocate", str(self.path)) from None

    def open_read(self, rows_per_window: dict[int, int]) -> None:
        self._layout(rows_per_window)
        self._mm = np.load(self.path, mmap_mode="r")

    def _layout(self, rows_per_window: dict[int, int]) -> None:
        offset = 0
        self._offsets = {}
        for idx in sorted(rows_per_window):
            self._offsets[idx] = (offset, offset + rows_per_window[idx])
            offset += rows_per_window[idx]

    def write(self, window_index: int, logp: torch.Tensor) -> None:
        a, b = self._offsets[window_index]
        self._mm[a:b] = logp.detach().float().cpu().numpy()

    def read(self, window_index: int, device=None) -> torch.Tensor:
        a, b = self._offsets[window_index]
        t = torch.from_numpy(np.array(self._mm[a:b]))
        return t.to(device) if device is not None else t

    def finish(self) -> None:
        if self._mm is not None and self._mm.mode != "r":
            self._mm.flush()
            tmp = self.marker.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.key))
            os.replace(tmp, self.marker)
        self._mm = None

    def close(self) -> None:
        self._mm = None

    def remove(self) -> None:
        self._mm = None
        for p in (self.path, self.marker):
            if p.exists():
                p.unlink()


def summarize_kl(kl_values: np.ndarray, kl_sum: float, top1: int, n: int) -> dict:
    """The metric dict for one policy from gathered per-position values."""
    return {
        "kl_mean": kl_sum / n if n else math.nan,
        "kl_p99": percentile(kl_values, 99.0),
        "top1_agreement": top1 / n if n else math.nan,
    }
