"""What each module of a Hugging Face model is: kind, decoder-layer index, weight shapes.

Works from module classes and names only (never tensor data), so it runs on
meta-device models of any size: one pass over ``named_modules()``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

# ModuleList names that hold the repeated blocks (decoder layers, BERT layers, GPT-2 h)
_BLOCK_LISTS = {"layers", "layer", "h", "blocks", "block", "decoder_layers"}
_ATTN_RX = re.compile(r"Attention|SelfAttn|Attn\b")
_MLP_RX = re.compile(r"MLP|Mlp|FeedForward|FFN|Ffn|Intermediate|Output|Moe|MoE|Expert")
_ROUTER_LEAVES = {"router", "shared_expert_gate"}


@dataclass
class ModuleInfo:
    """A module that owns parameters, as the planner sees it.

    ``weights`` maps each quantizable parameter name to its GEMM shape ``(N, K)``
    (rows, reduction dim) and the number of such matrices (experts), after
    undoing the storage transposition of GPT-2 ``Conv1D`` and gpt-oss experts.
    """

    name: str
    module: nn.Module
    kind: str  # linear attention mlp experts router embedding lm_head norm other
    layer: int | None
    n_layers: int | None
    weights: dict[str, tuple[int, int, int]]  # param -> (count, N, K)
    other_params: list[str]  # biases, norms: stay BF16


def is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module) or getattr(module, "_qeval_linear", False)


def fused_expert_params(module: nn.Module) -> list[str]:
    return [n for n, p in module._parameters.items() if p is not None and p.dim() == 3]


def _block_lists(model: nn.Module) -> dict[str, int]:
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.rsplit(".", 1)[-1] in _BLOCK_LISTS and len(mod) > 0:
            out[name] = len(mod)
    return out


def _layer_of(name: str, lists: dict[str, int]) -> tuple[int | None, int | None]:
    parts = name.split(".")
    best = (None, None)
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if prefix in lists and parts[i].isdigit():
            best = (int(parts[i]), lists[prefix])  # innermost wins
    return best


def describe_modules(model: nn.Module) -> list[ModuleInfo]:
    """One :class:`ModuleInfo` per module owning parameters, in model order."""
    lists = _block_lists(model)
    try:
        emb_in = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        emb_in = None
    try:
        emb_out = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        emb_out = None

    ctx: dict[str, tuple[bool, bool, bool]] = {}  # name -> (in attention, in mlp, in experts list)
    infos: list[ModuleInfo] = []
    parents: dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        parents[name] = mod
        pname = name.rsplit(".", 1)[0] if "." in name else ""
        parent = ctx.get(pname, (False, False, False))
        cls = type(mod).__name__
        leaf = name.rsplit(".", 1)[-1]
        in_attn = parent[0] or bool(_ATTN_RX.search(cls))
        in_mlp = parent[1] or bool(_MLP_RX.search(cls))
        in_experts = parent[2] or (leaf == "experts" and isinstance(mod, nn.ModuleList))
        ctx[name] = (in_attn, in_mlp, in_experts)
        own = [n for n, p in mod._parameters.items() if p is not None]
        if not own:
            continue
        layer, n_layers = _layer_of(name, lists)
        weights: dict[str, tuple[int, int, int]] = {}
        if mod is emb_out and emb_out is not None:
            kind = "lm_head"
        elif isinstance(mod, nn.Embedding) or (mod is emb_in and emb_in is not None):
            kind = "embedding"
        elif "Router" in cls or leaf in _ROUTER_LEAVES or (leaf == "gate" and hasattr(parents.get(pname), "experts")):
            kind = "router"
        elif fused_expert_params(mod):
            kind = "experts"
        elif is_linear(mod):
            kind = "attention" if in_attn else "experts" if in_experts else "mlp" if in_mlp else "linear"
        elif "Norm" in cls:
            kind = "norm"
        else:
            kind = "other"

        if kind == "experts" and not is_linear(mod):
            transposed = bool(getattr(mod, "is_transposed", False))
            for pn in fused_expert_params(mod):
                e, a, b = mod._parameters[pn].shape
                weights[pn] = (e, b, a) if transposed else (e, a, b)
        elif kind not in ("norm", "other"):
            w = mod._parameters.get("weight")
            if w is not None and w.dim() == 2:
                n, k = w.shape
                weights["weight"] = (1, k, n) if is_conv1d(mod) else (1, n, k)
        infos.append(
            ModuleInfo(name, mod, kind, layer, n_layers, weights, [n for n in own if n not in weights])
        )
    return infos
