"""KV-cache quantization through the transformers attention interface.

Hook: transformers 5 attention modules call
``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager)``
with the keys and values *after* RoPE and after the cache update. qeval
registers ``"qeval_kv:<impl>"`` (plus the same mask function) that
fake-quantizes ``key`` and ``value`` with the layer's :class:`KVQuant` and then
calls the original implementation, and points the attention modules' config at
it. Keys and values are therefore quantized as the attention reads them from
the cache; re-quantizing entries that were quantized at an earlier step with
the same static scale gives them back unchanged, so this equals quantizing on
write. FP8 uses one per-tensor scale for K and one for V per layer (static,
from calibration; dynamic per call with ``act_scale: dynamic``); NVFP4 uses
16-element blocks along the head dim with a per-layer global scale.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from . import quantizer

PREFIX = "qeval_kv:"


class KVQuant(nn.Module):
    def __init__(self, fmt: str, act_scale: str, device):
        super().__init__()
        from qeval.formats import get_format

        self.fmt = fmt
        self.static = act_scale == "static" and get_format(fmt).static_scale
        self.register_buffer("k_amax", torch.zeros((), device=device), persistent=False)
        self.register_buffer("v_amax", torch.zeros((), device=device), persistent=False)
        self.calibrating = False
        self.calibrated = False

    def forward(self, key: torch.Tensor, value: torch.Tensor):
        if self.calibrating:
            if self.static:
                torch.maximum(self.k_amax, quantizer.amax(key), out=self.k_amax)
                torch.maximum(self.v_amax, quantizer.amax(value), out=self.v_amax)
            return key, value
        k_amax, v_amax = (self.k_amax, self.v_amax) if self.static else (None, None)
        return (
            quantizer.fake_quant(self.fmt, key, amax=k_amax, role="activation"),
            quantizer.fake_quant(self.fmt, value, amax=v_amax, role="activation"),
        )

    def extra_repr(self) -> str:
        return f"kv_cache={self.fmt} ({'static' if self.static else 'dynamic'})"


def _eager_for(module: nn.Module):
    return getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)


def _make_attention(orig: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def attention(module, query, key, value, attention_mask, **kwargs):
        kvq = getattr(module, "_qeval_kv", None)
        if kvq is not None:
            key, value = kvq(key, value)
        fn = _eager_for(module) if orig == "eager" else ALL_ATTENTION_FUNCTIONS[orig]
        return fn(module, query, key, value, attention_mask, **kwargs)

    return attention


def register(orig: str) -> str:
    """Register (once) the wrapping attention + mask functions for implementation ``orig``."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    name = PREFIX + orig
    if name not in ALL_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(name, _make_attention(orig))
        if orig in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[orig])
    return name


def attach(attn_modules: dict[str, tuple[nn.Module, str, str]]) -> list:
    """Give each attention module its KVQuant and switch its config; returns undo records."""
    undo = []
    configs = {}
    for mod, fmt, act_scale in attn_modules.values():
        device = next((p.device for p in mod.parameters()), torch.device("cpu"))
        mod._qeval_kv = KVQuant(fmt, act_scale, device)
        undo.append(("kv", mod))
        cfg = getattr(mod, "config", None)
        if cfg is None:
            raise ValueError(f"{type(mod).__name__}: no config on the attention module; cannot hook its KV cache")
        configs[id(cfg)] = cfg
    for cfg in configs.values():
        raw = cfg._attn_implementation_internal
        orig = raw or "eager"
        if orig.startswith(PREFIX):
            continue
        cfg._attn_implementation_internal = register(orig)
        undo.append(("config", cfg, raw))
    return undo
