"""KV cache, activations and runtime overhead per GPU (the rest of what a served model needs).

Rules from shared/reference/hardware.md:

- standard / GQA attention: ``2 * layers * kv_heads * head_dim`` elements per token;
  with tensor parallelism each GPU holds ``max(1, ceil(kv_heads / TP))`` heads
  (the KV is replicated once TP exceeds the KV-head count);
- MLA (DeepSeek-V3/R1, GLM-5): ``layers * (kv_lora_rank + qk_rope_head_dim)``
  per token, one latent (no factor 2), replicated on every TP rank;
- sliding-window layers hold at most ``window`` tokens per sequence; hybrid
  models (``layer_types``) count each kind separately;
- bytes per element come from the KV format: the marginal bytes of one more
  token row in ``qeval.formats`` (BF16 2, FP8 1, NVFP4 0.5625 with its E4M3
  block scales); per-tensor scales are a few bytes per layer and are ignored.

Pipeline parallelism (``pp`` stages, across nodes) splits the layers: each GPU
holds ``1/pp`` of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from qeval.deploy.hardware import GIB, Engine, MemoryDefaults

_SLIDING = {"sliding_attention", "sliding_window", "local_attention", "chunked_attention"}
_STATE_WORDS = ("linear", "mamba", "conv", "recurrent", "ssm")  # fixed-size state, no per-token KV


def _is_state(layer_type: str) -> bool:
    return any(w in layer_type for w in _STATE_WORDS)


@dataclass
class AttentionLayout:
    """What one token costs in the KV cache, per layer kind.

    ``kind``: "mla", "gqa" or "none" (encoders, or no attention to cache).
    ``row``: elements per token per layer and per K-or-V (GQA: ``kv_heads*head_dim``;
    MLA: ``kv_lora_rank + qk_rope_head_dim``). ``tensors``: 2 for K and V, 1 for MLA.
    """

    kind: str
    full_layers: int = 0
    sliding_layers: int = 0
    window: int | None = None
    kv_heads: int = 0
    head_dim: int = 0
    row: int = 0
    tensors: int = 2
    notes: list[str] = field(default_factory=list)

    @property
    def replicated(self) -> bool:
        return self.kind == "mla"


def attention_layout(config, is_causal_lm: bool = True) -> AttentionLayout:
    """Read the attention shape of a (text) config."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    if not is_causal_lm:
        return AttentionLayout("none", notes=["encoder: no KV cache (each request is one forward pass)"])
    layers = cfg.num_hidden_layers
    notes: list[str] = []
    types = list(getattr(cfg, "layer_types", None) or [])
    window = getattr(cfg, "sliding_window", None)
    # every other type (full_attention, GLM-5's indexed_attention, ...) caches every token
    sliding = sum(1 for t in types if t in _SLIDING) if window else 0
    other = [t for t in types if t not in _SLIDING and _is_state(t)]
    if other:
        notes.append(
            f"{len(other)} layer(s) of type {sorted(set(other))} keep a fixed-size state, not a per-token KV cache: not counted"
        )
    full = (len(types) - sliding - len(other)) if types else layers
    if types and len(types) != layers:  # a layer_types list that does not describe the layers: trust layers
        full, sliding = layers, 0
    kv_lora = getattr(cfg, "kv_lora_rank", None)
    if kv_lora:
        rope = getattr(cfg, "qk_rope_head_dim", 0) or 0
        return AttentionLayout("mla", full, sliding, window, 1, kv_lora + rope, kv_lora + rope, 1, notes)
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    if sliding:
        notes.append(f"{sliding} sliding-window layer(s) hold at most {window} tokens per sequence")
    return AttentionLayout("gqa", full, sliding, window, kv_heads, head_dim, kv_heads * head_dim, 2, notes)


def kv_bytes_per_element(kv_spec: str | None, row: int) -> float:
    """Bytes of one KV element in ``kv_spec`` (None = BF16), scales included."""
    from qeval.formats import get_format

    fmt = get_format(kv_spec or "bf16")
    n = max(row, 1)
    # marginal cost of one more token row: per-tensor scales cancel, block/row scales stay
    return (fmt.nbytes((2, n), role="activation") - fmt.nbytes((1, n), role="activation")) / n


