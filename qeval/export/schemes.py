"""Which qeval rules each checkpoint layout can express, and how it names them.

A rule is ``(weights, activations, static)``: the weight format, the input
activation format (None = BF16, weight-only) and whether the activation scale
is static (calibrated) or per call. Everything a layout cannot say is refused
with the module and the reason, before any file is written.
"""

from __future__ import annotations

LAYOUTS = ("compressed-tensors", "modelopt")


class ExportError(ValueError):
    """A checkpoint that cannot be written or read; one line naming the module/file and the reason."""


# --- compressed-tensors: QuantizationArgs as its config.json spells them ------------------
def _args(bits: int, strategy: str, dynamic, **extra) -> dict:
    return {"num_bits": bits, "type": "float", "symmetric": True, "strategy": strategy, "dynamic": dynamic, **extra}


_CT_WEIGHTS = {
    "fp8_e4m3": (_args(8, "tensor", False), "float-quantized"),
    "fp8_e4m3:channel": (_args(8, "channel", False), "float-quantized"),
    "fp8_e4m3:block128": (_args(8, "block", False, block_structure=[128, 128]), "float-quantized"),
    "nvfp4": (_args(4, "tensor_group", False, group_size=16), "nvfp4-pack-quantized"),
    "mxfp4": (_args(4, "group", False, group_size=32), "mxfp4-pack-quantized"),
    "mxfp4:rceil": (_args(4, "group", False, group_size=32), "mxfp4-pack-quantized"),
    "mxfp8": (_args(8, "group", False, group_size=32), "mxfp8-quantized"),
    "mxfp8:rceil": (_args(8, "group", False, group_size=32), "mxfp8-quantized"),
}
# (activation format, static) -> args; which weights each may pair with
_CT_ACTS = {
    ("fp8_e4m3", True): _args(8, "tensor", False),
    ("fp8_e4m3", False): _args(8, "tensor", True),
    ("fp8_e4m3:token", False): _args(8, "token", True),
    ("fp8_e4m3:channel", False): _args(8, "token", True),
    ("fp8_e4m3:block128", False): _args(8, "group", True, group_size=128),
    ("nvfp4", True): _args(4, "tensor_group", "local", group_size=16),
    ("mxfp4", False): _args(4, "group", True, group_size=32),
    ("mxfp4:rceil", False): _args(4, "group", True, group_size=32),
    ("mxfp8", False): _args(8, "group", True, group_size=32),
    ("mxfp8:rceil", False): _args(8, "group", True, group_size=32),
}
_FAMILY = {"fp8_e4m3": "fp8", "fp8_e4m3:channel": "fp8", "fp8_e4m3:block128": "fp8", "fp8_e4m3:token": "fp8",
           "nvfp4": "nvfp4", "mxfp4": "mx", "mxfp4:rceil": "mx", "mxfp8": "mx", "mxfp8:rceil": "mx"}


def ct_scheme(weights: str, activations: str | None, static: bool) -> dict:
    """The compressed-tensors scheme (``weights``, ``input_activations``, ``format``) of a rule, or raise ExportError."""
    if weights not in _CT_WEIGHTS:
        raise ExportError(f"weights {weights}: compressed-tensors has no scheme for it "
                          f"(it stores {', '.join(_CT_WEIGHTS)})")
    w, fmt = _CT_WEIGHTS[weights]
    scheme = {"weights": dict(w), "input_activations": None, "format": fmt}
    if activations is None:
        return scheme
    act = _CT_ACTS.get((activations, static))
    if act is None:
        how = "static (calibrated)" if static else "per-call"
        raise ExportError(f"activations {activations} with a {how} scale: compressed-tensors cannot express it"
                          + ("; NVFP4 activations need act_scale: static (input_global_scale)" if activations == "nvfp4" else ""))
    if _FAMILY.get(activations) != _FAMILY.get(weights) and not (activations.startswith("fp8") and weights.startswith("fp8")):
        raise ExportError(f"weights {weights} with activations {activations}: no compressed-tensors scheme pairs them")
    scheme["input_activations"] = dict(act)
    return scheme


# --- Model Optimizer: quant_algo names (hf_quant_config.json) -------------------------------
def mo_algo(weights: str, activations: str | None, static: bool) -> dict:
    """Model Optimizer's per-layer ``{"quant_algo": ..., ["group_size": ...]}`` for a rule, or raise ExportError."""
    if weights == "fp8_e4m3" and activations == "fp8_e4m3" and static:
        return {"quant_algo": "FP8"}
    if weights == "fp8_e4m3:channel" and activations in ("fp8_e4m3:token", "fp8_e4m3:channel") and not static:
        return {"quant_algo": "FP8_PER_CHANNEL_PER_TOKEN"}
    if weights == "nvfp4" and activations == "nvfp4" and static:
        return {"quant_algo": "NVFP4", "group_size": 16}
    if weights == "nvfp4" and activations is None:
        return {"quant_algo": "W4A16_NVFP4", "group_size": 16}
    act = "none" if activations is None else f"{activations} ({'static' if static else 'per-call'} scale)"
    raise ExportError(
        f"weights {weights} with activations {act}: Model Optimizer's HF layout has no quant_algo for it "
        "(it stores FP8 W8A8 static per-tensor, FP8 per-channel x per-token dynamic, NVFP4 W4A4 static, NVFP4 W4A16); "
        "use --format compressed-tensors"
    )


def weight_block(weights: str) -> int | None:
    """The K block a layout needs whole (no padding is stored), or None."""
    return {"nvfp4": 16, "mxfp4": 32, "mxfp4:rceil": 32, "mxfp8": 32, "mxfp8:rceil": 32}.get(weights)
