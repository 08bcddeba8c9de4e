"""read_checkpoint: a compressed-tensors or Model Optimizer folder -> QTensors per stored linear.

Codes and scales are taken as stored; convention differences go through
``qeval.export.conventions``. Anything qeval cannot read exactly is refused
with one line naming the file and the tensor: pickle weight files, a missing
config or quantization_config, an unknown scheme, a missing scale, a wrong
dtype or shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qeval.files import read_json
from qeval.formats import QTensor

from . import compressed_tensors, modelopt
from .schemes import ExportError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_WEIGHT_KEYS = ("weight_packed", "weight_scale")


@dataclass
class StoredModule:
    weights: str
    activations: str | None
    static: bool
    qtensor: QTensor
    act_amax: torch.Tensor | None = None
    inexact_blocks: int = 0  # NVFP4 blocks whose qeval decode differs from the producer's by one ulp


@dataclass
class Checkpoint:
    path: Path
    layout: str
    modules: dict[str, StoredModule] = field(default_factory=dict)  # stored module name -> packed weight
    kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # attention -> (k, v amax)
    plain: dict[str, torch.Tensor] = field(default_factory=dict)  # every other tensor, as stored


def _error(msg: str) -> ExportError:
    return ExportError(msg)


def _load_tensors(path: Path) -> tuple[dict, dict, dict]:
    """All tensors of the folder's safetensors files, their metadata, and key -> file."""
    from safetensors import SafetensorError, safe_open

    files = sorted(path.glob("*.safetensors"))
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise _error(f"{pickles[0]}: pickle weight files are not read (they can run code); convert the checkpoint to safetensors")
    if not files:
        raise _error(f"{path}: no *.safetensors weight file")
    tensors, meta, where = {}, {}, {}
    for f in files:
        try:
            with safe_open(str(f), "pt") as fh:
                meta.update(fh.metadata() or {})
                for k in fh.keys():
                    tensors[k] = fh.get_tensor(k)
                    where[k] = f
        except (SafetensorError, OSError, ValueError) as err:
            raise _error(f"{f}: not a readable safetensors file ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    return tensors, meta, where


def _layout(path: Path) -> tuple[str, dict, object]:
    cfg_path = path / "config.json"
    config = read_json(cfg_path, "model config", ExportError) if cfg_path.exists() else {}
    hf = path / "hf_quant_config.json"
    qcfg = config.get("quantization_config") if isinstance(config, dict) else None
    if hf.exists():
        data = read_json(hf, "Model Optimizer config", ExportError)
        quant = data.get("quantization") if isinstance(data, dict) else None
        if not isinstance(quant, dict):
            raise _error(f"{hf}: no 'quantization' section")
        return "modelopt", quant, hf
    if not isinstance(qcfg, dict):
        raise _error(f"{cfg_path}: no quantization_config (not a compressed-tensors or Model Optimizer checkpoint)")
    method = qcfg.get("quant_method")
    if method == "modelopt":
        return "modelopt", qcfg, cfg_path
    if method == "compressed-tensors":
        return "compressed-tensors", qcfg, cfg_path
    raise _error(f"{cfg_path}: quantization_config.quant_method {method!r} is not compressed-tensors or modelopt")


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint folder; every quantized linear becomes a QTensor.

    Raises:
        ExportError: one line naming the file and the tensor or field.
    """
    path = Path(path)
    if not path.is_dir():
        raise _error(f"{path}: checkpoint folder does not exist")
    layout, qcfg, cfg_file = _layout(path)
    mod = compressed_tensors if layout == "compressed-tensors" else modelopt
    groups, ignore, has_kv = mod.read_schemes(qcfg, str(cfg_file))
    tensors, meta, where = _load_tensors(path)

    by_prefix = {k.rsplit(".", 1)[0]: f for k, f in where.items()}

    def file_of(key: str) -> Path:  # the file that holds the tensor, or its module's other tensors
        return where.get(key) or by_prefix.get(key.rsplit(".", 1)[0], path)

    ckpt = Checkpoint(path, layout)
    packed = (torch.uint8, torch.float8_e4m3fn)  # a weight stored in these is quantized: it needs its scales
    prefixes = sorted({k.rsplit(".", 1)[0] for k, t in tensors.items()
                       if k.rsplit(".", 1)[-1] in _WEIGHT_KEYS or (k.endswith(".weight") and t.dtype in packed)})
    used: set[str] = set()
    for prefix in prefixes:
        sch = mod.scheme_for(prefix, groups, ignore)
        if sch is None:
            if any(f"{prefix}.{n}" in tensors for n in _WEIGHT_KEYS) or f"{prefix}.weight" in tensors:
                raise _error(f"{file_of(prefix + '.weight_scale')}: tensor {prefix}.weight_scale belongs to a module "
                             f"no quantization scheme names (in {cfg_file.name}: ignored or unmatched)")
            continue
        q, amax, inexact = mod.read_module(prefix, sch, tensors, meta, file_of)
        ckpt.modules[prefix] = StoredModule(sch["weights"], sch["activations"], sch["static"], q, amax, inexact)
        used.update(k for k in tensors if k.rsplit(".", 1)[0] == prefix and k.rsplit(".", 1)[-1] != "bias")
    kv_suffix = ".k_scale" if layout == "compressed-tensors" else ".k_proj.k_scale"
    for key in tensors:
        if key.endswith(kv_suffix):
            attn = key[: -len(kv_suffix)]
            if not has_kv:
                raise _error(f"{where[key]}: tensor {key} but the config names no KV-cache scheme")
            ckpt.kv[attn] = mod.read_kv(attn, tensors, file_of)
            used.update({key, key.replace("k_proj.k_scale", "v_proj.v_scale").replace(".k_scale", ".v_scale")})
    ckpt.plain = {k: v for k, v in tensors.items() if k not in used}
    return ckpt


def describe(ckpt: Checkpoint) -> str:
    return json.dumps({"layout": ckpt.layout, "modules": len(ckpt.modules), "kv": len(ckpt.kv)})
