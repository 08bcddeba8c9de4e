"""Evaluate one model state (the baseline, or the model under one policy) into a results entry.

``qeval.pipeline.runner`` calls these in order; each returns the dict that
``RunDir.save_policy`` writes (schema in ``qeval.results.store``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


from qeval.evaluate.baseline_store import StoreSpaceError, choose_store, make_store
from qeval.evaluate.stream import Shard, lm_pass
from qeval.pipeline import peaks
from qeval.pipeline.weights import measured_weight_bytes
from qeval.uncertainty import exp_interval, ratio_estimate

EMPTY_METRICS = {
    "perplexity": None, "perplexity_tokens": None, "kl_mean": None, "kl_p99": None,
    "top1_agreement": None, "tokens": None, "tasks": {},
    "embedding_cosine_mean": None, "embedding_cosine_min": None, "similarity_spearman": None,
    "nonfinite_logits": None,
}  # a text pass adds "ci" (intervals) and "windows" (per-window sums): see qeval.results.schema


def _logits_shape(model) -> tuple[int | None, object]:
    """(vocabulary size of the logits, device they come out on) of a causal LM."""
    try:
        head = model.get_output_embeddings()
        w = head.weight
        return int(w.shape[0]), w.device
    except (AttributeError, NotImplementedError, TypeError):
        return getattr(getattr(model, "config", None), "vocab_size", None), None


def _policy_reserve(model, device, max_rows: int, vocab: int) -> int:
    """Device bytes a policy pass adds beside the store: a quantized copy of the weights there, a window's scratch."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if p.device == device)
    return weights + 4 * max_rows * vocab * 4


def spill_for(run_path: Path, shard: Shard, ctx, inputs: str | None = None, prefer: str = "auto"):
    """This process's baseline store (device memory or a float16 spill file), checked for room first.

    ``inputs``: the hash of the baseline's inputs (``qeval.pipeline.depends.key``), which keys a spill
    file so that a resumed run reuses it only for the same inputs.

    Raises:
        ResultsError: neither place can hold it (one line: where, bytes needed, bytes free).
    """
    from qeval.results.store import ResultsError

    mine = shard.take(ctx.windows)
    key = {
        "inputs": inputs,
        "tokens": None if ctx.token_ids is None else int(ctx.token_ids.numel()),
        "windows": [[w.begin, w.end, w.first_target] for w in mine],
        "rank": shard.rank,
        "world": shard.world,
    }
    path = Path(run_path) / "spill" / f"baseline_logp.rank{shard.rank}.npy"
    rows = sum(w.n_targets for w in mine)
    vocab, device = _logits_shape(ctx.model) if ctx.windows else (None, None)
    if not rows or not vocab:  # nothing to compare (encoders): an empty store
        prefer, vocab = "disk", 1
    max_rows = max((w.n_targets for w in mine), default=0)
    reserve = _policy_reserve(ctx.model, device, max_rows, vocab) if device is not None else 0
    try:
        choice = choose_store(rows, vocab, device=device, spill_path=path, reserve=reserve, prefer=prefer)
    except StoreSpaceError as err:
        raise ResultsError(str(err)) from None
    store = make_store(choice, key)
    store.choice = choice
    return store


def _text_notes(ctx, spill, notes: dict) -> dict:
    """How a text pass ran, for its results entry: where the baseline's log-probs were (``kl_store``) and
    how the forward ran (``forward``); nothing for a model without text windows."""
    if not ctx.windows:
        return {}
    choice = getattr(spill, "choice", None)
    return {"kl_store": None if choice is None else choice.as_dict(), "forward": notes.get("forward")}


