"""Launch shapes per kernel and per GPU, from configs/kernels.yaml.

The shapes change speed only, never results. ``OVERRIDE`` lets a benchmark try
other shapes in-process (benchmarks/tune_kernels.py).
"""

from __future__ import annotations

import functools

import torch
import yaml

from qeval.paths import CONFIGS

FILE = CONFIGS / "kernels.yaml"
OVERRIDE: dict[str, dict] = {}


@functools.cache
def table() -> dict:
    with open(FILE) as f:
        data = yaml.safe_load(f) or {}
    return {"default": data.get("default") or {}, "devices": data.get("devices") or {}}


@functools.cache
def device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def config(key: str, device: torch.device) -> dict:
    """The shape for kernel ``key`` on ``device``: the default, the GPU's own entry, then OVERRIDE."""
    t = table()
    own = {}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        own = t["devices"].get(device_name(index)) or {}
    return {**t["default"].get(key, {}), **own.get(key, {}), **OVERRIDE.get(key, {})}
