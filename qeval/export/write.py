"""export_checkpoint: a model under a policy -> a safetensors checkpoint folder a serving engine loads.

Order: plan and quantize in memory, check that the layout can express every
rule, every tensor name and shape (refusing before anything is written), then
write into a temporary folder beside ``out`` and rename it into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from qeval.formats import QTensor

from . import compressed_tensors, modelopt
from .collect import collect
from .names import model_state, revert, saved_layout
from .schemes import LAYOUTS, ExportError, weight_block

WEIGHTS_FILE = "model.safetensors"
_LAYOUT_MODULES = {"compressed-tensors": compressed_tensors, "modelopt": modelopt}


@dataclass
class ExportReport:
    path: Path
    layout: str
    quantized: dict[str, str] = field(default_factory=dict)  # saved module -> "weights/activations"
    ignored: list[str] = field(default_factory=list)
    # module -> (elements, elements after rounding to BF16) the layout's own reader decodes differently from
    # qeval: only NVFP4 under compressed-tensors' encode-scale convention (conventions.py)
    inexact: dict[str, tuple[int, int]] = field(default_factory=dict)
    kv_layers: int = 0
    bytes: int = 0


def layout_module(layout: str):
    if layout not in _LAYOUT_MODULES:
        raise ExportError(f"unknown checkpoint layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return _LAYOUT_MODULES[layout]


def slice_rows(q: QTensor, row0: int, rows: int, where: str) -> QTensor:
    """Rows ``row0 .. row0+rows`` of a 2-D weight QTensor (a fused experts tensor split per projection)."""
    n = q.shape[0]
    if row0 == 0 and rows == n:
        return q
    spec = q.fmt.spec
    scale = q.scale
    if spec == "fp8_e4m3:block128":
        if row0 % 128 or (rows % 128 and row0 + rows != n):
            raise ExportError(f"{where}: rows {row0}..{row0 + rows} split a 128x128 FP8 block; the layout stores one scale per block")
        scale = scale[row0 // 128: -(-(row0 + rows) // 128)]
    elif scale is not None and scale.dim() >= 1 and scale.shape[0] == n:
        scale = scale[row0: row0 + rows]
    return QTensor(q.data[row0: row0 + rows], scale, q.global_scale, torch.Size((rows, q.shape[1])), q.fmt, q.padded, q.role)


def _plan_modules(model, layout: str, collected, mod) -> tuple[dict, dict, list]:
    """saved prefix -> (QuantParam, QTensor); scheme key -> (scheme, prefixes); ignored prefixes. Raises before writing."""
    state = model_state(model)
    layout_map = saved_layout(model, state)
    by_param: dict[str, list] = {}
    for saved, src in layout_map.items():
        by_param.setdefault(src.param, []).append((saved, src))
    items, groups = {}, {}
    for key, qp in collected.params.items():
        where = f"{qp.module} ({qp.weights}, activations {qp.activations or 'none'})"
        try:
            sch = mod.scheme(qp.weights, qp.activations, qp.static)
        except ExportError as err:
            raise ExportError(f"{qp.module}: {err}") from None
        block = weight_block(qp.weights)
        k = qp.qtensors[0].shape[-1]
        if layout == "compressed-tensors" and block and k % block:
            raise ExportError(f"{where}: K={k} is not a multiple of {block}; {layout} stores no padded blocks")
        if layout == "modelopt" and qp.weights == "nvfp4" and k % 16:
            raise ExportError(f"{where}: K={k} is not a multiple of 16; {layout} stores no padded blocks")
        if qp.kind == "lm_head" and getattr(getattr(model, "config", None), "tie_word_embeddings", False):
            raise ExportError(f"{qp.module}: the lm_head is tied to the embedding; a checkpoint stores that tensor once, unquantized")
        for saved, src in by_param.get(key, []):
            if not saved.endswith(".weight") or src.rows < 0:
                raise ExportError(f"{qp.module}: saved as {saved} in a layout qeval cannot split into linears")
            prefix = saved[: -len(".weight")]
            q = qp.qtensors[src.expert or 0]
            items[prefix] = (qp, slice_rows(q, src.row0, src.rows, f"{qp.module} -> {prefix}"))
            skey = json.dumps(sch, sort_keys=True)
            groups.setdefault(skey, (sch, []))[1].append(prefix)
    ignored = []
    key_of = {id(p): k for k, p in model.state_dict(keep_vars=True).items()}
    for name in collected.unquantized:
        if isinstance(model.get_submodule(name), nn.Linear):  # by its module name: loaders match modules
            ignored.append(name)
            continue
        for p in model.get_submodule(name)._parameters.values():
            if p is not None and p.dim() >= 2:
                ignored += [s[: -len(".weight")] for s, _ in by_param.get(key_of.get(id(p)), []) if s.endswith(".weight")]
    return items, groups, ignored


def export_checkpoint(
    model: nn.Module,
    policy,
    out: str | os.PathLike,
    layout: str = "compressed-tensors",
    calibration=None,
    tokenizer=None,
    overwrite: bool = False,
) -> ExportReport:
    """Write ``model`` quantized under ``policy`` as a ``layout`` checkpoint folder at ``out``.

    Raises:
        ExportError: a rule, module or shape the layout cannot express (the
            module and the reason), or ``out`` exists and ``overwrite`` is False.
            Nothing is written then.
    """
    from safetensors.torch import save_file

    mod = layout_module(layout)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out}: already exists (pass overwrite=True / --force to replace it)")
    collected = collect(model, policy, calibration)
    for kv in collected.kv:
        if kv.fmt != "fp8_e4m3" or not kv.static:
            raise ExportError(f"{kv.module}: KV cache {kv.fmt} ({'static' if kv.static else 'per-call'} scale): "
                              f"{layout} stores static FP8 KV scales only")
    items, groups, ignored = _plan_modules(model, layout, collected, mod)
    report = ExportReport(out, layout, ignored=sorted(ignored), kv_layers=len(collected.kv))
    tensors, meta = {}, {"format": "pt", "producer": "qeval"}
    quant_keys = set(collected.params)
    plain = revert(model, {k: v.detach() for k, v in model_state(model).items() if k not in quant_keys})
    tensors.update({k: v.clone() for k, v in plain.items()})  # views of one storage cannot be saved
    for prefix, (qp, q) in items.items():
        t, inexact = mod.module_tensors(prefix, q, qp.weights, qp.act_amax, meta)
        tensors.update({key: v.clone() for key, v in t.items()})
        report.quantized[prefix] = f"{qp.weights}/{qp.activations or 'none'}"
        if any(inexact):
            report.inexact[prefix] = inexact
    for kv in collected.kv:
        tensors.update(mod.kv_tensors(kv.module, kv.k_amax, kv.v_amax))
    qcfg = mod.config([(sch, prefixes) for sch, prefixes in groups.values()], ignored, bool(collected.kv))
    report.bytes = sum(t.numel() * t.element_size() for t in tensors.values())

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=meta)
        config = model.config.to_dict()
        if layout == "modelopt":
            hf = {"producer": {"name": "qeval"}, "quantization": qcfg}
            (tmp / "hf_quant_config.json").write_text(json.dumps(hf, indent=2) + "\n")
            config["quantization_config"] = {"quant_method": "modelopt", **qcfg}
        else:
            config["quantization_config"] = qcfg
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            try:
                gen.save_pretrained(tmp)
            except Exception:  # noqa: BLE001 - an odd generation config must not lose the checkpoint
                pass
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report
