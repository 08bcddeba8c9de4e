"""Moving original modules off the accelerator and back, without more copies or waits than needed.

``quantize_model`` keeps the originals where they are when the device has room
for the quantized copies beside them (then quantize and restore move no
weight bytes at all). Otherwise each original goes to pinned host memory by a
non-blocking copy (the device keeps working while bytes cross the bus), and
comes back the same way; ``settle`` waits once at the end of the whole model,
not once per tensor.
"""

from __future__ import annotations

import torch
from torch import nn


def _tensors(module: nn.Module):
    for mod in module.modules():
        for store in (mod._parameters, mod._buffers):
            for t in store.values():
                if t is not None:
                    yield t


def to_host(module: nn.Module) -> None:
    """Move ``module``'s parameters and buffers to pinned CPU memory, in place (same Parameter objects)."""
    for t in _tensors(module):
        if t.device.type == "cpu":
            continue
        host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=torch.cuda.is_available())
        host.copy_(t.data, non_blocking=True)  # the device memory is freed stream-ordered, after the copy
        t.data = host


def to_device(module: nn.Module, device) -> None:
    """Move ``module``'s tensors back to ``device`` with non-blocking copies (from pinned memory: asynchronous)."""
    device = torch.device(device)
    for t in _tensors(module):
        if t.device == device:
            continue
        t.data = t.data.to(device, non_blocking=True)


def settle(model: nn.Module | None = None) -> None:
    """Wait for the copies in flight (before the host reads a moved tensor or the call returns)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def room_for(model: nn.Module, nbytes_by_device: dict, slack: float = 0.1, floor: int = 1 << 30) -> bool:
    """True when every CUDA device has ``nbytes`` (+10%, +1 GiB) free beyond what PyTorch already uses."""
    for device, nbytes in nbytes_by_device.items():
        if device.type != "cuda":
            continue
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        if nbytes * (1 + slack) + floor > free:
            return False
    return True
