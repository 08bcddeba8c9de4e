"""NVIDIA Model Optimizer's Hugging Face layout (TensorRT-LLM, vLLM ``--quantization modelopt``).

``hf_quant_config.json`` names the algorithm (``quant_algo``: FP8, NVFP4,
W4A16_NVFP4, FP8_PER_CHANNEL_PER_TOKEN, or MIXED_PRECISION with
``quantized_layers``), the KV cache (``kv_cache_quant_algo``) and the
``exclude_modules``; config.json carries the same under ``quantization_config``
with ``quant_method: modelopt``. Per quantized linear ``<m>``:

- FP8: ``<m>.weight`` float8_e4m3fn [N, K], ``<m>.weight_scale`` float32 (scalar, or
  [N, 1] per channel), ``<m>.input_scale`` float32 scalar (static W8A8);
- NVFP4: ``<m>.weight`` uint8 [N, K/2], ``<m>.weight_scale`` float8_e4m3fn [N, K/16],
  ``<m>.weight_scale_2`` float32 scalar (DECODE, = qeval's global scale),
  ``<m>.input_scale`` float32 scalar (= activation amax / (6 * 448), W4A4);
- KV cache: ``<attention>.k_proj.k_scale`` / ``<attention>.v_proj.v_scale`` (amax / 448;
  Model Optimizer clamps them up to 1.0 by default, qeval writes them as measured).
"""

from __future__ import annotations

import torch

from qeval.formats import QTensor, get_format

from . import conventions as cv
from .schemes import ExportError, mo_algo

NAME = "modelopt"
_SPECS = {  # quant_algo -> (weights, activations, static)
    "FP8": ("fp8_e4m3", "fp8_e4m3", True),
    "FP8_PER_CHANNEL_PER_TOKEN": ("fp8_e4m3:channel", "fp8_e4m3:token", False),
    "NVFP4": ("nvfp4", "nvfp4", True),
    "W4A16_NVFP4": ("nvfp4", None, False),
}


def scheme(weights: str, activations: str | None, static: bool) -> dict:
    return mo_algo(weights, activations, static)


def module_tensors(prefix: str, q: QTensor, weights: str, act_amax, meta: dict) -> tuple[dict, tuple[int, int]]:
    out = {f"{prefix}.weight": q.data.contiguous()}
    if weights == "nvfp4":
        out[f"{prefix}.weight_scale"] = q.scale.contiguous()
        out[f"{prefix}.weight_scale_2"] = q.global_scale.float().reshape(())
        if act_amax is not None:
            out[f"{prefix}.input_scale"] = cv.nvfp4_global_from_amax(act_amax).reshape(())
            meta[f"qeval.{prefix}.input_amax"] = act_amax.float().item().hex()
    else:
        out[f"{prefix}.weight_scale"] = q.scale.float().contiguous()
        if act_amax is not None:
            out[f"{prefix}.input_scale"] = cv.fp8_amax_scale(act_amax).reshape(())
    return out, (0, 0)  # decode scales: its reader is qeval's rule


def kv_tensors(attn: str, k_amax, v_amax) -> dict:
    return {f"{attn}.k_proj.k_scale": cv.fp8_amax_scale(k_amax).reshape(()),
            f"{attn}.v_proj.v_scale": cv.fp8_amax_scale(v_amax).reshape(())}


def config(groups: list[tuple[dict, list[str]]], ignore: list[str], kv: bool) -> dict:
    """The ``quantization`` section of hf_quant_config.json."""
    quant: dict = {"kv_cache_quant_algo": "FP8" if kv else None, "exclude_modules": sorted(ignore)}
    if len(groups) == 1:
        quant.update(groups[0][0])
    else:
        quant["quant_algo"] = "MIXED_PRECISION"
        quant["quantized_layers"] = {m: algo for algo, mods in groups for m in sorted(mods)}
    return quant


