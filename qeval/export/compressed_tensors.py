"""compressed-tensors layout (what vLLM and transformers read): tensors per module and the config.

Per quantized linear ``<m>`` (``quantization_config.format`` per group):

- FP8 (``float-quantized``): ``<m>.weight`` float8_e4m3fn [N, K], ``<m>.weight_scale``
  float32 ([1] per tensor, [N, 1] per channel, [ceil(N/128), ceil(K/128)] blocks),
  ``<m>.input_scale`` float32 [1] for static activations;
- NVFP4 (``nvfp4-pack-quantized``): ``<m>.weight_packed`` uint8 [N, K/2] (element 2i
  in the low nibble), ``<m>.weight_scale`` float8_e4m3fn [N, K/16],
  ``<m>.weight_global_scale`` float32 [1] (ENCODE), ``<m>.input_global_scale`` (W4A4);
- MXFP4 (``mxfp4-pack-quantized``) / MXFP8 (``mxfp8-quantized``): ``weight_packed`` uint8 /
  ``weight`` float8_e4m3fn, ``weight_scale`` uint8 E8M0 [N, K/32];
- KV cache: ``<attention>.k_scale`` / ``v_scale`` float32 [1] and ``kv_cache_scheme``.
"""

from __future__ import annotations

import re

import torch

from qeval.formats import QTensor, get_format
from qeval.formats.elements import unpack_fp4

from . import conventions as cv
from .schemes import ExportError, ct_scheme

NAME = "compressed-tensors"
KV_SCHEME = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "tensor", "dynamic": False}


def scheme(weights: str, activations: str | None, static: bool) -> dict:
    return ct_scheme(weights, activations, static)


def module_tensors(prefix: str, q: QTensor, weights: str, act_amax, meta: dict) -> tuple[dict, tuple[int, int]]:
    """The tensors of one linear, and how many elements this layout's reader decodes differently from
    qeval (float32, BF16): NVFP4's encode global scale only (conventions.py), else (0, 0)."""
    n, k = q.shape
    out, inexact = {}, (0, 0)
    if weights.startswith("fp8"):
        out[f"{prefix}.weight"] = q.data[:, :k].contiguous()
        scale = q.scale.float()
        out[f"{prefix}.weight_scale"] = scale.reshape(1) if scale.dim() == 0 else scale.contiguous()
        if act_amax is not None:
            out[f"{prefix}.input_scale"] = cv.fp8_amax_scale(act_amax)
    elif weights == "nvfp4":
        g, off32, off16 = cv.encode_global_scale(q.scale, q.global_scale, unpack_fp4(q.data))
        inexact = (off32, off16)
        out[f"{prefix}.weight_packed"] = q.data.contiguous()
        out[f"{prefix}.weight_scale"] = q.scale.contiguous()
        out[f"{prefix}.weight_global_scale"] = g
        meta[f"qeval.{prefix}.weight_decode_global_scale"] = q.global_scale.float().item().hex()
        if act_amax is not None:
            s = cv.nvfp4_global_from_amax(act_amax)
            out[f"{prefix}.input_global_scale"] = (torch.tensor(1.0) / s).reshape(1)
            meta[f"qeval.{prefix}.input_amax"] = act_amax.float().item().hex()
    else:  # MX
        out[f"{prefix}.weight_packed" if q.data.dtype == torch.uint8 else f"{prefix}.weight"] = q.data.contiguous()
        out[f"{prefix}.weight_scale"] = cv.e8m0_to_uint8(q.scale).contiguous()
    return out, inexact


def kv_tensors(attn: str, k_amax, v_amax) -> dict:
    return {f"{attn}.k_scale": cv.fp8_amax_scale(k_amax), f"{attn}.v_scale": cv.fp8_amax_scale(v_amax)}


def _target(name: str) -> str:
    return "re:^" + re.escape(name) + "$"


