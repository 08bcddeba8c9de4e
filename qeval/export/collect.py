"""What a policy makes of a model, in packed form: the QTensors a checkpoint stores.

Weights are quantized here with the same codec call the emulated model uses
(``qeval.quantize.quantizer.quantize``: the format's ``quantize``, NaN
propagating), so ``QTensor.dequantize()`` is the emulated weight bit for bit.
Static activation and KV-cache amax come from one calibration pass of
``quantize_model`` (the recorded amax is all that is read; the model is
restored at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from qeval.formats import QTensor, get_format
from qeval.policy import Plan, load_policy, plan as make_plan
from qeval.policy.modules import fused_expert_params, is_conv1d, is_linear
from qeval.quantize import dequantize_model, quantize_model
from qeval.quantize import quantizer

from .schemes import ExportError


@dataclass
class QuantParam:
    """One quantized weight parameter (a linear's ``weight`` or a fused experts tensor)."""

    module: str
    param: str  # state-dict key of the parameter
    weights: str
    activations: str | None
    act_scale: str
    static: bool
    act_amax: torch.Tensor | None
    qtensors: list[QTensor]  # one per expert (one for a linear)
    kind: str = "linear"


@dataclass
class KVScales:
    module: str  # the attention block
    fmt: str
    static: bool
    k_amax: torch.Tensor | None
    v_amax: torch.Tensor | None


@dataclass
class Collected:
    plan: Plan
    params: dict[str, QuantParam] = field(default_factory=dict)  # by state-dict key
    kv: list[KVScales] = field(default_factory=list)
    unquantized: list[str] = field(default_factory=list)  # linear-like modules left in high precision


def _needs_calibration(plan: Plan) -> bool:
    for e in plan.entries:
        if e.activations and e.act_scale == "static" and get_format(e.activations).static_scale:
            return True
        if e.kv_cache and e.act_scale == "static":
            return True
    return False


def _amaxes(model: nn.Module, policy, plan: Plan, calibration) -> tuple[dict, list[KVScales]]:
    """Static activation amax per (module, param) and KV amax per attention block, from calibration."""
    quantize_model(model, policy, mode="emulate", calibration=calibration, progress=False, offload_original=False)
    try:
        acts = {}
        for e in plan.quantized_entries():
            mod = model.get_submodule(e.name)
            for attr, pname in (("qweight", "weight"), ("q_up", getattr(mod, "up_name", None)), ("q_down", "down_proj")):
                qw = getattr(mod, attr, None)
                if qw is not None and pname is not None:
                    acts[(e.name, pname)] = (bool(qw.static), qw.act_amax.detach().float().cpu().clone())
        kv = []
        for name, mod in model.named_modules():
            kvq = getattr(mod, "_qeval_kv", None)
            if kvq is not None:
                kv.append(KVScales(name, kvq.fmt, bool(kvq.static), kvq.k_amax.detach().float().cpu().clone(),
                                   kvq.v_amax.detach().float().cpu().clone()))
    finally:
        dequantize_model(model)
    return acts, kv


def collect(model: nn.Module, policy, calibration=None) -> Collected:
    """Plan ``policy`` on ``model`` and quantize every weight it names into QTensors."""
    policy = load_policy(policy)
    plan = make_plan(model, policy)
    acts, kv = {}, []
    if _needs_calibration(plan) or plan.kv_cache or plan.kv_cache_by_layer:
        if _needs_calibration(plan) and calibration is None:
            raise ExportError(
                f"policy {policy.name!r} uses static activation or KV-cache scales: give calibration batches "
                "(a recipe's `calibration:`) or a dynamic policy"
            )
        acts, kv = _amaxes(model, policy, plan, calibration if calibration is not None else [])
    out = Collected(plan, kv=kv)
    state_key = {id(p): k for k, p in model.state_dict(keep_vars=True).items()}
    for e in plan.entries:
        mod = model.get_submodule(e.name)
        if e.weights is None:
            if is_linear(mod) or fused_expert_params(mod):
                out.unquantized.append(e.name)
            continue
        if is_conv1d(mod):
            raise ExportError(f"{e.name}: GPT-2 Conv1D stores its weight [in, out]; checkpoint layouts expect nn.Linear")
        names = fused_expert_params(mod) if not is_linear(mod) and fused_expert_params(mod) else ["weight"]
        if getattr(mod, "is_transposed", False):
            raise ExportError(f"{e.name}: transposed fused experts (gpt-oss layout) are not exported")
        for pname in names:
            p = mod._parameters[pname]
            w = p.detach() if p.dim() == 3 else p.detach().unsqueeze(0)
            with torch.no_grad():
                qs = [quantizer.quantize(e.weights, w[i], role="weight") for i in range(w.shape[0])]
            static = bool(e.activations) and e.act_scale == "static" and get_format(e.activations).static_scale
            amax = acts.get((e.name, pname), (False, None))[1]
            key = state_key.get(id(p), f"{e.name}.{pname}")
            out.params[key] = QuantParam(
                e.name, key, e.weights, e.activations, e.act_scale, static, amax if static else None, qs,
                kind=e.kind,
            )
    return out
