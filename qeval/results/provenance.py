"""Can two runs be compared? What they were measured on: model, text, token count.

``qeval compare`` sets runs side by side; when they differ in what the numbers
were measured on, a KL of 0.05 in one and 0.08 in the other says nothing about
the policies, so the reader is told (a warning line per difference).
"""

from __future__ import annotations

import json

from qeval.results.schema import run_label


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _show(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _model(results) -> object:
    model = _get(results, "recipe", "config", "model")
    if not isinstance(model, dict):
        return model
    return {k: model.get(k) for k in ("id", "package", "subdir", "gguf_file", "dtype", "revision") if model.get(k)}


# what a run measured on: (label, how to read it)
ASPECTS = (
    ("model", _model),
    ("model files", lambda r: _get(r, "baseline", "inputs", "model")),
    ("evaluation text", lambda r: _get(r, "recipe", "config", "eval_data")),
    ("evaluation tokens", lambda r: _get(r, "baseline", "inputs", "eval_tokens")),
    ("token count", lambda r: _get(r, "baseline", "metrics", "perplexity_tokens")),
    ("tasks", lambda r: _get(r, "recipe", "config", "tasks")),
)


def differences(runs: list[dict]) -> list[str]:
    """One line per aspect in which the runs differ (empty: comparable, or a single run)."""
    out = []
    for what, read in ASPECTS:
        values = [(run_label(r), read(r)) for r in runs]
        known = [(label, v) for label, v in values if v is not None]
        if len({_show(v) for _, v in known}) > 1:
            shown = "; ".join(f"{label}: {_show(v)}" for label, v in known)
            out.append(f"runs differ in {what} ({shown}): their numbers are not comparable")
    return out
