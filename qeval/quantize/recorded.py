"""Static activation amax recorded by one calibration forward, reused by a later policy that would run the same one.

Calibration runs the model unquantized and records max |x| at the input of each
static quantizer. When every quantized module is a plain linear layer (its
calibrating forward is the original's own ``F.linear``), no weight was swapped
in place (embeddings, routers) and no KV-cache quantizer is attached (it may
switch the attention implementation), that forward is the same computation
whatever the policy, and so is the value recorded at a module's input. The
caller owns the memo (``quantize_model(calibration_memo=...)``; ``qeval run``
keeps one per run, over a model it never changes between policies); its key
also holds the model's parameters (object, memory, version counter), the
calibration tensors (the same) and the thread count, so what changes them
visibly computes afresh.
"""

from __future__ import annotations

import torch
from torch import nn


def key(model: nn.Module, calibration, replaced: list, swapped: bool, attention: dict) -> tuple | None:
    """What the recorded values depend on, or None where they may depend on the policy (then no reuse)."""
    from .linear import QuantLinear

    if swapped or attention or model.training or not isinstance(calibration, (list, tuple)):
        return None
    if not all(torch.is_tensor(b) for b in calibration):
        return None
    if not all(isinstance(r, QuantLinear) and not r.transposed for r in replaced):
        return None  # a GPT-2 Conv1D computes with addmm itself, F.linear once replaced: not the same bits
    params = tuple((id(p), p.data_ptr(), p._version) for p in model.parameters())
    batches = tuple((id(b), b.data_ptr(), b._version, tuple(b.shape), b.dtype) for b in calibration)
    return params, batches, torch.get_num_threads()


def recall(memo: dict | None, k: tuple | None, names: list[str]) -> dict | None:
    """The amax recorded under key ``k`` for every module in ``names``, or None."""
    if memo is None or k is None or memo.get("key") != k:
        return None
    kept = memo["amax"]
    return kept if all(n in kept for n in names) else None


def record(memo: dict | None, k: tuple | None, values: dict) -> None:
    """Keep ``values`` (module name -> amax) under key ``k``, beside those recorded under the same key."""
    if memo is None or k is None:
        return
    if memo.get("key") != k:
        memo.clear()
        memo.update(key=k, amax={})
    memo["amax"].update({n: v.detach().clone() for n, v in values.items()})
