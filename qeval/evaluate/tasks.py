"""Downstream tasks through lm-evaluation-harness, and recovery against the baseline.

The harness runs on the in-memory (quantized) model through ``qeval.tasks.run_lm_eval``;
this module only loops over the recipe's tasks and adds the baseline fields.
"""

from __future__ import annotations

import math


def evaluate_tasks(model, tokenizer, specs, seed: int, progress: bool = False) -> dict[str, dict]:
    """``{task: summary}`` for every task spec (``qeval.tasks.run_lm_eval``'s summaries: the
    primary metric as ``acc``/``stderr``, every score, ``n``, and lm-eval's own block).

    A spec's lm-eval options (few-shot, chat template, sample logging, ...) reach
    ``lm_eval.simple_evaluate`` unchanged; with ``progress`` lm-eval's bars are shown.
    """
    from qeval.tasks import run_lm_eval

    out: dict[str, dict] = {}
    for spec in specs:
        options = spec.lm_eval_options() if hasattr(spec, "lm_eval_options") else {}
        if progress:
            options["quiet"] = False
        res = run_lm_eval(model, tokenizer, [spec.name], limit=spec.limit, batch_size=spec.batch_size, seed=seed,
                          **options)
        if spec.name not in res:
            raise RuntimeError(f"lm-eval returned no result for task {spec.name!r} (got {sorted(res)})")
        out[spec.name] = dict(res[spec.name])
    return out


def recovery(acc: float | None, base_acc: float | None) -> float | None:
    """``acc / base_acc * 100``; None when either is missing or the baseline scored 0."""
    if acc is None or base_acc is None or not math.isfinite(base_acc) or base_acc == 0:
        return None
    return acc / base_acc * 100.0


def with_baseline(tasks: dict[str, dict], baseline: dict[str, dict]) -> dict[str, dict]:
    """Add ``baseline_acc``, ``baseline_stderr`` and ``recovery`` to each task result."""
    out = {}
    for name, res in tasks.items():
        base = baseline.get(name) or {}
        out[name] = {
            **res,
            "baseline_acc": base.get("acc"),
            "baseline_stderr": base.get("stderr"),
            "recovery": recovery(res.get("acc"), base.get("acc")),
        }
    return out