def kv_bytes_per_token(layout: AttentionLayout, kv_spec: str | None, tp: int = 1, pp: int = 1) -> dict[str, float]:
    """KV bytes one token adds, per GPU, split by layer kind: ``{"full": b, "sliding": b}``."""
    if layout.kind == "none":
        return {"full": 0.0, "sliding": 0.0}
    per_elem = kv_bytes_per_element(kv_spec, layout.row)
    if layout.replicated:
        row = layout.row
    else:
        row = max(1, math.ceil(layout.kv_heads / tp)) * layout.head_dim
    per_layer = layout.tensors * row * per_elem
    return {"full": per_layer * layout.full_layers / pp, "sliding": per_layer * layout.sliding_layers / pp}


def kv_cache_bytes(
    layout: AttentionLayout, kv_spec: str | None, context: int, batch: int, tp: int = 1, pp: int = 1
) -> int:
    """KV cache bytes per GPU for ``batch`` sequences of ``context`` tokens."""
    per = kv_bytes_per_token(layout, kv_spec, tp, pp)
    window_tokens = min(context, layout.window) if layout.window else context
    return math.ceil(batch * (per["full"] * context + per["sliding"] * window_tokens))


def activation_bytes(
    config, defaults: MemoryDefaults, tokens: int, batch: int, tp: int = 1, is_causal_lm: bool = True
) -> int:
    """Peak activation/workspace bytes per GPU for one forward of ``tokens`` tokens.

    ``tokens x 2 bytes x (hidden x hidden_factor + intermediate/TP x intermediate_factor)``
    plus fp32 logits of the sampled positions (``batch x vocab``, decoders only).
    MoE models use the routed experts' intermediate size times top-k (the
    tokens fan out to k experts).
    """
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    a = defaults.activations
    hidden = cfg.hidden_size
    inter = getattr(cfg, "intermediate_size", None) or 4 * hidden
    moe_inter = getattr(cfg, "moe_intermediate_size", None)
    top_k = next((getattr(cfg, k) for k in defaults.moe_config_keys.top_k if getattr(cfg, k, None)), None)
    if moe_inter and top_k:
        inter = max(inter, moe_inter * top_k)
    per_token = 2 * (hidden * a.hidden_factor + inter / tp * a.intermediate_factor)
    logits = batch * cfg.vocab_size * a.logits_bytes if is_causal_lm else 0
    return math.ceil(tokens * per_token + logits)


def overhead_bytes(defaults: MemoryDefaults, n_gpus: int, is_causal_lm: bool) -> int:
    """CUDA context + workspaces (+ CUDA graphs for decoders, + NCCL when sharded), per GPU."""
    return non_torch_bytes(defaults, n_gpus) + graph_bytes(defaults, is_causal_lm)


def non_torch_bytes(defaults: MemoryDefaults, n_gpus: int) -> int:
    """CUDA context, cuBLAS workspaces and NCCL buffers (vLLM's "non_torch_memory"), per GPU."""
    o = defaults.overhead_gib
    return math.ceil((o.base + (o.multi_gpu if n_gpus > 1 else 0)) * GIB)


def graph_bytes(defaults: MemoryDefaults, is_causal_lm: bool) -> int:
    """CUDA graphs of the decode step (decoders only; encoders run eagerly), per GPU."""
    return math.ceil(defaults.overhead_gib.cuda_graphs * GIB) if is_causal_lm else 0


def kv_budget(
    engine: Engine, capacity: int, weights: int, activations: int, non_torch: int, graphs: int = 0,
    fraction: float | None = None,
) -> int:
    """Bytes per GPU that ``engine`` gives the KV cache (negative: the model does not fit).

    - vLLM (``budget: total``): ``fraction x capacity - weights - activation peak - non-torch``;
      CUDA graphs are captured afterwards, in the remainder.
    - TensorRT-LLM (``free``): ``fraction x (capacity - weights - activations - runtime)``.
    - SGLang (``static``): ``fraction x capacity - weights``; activations, runtime and graphs use
      the rest, and where the rest is too small they come out of the pool.

    Whatever the fraction, no engine gets more than the card holds.
    """
    f = engine.fraction if fraction is None else fraction
    everything_else = weights + activations + non_torch + graphs
    if engine.budget == "total":
        room = f * capacity - weights - activations - non_torch - (graphs if engine.graphs_in_budget else 0)
    elif engine.budget == "free":
        free = capacity - everything_else
        room = f * free if free > 0 else free
    else:
        room = f * capacity - weights
        rest = (1 - f) * capacity - activations - non_torch - graphs
        room += min(rest, 0)
    return math.floor(min(room, capacity - everything_else))
