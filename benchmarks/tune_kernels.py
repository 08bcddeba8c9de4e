"""Measure launch shapes of qeval's kernels on this GPU and keep the fastest (configs/kernels.yaml).

Run on a CUDA GPU::

    PYTHONPATH=. python3 benchmarks/tune_kernels.py --write configs/kernels.yaml

For each kernel key of configs/kernels.yaml, every candidate shape runs the
kernel's benchmark operations on one 1 GiB bf16 tensor (16384 x 32768, the
tensor of bench_gpu.py; FP8 per-token also at 65536 x 8192); the shape with the
smallest summed median time (``triton.testing.do_bench``) wins. ``--write``
stores the winners under ``devices: <this GPU's name>``. Shapes must change speed
only: a candidate whose outputs differ in any bit from the current shape's, on
that tensor or on a small one with masked edges, NaN, Inf and a zero block, is
reported and never chosen (tests/test_kernels.py compares shapes with the reference).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import yaml

from qeval import kernels
from qeval.kernels import launch, tuning

TILES = [dict(tile=t, max_bk=b, warps=w) for t, b, w in ((4096, 512, 4), (8192, 512, 8), (8192, 1024, 4), (16384, 1024, 8))]
CANDIDATES = {
    "nvfp4": TILES, "mx": TILES, "fp4_dequant": TILES, "fp8_block": TILES,
    # NVFP4's pair kernel holds at most 32 elements per thread (launch.PAIRS_NVFP4_MAX_PER_THREAD)
    "fp4_pairs": [dict(c, iters=1) for c in TILES] + [dict(tile=t, max_bk=b, warps=w, iters=i) for t, b, w, i in (
        (2048, 512, 2, 1), (4096, 1024, 4, 1), (2048, 512, 2, 2), (2048, 512, 2, 4), (2048, 512, 2, 8),
        (2048, 512, 2, 16), (4096, 512, 4, 4), (4096, 1024, 4, 4), (2048, 256, 2, 4), (1024, 512, 1, 8))],
    "mx_quant": TILES + [dict(tile=8192, max_bk=256, warps=4), dict(tile=16384, max_bk=512, warps=8)],
    "fp8_tensor": [dict(tile=t, warps=w) for t, w in ((4096, 4), (8192, 8), (16384, 8))],
    "fp8_tile2d": [dict(warps=w, chunk=c) for w, c in ((4, 32), (4, 16), (8, 32), (8, 64))],
    "fp8_row": [dict(max_single=16384), dict(max_single=32768, max_warps=32, per_thread=32),
                dict(max_single=8192, sweep_bk=8192, sweep_warps=16), dict(max_single=8192, sweep_bk=4096, sweep_warps=8),
                dict(max_single=16384, sweep_bk=2048, sweep_warps=4), dict(max_single=16384, sweep_bk=8192, sweep_warps=8),
                dict(max_single=8192, sweep_bk=16384, sweep_warps=16), dict(max_single=8192, sweep_bk=16384, sweep_warps=8),
                dict(max_single=8192, sweep_bk=32768, sweep_warps=16), dict(max_single=8192, sweep_bk=8192, sweep_warps=4)],
    "amax": [dict(block=b, iters=i, warps=w) for b, i, w in ((4096, 8, 8), (16384, 2, 16))],
}
# Keys whose grid may run along the columns first ("order": "k"); --orders tries just that.
ORDERED = ("nvfp4", "mx", "mx_quant", "fp4_pairs", "fp4_dequant", "fp8_block", "fp8_tile2d")


def operations(x: torch.Tensor) -> dict:
    """Kernel key -> the calls that time it (those of bench_gpu.py that use the key), each
    returning its output."""
    a = kernels.global_amax(x)
    act = x.view(65536, 8192) if x.numel() == 65536 * 8192 else x
    fq = kernels.fake_quant
    q = kernels.quantize

    def no_pairs(fn):
        def run():
            launch.PAIRS = False
            try:
                return fn()
            finally:
                launch.PAIRS = True
        return run

    packed = {s: q(s, x, role="activation") for s in ("nvfp4", "mxfp4")}
    return {
        "nvfp4": [lambda: fq("nvfp4", x, amax=a, role="activation")],
        "mx": [lambda: fq("mxfp8", x, role="activation"), lambda: fq("mxfp4", x, role="activation")],
        "mx_quant": [lambda: q("mxfp8", x, role="activation"), no_pairs(lambda: q("mxfp4", x, role="activation"))],
        "fp4_pairs": [lambda: q("nvfp4", x, amax=a, role="activation"), lambda: q("mxfp4", x, role="activation")],
        "fp4_dequant": [lambda: kernels.dequantize(packed["nvfp4"], torch.bfloat16),
                        lambda: kernels.dequantize(packed["mxfp4"], torch.bfloat16)],
        "fp8_block": [lambda: fq("fp8_e4m3:block128", x, role="activation")],
        "fp8_tensor": [lambda: fq("fp8_e4m3", x, amax=a, role="activation"),
                       lambda: q("fp8_e4m3", x, amax=a, role="activation")],
        "fp8_tile2d": [lambda: fq("fp8_e4m3:block128", x, role="weight")],
        "fp8_row": [lambda: fq("fp8_e4m3:token", x, role="activation"), lambda: fq("fp8_e4m3:token", act),
                    lambda: kernels.quantize_fp8_rowwise(act)],
        "amax": [lambda: kernels.global_amax(x)],
    }


def odd_tensors() -> list[torch.Tensor]:
    """Masked edges in both dims, a NaN, an Inf and an all-zero block, in short and in long
    rows (FP8 per-row sweeps those): where a launch shape right on the aligned tensor can
    still go wrong."""
    g = torch.Generator().manual_seed(31)
    out = []
    for shape in ((333, 4112), (77, 32832)):
        x = torch.randn(shape, generator=g) * 30
        x[5, 17], x[70, 4000], x[7, :32] = float("nan"), float("inf"), 0.0
        out.append(x.to("cuda", torch.bfloat16))
    return out


def bits(out) -> list[torch.Tensor]:
    """Every bit of an operation's output (tensor, tuple, or QTensor with its scales)."""
    if isinstance(out, (tuple, list)):
        return [b for o in out for b in bits(o)]
    if isinstance(out, torch.Tensor):
        return [out.detach().contiguous().view(torch.uint8).clone()]
    return bits([t for t in (out.data, out.scale, out.global_scale) if t is not None])


