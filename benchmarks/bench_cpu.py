"""CPU evaluation speed of each emulated policy as a share of the baseline's, in one run (issue 11).

    PYTHONPATH=. python benchmarks/bench_cpu.py [recipes/quickstart.yaml] [--tokens 1024] [--repeats 3]
    PYTHONPATH=. python benchmarks/bench_cpu.py --random configs/models/smollm2-135m   # no model package, no text

The recipe's model, text and windows; each policy quantized once (not timed),
then its evaluation pass (forward, log-softmax, KL and top-1 against the
baseline held in memory) timed alternately with the baseline's own pass, so
that load on a shared machine hits both alike. Each pass starts as in
``qeval run`` (``peaks.reset``; a policy's right after its quantize_model), in
the allocator regime ``qeval run`` sets on a CPU (``--malloc run``:
``qeval.pipeline.heap.steady``, heap only, trimmed at each pass's start) or in
glibc's defaults (``--malloc glibc``: what a run got before qeval set the
regime: a fresh mmap, and its page faults, for every vocabulary-sized tensor
of every window), or in that regime without the trim at each pass's start
(``--malloc keep``: every pass reuses the pages the last one left, none is
faulted again; what a pass costs without the trim, whose re-faults cost more in
some virtual machines than in others). Prints the median seconds,
speed = baseline time / policy time (the target: >= 0.85 for every policy),
the page faults of each kind of pass, and the same speed by user CPU time with
each pass's system time (page faults, mostly) beside it.
``--random CONFIG_DIR`` builds the recipe's architecture from a config with
seeded random float32 weights and random token ids instead (same shapes, so
the same costs), for hosts without the model package or the text.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from types import SimpleNamespace

import torch

from qeval.evaluate.baseline_store import DeviceSpill
from qeval.evaluate.stream import Shard, lm_pass
from qeval.pipeline import heap, peaks
from qeval.pipeline.recipe import load_recipe
from qeval.pipeline.runner import RunOptions, _prepare, apply_overrides
from qeval.quantize import dequantize_model, quantize_model


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def faults() -> int:
    """Minor page faults of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(fn, clock=time.perf_counter, fault_log: list | None = None, cpu_log: list | None = None) -> float:
    """``clock`` seconds of ``fn()``; appends its page faults and its (user, system) CPU seconds to the logs."""
    f, t, u = faults(), clock(), resource.getrusage(resource.RUSAGE_SELF)
    fn()
    t = clock() - t
    if fault_log is not None:
        fault_log.append(faults() - f)
    if cpu_log is not None:
        v = resource.getrusage(resource.RUSAGE_SELF)
        cpu_log.append((v.ru_utime - u.ru_utime, v.ru_stime - u.ru_stime))
    return t


def _random_context(recipe, config_dir: str, tokens: int) -> SimpleNamespace:
    """The recipe's windows over ``tokens`` random ids, a seeded random float32 model of ``config_dir``'s shape."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from qeval.evaluate.perplexity import sliding_windows

    torch.manual_seed(recipe.seed)
    config = AutoConfig.from_pretrained(config_dir)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
    ids = torch.randint(config.vocab_size, (tokens,))
    ppl = recipe.metrics.perplexity
    calib = None
    if recipe.calibration is not None:
        c = recipe.calibration
        calib = [torch.randint(config.vocab_size, (1, c.seq_len)) for _ in range(c.n_batches)]
    return SimpleNamespace(model=model, token_ids=ids, windows=sliding_windows(tokens, ppl.window, ppl.stride or ppl.window),
                           calibration=calib)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe", nargs="?", default="recipes/quickstart.yaml")
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--policies", help="comma-separated (default: the recipe's)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time, or the process's CPU time (steadier on a machine shared with other jobs)")
    p.add_argument("--random", metavar="CONFIG_DIR", help="random weights of this config's shape, random tokens")
    p.add_argument("--malloc", choices=["run", "keep", "glibc"], default="run",
                   help="run: the regime qeval run sets on a CPU (qeval/pipeline/heap.py); keep: the same without "
                        "the trim at each pass's start; glibc: glibc's defaults")
    args = p.parse_args(argv)
    with heap.steady(args.malloc != "glibc") as on:
        malloc = "run (heap only, trimmed per pass)" if on else "glibc defaults"
        if args.malloc == "keep" and on:
            malloc = "keep (heap only, never trimmed)"
            heap.trim = lambda: False  # this process only: peaks.reset then keeps the heap's pages
        if args.malloc != "glibc" and not on:
            malloc += " (heap.steady unavailable here)"
        return _bench(args, malloc)


def _bench(args, malloc: str) -> int:
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    recipe, _ = load_recipe(args.recipe)
    apply_overrides(recipe, RunOptions(limit_tokens=args.tokens))
    ctx = _random_context(recipe, args.random, args.tokens) if args.random else \
        _prepare(recipe, None, RunOptions(progress=False), Shard())
    store = DeviceSpill("cpu", "float32")
    chunk = recipe.metrics.chunk

    def base_pass():
        lm_pass(ctx.model, ctx.token_ids, ctx.windows, store, baseline=True, chunk=chunk, progress=False)

    def policy_pass():
        lm_pass(ctx.model, ctx.token_ids, ctx.windows, store, baseline=False, chunk=chunk, progress=False)

    def start_pass():  # what qeval run does before a pass (and before a policy's quantize_model)
        peaks.reset(ctx.model)

    base_pass()  # warm-up, and the store every policy reads
    names = args.policies.split(",") if args.policies else recipe.policy_names()
    rows = []
    for name, source in zip(recipe.policy_names(), recipe.policies):
        if name not in names:
            continue

        def quantize():
            quantize_model(ctx.model, source, mode=recipe.mode, calibration=ctx.calibration, progress=False)

        quantize()
        policy_pass()  # warm-up
        dequantize_model(ctx.model)
        qt, bt, qf, bf, qc, bc = [], [], [], [], [], []
        for _ in range(args.repeats):
            start_pass()
            quantize()
            qt.append(timed(policy_pass, clock, qf, qc))
            dequantize_model(ctx.model)
            start_pass()
            bt.append(timed(policy_pass, clock, bf, bc))  # the baseline's weights, read against the store
        ratios = [b / q for b, q in zip(bt, qt)]
        user = [b[0] / q[0] for b, q in zip(bc, qc)]
        rows.append((name, statistics.median(bt), statistics.median(qt), statistics.median(ratios), min(ratios),
                     statistics.median(bf), statistics.median(qf), statistics.median(user),
                     statistics.median(c[1] for c in bc), statistics.median(c[1] for c in qc)))
        print(rows[-1], flush=True)
    print(f"\n{recipe.name}: {len(ctx.token_ids)} tokens, {len(ctx.windows)} windows, {args.threads} threads, "
          f"{args.repeats} alternating repeats, {args.clock} clock, malloc {malloc}")
    print("policy | baseline s (median) | policy s (median) | speed vs baseline (median of pairs) | worst pair"
          " | page faults per pass, baseline / policy (median) | speed by user CPU time (median of pairs)"
          " | system CPU s per pass, baseline / policy (median)")
    for n, b, q, r, lo, fb, fq, u, sb, sq in rows:
        print(f"{n} | {b:.2f} | {q:.2f} | {r:.2f}x | {lo:.2f}x | {fb:.0f} / {fq:.0f} | {u:.2f}x | {sb:.2f} / {sq:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
