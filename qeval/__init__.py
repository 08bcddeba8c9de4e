"""qeval: quantization quality evaluation.

Data flows one way: recipe -> model + policy -> quantized model -> metrics ->
results -> report / gate. Heavy modules are imported lazily so that
``import qeval`` and ``qeval --help`` stay fast.
"""

from __future__ import annotations

import importlib
import types

__version__ = "0.1.0"

# public name -> "module:attribute"; imported on first access
_LAZY = {
    "get_format": "qeval.formats:get_format",
    "load_policy": "qeval.policy:load_policy",
    "plan": "qeval.policy:plan",
    "quantize_model": "qeval.quantize:quantize_model",
    "dequantize_model": "qeval.quantize:dequantize_model",
    "quantized": "qeval.quantize:quantized",
    "run": "qeval.pipeline.api:run",
    "load_results": "qeval.results.store:load_results",
}

__all__ = sorted(_LAZY) + ["__version__", "evaluate"]


class _EvaluatePackage(types.ModuleType):
    """``qeval.evaluate`` names the metrics package (``qeval.evaluate.perplexity``, ...) and is
    also the API call ``qeval.evaluate(model, policies, ...)``: one name, as users expect it,
    whichever of the two was imported first."""

    def __call__(self, *args, **kwargs):
        from qeval.pipeline.api import evaluate

        return evaluate(*args, **kwargs)


from qeval import evaluate as _metrics  # noqa: E402 - the package's __init__ is a docstring: cheap

_metrics.__class__ = _EvaluatePackage


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'qeval' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
