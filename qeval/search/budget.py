"""The byte budget of a search: given as bytes, as bits per weight, or as a GPU it must fit.

``--fit 1xH100 --context 8192 --batch 8``: the recommender's own accounting
(``qeval.deploy.recommend.analyze``, ``qeval.deploy.options.weight_room``) for
that option splits the GPU the way the serving engine does: what is left after
the KV cache (with headroom), activations and runtime is the budget for the weights. The written policy is then checked with
the recommender itself (``fit_report``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """``"120MiB"``, ``"1.5GB"``, ``"123456"`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?i?b?)\s*", str(text).lower())
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"not a size: {text!r} (write e.g. 120MiB, 1.5GB or a number of bytes)")
    return int(math.floor(float(m.group(1)) * _UNITS[m.group(2)]))


def budget_from_bits(doc: dict, bits: float) -> int:
    """Whole-model bytes when the searched groups average ``bits`` bits per weight (the rest stays BF16)."""
    if not bits > 0:
        raise ValueError(f"--bits must be positive, got {bits}")
    params = sum(g["params"] for g in doc["groups"])
    return int(doc["fixed_bytes"]) + int(math.floor(bits * params / 8))


@dataclass(frozen=True)
class Target:
    gpu: str  # catalog id (h100)
    count: int
    mig: str | None = None

    @property
    def label(self) -> str:
        return f"{self.gpu}:{self.mig}" if self.mig else f"{self.count}x{self.gpu}"


def parse_target(text: str) -> Target:
    """``1xH100``, ``h200``, ``8xB200``, ``h100:3g.40gb`` (a MIG slice)."""
    m = re.fullmatch(r"\s*(?:(\d+)\s*x\s*)?([a-z0-9_-]+)(?::([a-z0-9.]+))?\s*", str(text).lower())
    if not m:
        raise ValueError(f"--fit: not a GPU target: {text!r} (write e.g. 1xH100, 2xH200, h100:3g.40gb)")
    count = int(m.group(1) or 1)
    if m.group(3) and count != 1:
        raise ValueError(f"--fit: a MIG slice is one slice, got {text!r}")
    return Target(m.group(2), count, m.group(3))


def _find(options, target: Target):
    for o in options:
        if o.gpu != target.gpu or o.nodes != 1:
            continue
        if target.mig and o.mig_profile == target.mig:
            return o
        if not target.mig and o.mig_profile is None and o.count == target.count:
            return o
    raise ValueError(f"--fit: no option {target.label} in the GPU catalog (configs/gpus.yaml)")


def fit_budget(model_or_config, target: Target, context: int | None, batch: int | None) -> int:
    """Whole-model weight bytes (as ``qeval plan`` counts them) that still fit ``target`` with headroom."""
    from qeval.deploy.options import weight_room
    from qeval.deploy.recommend import analyze

    setup, options = analyze(model_or_config, {"name": "bf16"}, context=context, batch=batch, gpus=[target.gpu])
    o = _find(options, target)
    per_gpu = weight_room(setup, o)  # the serving engine's split of the GPU, with the recommender's headroom
    # weights per GPU are ceil(total / GPUs); total = plan bytes + buffers + MTP layers (taken at BF16: an upper bound)
    extra = setup.weights.total - setup.weights.main
    return per_gpu * o.count - extra


def fit_report(model_or_config, policy, target: Target, context: int | None, batch: int | None) -> dict:
    """Whether ``policy`` fits ``target`` per the recommender, and the next cheaper option and its verdict."""
    from qeval.deploy.recommend import analyze

    setup, options = analyze(model_or_config, policy, context=context, batch=batch)
    o = _find(options, target)
    cheaper = [x for x in options if x.eligible and x.nodes == 1 and x.usd_per_hour < o.usd_per_hour]
    nxt = max(cheaper, key=lambda x: (x.usd_per_hour, x.usable_bytes), default=None)
    return {
        "target": target.label, "fits": o.fits_with_headroom, "need_bytes": o.need_bytes,
        "usable_bytes": o.usable_bytes, "weights_bytes": o.weights_bytes, "kv_cache_bytes": o.kv_cache_bytes,
        "usd_per_hour": o.usd_per_hour,
        "next_cheaper": None if nxt is None else {
            "option": f"{nxt.gpu_name} {nxt.label}", "usd_per_hour": nxt.usd_per_hour,
            "fits": nxt.fits_with_headroom, "need_bytes": nxt.need_bytes, "usable_bytes": nxt.usable_bytes,
        },
    }
