"""QuantExperts: fused 3-D MoE experts (transformers 5 ``@use_experts_implementation`` classes).

Covers Mixtral / Qwen3-MoE (``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``)
and gpt-oss (transposed ``[E, H, 2I]``, interleaved gate/up, biases): the
layout flags (``is_transposed``, ``has_bias``, ``has_gate``) and the gating
function (``_apply_gate``) are read from the original module, so the math is
the original's eager loop with each expert's two GEMMs quantized. Each expert
has its own weight scales; one static activation amax is shared by all
experts of a projection (the max over the calibration tokens routed to any).
"""

from __future__ import annotations

import torch
from torch import nn

from .offload import to_host
from .weight import QuantWeight


class QuantExperts(nn.Module):
    _qeval_experts = True

    def __init__(self, original: nn.Module, name: str, weights, activations, act_scale: str, emulation: str = "exact"):
        super().__init__()
        if getattr(original, "has_post_expert_norm", False):
            raise NotImplementedError(f"{name}: experts with a post-expert norm are not supported yet")
        self.num_experts = original.num_experts
        self.has_gate = getattr(original, "has_gate", True)
        self.has_bias = getattr(original, "has_bias", False)
        self.is_transposed = getattr(original, "is_transposed", False)
        up_name = "gate_up_proj" if self.has_gate else "up_proj"
        self.up_name = up_name
        ups, downs = getattr(original, up_name), original.down_proj
        if self.is_transposed:  # stored [E, K, N]: the GEMM view is [E, N, K]
            ups, downs = ups.transpose(1, 2), downs.transpose(1, 2)
        self.q_up = QuantWeight(ups, weights, activations, act_scale, f"{name}.{up_name}", emulation)
        self.q_down = QuantWeight(downs, weights, activations, act_scale, f"{name}.down_proj", emulation)
        for pname, p in original._parameters.items():  # same tensors, same names
            if p is not None:
                self.register_parameter(pname, p)
        object.__setattr__(self, "original", original)

    def finalize(self, mode: str, offload: bool = True) -> None:
        self.q_up.finalize(mode)
        self.q_down.finalize(mode)
        if mode != "emulate" or offload:
            biases = {n: p.detach().clone() for n, p in self._parameters.items() if p is not None and n.endswith("_bias")}
            for n in list(self._parameters):
                delattr(self, n)
            for n, b in biases.items():
                self.register_buffer(n, b, persistent=False)
        if offload:
            to_host(self.original)

    def _bias(self, which: str, e: int):
        return getattr(self, f"{which}_bias")[e] if self.has_bias else None

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        final = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = torch.nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for e in hit.flatten().tolist():
            if e == self.num_experts:  # expert-parallel sentinel
                continue
            top_k_pos, token_idx = torch.where(mask[e])
            h = hidden_states[token_idx]
            h = self.q_up(h, e, self._bias(self.up_name, e))
            h = self.original._apply_gate(h) if self.has_gate else self.original.act_fn(h)
            h = self.q_down(h, e, self._bias("down_proj", e))
            h = h * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, h.to(final.dtype))
        return final

    def extra_repr(self) -> str:
        q = self.q_up
        return (
            f"experts={self.num_experts}, transposed={self.is_transposed}, bias={self.has_bias}, "
            f"weights={q.weights or 'bf16'}, activations={q.activations or 'bf16'}"
        )
