"""Launch shapes per kernel and per GPU, from configs/kernels.yaml.

The shapes change speed only, never results. ``override`` lets a benchmark or a
test try other shapes in-process (benchmarks/tune_kernels.py, tests/test_kernels.py).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import yaml

from qeval.paths import CONFIGS

FILE = CONFIGS / "kernels.yaml"
OVERRIDE: dict[str, dict] = {}


@contextlib.contextmanager
def override(key: str, shape: dict):
    """Inside the block, kernel ``key`` launches with ``shape`` over its configured one."""
    OVERRIDE[key] = shape
    try:
        yield
    finally:
        OVERRIDE.pop(key, None)


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
    index = device.index if device.type != "cuda" or device.index is not None else torch.cuda.current_device()
    base = _config(key, device.type, index)  # looked up once: this runs at every launch
    return {**base, **OVERRIDE[key]} if key in OVERRIDE else base


@functools.cache
def _config(key: str, kind: str, index: int | None) -> dict:
    t = table()
    own = (t["devices"].get(device_name(index)) or {}) if kind == "cuda" else {}
    return {**t["default"].get(key, {}), **own.get(key, {})}