def config(groups: list[tuple[dict, list[str]]], ignore: list[str], kv: bool) -> dict:
    """``quantization_config`` for config.json: one group per scheme, unquantized linears ignored."""
    cfg_groups = {}
    single = len(groups) == 1
    for i, (sch, modules) in enumerate(groups):
        targets = ["Linear"] if single else [_target(m) for m in modules]
        cfg_groups[f"group_{i}"] = {"targets": targets, **sch, "output_activations": None}
    formats = sorted({sch["format"] for sch, _ in groups})
    return {
        "quant_method": "compressed-tensors",
        "format": formats[0] if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": cfg_groups,
        "ignore": sorted(ignore),
        "kv_cache_scheme": dict(KV_SCHEME) if kv else None,
        "producer": {"name": "qeval"},
    }


# --- reading ------------------------------------------------------------------------------
def _spec_of(args: dict | None, where: str, what: str) -> str | None:
    if args is None:
        return None
    bits, typ, strat = args.get("num_bits"), args.get("type"), args.get("strategy")
    group = args.get("group_size")
    if typ == "float" and bits == 8 and strat in ("tensor", "channel", "token"):
        return {"tensor": "fp8_e4m3", "channel": "fp8_e4m3:channel", "token": "fp8_e4m3:token"}[strat]
    if typ == "float" and bits == 8 and strat == "block" and list(args.get("block_structure") or []) == [128, 128]:
        return "fp8_e4m3:block128"
    if typ == "float" and bits == 8 and strat == "group" and group == 128 and what.endswith("input_activations"):
        return "fp8_e4m3:block128"
    if typ == "float" and bits == 4 and strat == "tensor_group" and group == 16:
        return "nvfp4"
    if typ == "float" and bits in (4, 8) and strat == "group" and group == 32:
        return "mxfp4" if bits == 4 else "mxfp8"
    raise ExportError(f"{where}: {what} scheme {bits}-bit {typ} {strat} (group {group}) is not one qeval reads")


def read_schemes(qcfg: dict, where: str) -> tuple[list[tuple[list[str], dict]], list[str], bool]:
    """[(targets, {weights, activations, static})], ignore list, kv-cache flag from a quantization_config."""
    groups = []
    for gname, g in (qcfg.get("config_groups") or {}).items():
        if not isinstance(g, dict):
            raise ExportError(f"{where}: quantization_config.config_groups.{gname} is not a mapping")
        w = _spec_of(g.get("weights"), where, f"config_groups.{gname}.weights")
        if w is None:
            raise ExportError(f"{where}: config_groups.{gname} quantizes no weights (activation-only schemes are not read)")
        act_args = g.get("input_activations")
        a = _spec_of(act_args, where, f"config_groups.{gname}.input_activations")
        static = a is not None and act_args.get("dynamic") in (False, "local")
        groups.append((list(g.get("targets") or []), {"weights": w, "activations": a, "static": static}))
    kv = qcfg.get("kv_cache_scheme")
    if kv is not None and not (kv.get("num_bits") == 8 and kv.get("type") == "float"):
        raise ExportError(f"{where}: kv_cache_scheme {kv} is not FP8 (the only KV scheme qeval reads)")
    return groups, list(qcfg.get("ignore") or []), kv is not None


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return pattern == name or name.endswith("." + pattern)


def scheme_for(name: str, groups, ignore) -> dict | None:
    if any(_matches(p, name) for p in ignore):
        return None
    for targets, sch in groups:
        if any(_matches(t, name) or not t.startswith("re:") and "." not in t and t[:1].isupper() for t in targets):
            return sch
    return None


def _need(tensors: dict, key: str, file_of, dtype=None, shape=None) -> torch.Tensor:
    t = tensors.get(key)
    if t is None:
        raise ExportError(f"{file_of(key.rsplit('.', 1)[0] + '.weight')}: tensor {key} is missing")
    if dtype is not None and t.dtype not in (dtype if isinstance(dtype, tuple) else (dtype,)):
        raise ExportError(f"{file_of(key)}: tensor {key} has dtype {t.dtype}, expected {dtype}")
    if shape is not None and tuple(t.shape) not in [tuple(s) for s in shape]:
        raise ExportError(f"{file_of(key)}: tensor {key} has shape {tuple(t.shape)}, expected {tuple(shape[0])}")
    return t


