"""Where the baseline's log-probabilities wait for the policies: device memory or a disk spill.

KL and top-1 compare every policy with the baseline position by position, over
the whole vocabulary: ``positions x vocab`` numbers (16k tokens of a 128k
vocabulary: 8.4 GB in float32). Two places, chosen before the baseline pass:

- ``device``: a tensor on the device that computes the logits (float32 when
  that fits, else float16; host memory for a model on the CPU), no file and
  no host round trip; each policy's KL reads it in place. Needs the store plus ``reserve`` bytes (what a policy
  pass adds: a quantized copy of the weights, a window's scratch) free there.
- ``disk``: a float16 ``BaselineSpill`` in the run directory (2 bytes per
  entry plus one argmax per row), read back a window at a time.

``choose_store`` checks the room first and says how much it needed and had, so
a run that cannot hold the store stops before any model work.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .divergence import BaselineSpill, renormalized, row_layout, spill_bytes

PATHS = ("auto", "device", "disk")


class DeviceSpill:
    """Baseline log-probs held in device memory; the same interface as ``BaselineSpill``.

    Nothing is persisted: a resumed run finds it incomplete and rebuilds it.
    """

    where = "device"

    def __init__(self, device, dtype: str = "float32"):
        self.device = torch.device(device)
        self.dtype = dtype
        self.path = None
        self._data = self._top = None
        self._offsets: dict[int, tuple[int, int]] = {}
        self._done = False

    def complete(self) -> bool:
        return self._done

    def open_write(self, rows_per_window: dict[int, int], vocab: int) -> None:
        self.remove()
        self._offsets = row_layout(rows_per_window)
        total = max(sum(rows_per_window.values()), 1)
        self._data = torch.empty((total, vocab), dtype=getattr(torch, self.dtype), device=self.device)
        self._top = torch.empty(total, dtype=torch.int64, device=self.device)

    def open_read(self, rows_per_window: dict[int, int]) -> None:
        if not self._done or row_layout(rows_per_window) != self._offsets:
            raise RuntimeError("the baseline's log-probabilities are not held for these windows")

    def write(self, window_index: int, logp: torch.Tensor) -> None:
        a, b = self._offsets[window_index]
        self._top[a:b] = logp.argmax(-1).to(self.device)
        self._data[a:b].copy_(logp, non_blocking=True)

    def read(self, window_index: int, device=None) -> torch.Tensor:
        a, b = self._offsets[window_index]
        t = self._data[a:b]
        t = t.to(device) if device is not None else t
        return renormalized(t) if self.dtype != "float32" else t

    def argmax(self, window_index: int, device=None) -> torch.Tensor:
        a, b = self._offsets[window_index]
        t = self._top[a:b]
        return t.to(device) if device is not None else t

    def finish(self) -> None:
        self._done = True

    def close(self) -> None:
        pass  # kept for the next policy

    def remove(self) -> None:
        self._data = self._top = None
        self._done = False


@dataclass(frozen=True)
class StoreChoice:
    """What ``choose_store`` picked (recorded in results.json as ``kl_store``)."""

    path: str  # "device" or "disk"
    dtype: str
    where: str  # the device ("cuda:0") or the spill file
    bytes_needed: int
    bytes_free: int

    def as_dict(self) -> dict:
        return asdict(self)


class StoreSpaceError(Exception):
    """The chosen place cannot hold the baseline's log-probabilities; the message is one line."""


def device_free_bytes(device) -> int:
    """Free bytes on a CUDA device (counting blocks PyTorch's allocator caches but does not use),
    or the host memory available to a new allocation (``MemAvailable``) for the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return host_available_bytes()
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def host_available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def disk_free_bytes(path: Path) -> int:
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return int(shutil.disk_usage(p).free)


def choose_store(rows: int, vocab: int, *, device, spill_path: Path, reserve: int = 0, prefer: str = "auto",
                 slack: int = 1 << 30) -> StoreChoice:
    """Device memory if the store (float32, else float16) plus ``reserve`` fit there, else a float16 disk spill.

    Args:
        rows: positions this process scores; vocab: logits per position.
        device: the device of the logits (a CUDA device, the CPU: host memory; None: disk only).
        spill_path: where the disk spill would go.
        reserve: device bytes the policy passes need beside the store.
        prefer: ``auto``, or force ``device`` / ``disk``.
        slack: bytes kept free on either (allocator fragmentation, file system).

    Raises:
        StoreSpaceError: the forced or fallback place lacks room (one line: path, bytes needed, bytes free).
    """
    if prefer not in PATHS:
        raise ValueError(f"baseline store must be one of {PATHS}, got {prefer!r}")
    held = device is not None and torch.device(device).type in ("cuda", "cpu")
    if prefer in ("auto", "device") and held:
        free = device_free_bytes(device)
        for dtype in ("float32", "float16"):
            need = spill_bytes(rows, vocab, dtype)
            if need + reserve + slack <= free:
                return StoreChoice("device", dtype, str(torch.device(device)), need, free)
        if prefer == "device":
            need = spill_bytes(rows, vocab, "float16")
            raise StoreSpaceError(
                f"baseline log-probs on {torch.device(device)}: need {need + reserve + slack} bytes "
                f"({rows} positions x {vocab} vocab x 2 B, plus {reserve + slack} for the policy passes), "
                f"{free} bytes free"
            )
    elif prefer == "device":
        raise StoreSpaceError(f"baseline store 'device' needs the logits on a CUDA device or the CPU, not {device}")
    need = spill_bytes(rows, vocab, "float16")
    free = disk_free_bytes(spill_path.parent)
    if need + min(slack, need) > free:
        raise StoreSpaceError(
            f"baseline spill {spill_path}: need {need} bytes ({rows} positions x {vocab} vocab x 2 B), "
            f"{free} bytes free on that disk"
        )
    return StoreChoice("disk", "float16", str(spill_path), need, free)


def make_store(choice: StoreChoice, key: dict):
    """The store object for a choice (a disk spill is keyed by what it holds, for resume)."""
    if choice.path == "device":
        return DeviceSpill(choice.where, choice.dtype)
    return BaselineSpill(Path(choice.where), key, choice.dtype)
