"""quantize_model / dequantize_model: swap modules in place per a plan, and put them back exactly."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from qeval.policy import Plan, load_policy, plan as make_plan
from qeval.policy.modules import _ATTN_RX, fused_expert_params, is_linear

from . import kv as kvmod
from . import native, offload as moves, quantizer, recorded
from .experts import QuantExperts
from .gemm import EMULATIONS
from .linear import QuantLinear

MODES = ("emulate", "native")
STATE = "_qeval_state"


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    if "." not in name:
        return model, name
    head, leaf = name.rsplit(".", 1)
    return model.get_submodule(head), leaf


def _device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def check_quantizable(model: nn.Module, plan: Plan, mode: str, device: torch.device | None = None) -> None:
    """Raise ValueError (one line) for a rule that cannot be applied: activations on a module that
    is not a linear, or in native mode a format with no kernel on ``device`` (default: where each
    module's weight is). Reads module types and shapes only, so it works on a meta-device model."""
    for e in plan.entries:
        if e.weights is None and e.activations is None:
            continue
        mod = model.get_submodule(e.name)
        if not is_linear(mod) and not fused_expert_params(mod) and e.activations is not None:
            raise ValueError(
                f"{e.name} ({type(mod).__name__}, kind {e.kind}): activation quantization works on linear layers and "
                f"experts only; set `activations: none` for this rule"
            )
        if mode == "native" and (is_linear(mod) or fused_expert_params(mod)):
            if fused_expert_params(mod):
                p = mod._parameters[fused_expert_params(mod)[0]]
                shape = tuple(p.shape[-2:])
            else:
                w = mod.weight
                shape = (w.shape[1], w.shape[0]) if getattr(mod, "nf", None) is not None else tuple(w.shape)
            native.native_kind(e.name, e.weights, e.activations, device or (mod.weight.device if hasattr(mod, "weight") else _device(model)), shape)


def quantize_model(
    model: nn.Module,
    policy,
    mode: str = "emulate",
    calibration: Iterable | None = None,
    progress: bool | None = None,
    offload_original: bool | None = None,
    emulation: str = "exact",
    calibration_memo: dict | None = None,
) -> Plan:
    """Quantize ``model`` in place under ``policy`` and return the plan.

    Args:
        model: a Hugging Face model (Llama-family, GPT-2, BERT, MoE with fused or
            per-expert linears), on any device.
        policy: a Policy, a built-in name, a YAML path, or a dict.
        mode: ``"emulate"`` (fake-quant, runs anywhere) or ``"native"`` (FP8
            ``_scaled_mm`` on sm_89+ and CPU, NVFP4 on sm_100+, packed weight-only
            formats anywhere); an unsupported rule raises before anything changes.
        calibration: batches (``input_ids`` tensors or dicts of model kwargs)
            run once to record static activation / KV amax; required when a
            rule uses a static scale (``act_scale: static`` with fp8_e4m3,
            fp8_e5m2 or nvfp4 activations, or a kv_cache format).
        progress: show a progress bar (default: when attached to a terminal).
        offload_original: move the original BF16 modules to (pinned) CPU
            memory until :func:`dequantize_model`. Default: yes in native
            mode; in emulate mode on a GPU only when the GPU lacks room for
            the fake-quantized copies beside the originals (then quantize and
            restore move no weight bytes); no for a CPU model, where the
            originals stay registered under their own names.
        emulation: how ``mode="emulate"`` computes a quantized linear:
            ``"exact"`` (default) as the tensor core does: codes x block
            scales as exact operands, FP32 accumulation, per-tensor / per-row
            scales applied to the output (``qeval/quantize/gemm.py``);
            ``"fake_quant"``: a matmul of fake-quantized tensors in the model's
            dtype (the scales folded in and rounded to that dtype).
        calibration_memo: a dict the caller keeps across calls on one model
            and the same calibration batches, weights unchanged in between: a
            later policy whose calibration forward would be the same
            computation reads the amax an earlier one recorded there instead
            of running it again (``qeval/quantize/recorded.py``; same values).

    Raises:
        ValueError: bad mode, a model already quantized, native mode not
            supported for a rule on this device, or static scales without
            calibration. The model is left unchanged.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if emulation not in EMULATIONS:
        raise ValueError(f"emulation must be one of {EMULATIONS}, got {emulation!r}")
    if getattr(model, STATE, None) is not None:
        raise ValueError("model is already quantized; call qeval.dequantize_model(model) first")
    policy = load_policy(policy)
    plan = make_plan(model, policy)
    todo = [e for e in plan.entries if e.weights is not None or e.activations is not None]

    check_quantizable(model, plan, mode)  # everything before changing anything

    undo: list = []
    replaced: list = []
    try:
        for e in tqdm(todo, desc=f"quantize ({policy.name})", disable=not progress if progress is not None else None, leave=False):
            mod = model.get_submodule(e.name)
            parent, attr = _parent(model, e.name)
            if fused_expert_params(mod) and not is_linear(mod):
                new = QuantExperts(mod, e.name, e.weights, e.activations, e.act_scale, emulation)
            elif is_linear(mod):
                new = QuantLinear(mod, e.name, e.weights, e.activations, e.act_scale, emulation)
            else:  # embedding, non-linear router: weights only, swapped in place
                p = mod.weight
                fq = quantizer.fake_quant(e.weights, p.detach(), role="weight")
                mod._parameters["weight"] = nn.Parameter(fq, requires_grad=False)
                undo.append(("swap", mod, "weight", p))
                continue
            device = next(iter(mod.parameters())).device
            _move_hook(mod, new)
            setattr(parent, attr, new)
            undo.append(("module", parent, attr, mod, device))
            replaced.append((new, e.tied_to is None))
        attn = _attention_modules(model, plan)
        undo += kvmod.attach(attn)
        swapped = any(rec[0] == "swap" for rec in undo)
        _calibrate(model, [r for r, _ in replaced], attn, calibration, progress, swapped, calibration_memo)
        offload = offload_original
        if offload is None:
            offload = mode == "native" or not _room_beside(model, replaced)
        for new, own in replaced:
            new.finalize(mode, offload=offload and own)
        moves.settle()
    except BaseException:
        _undo(undo)
        raise
    object.__setattr__(model, STATE, undo)
    return plan


def _room_beside(model: nn.Module, replaced: list) -> bool:
    """Whether the fake-quantized copies fit on the GPUs beside the originals (always for a CPU model)."""
    need: dict = {}
    for new, _ in replaced:
        for p in new.parameters():  # the originals still registered: the copy takes as much
            need[p.device] = need.get(p.device, 0) + p.numel() * p.element_size()
    return moves.room_for(model, need)


def _move_hook(old: nn.Module, new: nn.Module) -> None:
    """Carry an accelerate hook (device_map dispatch, offload) over to the replacement."""
    hook = getattr(old, "_hf_hook", None)
    if hook is not None:
        from accelerate.hooks import add_hook_to_module

        add_hook_to_module(new, hook)


def _attention_modules(model: nn.Module, plan: Plan) -> dict:
    """name -> (attention module, kv format, act_scale) for every layer with a KV rule."""
    out = {}
    for e in plan.entries:
        if e.kv_cache is None:
            continue
        parts = e.name.split(".")
        for i in range(len(parts) - 1, 0, -1):  # nearest ancestor that is an attention block
            name = ".".join(parts[:i])
            mod = model.get_submodule(name)
            # the block that calls the attention interface holds the config
            if _ATTN_RX.search(type(mod).__name__) and getattr(mod, "config", None) is not None:
                out.setdefault(name, (mod, e.kv_cache, e.act_scale))
                break
    return out


def _calibrate(model, replaced, attn, calibration, progress, swapped: bool = False, memo: dict | None = None) -> None:
    weights = [q for r in replaced for q in ((r.q_up, r.q_down) if isinstance(r, QuantExperts) else (r.qweight,))]
    kvs = [m._qeval_kv for m, _, _ in attn.values()]
    need = [q for q in weights if q.static] + [k for k in kvs if k.static]
    if not need:
        return
    if calibration is None:
        names = [getattr(q, "name", "kv_cache") for q in need[:3]]
        raise ValueError(
            f"{len(need)} quantizer(s) use a static scale (e.g. {', '.join(names)}) but no calibration= batches were "
            "given; pass calibration (a few input_ids batches) or set `act_scale: dynamic` in the policy"
        )
    key = recorded.key(model, calibration, replaced, swapped, attn) if memo is not None else None
    known = None if key is None else recorded.recall(memo, key, [q.name for q in need])  # linears only
    if known is not None:  # the same forward ran for an earlier policy (recorded.py)
        for q in need:
            q.act_amax.copy_(known[q.name])
        for q in weights + kvs:
            q.calibrated = True
        return
    device = _device(model)
    for q in weights + kvs:  # everything runs unquantized while amax is recorded
        q.calibrating = True
    try:
        with torch.no_grad():
            for batch in tqdm(calibration, desc="calibrate", disable=not progress if progress is not None else None, leave=False):
                if isinstance(batch, dict):
                    model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
                else:
                    model(input_ids=torch.as_tensor(batch).to(device))
    finally:
        for q in weights + kvs:
            q.calibrating = False
            q.calibrated = True
    if key is not None:
        recorded.record(memo, key, {q.name: q.act_amax for q in need})


def _undo(records: list) -> None:
    for rec in reversed(records):
        if rec[0] == "module":
            _, parent, attr, original, device = rec
            replacement = getattr(parent, attr)
            setattr(parent, attr, original)
            if replacement is not original:
                _release(replacement)  # its quantized copy leaves before the original comes back
            moves.to_device(original, device)
        elif rec[0] == "swap":
            _, mod, pname, p = rec
            mod._parameters[pname] = p
        elif rec[0] == "kv":
            del rec[1]._qeval_kv
        elif rec[0] == "config":
            rec[1]._attn_implementation_internal = rec[2]


def _release(module: nn.Module) -> None:
    """Free a discarded replacement's own tensors now, not whenever the garbage collector runs.

    An accelerate hook (device_map) makes the module part of a reference cycle,
    so without this its fake-quantized copy would outlive the restore: on a full
    GPU the originals coming back would not fit.
    """
    if getattr(module, "_hf_hook", None) is not None:
        from accelerate.hooks import remove_hook_from_module

        remove_hook_from_module(module)
    for m in module.modules():
        m._buffers.clear()  # codes, scales, fake-quantized weights; parameters are the original's


def dequantize_model(model: nn.Module) -> nn.Module:
    """Put every original module and weight back (the same tensors, bit for bit)."""
    records = model.__dict__.pop(STATE, None)
    if records is None:
        raise ValueError("model is not quantized by qeval (nothing to restore)")
    _undo(records)
    moves.settle()
    return model


@contextlib.contextmanager
def quantized(model: nn.Module, policy, mode: str = "emulate", calibration: Iterable | None = None, **kwargs):
    """``with quantized(model, "nvfp4", calibration=batches) as plan: ...`` restores on exit."""
    plan = quantize_model(model, policy, mode=mode, calibration=calibration, **kwargs)
    try:
        yield plan
    finally:
        dequantize_model(model)
