"""Which GPU a model needs under a precision policy, and what it costs.

>>> from qeval.deploy.recommend import recommend
>>> r = recommend("glm-5.2", "fp8-block", context=8192, batch=8)
>>> r["recommended"]["gpu"], r["recommended"]["count"]
('h200', 8)

For every GPU of ``configs/gpus.yaml`` the options are: each MIG profile (one
slice; MIG has no NVLink, so never tensor parallelism across slices), 1 GPU,
tensor parallelism over 2/4/8 GPUs of one node, and, only when no single node
of that GPU holds the model, pipeline parallelism over the fewest nodes that
do. Each option gets the memory per GPU (weights / GPUs, KV cache, activations,
runtime) split the way the serving engine splits it (``--engine``, see
:func:`qeval.deploy.kv.kv_budget`), whether the policy's formats run natively
there, a first-order speed (decode memory-bound, prefill compute-bound) and a
price. MIG slices are offered only to models within the MIG guidance
(``configs/memory.yaml`` ``mig:``) unless asked for. The recommended option is
the cheapest that fits with headroom, one node before several. Numbers and
their sources: ``configs/memory.yaml``, ``configs/gpus.yaml``,
shared/reference/hardware.md.

Speed: a decode step reads the weights (each GPU its share) and the KV cache
once for the whole batch, so ``decode = batch x per-sequence rate`` for every
option. With pipeline parallelism a token passes the ``pp`` stages one after
another (one stage busy per micro-batch at a time), so the per-sequence rate
is ``1 / (pp x stage step)`` times ``efficiency.pipeline`` per extra node, and
the batch rate is exactly ``batch`` times that: pipelining buys memory, not
speed.
"""

from __future__ import annotations

from qeval.deploy.hardware import MemoryDefaults, load_catalog, load_memory_defaults
from qeval.deploy.kv import attention_layout, kv_bytes_per_token
from qeval.deploy.load import prefetch, resolve_model
from qeval.deploy.memory import count_params, weight_bytes
from qeval.deploy.options import MAX_NODES, Option, Setup, enumerate_options, mig_refusal, pick  # noqa: F401

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


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1, else a one-line ValueError naming ``name`` (0, negatives, 1.5, "x", True)."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok and isinstance(value, str) and value.strip().isdigit():
        value, ok = int(value), True
    if not ok or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def _fraction(engine: str, defaults: MemoryDefaults, utilization) -> float:
    if utilization is None:
        return defaults.engines[engine].fraction
    try:
        util = float(utilization)
    except (TypeError, ValueError):
        util = float("nan")
    if isinstance(utilization, bool) or not 0 < util <= 1:
        raise ValueError(f"--utilization must be a number in (0, 1], got {utilization!r}")
    return util


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
    engine: str | None = None,
    mig: bool = False,
    trust_remote_code: bool = False,
) -> tuple[Setup, list[Option]]:
    """The shared setup and every option (see :func:`recommend` for the arguments)."""
    # the numbers first: a bad one is refused before any model is read
    context = None if context is None else positive_int("--context", context)
    batch = None if batch is None else positive_int("--batch", batch)
    defaults = load_memory_defaults()
    engine = engine or defaults.serving.engine
    if engine not in defaults.engines:
        raise ValueError(f"--engine must be one of {', '.join(defaults.engines)}, got {engine!r}")
    util = _fraction(engine, defaults, utilization)
    prefetch(model_or_config)  # a hub ID that cannot be fetched fails here, in about a second, before torch
    from qeval.formats import get_format
    from qeval.policy import load_policy

    policy = load_policy(policy)  # once: the plan and the no-op check below both use it
    loaded, context, batch, gpus = resolve_model(model_or_config, context, batch, gpus, trust_remote_code)
    catalog = load_catalog(prices=prices, gpus=gpus)
    warnings: list[str] = []
    max_pos = getattr(loaded.text_config, "max_position_embeddings", None)
    if context is None and max_pos and max_pos < defaults.serving.context:
        context = max_pos  # the default context, cut to what the model takes (e.g. 512 for MiniLM)
    context = positive_int("context", defaults.serving.context if context is None else context)
    batch = positive_int("batch", defaults.serving.batch if batch is None else batch)
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
        engine,
        util,
        defaults,
        _families(plan, kv_spec),
        warnings,
        mig,
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
    engine: str | None = None,
    mig: bool = False,
    trust_remote_code: bool = False,
    gpu: str | None = None,
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
        utilization: the engine's memory fraction (vLLM ``gpu_memory_utilization``, TensorRT-LLM
            ``free_gpu_memory_fraction``, SGLang ``mem_fraction_static``; defaults in configs/memory.yaml).
        gpus: restrict to these catalog ids.
        objective: "hour" (cheapest per GPU-hour, default) or "token" (per million output tokens).
        engine: "vllm" (default), "trtllm" or "sglang": whose memory model sizes the KV cache.
        mig: offer MIG slices even to models outside the MIG guidance.
        gpu: one catalog id (a recipe's ``hardware.gpu``), the same as ``gpus=[gpu]``.

    Returns:
        ``model``, ``params_total``, ``params_main``, ``params_mtp``, ``params_active``,
        ``weight_bytes``, ``kv_bytes_per_token``, ``options`` (one dict per option),
        ``recommended`` (one of ``options`` or None), ``why``, ``alternatives``, ``warnings``, ``notes``.
    """
    if gpu and not gpus:
        gpus = [str(gpu).lower()]
    setup, options = analyze(
        model_or_config,
        policy,
        context=context,
        batch=batch,
        kv=kv,
        prices=prices,
        utilization=utilization,
        gpus=gpus,
        engine=engine,
        mig=mig,
        trust_remote_code=trust_remote_code,
    )
    objective = objective or setup.defaults.serving.objective
    if objective not in ("hour", "token"):
        raise ValueError(f"objective must be 'hour' or 'token', got {objective!r}")
    best = pick(options, objective)
    from qeval.deploy.text import explain, summary_dict

    why, alternatives = explain(setup, options, best, objective)
    return summary_dict(setup, options, best, why, alternatives, objective)


__all__ = ["Option", "Setup", "analyze", "enumerate_options", "kv_bytes_per_token", "mig_refusal", "pick", "positive_int", "recommend"]
