"""Which tensor of a saved checkpoint comes from which parameter rows of the model in memory.

transformers 5 loads some checkpoints through conversions (per-expert
``experts.{e}.gate_proj`` / ``up_proj`` / ``w1`` / ``w3`` linears fused into one
``gate_up_proj [E, 2I, H]``) and reverts them on ``save_pretrained``. Serving
engines read the saved names. Rather than re-implementing every model's
mapping, :func:`saved_layout` runs transformers' own reversion on a probe: each
parameter replaced by a tiny float64 tensor that numbers its rows, so every
saved tensor tells which parameter, expert and rows it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Source:
    """A saved tensor's origin: ``param`` (a model state-dict key), ``expert`` (fused 3-D params) and rows."""

    param: str
    expert: int | None
    row0: int
    rows: int
    whole: bool  # the saved tensor is the parameter itself (same shape)


def _revert(model: nn.Module, state: dict) -> dict:
    from transformers.core_model_loading import revert_weight_conversion

    if not hasattr(model, "config"):
        return state
    return revert_weight_conversion(model, state)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without the second name of a tied tensor (what ``save_pretrained`` keeps)."""
    seen: dict[tuple, str] = {}
    out = {}
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), tuple(v.shape), v.dtype) if v.numel() else (k,)
        if key in seen:
            continue
        seen[key] = k
        out[k] = v
    return out


def saved_layout(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, Source]:
    """saved key -> :class:`Source` for every tensor ``save_pretrained`` would write from ``state``."""
    probes, owners, offset = {}, [], 0
    for k, v in state.items():
        lead = tuple(v.shape[:-1]) if v.dim() >= 1 else ()
        n = 1
        for d in lead:
            n *= d
        probes[k] = (torch.arange(n, dtype=torch.float64) + offset).reshape(*lead, 1)
        owners.append((offset, k, lead))
        offset += max(n, 1)
    out = {}
    for saved, t in _revert(model, probes).items():
        flat = t.reshape(-1)
        v0 = int(flat[0]) if flat.numel() else 0
        start, k, lead = max((o for o in owners if o[0] <= v0), key=lambda o: o[0])
        rel = v0 - start
        rows_per = lead[-1] if len(lead) >= 1 else 1
        expert = rel // rows_per if len(lead) == 2 else None
        row0 = rel % rows_per if len(lead) >= 1 else 0
        contiguous = torch.equal(flat, torch.arange(v0, v0 + flat.numel(), dtype=torch.float64))
        rows = flat.numel() if contiguous else -1
        whole = tuple(t.shape[:-1]) == lead and contiguous
        out[saved] = Source(k, expert, row0, rows, whole)
    return out


def revert(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` under the names and layout ``save_pretrained`` writes."""
    return _revert(model, state)
