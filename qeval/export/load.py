"""Evaluate a checkpoint's packed weights on the model they were made from.

``applied_checkpoint(model, ckpt)`` puts each stored linear's dequantized
weight (``QTensor.dequantize`` in the model's dtype: the same call the emulated
model makes for its own fake-quantized weights) into the matching parameter
rows, then quantizes activations and the KV cache as the checkpoint says,
with the checkpoint's static scales. On exit every parameter gets its own
tensor back.

``checkpoint_policy(model, ckpt)`` is the policy that the checkpoint amounts
to (one rule per module): what the plan, the byte count and the results record.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from qeval.policy import load_policy
from qeval.quantize import dequantize_model, quantize_model

from .names import model_state, saved_layout
from .read import Checkpoint
from .schemes import ExportError


def _targets(model: nn.Module, ckpt: Checkpoint) -> dict[str, list]:
    """model param key -> [(expert, row0, rows, StoredModule, stored name)] for every stored linear."""
    state = model_state(model)
    layout = saved_layout(model, state)
    by_saved = {s[: -len(".weight")]: src for s, src in layout.items() if s.endswith(".weight")}
    out: dict[str, list] = {}
    for name, sm in ckpt.modules.items():
        src = by_saved.get(name)
        if src is None or src.rows < 0:
            raise ExportError(f"{ckpt.path}: stored module {name} is not a linear of this model")
        p = state[src.param]
        n, k = (p.shape[-2], p.shape[-1])
        if src.rows != sm.qtensor.shape[0] or k != sm.qtensor.shape[1]:
            raise ExportError(f"{ckpt.path}: tensor {name} holds a {tuple(sm.qtensor.shape)} weight; "
                              f"the model's is {(src.rows, k)} (rows of {tuple(p.shape)})")
        out.setdefault(src.param, []).append((src.expert, src.row0, src.rows, sm, name))
    return out


def _module_of(param_key: str) -> tuple[str, str]:
    mod, _, pname = param_key.rpartition(".")
    return mod, pname


def checkpoint_policy(model: nn.Module, ckpt: Checkpoint, name: str = "checkpoint", weights: bool = True):
    """The policy the checkpoint amounts to; ``weights=False`` keeps weights as stored (what is applied)."""
    rules, per_module = [], {}
    for key, parts in _targets(model, ckpt).items():
        mod, _ = _module_of(key)
        for _, _, _, sm, stored in parts:
            rule = (sm.weights, sm.activations, sm.static)
            if per_module.setdefault(mod, rule) != rule:
                raise ExportError(f"{ckpt.path}: {stored} is {rule[0]}/{rule[1]} but another projection of {mod} "
                                  f"is {per_module[mod][0]}/{per_module[mod][1]}; qeval gives a module one rule")
    for mod, (w, a, static) in per_module.items():
        rules.append({"name": mod, "weights": w if weights else "none", "activations": a or "none",
                      "act_scale": "static" if static else "dynamic"})
    policy = {"name": name, "description": f"{ckpt.layout} checkpoint {ckpt.path}", "rules": rules}
    if ckpt.kv:
        policy["kv_cache"] = "fp8_e4m3"
    return load_policy(policy)


def _dequantized(param: torch.Tensor, parts: list) -> torch.Tensor:
    out = param.detach().clone()
    view = out if out.dim() == 3 else out.unsqueeze(0)
    for expert, row0, rows, sm, _ in parts:
        view[expert or 0, row0: row0 + rows] = sm.qtensor.dequantize(out.dtype).to(out.device)
    return out


def _set_static_scales(model: nn.Module, ckpt: Checkpoint, targets: dict) -> None:
    for key, parts in targets.items():
        mod_name, pname = _module_of(key)
        mod = model.get_submodule(mod_name)
        qw = getattr(mod, "qweight", None)
        if qw is None:
            qw = mod.q_down if pname == "down_proj" else getattr(mod, "q_up", None)
        amaxes = [sm.act_amax for *_, sm, _ in parts if sm.act_amax is not None]
        if qw is not None and amaxes and qw.static:
            # qeval shares one activation scale per projection of all experts: the largest
            qw.act_amax.fill_(float(torch.stack([a.float() for a in amaxes]).max()))
    for name, m in model.named_modules():
        kvq = getattr(m, "_qeval_kv", None)
        if kvq is not None:
            if name not in ckpt.kv:
                raise ExportError(f"{ckpt.path}: no k_scale/v_scale stored for attention {name}")
            k, v = ckpt.kv[name]
            kvq.k_amax.fill_(float(k))
            kvq.v_amax.fill_(float(v))


@contextlib.contextmanager
def applied_checkpoint(model: nn.Module, ckpt: Checkpoint, mode: str = "emulate"):
    """``with applied_checkpoint(model, ckpt) as plan:`` the model runs the checkpoint's weights."""
    if mode != "emulate":
        raise ExportError(f"{ckpt.path}: a checkpoint is evaluated in mode 'emulate' (the recipe says {mode!r})")
    from qeval.policy import plan

    targets = _targets(model, ckpt)
    true_plan = plan(model, checkpoint_policy(model, ckpt))
    params = dict(model.named_parameters())
    saved = {}
    try:
        with torch.no_grad():
            for key, parts in targets.items():
                p = params[key]
                saved[key] = p.data
                p.data = _dequantized(p, parts)
        quantize_model(model, checkpoint_policy(model, ckpt, weights=False), mode="emulate", calibration=[],
                       emulation="fake_quant",  # the stored weights are already dequantized into the model
                       progress=False, offload_original=False)
        try:
            with torch.no_grad():
                _set_static_scales(model, ckpt, targets)
            yield true_plan
        finally:
            dequantize_model(model)
    finally:
        for key, data in saved.items():
            params[key].data = data
