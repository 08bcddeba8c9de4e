"""The Python API: ``qeval.evaluate`` (a model in memory) and ``qeval.run`` (a recipe file).

Both give what ``results.json`` holds: a baseline entry and one entry per policy,
with the same keys and, for the same model, data and seed, the same numbers as
``qeval run`` (they call the same passes)::

    import qeval
    res = qeval.evaluate(model, ["fp8-dynamic", "nvfp4"], tokenizer=tok, text=open("eval.txt").read())
    res["policies"][0]["metrics"]["kl_mean"]
    res = qeval.run("recipes/quickstart.yaml")          # writes results/<recipe>/<run-id>/ as the CLI does
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from qeval.pipeline.recipe import Recipe
from qeval.pipeline.runner import Context, RunOptions, run_recipe, seed_everything


def run(recipe: str | Path, **options: Any) -> dict:
    """Run a recipe file as ``qeval run`` does and return its results (``results.json``'s content).

    ``options`` are ``RunOptions`` fields: ``results_dir``, ``policies``, ``resume``,
    ``run_id``, ``limit_tokens``, ``progress``, ``print_table`` (default False here).
    The run directory is ``results[\"recipe\"]`` + ``results[\"run_id\"]`` under ``results_dir``.
    """
    from qeval.results.store import load_results

    options.setdefault("print_table", False)
    if "results_dir" in options:
        options["results_dir"] = Path(options["results_dir"])
    return load_results(run_recipe(recipe, RunOptions(**options)))


def _token_ids(tokenizer, text, max_tokens: int) -> torch.Tensor:
    from qeval.data import load_text, token_stream
    from qeval.data.text import SOURCES

    if isinstance(text, torch.Tensor) or (isinstance(text, (list, tuple)) and text and isinstance(text[0], int)):
        return torch.as_tensor(text).view(-1).long()[:max_tokens]
    if isinstance(text, str) and text not in SOURCES:
        raw = text  # a plain string is the text itself (use a Path or a dict for a file)
    else:
        raw = load_text({"source": "file", "path": str(text)} if isinstance(text, Path) else
                        {"source": text} if isinstance(text, str) else text)
    if tokenizer is None:
        raise ValueError("qeval.evaluate: text needs a tokenizer (pass tokenizer=, or token ids as text=)")
    return torch.as_tensor(token_stream(tokenizer, raw, max_tokens)).view(-1).long()


def _recipe(policies, tasks, mode, max_tokens, window, stride, kl, top1, chunk, gate, hardware, seed,
            has_text: bool, emulation: str = "exact") -> Recipe:
    return Recipe.model_validate({
        "model": {"id": "<in memory>"},
        "eval_data": {"source": "gensim-wiki", "max_tokens": max_tokens} if has_text else None,
        "policies": policies or ["bf16"],
        "mode": mode,
        "emulation": emulation,
        "metrics": {"perplexity": {"window": window, "stride": stride}, "kl": kl, "top1": top1, "chunk": chunk},
        "tasks": [{"name": t} if isinstance(t, str) else t for t in tasks or []],
        "gate": gate,
        "hardware": hardware or {},
        "seed": seed,
    })


def evaluate(
    model, policies, *, tokenizer=None, text=None, baseline=None, tasks=None, calibration=None,
    mode: str = "emulate", max_tokens: int = 4096, window: int = 1024, stride: int | None = None,
    kl: bool = True, top1: bool = True, chunk: int = 256, gate=None, hardware: dict | None = None,
    seed: int = 0, progress: bool = False, emulation: str = "exact",
) -> dict:
    """Evaluate ``model`` under each policy against a baseline; return ``{"baseline", "policies", "gate"}``.

    Args:
        model: an ``nn.Module`` (with ``tokenizer=``), or anything a recipe's ``model:`` takes
            (a local folder or hub ID string, or a dict such as ``{"package": ..., "gguf_file": ...}``).
        policies: policy names, YAML paths, dicts or ``Policy`` objects; each is applied, measured
            and removed again (the model ends as it started). An empty list evaluates ``model``
            as it is against ``baseline`` (an entry named ``"model"``).
        text: evaluation text for perplexity / KL / top-1: the text itself (``str``), a file
            (``Path``), a source name (``"gensim-wiki"``), a text spec dict, or token ids.
        baseline: the reference model (same tokenizer); default: ``model`` before quantization.
        tasks: lm-eval task names or dicts as in a recipe's ``tasks:``.
        calibration: batches of token ids for static scales, or a recipe ``calibration:`` dict.
        gate: thresholds (a recipe's ``gate:``, a configs/gates name or a file); adds verdicts.
        hardware: ``{"context", "batch", "gpu"}`` for the GPU recommendation per policy.
        emulation: ``mode="emulate"``'s arithmetic: ``"exact"`` (the tensor core's: block-scaled
            operands, FP32 accumulation, per-tensor / per-row scales on the output) or ``"fake_quant"``.

    Returns:
        The same entries as ``results.json``: ``baseline`` (metrics, weight bytes, timings)
        and ``policies`` (name, policy, plan summary, metrics vs the baseline, bytes,
        timings, recommendation, and ``gate`` when a gate was given).
    """
    from qeval.evaluate.perplexity import sliding_windows
    from qeval.evaluate.stream import Shard
    from qeval.models import load_model
    from qeval.pipeline import passes
    from qeval.policy import load_policy

    seed_everything(seed)
    if not isinstance(model, torch.nn.Module):
        model, tokenizer = load_model(model)
    policies = list(policies or [])
    recipe = _recipe([p if isinstance(p, (str, dict)) else load_policy(p).model_dump(mode="json") for p in policies],
                     tasks, mode, max_tokens, window, stride, kl, top1, chunk, gate, hardware, seed, text is not None,
                     emulation)
    token_ids, windows = None, []
    if text is not None:
        token_ids = _token_ids(tokenizer, text, max_tokens)
        n = int(token_ids.numel())
        windows = sliding_windows(n, min(window, n), min(stride or window, window, n))
    calibration = _calibration(tokenizer, calibration)
    device = model.get_input_embeddings().weight.device
    reference = model if baseline is None else baseline
    ctx = Context(reference, tokenizer, device, token_ids, windows, calibration, encoder=text is None)
    options = RunOptions(progress=progress, print_table=False)
    shard = Shard()
    with tempfile.TemporaryDirectory(prefix="qeval-evaluate-") as tmp:
        spill = passes.spill_for(Path(tmp), shard, ctx)
        seed_everything(seed)
        base = {**passes.evaluate_baseline(recipe, ctx, spill, shard, options), "name": "baseline"}
        ctx.model = model
        entries = []
        for name, source in zip(recipe.policy_names(), recipe.policies):
            seed_everything(seed)
            if policies:
                entry = passes.evaluate_policy(recipe, ctx, name, source, base, spill, shard, options)
            else:
                entry = passes.evaluate_as_is(recipe, ctx, base, spill, shard, options)
                name = "model"
            entries.append({**entry, "name": name})
    results = {"baseline": base, "policies": entries, "gate": None}
    if gate is not None:
        from qeval.results.gate import apply_gate, resolve_gate

        apply_gate(results, resolve_gate(gate))
    return results


def _calibration(tokenizer, calibration):
    if calibration is None or isinstance(calibration, (list, tuple)):
        return calibration
    from qeval.data import calibration_batches
    from qeval.pipeline.recipe import Calibration

    c = Calibration.model_validate(calibration)
    return calibration_batches(tokenizer, c.text_spec(), c.n_batches, c.seq_len)
