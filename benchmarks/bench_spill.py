"""The KL error a float16 baseline spill adds, measured on real text (the quickstart's model and data).

    PYTHONPATH=. python benchmarks/bench_spill.py [recipes/quickstart.yaml] [--policies fp8-dynamic,nvfp4]

Runs the baseline once into a float32 spill and once into a float16 one, then
each policy against both, and prints KL mean / p99 / top-1 through each with
the difference. Same model, tokens and windows as ``qeval run`` of the recipe.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from qeval.evaluate.divergence import BaselineSpill
from qeval.evaluate.stream import Shard, lm_pass
from qeval.pipeline.recipe import load_recipe
from qeval.pipeline.runner import RunOptions, _prepare, seed_everything
from qeval.quantize import quantized


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe", nargs="?", default="recipes/quickstart.yaml")
    p.add_argument("--policies", default="fp8-dynamic,nvfp4")
    args = p.parse_args(argv)
    recipe, _ = load_recipe(args.recipe)
    ctx = _prepare(recipe, None, RunOptions(progress=False), Shard())
    chunk = recipe.metrics.chunk
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        spills = {d: BaselineSpill(Path(tmp) / f"{d}.npy", {}, dtype=d) for d in ("float32", "float16")}
        for s in spills.values():
            seed_everything(recipe.seed)
            lm_pass(ctx.model, ctx.token_ids, ctx.windows, s, baseline=True, chunk=chunk, progress=False)
        for name in args.policies.split(","):
            with quantized(ctx.model, name, mode=recipe.mode, calibration=ctx.calibration, progress=False):
                got = {}
                for d, s in spills.items():
                    seed_everything(recipe.seed)
                    t = time.perf_counter()
                    got[d] = lm_pass(ctx.model, ctx.token_ids, ctx.windows, s, baseline=False, chunk=chunk,
                                     progress=False)
                    got[d]["s"] = time.perf_counter() - t
            a, b = got["float32"], got["float16"]
            rows.append((name, a["tokens"], a["kl_mean"], b["kl_mean"], b["kl_mean"] - a["kl_mean"],
                         (b["kl_mean"] - a["kl_mean"]) / a["kl_mean"], a["kl_p99"], b["kl_p99"],
                         a["top1_agreement"], b["top1_agreement"]))
    vocab = ctx.model.get_output_embeddings().weight.shape[0]
    print(f"\n{recipe.name}: {len(ctx.token_ids)} tokens, vocab {vocab}, windows {len(ctx.windows)}")
    print("policy | tokens | KL mean f32 | KL mean f16 | diff | rel diff | KL p99 f32 | KL p99 f16 | top-1 f32 | top-1 f16")
    for r in rows:
        print(" | ".join([r[0], str(r[1])] + [f"{v:.6g}" for v in r[2:4]] + [f"{r[4]:+.3g}", f"{r[5]:+.3%}"]
                         + [f"{v:.6g}" for v in r[6:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