def _target_stop(recipe, baseline: bool):
    """The early stop of ``eval_data.target_ci`` (policies only: the baseline scores every window)."""
    targets = recipe.eval_data.target_ci if recipe.eval_data is not None else None
    if baseline or not targets:
        return None
    confidence = recipe.metrics.confidence
    field = {"perplexity": "nll", "kl_mean": "kl_sum", "top1_agreement": "top1"}

    def stop(stats) -> bool:
        counts = [s.n for s in stats]
        for metric, width in targets.items():
            est = ratio_estimate([getattr(s, field[metric]) for s in stats], counts)
            lo, hi = est.interval(confidence)
            if metric == "perplexity":
                lo, hi = exp_interval(lo, hi)
            if not (hi - lo) / 2 <= width:  # NaN (one window) is not narrow enough
                return False
        return True

    return stop


def _lm_metrics(recipe, ctx, spill, shard, options, baseline: bool, desc: str, notes: dict) -> dict:
    out = lm_pass(
        ctx.model, ctx.token_ids, ctx.windows, spill, baseline=baseline, device=ctx.device,
        shard=shard, chunk=recipe.metrics.chunk, desc=desc, progress=options.progress,
        confidence=recipe.metrics.confidence, replicates=recipe.metrics.bootstrap, seed=recipe.seed,
        stop=_target_stop(recipe, baseline), cuda_graph=recipe.metrics.cuda_graph,
    )
    notes["forward"] = out.pop("forward")
    bad = out.get("nonfinite_logits") or 0
    if bad and shard.rank == 0:
        print(f"qeval: warning: {desc}: {bad} of {out.get('perplexity_tokens')} positions have NaN/Inf logits; "
              "its perplexity, KL and top-1 are not numbers and the gate fails it", file=sys.stderr)
    if recipe.eval_data is not None and recipe.eval_data.target_ci:
        out["ci"]["target"] = dict(recipe.eval_data.target_ci)
    drop = []
    if recipe.metrics.perplexity is None:
        out["perplexity"] = out["perplexity_tokens"] = None
        drop += ["perplexity", "nll"]
    if not recipe.metrics.kl:
        drop += ["kl_mean", "kl_p99", "kl_p99_bootstrap", "kl_sum"]
    if not recipe.metrics.top1:
        drop += ["top1_agreement", "top1"]
    for key in drop:
        out["ci"].pop(key, None)
        out["windows"].pop(key, None)
        if key in ("kl_mean", "kl_p99", "top1_agreement"):
            out.pop(key, None)
    return out


def sentences(recipe, ctx) -> list[str]:
    if "sentences" not in ctx.state:
        from qeval.data import load_text

        emb = recipe.embeddings
        lines = [ln.strip() for ln in load_text(emb.sentences).splitlines() if ln.strip()]
        ctx.state["sentences"] = lines[: emb.max_sentences]
    return ctx.state["sentences"]


def _embedding_metrics(recipe, ctx, baseline: bool) -> dict:
    from qeval.evaluate.embeddings import cosine_to_baseline, embed

    emb = recipe.embeddings
    vectors = embed(ctx.model, ctx.tokenizer, sentences(recipe, ctx), emb.max_length, emb.batch_size, ctx.device)
    out = {}
    if baseline:
        ctx.state["baseline_embeddings"] = vectors
    else:
        out.update(cosine_to_baseline(ctx.state["baseline_embeddings"], vectors))
    if emb.similarity:
        from qeval.data import similarity_benchmark

        from qeval.evaluate.embeddings import similarity_spearman

        if "similarity" not in ctx.state:
            ctx.state["similarity"] = similarity_benchmark(emb.similarity, max_pairs=emb.similarity_pairs)
        out["similarity_spearman"] = similarity_spearman(
            ctx.model, ctx.tokenizer, ctx.state["similarity"], emb.max_length, emb.batch_size, ctx.device
        )
    return out


