"""QuantLinear: an ``nn.Linear`` or GPT-2 ``Conv1D`` under a rule (also lm_head and linear routers)."""

from __future__ import annotations

import torch
from torch import nn

from qeval.policy.modules import is_conv1d

from .offload import to_host
from .weight import QuantWeight


class QuantLinear(nn.Module):
    """Drop-in replacement; the original module is kept (not registered) for an exact restore.

    In emulate mode the original ``weight`` / ``bias`` parameters stay
    registered here under the same names (same tensors: state_dict and
    ``parameters()`` are unchanged; a GPT-2 ``Conv1D`` weight keeps its
    ``[in, out]`` layout). In native modes the original moves to the CPU and
    only the packed weight and a copy of the bias live here.
    """

    _qeval_linear = True

    def __init__(self, original: nn.Module, name: str, weights, activations, act_scale: str, emulation: str = "exact"):
        super().__init__()
        self.transposed = is_conv1d(original)
        w = original.weight
        self.in_features, self.out_features = (w.shape[0], w.shape[1]) if self.transposed else (w.shape[1], w.shape[0])
        self.qweight = QuantWeight(w.t() if self.transposed else w, weights, activations, act_scale, name, emulation)
        self.weight = original.weight
        self.bias = original.bias
        object.__setattr__(self, "original", original)  # not a submodule: stays out of the module tree

    def finalize(self, mode: str, offload: bool = True) -> None:
        """Quantize the weight; with ``offload`` (native mode's default) move the original to the CPU.

        Native modes, or ``offload``, drop the original parameters from this
        module (a copy of the bias stays). ``offload=False`` is forced for a
        tied lm_head, whose weight is also the embedding's.
        """
        self.qweight.finalize(mode)
        if mode != "emulate" or offload:
            bias = None if self.bias is None else self.bias.detach().clone()
            del self.weight, self.bias
            self.register_buffer("bias", bias, persistent=False)
        if offload:
            to_host(self.original)  # kept for restore, off the accelerator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.qweight(x, 0, self.bias)

    def extra_repr(self) -> str:
        kind = "Conv1D" if self.transposed else "Linear"
        q = self.qweight
        return (
            f"{kind}(in={self.in_features}, out={self.out_features}, bias={self.bias is not None}), "
            f"weights={q.weights or 'bf16'}, activations={q.activations or 'bf16'}"
        )