# --- reading ------------------------------------------------------------------------------
def read_schemes(quant: dict, where: str):
    """(per-layer algo lookup, exclude list, kv flag) from hf_quant_config's ``quantization``."""
    def spec(algo: dict | str, what: str) -> dict:
        name = algo.get("quant_algo") if isinstance(algo, dict) else algo
        if name not in _SPECS:
            raise ExportError(f"{where}: {what} quant_algo {name!r} is not one qeval reads ({', '.join(_SPECS)})")
        if isinstance(algo, dict) and algo.get("group_size") not in (None, 16) and name in ("NVFP4", "W4A16_NVFP4"):
            raise ExportError(f"{where}: {what} group_size {algo.get('group_size')} (NVFP4 blocks are 16)")
        w, a, st = _SPECS[name]
        return {"weights": w, "activations": a, "static": st}

    algo = quant.get("quant_algo")
    if algo == "MIXED_PRECISION":
        layers = {m: spec(a, f"quantized_layers.{m}") for m, a in (quant.get("quantized_layers") or {}).items()}
        default = None
    else:
        layers, default = {}, spec(quant, "quantization") if algo is not None else None
    kv = quant.get("kv_cache_quant_algo")
    if kv not in (None, "FP8"):
        raise ExportError(f"{where}: kv_cache_quant_algo {kv!r} is not FP8 (the only KV scheme qeval reads)")
    return (layers, default), list(quant.get("exclude_modules") or []), kv == "FP8"


def scheme_for(name: str, groups, ignore) -> dict | None:
    import fnmatch

    layers, default = groups
    if name in layers:
        return layers[name]
    if any(fnmatch.fnmatchcase(name, p) for p in ignore):
        return None
    return default


def _need(tensors, key, file_of, dtype=None, shape=None):
    from .compressed_tensors import _need as need

    return need(tensors, key, file_of, dtype, shape)


def read_module(prefix: str, sch: dict, tensors: dict, meta: dict, file_of):
    spec = sch["weights"]
    fmt = get_format(spec)
    amax = None
    if spec == "nvfp4":
        w = _need(tensors, f"{prefix}.weight", file_of, torch.uint8)
        if w.dim() != 2:
            raise ExportError(f"{file_of(prefix + '.weight')}: tensor {prefix}.weight has shape {tuple(w.shape)}, expected 2-D")
        n, k = w.shape[0], w.shape[1] * 2
        s = _need(tensors, f"{prefix}.weight_scale", file_of, torch.float8_e4m3fn, [(n, k // 16)])
        s2 = _need(tensors, f"{prefix}.weight_scale_2", file_of, torch.float32, [(), (1,)])
        q = QTensor(w, s, s2.reshape(()).clone(), torch.Size((n, k)), fmt, False, "weight")
        if sch["static"]:
            a = meta.get(f"qeval.{prefix}.input_amax")
            sa = _need(tensors, f"{prefix}.input_scale", file_of, torch.float32, [(), (1,)])
            amax = torch.tensor(float.fromhex(a)) if a is not None else cv.amax_for_scale(sa, cv.NVFP4_RANGE)
        return q, amax, 0
    w = _need(tensors, f"{prefix}.weight", file_of, torch.float8_e4m3fn)
    if w.dim() != 2:
        raise ExportError(f"{file_of(prefix + '.weight')}: tensor {prefix}.weight has shape {tuple(w.shape)}, expected 2-D")
    n, k = w.shape
    shapes = [(), (1,)] if spec == "fp8_e4m3" else [(n, 1), (n,)]
    s = _need(tensors, f"{prefix}.weight_scale", file_of, (torch.float32, torch.bfloat16, torch.float16), shapes).float()
    q = QTensor(w, s.reshape(()) if spec == "fp8_e4m3" else s.reshape(n, 1), None, torch.Size((n, k)), fmt, False, "weight")
    if sch["static"]:
        amax = cv.amax_for_scale(_need(tensors, f"{prefix}.input_scale", file_of, shape=[(), (1,)]), cv.E4M3_MAX)
    return q, amax, 0


def read_kv(attn: str, tensors: dict, file_of):
    k = _need(tensors, f"{attn}.k_proj.k_scale", file_of, shape=[(), (1,)])
    v = _need(tensors, f"{attn}.v_proj.v_scale", file_of, shape=[(), (1,)])
    return cv.amax_for_scale(k, cv.E4M3_MAX), cv.amax_for_scale(v, cv.E4M3_MAX)