def measure(recipe, ctx, spill, shard, options, baseline: bool, base_metrics: dict | None, desc: str,
            timings: dict | None = None, notes: dict | None = None) -> dict:
    """All the recipe's metrics for the model as it is now; seconds per part go into ``timings``,
    how the text pass's forward ran into ``notes["forward"]``."""
    timings = {} if timings is None else timings
    notes = {} if notes is None else notes
    metrics = dict(EMPTY_METRICS)
    if ctx.windows:
        t = time.perf_counter()
        metrics.update(_lm_metrics(recipe, ctx, spill, shard, options, baseline, desc, notes))
        timings["text_s"] = time.perf_counter() - t
    if recipe.tasks and shard.rank == 0:  # lm-eval runs in one process
        from qeval.evaluate.tasks import evaluate_tasks, with_baseline

        t = time.perf_counter()
        tasks = evaluate_tasks(ctx.model, ctx.tokenizer, recipe.tasks, recipe.seed, progress=options.progress)
        metrics["tasks"] = tasks if baseline else with_baseline(tasks, (base_metrics or {}).get("tasks") or {})
        timings["tasks_s"] = time.perf_counter() - t
    if recipe.embeddings is not None:
        t = time.perf_counter()
        metrics.update(_embedding_metrics(recipe, ctx, baseline))
        timings["embeddings_s"] = time.perf_counter() - t
    return metrics


def _reference_plan(model):
    from qeval.policy import load_policy, plan

    return plan(model, load_policy({"name": "baseline"}))


def evaluate_baseline(recipe, ctx, spill, shard, options) -> dict:
    ref = _reference_plan(ctx.model)
    devices = peaks.reset(ctx.model)
    t0 = time.perf_counter()
    parts: dict = {}
    notes: dict = {}
    metrics = measure(recipe, ctx, spill, shard, options, True, None, "baseline", parts, notes)
    entry = {
        "metrics": metrics,
        "weight_bytes": ref.bytes_before,
        "weight_bytes_measured": measured_weight_bytes(ctx.model, ref),
        "timings": {"eval_s": time.perf_counter() - t0, **parts},
        "memory": peaks.read(devices),
    }
    entry.update(_text_notes(ctx, spill, notes))
    return entry


def evaluate_as_is(recipe, ctx, baseline_entry, spill, shard, options) -> dict:
    """The model as it is (quantized by another tool) against the baseline; bytes as held."""
    ref = _reference_plan(ctx.model)
    devices = peaks.reset(ctx.model)
    t0 = time.perf_counter()
    parts: dict = {}
    notes: dict = {}
    metrics = measure(recipe, ctx, spill, shard, options, False, baseline_entry.get("metrics"), "model", parts, notes)
    measured = measured_weight_bytes(ctx.model, ref)
    base_bytes = baseline_entry.get("weight_bytes")
    entry = {
        "metrics": metrics,
        "weight_bytes": measured,
        "weight_bytes_measured": measured,
        "savings_vs_bf16": 1.0 - measured / base_bytes if base_bytes else None,
        "timings": {"eval_s": time.perf_counter() - t0, **parts},
        "memory": peaks.read(devices),
    }
    entry.update(_text_notes(ctx, spill, notes))
    return entry


def ensure_baseline_state(recipe, ctx, spill, shard, options) -> None:
    """On resume: rebuild what policies compare against (spill, embeddings) if it is gone."""
    if ctx.windows and (recipe.metrics.kl or recipe.metrics.top1) and not spill.complete():
        lm_pass(ctx.model, ctx.token_ids, ctx.windows, spill, baseline=True, device=ctx.device, shard=shard,
                chunk=recipe.metrics.chunk, desc="baseline (for KL)", progress=options.progress,
                cuda_graph=recipe.metrics.cuda_graph)
    if recipe.embeddings is not None and "baseline_embeddings" not in ctx.state:
        from qeval.evaluate.embeddings import embed

        emb = recipe.embeddings
        ctx.state["baseline_embeddings"] = embed(
            ctx.model, ctx.tokenizer, sentences(recipe, ctx), emb.max_length, emb.batch_size, ctx.device
        )


