"""qeval: quantization quality evaluation.

Data flows one way: recipe -> model + policy -> quantized model -> metrics ->
results -> report / gate. Heavy modules are imported lazily so that
``import qeval`` and ``qeval --help`` stay fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> "module:attribute"; imported on first access
_LAZY = {
    "get_format": "qeval.formats:get_format",
    "load_policy": "qeval.policy:load_policy",
    "plan": "qeval.policy:plan",
    "quantize_model": "qeval.quantize:quantize_model",
    "dequantize_model": "qeval.quantize:dequantize_model",
    "quantized": "qeval.quantize:quantized",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'qeval' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
