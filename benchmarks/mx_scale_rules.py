"""MX scale rules on a real model: qeval's floor / rceil against NVIDIA Model Optimizer, same tokens (issue 19).

    PYTHONPATH=. python3 benchmarks/mx_scale_rules.py [recipes/quickstart.yaml] [--tokens 2048]

Loads the recipe's model and evaluation text (SmolLM2-135M and 2,048 gensim-wiki
tokens for the quickstart, windows as the recipe says) and measures, against the
unquantized model on the same positions, W8A8 / W4A4 on every linear
(lm_head stays as is, activations dynamic) with:

- qeval ``mxfp8``, ``mxfp8:rceil``, ``mxfp4``, ``mxfp4:rceil`` (``quantize_model``);
- Model Optimizer's MX arithmetic through its pure-torch ``MXFP8QTensor`` /
  ``MXFP4QTensor`` (quantize, then dequantize, for weights and for each linear's
  input). Its ``mtq`` fake-quant path for MX calls a CUDA extension, which has no
  CPU build, so this is the Model Optimizer code that runs on a CPU.

Prints perplexity, mean KL (with its standard error over tokens) and top-1
agreement per variant, and how many weights Model Optimizer and qeval rceil
quantize to different values.
"""

from __future__ import annotations

import argparse
import contextlib
import math

import torch
from torch import nn

from qeval.data import load_text, token_stream
from qeval.evaluate.divergence import kl_rows, top1_matches
from qeval.evaluate.perplexity import log_softmax_rows, nll_sum, sliding_windows, window_logits
from qeval.formats import get_format
from qeval.models import load_model
from qeval.pipeline.recipe import load_recipe
from qeval.quantize import quantized


def _linears(model) -> list[nn.Linear]:
    return [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in n]


def modelopt_qdq(kind: str):
    """Model Optimizer's MX quantize -> dequantize of a tensor (blocks of 32 along the last dim)."""
    if kind == "mxfp8":
        from modelopt.torch.quantization.qtensor import MXFP8QTensor

        def qdq(x):
            q, s = MXFP8QTensor.quantize(x)
            return q.dequantize(dtype=x.dtype, scale=s)
    else:
        from modelopt.torch.quantization.qtensor import MXFP4QTensor

        def qdq(x):
            q, s = MXFP4QTensor.quantize(x, 32)
            return q.dequantize(dtype=x.dtype, scale=s, block_sizes={-1: 32})
    return qdq


@contextlib.contextmanager
def modelopt_model(model, kind: str):
    """Every linear (not lm_head) computes qdq(x) @ qdq(W).T + b with Model Optimizer's MX code; restored on exit."""
    qdq = modelopt_qdq(kind)
    saved, hooks = [], []
    with torch.no_grad():
        for lin in _linears(model):
            saved.append((lin, lin.weight.data))
            lin.weight.data = qdq(lin.weight.data)
            hooks.append(lin.register_forward_pre_hook(lambda m, a: (qdq(a[0]),) + tuple(a[1:])))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for lin, w in saved:
            lin.weight.data = w


def weight_disagreement(model, kind: str) -> tuple[int, int]:
    """(weights where Model Optimizer and qeval ``<kind>:rceil`` dequantize differently, weights)."""
    qdq, fmt = modelopt_qdq(kind), get_format(f"{kind}:rceil")
    diff = total = 0
    with torch.no_grad():
        for lin in _linears(model):
            w = lin.weight.data
            diff += int((qdq(w) != fmt.fake_quant(w)).sum())
            total += w.numel()
    return diff, total


def measure(model, token_ids, windows, base_logps) -> dict:
    nll = kl_sum = kl_sq = 0.0
    top1 = n = 0
    for w, base in zip(windows, base_logps):
        logq = log_softmax_rows(window_logits(model, token_ids, w))
        targets = token_ids[w.first_target : w.stop_target]
        nll += nll_sum(logq, targets)
        kl = kl_rows(base, logq).double()
        kl_sum += float(kl.sum())
        kl_sq += float((kl * kl).sum())
        top1 += top1_matches(base, logq)
        n += logq.shape[0]
    mean = kl_sum / n
    se = math.sqrt(max(kl_sq / n - mean * mean, 0.0) / n)
    return {"ppl": math.exp(nll / n), "kl": mean, "kl_se": se, "top1": top1 / n, "tokens": n}


def load(recipe_path: str, tokens: int | None):
    """(recipe, model, tokenizer, token ids, windows) as ``qeval run`` would build them."""
    recipe, _ = load_recipe(recipe_path)
    torch.manual_seed(recipe.seed)
    model, tok = load_model(recipe.model)
    max_tokens = tokens or recipe.eval_data.max_tokens
    ids = torch.as_tensor(token_stream(tok, load_text(recipe.eval_data.text_spec()), max_tokens)).view(-1).long()
    ppl = recipe.metrics.perplexity
    windows = sliding_windows(int(ids.numel()), min(ppl.window, int(ids.numel())), ppl.stride or ppl.window)
    return recipe, model, tok, ids, windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recipe", nargs="?", default="recipes/quickstart.yaml")
    ap.add_argument("--tokens", type=int, default=None, help="evaluation tokens (default: the recipe's)")
    args = ap.parse_args()
    recipe, model, tok, ids, windows = load(args.recipe, args.tokens)
    ppl = recipe.metrics.perplexity
    with torch.no_grad():
        base_logps = [log_softmax_rows(window_logits(model, ids, w)) for w in windows]
        rows = [("baseline", "-", measure(model, ids, windows, base_logps))]
        for kind in ("mxfp8", "mxfp4"):
            for spec, rule in ((kind, "floor (OCP)"), (f"{kind}:rceil", "rceil")):
                pol = {"name": spec, "rules": [{"kind": "linear", "weights": spec, "activations": spec, "act_scale": "dynamic"}]}
                with quantized(model, pol):
                    rows.append((f"qeval {spec}", rule, measure(model, ids, windows, base_logps)))
            with modelopt_model(model, kind):
                rows.append((f"Model Optimizer {kind.upper()}", "ceil(log2(amax/max))", measure(model, ids, windows, base_logps)))
            diff, total = weight_disagreement(model, kind)
            rows.append((f"  weights MO != qeval {kind}:rceil", f"{diff} of {total}", None))
    print(f"{recipe.name}: {rows[0][2]['tokens']} tokens, windows of {ppl.window}, model dtype {recipe.model.dtype}")
    print(f"{'variant':<34} {'scale rule':<22} {'ppl':>8} {'KL mean':>18} {'top-1':>7}")
    for name, rule, m in rows:
        if m is None:
            print(f"{name:<34} {rule}")
        else:
            print(f"{name:<34} {rule:<22} {m['ppl']:>8.3f} {m['kl']:>9.5f} +- {m['kl_se']:.5f} {m['top1']:>7.4f}")


if __name__ == "__main__":
    main()