def outputs(key: str, op_sets: list[dict]) -> list[torch.Tensor]:
    return [b for ops in op_sets for fn in ops[key] for b in bits(fn())]


class _NoAliases(yaml.SafeDumper):
    """Writes a shape shared by two keys twice, not as a YAML anchor and alias."""

    def ignore_aliases(self, data):
        return True


def tune(keys=None, rep=60, orders=False) -> dict:
    import triton

    torch.manual_seed(0)
    x = torch.randn(16384, 32768, device="cuda", dtype=torch.bfloat16)
    ops = operations(x)
    op_sets = [ops] + [operations(t) for t in odd_tensors()]
    best = {}
    for key in keys or (ORDERED if orders else CANDIDATES):
        times = []
        current = tuning.config(key, x.device)
        want = outputs(key, op_sets)
        for cand in ([{**current, "order": o} for o in ("m", "k")] if orders else CANDIDATES[key]):
            try:
                with tuning.override(key, cand):
                    ts = [triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode="median") for fn in ops[key]]
                    same = all(torch.equal(g, w) for g, w in zip(outputs(key, op_sets), want, strict=True))
            except Exception as e:  # a shape that does not compile or fit is skipped, not fatal
                print(f"{key} {cand}: {type(e).__name__}: {str(e)[:120]}", flush=True)
                continue
            print(f"{key:12s} {json.dumps(cand):75s} {sum(ts):.4f} ms ({' + '.join(f'{t:.4f}' for t in ts)})"
                  + ("" if same else "  DIFFERENT BITS from the current shape: not chosen"), flush=True)
            if same:
                times.append((sum(ts), cand))
        if not times:
            print(f"-> {key}: no candidate ran with the current shape's bits; left as it is", flush=True)
            continue
        t, cand = min(times, key=lambda tc: tc[0])
        base = times[0][0]
        print(f"-> {key}: {json.dumps(cand)} {t:.4f} ms ({base / t:.2f}x the first candidate)", flush=True)
        best[key] = cand
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", metavar="YAML", help="store the winners for this GPU in this kernels.yaml")
    p.add_argument("--keys", help="comma-separated kernel keys (default: all)")
    p.add_argument("--orders", action="store_true",
                   help="keep each key's current shape and try only the grid order (rows first or columns first)")
    args = p.parse_args(argv)
    if not kernels.available():
        print("needs CUDA and Triton", file=sys.stderr)
        return 2
    best = tune(args.keys.split(",") if args.keys else None, orders=args.orders)
    name = torch.cuda.get_device_name()
    print(yaml.safe_dump({"devices": {name: best}}, default_flow_style=None, sort_keys=False))
    if args.write:
        with open(args.write) as f:
            text = f.read()
        data = yaml.safe_load(text)
        devices = data.get("devices") or {}
        own = devices.get(name) or {}
        # a candidate was measured over the GPU's current entry (tuning.config merges them): store both
        devices[name] = {**own, **{key: {**(own.get(key) or {}), **cand} for key, cand in best.items()}}
        head = text.split("\ndefault:")[0]  # keep the comment block
        body = yaml.dump({"default": data["default"], "devices": devices}, Dumper=_NoAliases, default_flow_style=None,
                         sort_keys=False, width=120)
        with open(args.write, "w") as f:
            f.write(head + "\n" + body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