def read_module(prefix: str, sch: dict, tensors: dict, meta: dict, file_of) -> tuple[QTensor, torch.Tensor | None, int]:
    """(QTensor, static activation amax or None, blocks decoded inexactly) of one stored linear."""
    spec = sch["weights"]
    fmt = get_format(spec)
    amax, inexact = None, 0
    if spec.startswith("fp8"):
        w = _need(tensors, f"{prefix}.weight", file_of, torch.float8_e4m3fn)
        if w.dim() != 2:
            raise ExportError(f"{file_of(prefix + '.weight')}: tensor {prefix}.weight has shape {tuple(w.shape)}, expected 2-D")
        n, k = w.shape
        nb, kb = -(-n // 128), -(-k // 128)
        shapes = {"fp8_e4m3": [(1,), ()], "fp8_e4m3:channel": [(n, 1)], "fp8_e4m3:block128": [(nb, kb)]}[spec]
        s = _need(tensors, f"{prefix}.weight_scale", file_of, (torch.float32, torch.bfloat16, torch.float16), shapes).float()
        data, padded = w, False
        if spec == "fp8_e4m3:block128" and k % 128:
            data, padded = torch.nn.functional.pad(w.view(torch.uint8), (0, kb * 128 - k)).view(torch.float8_e4m3fn), True
        q = QTensor(data, s.reshape(()) if spec == "fp8_e4m3" else s, None, torch.Size((n, k)), fmt, padded, "weight")
        if sch["static"]:
            amax = cv.amax_for_scale(_need(tensors, f"{prefix}.input_scale", file_of, shape=[(1,), ()]), cv.E4M3_MAX)
        return q, amax, 0
    packed = spec in ("nvfp4", "mxfp4")
    key = f"{prefix}.weight_packed" if packed else f"{prefix}.weight"
    w = _need(tensors, key, file_of, torch.uint8 if packed else torch.float8_e4m3fn)
    if w.dim() != 2:
        raise ExportError(f"{file_of(key)}: tensor {key} has shape {tuple(w.shape)}, expected 2-D")
    n, k = w.shape[0], w.shape[1] * (2 if packed else 1)
    if spec == "nvfp4":
        s = _need(tensors, f"{prefix}.weight_scale", file_of, torch.float8_e4m3fn, [(n, k // 16)])
        g = _need(tensors, f"{prefix}.weight_global_scale", file_of, torch.float32, [(1,), ()])
        exact = meta.get(f"qeval.{prefix}.weight_decode_global_scale")
        if exact is not None:
            s_g = torch.tensor(float.fromhex(exact))
        else:
            s_g, inexact = cv.decode_global_scale(s, g)
        q = QTensor(w, s, s_g, torch.Size((n, k)), fmt, False, "weight")
        if sch["static"]:
            a = meta.get(f"qeval.{prefix}.input_amax")
            ga = _need(tensors, f"{prefix}.input_global_scale", file_of, torch.float32, [(1,), ()])
            amax = torch.tensor(float.fromhex(a)) if a is not None else cv.amax_for_scale(1.0 / ga.float(), cv.NVFP4_RANGE)
        return q, amax, inexact
    s = _need(tensors, f"{prefix}.weight_scale", file_of, torch.uint8, [(n, k // 32)])
    return QTensor(w, cv.uint8_to_e8m0(s), None, torch.Size((n, k)), fmt, False, "weight"), None, 0


def read_kv(attn: str, tensors: dict, file_of) -> tuple[torch.Tensor, torch.Tensor]:
    k = _need(tensors, f"{attn}.k_scale", file_of, shape=[(1,), ()])
    v = _need(tensors, f"{attn}.v_scale", file_of, shape=[(1,), ()])
    return cv.amax_for_scale(k, cv.E4M3_MAX), cv.amax_for_scale(v, cv.E4M3_MAX)
