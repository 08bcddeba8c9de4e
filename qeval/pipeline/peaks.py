"""Peak memory of one pass: the GPU allocator's peak and the process's peak resident set.

``reset`` before a pass, ``read`` after it. The GPU figure is PyTorch's
allocator peak (``max_memory_allocated``), reset per pass, the largest over
the devices holding the model. The host figure is the kernel's high-water
mark of this process's resident memory (``VmHWM``), which Linux resets when
``5`` is written to ``/proc/self/clear_refs``; where that is not possible the
figure is the peak since the process started (``host_peak_scope: process``).
Inside ``qeval.pipeline.heap.steady`` (a CPU run) ``reset`` first gives the
heap's free pages back, so the figure is not what an earlier pass left free.
"""

from __future__ import annotations

import resource
import sys

import torch

from qeval.pipeline import heap

def _cuda_devices(model) -> list[torch.device]:
    return sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)


def _reset_host() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _host_peak() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def reset(model) -> dict:
    """Start a pass: reset the peaks; returns what ``read`` needs."""
    heap.trim()  # before the reset: free heap pages kept resident would count as this pass's
    devices = _cuda_devices(model)
    for d in devices:
        torch.cuda.reset_peak_memory_stats(d)
    return {"devices": devices, "host_reset": _reset_host()}


def read(state: dict) -> dict:
    """``gpu_peak_bytes`` (None without a GPU), ``host_peak_bytes`` and its scope, for results.json."""
    devices = state["devices"]
    gpu = max((int(torch.cuda.max_memory_allocated(d)) for d in devices), default=None)
    return {
        "gpu_peak_bytes": gpu,
        "host_peak_bytes": _host_peak(),
        "host_peak_scope": "pass" if state["host_reset"] else "process",
    }
