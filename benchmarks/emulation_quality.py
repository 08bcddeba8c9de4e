"""How much the exact emulation moves quality metrics against the fake-quant emulation (issue 18).

    PYTHONPATH=. python3 benchmarks/emulation_quality.py [recipes/quickstart.yaml] [--tokens 2048]

The recipe's model and text (the quickstart: SmolLM2-135M, 2,048 tokens,
windows of 512, the Lee calibration batches), as loaded (float32) and cast to
BF16; for nvfp4, nvfp4-weight-only and mixed-fp4-fp8, perplexity, mean KL and
top-1 against the unquantized model of the same dtype under
``emulation="fake_quant"`` and ``"exact"``.
"""

from __future__ import annotations

import argparse

import torch

from mx_scale_rules import load, measure  # same folder
from qeval.data import calibration_batches
from qeval.evaluate.perplexity import log_softmax_rows, window_logits
from qeval.quantize import quantized

POLICIES = ["nvfp4", "nvfp4-weight-only", "mixed-fp4-fp8"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recipe", nargs="?", default="recipes/quickstart.yaml")
    ap.add_argument("--tokens", type=int, default=None)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()
    recipe, model, tok, ids, windows = load(args.recipe, args.tokens)
    c = recipe.calibration
    calib = calibration_batches(tok, c.text_spec(), c.n_batches, c.seq_len)
    print(f"{recipe.name}: {int(ids.numel())} tokens, windows of {recipe.metrics.perplexity.window}")
    print(f"{'dtype':<9} {'policy':<18} {'emulation':<11} {'ppl':>8} {'KL mean':>20} {'top-1':>7}", flush=True)
    for name in args.dtypes.split(","):
        model = model.to(getattr(torch, name))
        with torch.no_grad():
            base = [log_softmax_rows(window_logits(model, ids, w)) for w in windows]
            for policy in POLICIES:
                for emulation in ("fake_quant", "exact"):
                    with quantized(model, policy, calibration=calib, emulation=emulation):
                        m = measure(model, ids, windows, base)
                    print(f"{name:<9} {policy:<18} {emulation:<11} {m['ppl']:>8.4f} {m['kl']:>10.6f} +- {m['kl_se']:.6f}"
                          f" {m['top1']:>7.4f}", flush=True)


if __name__ == "__main__":
    main()
