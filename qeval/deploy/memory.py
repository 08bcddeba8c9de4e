"""Exact parameter and weight-byte accounting from a model's config alone (no weights).

>>> from qeval.deploy.memory import load_model, count_params
>>> m = load_model("deepseek-r1")            # configs/models/deepseek-r1/config.json
>>> c = count_params(m)
>>> c.params_main, c.params_mtp, c.params_active
(671026419200, 13463426304, 37552297472)

The model is built by transformers on the meta device (no memory, no data), so
every architecture transformers knows is counted exactly: tied embeddings once,
every MoE expert, persistent buffers such as ``e_score_correction_bias`` (the
published totals include them). Multi-token-prediction (MTP) layers that the
config declares but transformers does not build are counted from the config
(``configs/memory.yaml``, ``mtp``) and reported separately.

KV cache, activations and runtime overhead are in :mod:`qeval.deploy.kv`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from qeval.deploy.hardware import MemoryDefaults, load_memory_defaults
from qeval.deploy.load import (  # noqa: F401  (re-exported: the public API of qeval.deploy.memory)
    MODELS_DIR,
    LoadedModel,
    ModelConfigError,
    describe_quantization,
    known_models,
    load_config,
    load_model,
)


@dataclass
class ParamCount:
    """Parameter totals of a model (all integers, exact).

    ``params_main`` = parameters + persistent buffers of the model transformers
    builds; ``params_mtp`` = MTP layers counted from the config (0 if none);
    ``params_total`` = both (what a checkpoint ships and a server holds).
    ``params_active`` = params used per token: every dense part plus top-k of
    the routed experts (main model only, as published).
    """

    params: int
    buffers: int
    params_mtp: int
    params_active: int
    embedding_params: int
    experts: int | None = None
    top_k: int | None = None
    moe_layers: int = 0
    expert_params: int = 0  # all routed-expert params (all layers)
    mtp_layers: int = 0
    mtp_template_layer: int | None = None
    mtp_embedding_copies: bool = False
    mtp_layer_buffers: int = 0  # persistent buffers of one MTP layer (e.g. the router bias)
    notes: list[str] = field(default_factory=list)

    @property
    def params_main(self) -> int:
        return self.params + self.buffers

    @property
    def params_total(self) -> int:
        return self.params_main + self.params_mtp

    @property
    def active_fraction_experts(self) -> float:
        return (self.top_k / self.experts) if self.experts and self.top_k else 1.0


# --- counting --------------------------------------------------------------
def persistent_buffers(model) -> list[tuple[str, Any]]:
    """(name, tensor) of buffers that a checkpoint stores (not rotary caches or masks)."""
    out = []
    for mname, mod in model.named_modules():
        for bname, buf in mod._buffers.items():
            if buf is not None and bname not in mod._non_persistent_buffers_set:
                out.append((f"{mname}.{bname}" if mname else bname, buf))
    return out


def _first_key(config, keys: list[str]):
    for k in keys:
        v = getattr(config, k, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def decoder_layers(model):
    """The ModuleList of repeated blocks (largest one named layers/h/layer/blocks), or None."""
    from torch import nn

    best = None
    for name, mod in model.named_modules():
        if (
            isinstance(mod, nn.ModuleList)
            and name.rsplit(".", 1)[-1] in ("layers", "h", "layer", "blocks")
            and len(mod)
        ):
            if best is None or len(mod) > len(best):
                best = mod
    return best


def _module_params(mod) -> int:
    n = sum(math.prod(p.shape) for p in mod.parameters())
    return n + sum(math.prod(b.shape) for _, b in persistent_buffers(mod))


def expert_groups(model, n_experts: int | None) -> list[tuple[str, int, int]]:
    """(module name, experts, routed-expert params) per MoE block.

    Fused experts (transformers 5: 3-D ``[E, N, K]`` parameters) and
    ``experts`` ModuleLists are both found; shared experts are separate modules
    and stay dense.
    """
    from torch import nn

    groups = []
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "experts" and isinstance(mod, nn.ModuleList):
            groups.append((name, len(mod), sum(math.prod(p.shape) for p in mod.parameters())))
            continue
        fused = [p for p in mod._parameters.values() if p is not None and p.dim() == 3]
        if fused and (n_experts is None or fused[0].shape[0] == n_experts):
            n = sum(math.prod(p.shape) for p in mod.parameters(recurse=False))
            groups.append((name, int(fused[0].shape[0]), n))
    return groups


def count_params(loaded: LoadedModel, defaults: MemoryDefaults | None = None) -> ParamCount:
    """Exact totals (see :class:`ParamCount`) of a meta-built model."""
    defaults = defaults or load_memory_defaults()
    model, cfg = loaded.model, loaded.text_config
    params = sum(math.prod(p.shape) for p in model.parameters())  # parameters() yields tied ones once
    buffers = sum(math.prod(b.shape) for _, b in persistent_buffers(model))
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    embedding_params = math.prod(emb.weight.shape) if emb is not None else 0

    keys = defaults.moe_config_keys
    n_exp, top_k = _first_key(cfg, keys.experts), _first_key(cfg, keys.top_k)
    groups = expert_groups(model, n_exp) if n_exp else []
    routed = sum(g[2] for g in groups)
    inactive = sum(g[2] * (1 - top_k / g[1]) for g in groups) if top_k else 0
    count = ParamCount(
        params=params,
        buffers=buffers,
        params_mtp=0,
        params_active=params + buffers - round(inactive),
        embedding_params=embedding_params,
        experts=n_exp if groups else None,
        top_k=top_k if groups else None,
        moe_layers=len(groups),
        expert_params=routed,
    )
    if groups and not top_k:
        count.notes.append("MoE without a top-k in the config: active params = total")
    _add_mtp(count, loaded, defaults)
    return count


def _add_mtp(count: ParamCount, loaded: LoadedModel, defaults: MemoryDefaults) -> None:
    cfg = loaded.text_config
    n = getattr(cfg, "num_nextn_predict_layers", 0) or 0
    layers = decoder_layers(loaded.model)
    if not n or layers is None or not defaults.mtp.include:
        return
    sizes = [_module_params(layer) for layer in layers]
    biggest = max(sizes)
    candidates = [i for i, s in enumerate(sizes) if s == biggest]
    template = candidates[len(candidates) // 2]  # a middle block: policies often treat first/last blocks apart
    h, v = cfg.hidden_size, cfg.vocab_size
    copies = defaults.mtp.embedding_copies.get(cfg.model_type, defaults.mtp.default_embedding_copies)
    per_layer = biggest + 3 * h + 2 * h * h + (2 * v * h if copies else 0)
    count.params_mtp = n * per_layer
    count.mtp_layers = n
    count.mtp_template_layer = template
    count.mtp_embedding_copies = copies
    count.mtp_layer_buffers = sum(math.prod(b.shape) for _, b in persistent_buffers(layers[template]))
    known = cfg.model_type in defaults.mtp.embedding_copies
    count.notes.append(
        f"{n} multi-token-prediction layer(s) ({count.params_mtp:,} params) counted from num_nextn_predict_layers: "
        "transformers does not build them"
        + ("" if known else f" (layout assumed for model_type {cfg.model_type!r}: an estimate)")
    )


# --- weight bytes under a policy -------------------------------------------
@dataclass
class WeightBytes:
    """Weight bytes of a model under a policy (all GPUs together).

    ``total`` = main + mtp + buffers; ``active_read`` = bytes a decode step reads
    for ONE token (top-k experts, no input-embedding table: only one row of it
    is read); ``expert_bytes`` = routed-expert bytes (for batch-dependent reads).
    ``compute_groups``: (weight family, activation family) -> active params,
    for the prefill FLOPs at each precision.
    """

    main: int
    mtp: int
    buffers: int
    bf16_total: int
    active_read: int
    expert_bytes: int
    dense_read: int
    compute_groups: dict[tuple[str | None, str | None], int]
    plan: Any = None

    @property
    def total(self) -> int:
        return self.main + self.mtp + self.buffers


def weight_bytes(loaded: LoadedModel, count: ParamCount, policy, defaults: MemoryDefaults | None = None) -> WeightBytes:
    """Apply ``policy`` (a :func:`qeval.policy.load_policy` source) through ``qeval.policy.plan``."""
    from qeval.formats import get_format
    from qeval.policy import plan as make_plan

    defaults = defaults or load_memory_defaults()
    p = make_plan(loaded.model, policy)
    experts = [e for e in p.entries if e.kind == "experts"]
    expert_bytes = sum(e.bytes_after for e in experts) if count.experts else 0
    emb = [e for e in p.entries if e.kind == "embedding"]
    emb_bytes = sum(e.bytes_after for e in emb)
    frac = count.active_fraction_experts
    dense_read = p.bytes_after - expert_bytes - (emb_bytes if count.embedding_params else 0)
    # a tied lm_head without its own quantized copy reads the whole embedding table for the logits
    tied_head = [e for e in p.entries if e.kind == "lm_head" and e.tied_to and e.bytes_after == 0]
    if tied_head:
        dense_read += emb_bytes
    active_read = dense_read + round(expert_bytes * frac)

    groups: dict[tuple[str | None, str | None], int] = {}
    for e in p.entries:
        if e.kind == "embedding":
            continue
        params = count.embedding_params if (e.kind == "lm_head" and e.tied_to) else e.params  # tied: same GEMM
        active = params * (frac if (e.kind == "experts" and count.experts) else 1)
        wf = get_format(e.weights).family if e.weights else None
        af = get_format(e.activations).family if e.activations else None
        groups[(wf, af)] = groups.get((wf, af), 0) + round(active)

    mtp = 0
    if count.params_mtp:
        t = count.mtp_template_layer
        h = loaded.text_config.hidden_size
        per = sum(e.bytes_after for e in p.entries if e.layer == t)  # the same block under the policy
        per += 2 * (3 * h + 2 * h * h)  # enorm, hnorm, shared_head.norm, eh_proj: kept BF16
        per += count.mtp_layer_buffers * defaults.buffers_dtype_bytes
        if count.mtp_embedding_copies:
            per += emb_bytes + sum(e.bytes_after for e in p.entries if e.kind == "lm_head")
        mtp = count.mtp_layers * per
    return WeightBytes(
        main=p.bytes_after,
        mtp=mtp,
        buffers=count.buffers * defaults.buffers_dtype_bytes,
        bf16_total=2 * count.params_total,
        active_read=active_read,
        expert_bytes=expert_bytes,
        dense_read=dense_read,
        compute_groups=groups,
        plan=p,
    )
