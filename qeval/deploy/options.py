"""One deployment option: its memory per GPU under the serving engine, its speed and price
(part of :mod:`qeval.deploy.recommend`, whose docstring describes the model)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from qeval.deploy.hardware import GIB, GPU, Catalog, MemoryDefaults, MigProfile, compute_key, native_notes
from qeval.deploy.kv import (
    AttentionLayout,
    activation_bytes,
    graph_bytes,
    kv_budget,
    kv_cache_bytes,
    non_torch_bytes,
)
from qeval.deploy.memory import LoadedModel, ParamCount, WeightBytes

MAX_NODES = 16


@dataclass
class Option:
    """One way to deploy the model; byte figures are per GPU (or per MIG slice)."""

    gpu: str
    gpu_name: str
    count: int  # GPUs (1 for a MIG slice)
    mig_profile: str | None
    nodes: int
    tp: int
    pp: int
    capacity_bytes: int
    usable_bytes: int  # what the engine lets this deployment use: weights + activations + runtime + KV room
    kv_budget_bytes: int  # the engine's KV-cache room (vLLM: utilization x total - weights - activations - non-torch)
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int
    need_bytes: int
    headroom_bytes: int
    fits: bool
    fits_with_headroom: bool
    max_batch: int | None  # sequences of `context` tokens that fit (None: encoders)
    native: bool
    compute_precision: str
    decode_tokens_per_s: float | None
    decode_tokens_per_s_per_sequence: float | None
    prefill_tokens_per_s: float
    usd_per_hour: float
    usd_per_million_tokens: float | None
    eligible: bool = True  # False: a layout servers refuse (e.g. heads not divisible by TP)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.mig_profile:
            return f"MIG {self.mig_profile}"
        if self.nodes > 1:
            return f"{self.nodes} nodes x {self.count // self.nodes} (TP{self.tp} PP{self.pp})"
        return f"{self.count} GPU" if self.count == 1 else f"{self.count} GPUs (TP{self.tp})"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label"] = self.label
        d["headroom_fraction"] = self.headroom_bytes / self.usable_bytes if self.usable_bytes else 0.0
        return d


@dataclass
class Setup:
    """Everything the options share: the model, its bytes under the policy, the serving point."""

    loaded: LoadedModel
    count: ParamCount
    weights: WeightBytes
    layout: AttentionLayout
    kv_spec: str | None
    context: int
    batch: int
    engine: str
    utilization: float  # the engine's memory fraction (vLLM gpu_memory_utilization, ...)
    defaults: MemoryDefaults
    families: dict[str, set[str]]  # "weights"/"activations"/"kv" -> format families used
    warnings: list[str] = field(default_factory=list)
    mig: bool = False  # offer MIG slices even outside the guidance (--mig)


# --- one option -----------------------------------------------------------
def _option(s: Setup, gpu: GPU, *, tp: int = 1, pp: int = 1, mig: MigProfile | None = None) -> Option:
    d = s.defaults
    n = tp * pp
    capacity = round(mig.memory_gib * GIB) if mig else gpu.memory_bytes
    causal = s.loaded.is_causal_lm
    w = math.ceil(s.weights.total / n)
    kv = kv_cache_bytes(s.layout, s.kv_spec, s.context, s.batch, tp, pp) if causal else 0
    tokens = min(d.serving.max_batched_tokens, s.batch * s.context) if causal else s.batch * s.context
    act = activation_bytes(s.loaded.config, d, tokens, s.batch, tp, causal)
    non_torch, graphs = non_torch_bytes(d, n), graph_bytes(d, causal)
    ovh = non_torch + graphs
    room = kv_budget(d.engines[s.engine], capacity, w, act, non_torch, graphs, s.utilization)
    usable = w + act + ovh + room  # what the engine lets this deployment use (never more than the card)
    need = w + kv + act + ovh
    headroom = room - kv  # = usable - need
    fits = headroom >= 0
    per_seq_kv = kv_cache_bytes(s.layout, s.kv_spec, s.context, 1, tp, pp) if causal else 0
    max_batch = (max(0, room // per_seq_kv) if per_seq_kv else None) if causal else None

    native, notes = native_notes(gpu, s.families)
    bw_share = mig.bandwidth_share if mig else 1.0
    flop_share = mig.compute_share if mig else 1.0
    eff = d.efficiency
    tp_eff = eff.tensor_parallel.get(tp, min(eff.tensor_parallel.values()))
    pp_eff = eff.pipeline ** (pp - 1)

    # prefill: 2 FLOPs per active parameter per token, each GEMM group at the precision it runs at here
    sec_per_token = 0.0
    keys: dict[str, int] = {}
    for (wf, af), params in s.weights.compute_groups.items():
        key = compute_key(gpu, wf, af)
        keys[key] = keys.get(key, 0) + params
        sec_per_token += 2 * params / (gpu.tflops[key] * 1e12 * eff.prefill_compute * flop_share)
    # the stages of a pipeline prefill different chunks at once, so all n GPUs add up (less the bubbles)
    prefill = n * tp_eff * pp_eff / sec_per_token if sec_per_token else 0.0
    compute_precision = "/".join(sorted(keys, key=lambda k: -keys[k])) or "bf16"  # most FLOPs first

    price = gpu.price_per_hour * (mig.price_share if mig else n)
    decode = per_seq = None
    if causal:
        # a decode step reads every dense weight once for the whole batch, and each
        # routed expert that at least one of the batch's tokens picked
        frac = s.count.active_fraction_experts
        touched = 1 - (1 - frac) ** s.batch if s.count.experts else 1.0
        w_read = (s.weights.dense_read + s.weights.expert_bytes * touched) / n
        step = (w_read + kv) / (gpu.bandwidth_tbs * 1e12 * bw_share * eff.decode_bandwidth * tp_eff)
        per_seq = pp_eff / (pp * step)  # a token passes the pp stages one after another
        decode = s.batch * per_seq  # the batch's micro-batches take turns on the stages: no extra speed
        usd_m = price * 1e6 / (decode * 3600)
    else:
        usd_m = price * 1e6 / (prefill * 3600) if prefill else None

    eligible = True
    heads = getattr(s.loaded.text_config, "num_attention_heads", None)
    if tp > 1 and heads and heads % tp:
        eligible = False
        notes.append(f"TP{tp} needs the attention heads ({heads}) divisible by {tp}")
    if mig and not s.mig:
        why_not = mig_refusal(s, per_seq)
        if why_not:
            eligible = False
            notes.append(why_not)
    return Option(
        gpu=gpu.id,
        gpu_name=gpu.name,
        count=n,
        mig_profile=mig.name if mig else None,
        nodes=pp,
        tp=tp,
        pp=pp,
        capacity_bytes=capacity,
        usable_bytes=usable,
        kv_budget_bytes=room,
        weights_bytes=w,
        kv_cache_bytes=kv,
        activation_bytes=act,
        overhead_bytes=ovh,
        need_bytes=need,
        headroom_bytes=headroom,
        fits=fits,
        fits_with_headroom=fits and headroom >= d.serving.kv_headroom * kv,
        max_batch=max_batch,
        native=native,
        compute_precision=compute_precision,
        decode_tokens_per_s=decode,
        decode_tokens_per_s_per_sequence=per_seq,
        prefill_tokens_per_s=prefill,
        usd_per_hour=price,
        usd_per_million_tokens=usd_m,
        eligible=eligible,
        notes=notes,
    )


def mig_refusal(s: Setup, per_seq: float | None) -> str | None:
    """Why a MIG slice is not a sensible serving target for this model (None: it is).

    NIM's guidance is MIG for models of about 8B parameters and below, and the GPU brief says
    Mixtral-scale models need a full GPU (``mig.max_params``); a slice must also decode each
    sequence at least ``mig.min_decode_tokens_per_s`` at the asked batch (compute share vs need).
    """
    g = s.defaults.mig
    if s.count.params_total > g.max_params:
        return (
            f"MIG not offered: {s.count.params_total / 1e9:,.1f}B parameters is above the ~{g.max_params / 1e9:.0f}B "
            "MIG guidance (NVIDIA NIM; Mixtral-scale models need a full GPU); --mig offers slices anyway"
        )
    if per_seq is not None and per_seq < g.min_decode_tokens_per_s:
        return (
            f"MIG not offered: a slice decodes {per_seq:,.1f} tokens/s per sequence at batch {s.batch}, under the "
            f"{g.min_decode_tokens_per_s:g} the guidance asks; --mig offers it anyway"
        )
    return None


def enumerate_options(s: Setup, catalog: Catalog) -> list[Option]:
    """Every option of every GPU: MIG slices, 1..gpus_per_node GPUs (TP), then, only if no single
    node holds the model, the fewest nodes (PP) that do."""
    out: list[Option] = []
    for gpu in catalog.gpus.values():
        out += [_option(s, gpu, mig=m) for m in gpu.mig]
        tp, one_node = 1, []
        while tp <= gpu.gpus_per_node:
            one_node.append(_option(s, gpu, tp=tp))
            tp *= 2
        out += one_node
        if any(o.fits_with_headroom and o.eligible for o in one_node):
            continue  # multi-node only when the model cannot fit one node (the GPU brief)
        for nodes in range(2, MAX_NODES + 1):
            opt = _option(s, gpu, tp=gpu.gpus_per_node, pp=nodes)
            if opt.fits_with_headroom or nodes == MAX_NODES:
                out.append(opt)
                break
    return out


def pick(options: list[Option], objective: str = "hour") -> Option | None:
    """Cheapest option that fits with headroom; one node always before several."""
    ok = [o for o in options if o.fits_with_headroom and o.eligible]
    if not ok:
        return None

    def cost(o: Option) -> float:
        if objective == "token" and o.usd_per_million_tokens is not None:
            return o.usd_per_million_tokens
        return o.usd_per_hour

    # on a price tie the whole GPU beats its 7g MIG slice (same cost, no MIG mode to manage)
    return min(
        ok,
        key=lambda o: (
            o.nodes > 1,
            cost(o),
            o.count,
            o.mig_profile is not None,
            -(o.decode_tokens_per_s or o.prefill_tokens_per_s),
        ),
    )




def weight_room(s: Setup, o: Option) -> int:
    """Per-GPU weight bytes with which option ``o`` still fits with headroom under the serving engine
    (its KV cache, activations and runtime as ``o`` has them): the budget ``qeval search --fit`` uses."""
    d = s.defaults
    engine = d.engines[s.engine]
    non_torch = non_torch_bytes(d, o.count)
    graphs = o.overhead_bytes - non_torch
    need = o.kv_cache_bytes + math.ceil(d.serving.kv_headroom * o.kv_cache_bytes)

    def room(w: int) -> int:
        return kv_budget(engine, o.capacity_bytes, w, o.activation_bytes, non_torch, graphs, s.utilization)

    if room(0) < need:
        return 0
    lo, hi = 0, o.capacity_bytes  # the KV room shrinks as the weights grow: bisect for the largest that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if room(mid) >= need else (lo, mid - 1)
    return lo
