"""Which GPU a model needs under a precision policy, and what it costs.

>>> from qeval.deploy.recommend import recommend
>>> r = recommend("glm-5.2", "fp8-block", context=8192, batch=8)
>>> r["recommended"]["gpu"], r["recommended"]["count"]
('h200', 8)

For every GPU of ``configs/gpus.yaml`` the options are: each MIG profile (one
slice; MIG has no NVLink, so never tensor parallelism across slices), 1 GPU,
tensor parallelism over 2/4/8 GPUs of one node, and pipeline parallelism over
the fewest nodes (2 or more) that hold the model. Each option gets the memory
per GPU (weights / GPUs + KV cache + activations + runtime overhead) against
capacity x utilization, whether the policy's formats run natively there, a
first-order speed (decode memory-bound, prefill compute-bound) and a price.
The recommended option is the cheapest that fits with headroom, one node
before several. Numbers and their sources: ``configs/memory.yaml``,
``configs/gpus.yaml``, shared/reference/hardware.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from qeval.deploy.hardware import (
    GIB,
    GPU,
    Catalog,
    MemoryDefaults,
    MigProfile,
    compute_key,
    load_catalog,
    load_memory_defaults,
    native_notes,
)
from qeval.deploy.load import resolve_model
from qeval.deploy.memory import LoadedModel, ParamCount, WeightBytes, count_params, weight_bytes
from qeval.deploy.kv import (
    AttentionLayout,
    activation_bytes,
    attention_layout,
    kv_bytes_per_token,
    kv_cache_bytes,
    overhead_bytes,
)

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
    usable_bytes: int
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
    utilization: float
    defaults: MemoryDefaults
    families: dict[str, set[str]]  # "weights"/"activations"/"kv" -> format families used
    warnings: list[str] = field(default_factory=list)


# --- one option -----------------------------------------------------------
def _option(s: Setup, gpu: GPU, *, tp: int = 1, pp: int = 1, mig: MigProfile | None = None) -> Option:
    d = s.defaults
    n = tp * pp
    capacity = round(mig.memory_gib * GIB) if mig else gpu.memory_bytes
    usable = int(capacity * s.utilization)
    causal = s.loaded.is_causal_lm
    w = math.ceil(s.weights.total / n)
    kv = kv_cache_bytes(s.layout, s.kv_spec, s.context, s.batch, tp, pp) if causal else 0
    tokens = min(d.serving.max_batched_tokens, s.batch * s.context) if causal else s.batch * s.context
    act = activation_bytes(s.loaded.config, d, tokens, s.batch, tp, causal)
    ovh = overhead_bytes(d, n, causal)
    need = w + kv + act + ovh
    headroom = usable - need
    fits = headroom >= 0
    per_seq_kv = kv_cache_bytes(s.layout, s.kv_spec, s.context, 1, tp, pp) if causal else 0
    free_for_kv = usable - w - act - ovh
    max_batch = (max(0, free_for_kv // per_seq_kv) if per_seq_kv else None) if causal else None

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
        decode = s.batch / step * pp_eff
        per_seq = 1 / (step * pp)
        usd_m = price * 1e6 / (decode * 3600)
    else:
        usd_m = price * 1e6 / (prefill * 3600) if prefill else None

    eligible = True
    heads = getattr(s.loaded.text_config, "num_attention_heads", None)
    if tp > 1 and heads and heads % tp:
        eligible = False
        notes.append(f"TP{tp} needs the attention heads ({heads}) divisible by {tp}")
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
        weights_bytes=w,
        kv_cache_bytes=kv,
        activation_bytes=act,
        overhead_bytes=ovh,
        need_bytes=need,
        headroom_bytes=headroom,
        fits=fits,
        fits_with_headroom=fits and headroom >= d.serving.min_headroom_fraction * usable,
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


def enumerate_options(s: Setup, catalog: Catalog) -> list[Option]:
    """Every option of every GPU: MIG slices, 1..gpus_per_node GPUs (TP), then the fewest nodes (PP) that fit."""
    out: list[Option] = []
    for gpu in catalog.gpus.values():
        out += [_option(s, gpu, mig=m) for m in gpu.mig]
        tp = 1
        while tp <= gpu.gpus_per_node:
            out.append(_option(s, gpu, tp=tp))
            tp *= 2
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


# --- the whole answer -------------------------------------------------------
def _families(plan, kv_spec: str | None) -> dict[str, set[str]]:
    from qeval.formats import get_format

    fam = {"weights": set(), "activations": set(), "kv": set()}
    for e in plan.entries:
        if e.weights:
            fam["weights"].add(get_format(e.weights).family)
        if e.activations:
            fam["activations"].add(get_format(e.activations).family)
    if kv_spec:
        fam["kv"].add(get_format(kv_spec).family)
    return fam


def analyze(
    model_or_config,
    policy,
    *,
    context: int | None = None,
    batch: int | None = None,
    kv: str | None = None,
    prices=None,
    utilization: float | None = None,
    gpus: list[str] | None = None,
    trust_remote_code: bool = False,
) -> tuple[Setup, list[Option]]:
    """The shared setup and every option (see :func:`recommend` for the arguments)."""
    from qeval.formats import get_format
    from qeval.policy import load_policy

    policy = load_policy(policy)  # once: the plan and the no-op check below both use it
    defaults = load_memory_defaults()
    loaded, context, batch, gpus = resolve_model(model_or_config, context, batch, gpus, trust_remote_code)
    catalog = load_catalog(prices=prices, gpus=gpus)
    warnings: list[str] = []
    max_pos = getattr(loaded.text_config, "max_position_embeddings", None)
    if context is None and max_pos and max_pos < defaults.serving.context:
        context = max_pos  # the default context, cut to what the model takes (e.g. 512 for MiniLM)
    context = int(context or defaults.serving.context)
    batch = int(batch or defaults.serving.batch)
    util = defaults.serving.utilization if utilization is None else float(utilization)
    if not 0 < util <= 1:
        raise ValueError(f"--utilization must be in (0, 1], got {util}")
    if context < 1 or batch < 1:
        raise ValueError(f"--context and --batch must be >= 1, got {context} and {batch}")
    count = count_params(loaded, defaults)
    wb = weight_bytes(loaded, count, policy, defaults)
    plan = wb.plan
    kv_spec = get_format(kv).spec if kv else plan.kv_cache
    if max_pos and context > max_pos:
        warnings.append(
            f"context {context} is above the model's maximum (config field 'max_position_embeddings' = {max_pos})"
        )
    if not plan.quantized_entries() and _policy_has_rules(policy):
        warnings.append(f"policy {plan.policy!r} quantizes no module of this model: every weight stays BF16")
    setup = Setup(
        loaded,
        count,
        wb,
        attention_layout(loaded.config, loaded.is_causal_lm),
        kv_spec,
        context,
        batch,
        util,
        defaults,
        _families(plan, kv_spec),
        warnings,
    )
    return setup, enumerate_options(setup, catalog)


def _policy_has_rules(p) -> bool:
    """Whether a Policy asks to quantize anything at all (an empty one, like bf16, does not)."""
    return any(
        getattr(r, field, None) not in (None, "none")
        for r in [*p.rules, p.default]
        for field in ("weights", "activations", "kv_cache")
    )


def recommend(
    model_or_config,
    policy,
    *,
    context: int | None = None,
    batch: int | None = None,
    kv: str | None = None,
    prices=None,
    utilization: float | None = None,
    gpus: list[str] | None = None,
    objective: str | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """Recommend a deployment for ``model_or_config`` under ``policy``; a JSON-ready dict.

    Args:
        model_or_config: a config folder / config.json / ``configs/models`` name /
            hub ID / recipe YAML, a transformers config, or a :class:`LoadedModel`.
        policy: a policy name, file, dict or ``Policy`` (``qeval.policy.load_policy``).
        context, batch: tokens per sequence and concurrent sequences
            (default: the recipe's ``hardware:``, else ``configs/memory.yaml``).
        kv: KV-cache format spec; default the policy's ``kv_cache``, else BF16.
        prices: a prices YAML path or dict ``{gpu: usd_per_hour}``.
        utilization: usable share of GPU memory (default 0.9, configs/memory.yaml).
        gpus: restrict to these catalog ids.
        objective: "hour" (cheapest per GPU-hour, default) or "token" (per million output tokens).

    Returns:
        ``model``, ``params_total``, ``params_main``, ``params_mtp``, ``params_active``,
        ``weight_bytes``, ``kv_bytes_per_token``, ``options`` (one dict per option),
        ``recommended`` (one of ``options`` or None), ``why``, ``alternatives``, ``warnings``, ``notes``.
    """
    setup, options = analyze(
        model_or_config,
        policy,
        context=context,
        batch=batch,
        kv=kv,
        prices=prices,
        utilization=utilization,
        gpus=gpus,
        trust_remote_code=trust_remote_code,
    )
    objective = objective or setup.defaults.serving.objective
    if objective not in ("hour", "token"):
        raise ValueError(f"objective must be 'hour' or 'token', got {objective!r}")
    best = pick(options, objective)
    from qeval.deploy.text import explain, summary_dict

    why, alternatives = explain(setup, options, best, objective)
    return summary_dict(setup, options, best, why, alternatives, objective)


__all__ = ["Option", "Setup", "analyze", "enumerate_options", "kv_bytes_per_token", "pick", "recommend"]
