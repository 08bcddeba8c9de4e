"""Quantize a Hugging Face model in place under a policy, and restore it exactly.

>>> from qeval.quantize import quantize_model, dequantize_model, quantized
>>> plan = quantize_model(model, "mixed-fp4-fp8", calibration=[ids])   # emulate by default
>>> with quantized(model, "fp8-dynamic", mode="native"):
...     logits = model(ids).logits

Memory: see ``qeval/quantize/weight.py`` (emulate keeps one fake-quantized copy
of each quantized weight beside the original; native keeps packed weights and
moves originals to the CPU). KV-cache hook: ``qeval/quantize/kv.py``.
"""

import qeval.kernels  # noqa: F401  (registers the fused CUDA kernels with qeval.formats)

from .apply import MODES, dequantize_model, quantize_model, quantized
from .experts import QuantExperts
from .linear import QuantLinear
from .weight import QuantWeight

__all__ = ["MODES", "QuantExperts", "QuantLinear", "QuantWeight", "dequantize_model", "quantize_model", "quantized"]
