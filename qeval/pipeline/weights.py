"""Weight bytes actually held by a quantized model, to set beside the plan's analytic count.

For each module of the plan:

- a weight under a ``QuantWeight`` in a native mode: the bytes of its packed
  buffers (codes, block scales, global scale) as they sit in memory;
- the same in emulate mode (which keeps a dequantized float copy for the
  fp32 GEMM): the weight is quantized with its format's codec and the
  resulting ``QTensor``'s tensors (codes + scales) are counted, i.e. the
  storage a deployment would hold. A codec's storage depends on the shape and
  format only, so one real quantization per (format, shape) is done and reused
  (re-quantizing every weight cost ~8 s per policy on SmolLM2-135M on 2 cores);
- everything that stays unquantized (norms, biases, embeddings unless a rule
  names them): BF16, 2 bytes per element, the reference of every saving,
  whatever dtype the evaluation runs in (float32 on CPU).

Tied parameters (an ``lm_head`` sharing the embedding) are counted once.
"""

from __future__ import annotations

import torch
from torch import nn

from qeval.formats import get_format

BF16_BYTES = 2


def _quant_weights(module: nn.Module) -> list:
    from qeval.quantize import QuantWeight

    return [m for m in module.modules() if isinstance(m, QuantWeight)]


def _codec_bytes(spec: str, w: torch.Tensor, cache: dict) -> int:
    key = (spec, tuple(w.shape))
    if key not in cache:
        cache[key] = int(get_format(spec).quantize(w, role="weight").nbytes)
    return cache[key]


def _stored_bytes(qw, cache: dict) -> int:
    if qw.mode == "emulate":
        w = qw.w_hat
        if qw.weights is None:  # activation-only rule: the weight stays BF16
            return w.numel() * BF16_BYTES
        return sum(_codec_bytes(qw.weights, w[e], cache) for e in range(w.shape[0]))
    return sum(t.numel() * t.element_size() for t in (qw.w_data, qw.w_scale, qw.w_global) if t is not None)


def measured_weight_bytes(model: nn.Module, plan) -> int:
    """Bytes of the weights ``model`` holds now, per the rules above, over ``plan``'s modules."""
    modules = dict(model.named_modules())
    seen: set[int] = set()
    cache: dict = {}
    total = 0
    with torch.no_grad():
        for e in plan.entries:
            mod = modules.get(e.name)
            if mod is None:
                continue
            qws = _quant_weights(mod)
            if qws:
                total += sum(_stored_bytes(qw, cache) for qw in qws)
                quantized_names = {"weight", "gate_up_proj", "up_proj", "down_proj"}
                params = {n: p for n, p in mod._parameters.items() if n not in quantized_names}
                params.update({n: b for n, b in mod._buffers.items() if n.endswith("bias")})
            else:
                params = dict(mod._parameters)
            for pname, p in params.items():
                if p is None or id(p) in seen or not p.is_floating_point():
                    continue
                seen.add(id(p))
                if e.weights and pname == "weight" and not qws:  # quantized in place (embedding)
                    total += _codec_bytes(e.weights, p.detach(), cache)
                else:
                    total += p.numel() * BF16_BYTES
    return total