def _recommendation(recipe, model, policy) -> tuple[dict | None, str | None]:
    try:
        from qeval.deploy.recommend import recommend
    except ImportError:
        return None, "qeval.deploy.recommend is not available"
    hw = recipe.hardware
    try:
        kwargs = {"context": hw.context, "batch": hw.batch}
        if hw.gpu:
            kwargs["gpu"] = hw.gpu
        return recommend(model.config, policy, **kwargs), None
    except Exception as err:  # noqa: BLE001 - a recommendation must never lose a measured policy
        return None, f"recommendation failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"


def mx_scale_rule(plan) -> str | None:
    """Which power-of-two scale rule the plan's MX formats use: "rceil" (NVIDIA's Blackwell kernels, Model
    Optimizer), "floor" (the OCP spec), "floor+rceil" when mixed; None without MX."""
    from qeval.formats import get_format

    rules = {get_format(s).rounding for e in plan.entries for s in (e.weights, e.activations)
             if s and get_format(s).family in ("mxfp8", "mxfp4")}
    return "+".join(sorted(rules)) or None


def evaluate_policy(recipe, ctx, name, source, baseline_entry, spill, shard, options) -> dict:
    """Quantize with one policy, measure against the baseline, restore the original modules."""
    from qeval.policy import load_policy, plan
    from qeval.quantize import quantized

    emulation = recipe.emulation
    if isinstance(source, dict) and "checkpoint" in source:  # stored packed weights (qeval.export)
        from qeval.export import read_checkpoint
        from qeval.export.load import applied_checkpoint, checkpoint_policy

        ckpt = read_checkpoint(source["checkpoint"])
        policy = checkpoint_policy(ctx.model, ckpt, name)
        applied = applied_checkpoint(ctx.model, ckpt, mode=recipe.mode)
        emulation = "fake_quant"  # stored weights run dequantized to the model's dtype
    else:
        policy = load_policy(source)
        applied = quantized(ctx.model, policy, mode=recipe.mode, calibration=ctx.calibration, progress=False,
                            emulation=recipe.emulation,  # one calibration forward where policies share it
                            calibration_memo=ctx.state.setdefault("calibration_memo", {}))
    p = plan(ctx.model, policy)
    devices = peaks.reset(ctx.model)
    t0 = time.perf_counter()
    with applied as qplan:
        quantize_s = time.perf_counter() - t0
        p = qplan if qplan is not None and hasattr(qplan, "bytes_after") else p
        t1 = time.perf_counter()
        measured = measured_weight_bytes(ctx.model, p)
        measure_bytes_s = time.perf_counter() - t1
        t1 = time.perf_counter()
        parts: dict = {}
        notes: dict = {}
        metrics = measure(recipe, ctx, spill, shard, options, False, baseline_entry.get("metrics"), name, parts,
                          notes)
        eval_s = time.perf_counter() - t1
        t2 = time.perf_counter()
    dequantize_s = time.perf_counter() - t2  # restoring the original modules (the context's exit)
    memory = peaks.read(devices)
    rec, note = _recommendation(recipe, ctx.model, policy)
    entry = {
        "policy": policy.model_dump(mode="json"),
        "mode": recipe.mode,
        "emulation": emulation if recipe.mode == "emulate" else None,
        "mx_scale_rule": mx_scale_rule(p),
        "plan_summary": p.summary(),
        "metrics": metrics,
        "weight_bytes": p.bytes_after,
        "weight_bytes_measured": measured,
        "savings_vs_bf16": 1.0 - p.bytes_after / p.bytes_before if p.bytes_before else 0.0,
        "timings": {"quantize_s": quantize_s, "eval_s": eval_s, **parts, "measure_bytes_s": measure_bytes_s,
                    "dequantize_s": dequantize_s},
        "recommendation": rec,
        "memory": memory,
    }
    entry.update(_text_notes(ctx, spill, notes))
    if note:
        entry["recommendation_note"] = note
    return entry
