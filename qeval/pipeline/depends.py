"""What a finished result depends on, so that ``--resume`` reuses it only when nothing changed.

Each saved entry carries ``inputs``: a short hash per input. On resume the
runner recomputes them from what it has just loaded and reuses an entry only
when they are equal; otherwise the entry is recomputed (and the user is told
which input changed). Never mixed: a baseline from one text and a policy from
another cannot end up side by side.

- baseline: qeval / torch / transformers versions, the model (its spec and the
  fingerprint of its files: names, sizes, mtimes, header hashes), the evaluation
  tokens themselves (text, tokenizer and ``max_tokens`` in one), the windows, the
  metric settings, tasks, embedding sentences, the seed;
- a policy: all of the baseline's, plus the policy's contents (not its name),
  the mode, the calibration tokens and the hardware target.

A fixed inline policy therefore keeps the finished baseline and every other
policy; a changed text or model recomputes everything.
"""

from __future__ import annotations

import hashlib
import json


def _h(obj) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _tensors_h(tensors) -> str | None:
    if tensors is None:
        return None
    sha = hashlib.sha256()
    for t in tensors:
        t = t if not isinstance(t, dict) else t.get("input_ids")
        sha.update(str(tuple(t.shape)).encode())
        sha.update(t.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()[:16]


def _versions() -> dict:
    import torch
    import transformers

    from qeval import __version__

    return {"qeval": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def model_inputs(spec) -> str:
    """The model's spec and the fingerprint of its files."""
    from qeval.models import resolve
    from qeval.models.files import fingerprint

    src = resolve(spec)
    return _h([spec.model_dump(mode="json"), src.hub_id, fingerprint(src.path, src.gguf_file)])


def baseline_inputs(recipe, ctx, sentences: list[str] | None = None) -> dict:
    """The inputs of the baseline entry (and of its spill)."""
    ids = ctx.token_ids
    return {
        **_versions(),
        "model": model_inputs(recipe.model),
        "eval_tokens": None if ids is None else _tensors_h([ids]),
        "windows": _h([[w.begin, w.end, w.first_target, w.stop_target] for w in ctx.windows]),
        "metrics": _h(recipe.metrics.model_dump(mode="json")),
        "tasks": _h([t.model_dump(mode="json") for t in recipe.tasks]),
        "embeddings": _h([None if recipe.embeddings is None else recipe.embeddings.model_dump(mode="json"), sentences]),
        "seed": recipe.seed,
    }


def policy_inputs(base: dict, policy_dump: dict, recipe, ctx) -> dict:
    """The inputs of one policy's entry: the baseline's and what the policy adds."""
    return {
        **base,
        "policy": _h(policy_dump),
        "mode": recipe.mode,
        "calibration": _tensors_h(ctx.calibration),
        "hardware": _h(recipe.hardware.model_dump(mode="json")),
    }


def key(inputs: dict) -> str:
    """One hash of all inputs (keys the baseline spill)."""
    return _h(inputs)


def changed(stored, expected: dict) -> list[str]:
    """The inputs that differ (empty: the entry can be reused)."""
    if not isinstance(stored, dict):
        return ["inputs not recorded (saved by an older qeval)"]
    return [k for k in expected if stored.get(k) != expected[k]] + [k for k in stored if k not in expected]
