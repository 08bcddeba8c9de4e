"""GPU benchmark of qeval's kernels, linears and end-to-end evaluation throughput (issue 6).

Run on a CUDA GPU (the lent H100)::

    PYTHONPATH=. python3 benchmarks/bench_gpu.py --out results.json [--sections kernels,linear,e2e]

(a) kernels: each quantizer on one 1 GiB bf16 tensor (16384 x 32768); effective
    GB/s counts bytes read + written (fake-quant 2 + 2 B/element; quantize
    2 B + codes + scales; a dynamic per-tensor scale 2 B more, for the amax
    pass: see "Bytes counted" below), as a share of a device-to-device copy
    timed in the same run, beside torchao's compiled ``to_mx``. (b) linears at
    4096x4096 and 8192x8192 with 8192 tokens, as ratios to the BF16 GEMM of
    the same run. (c) tokens/s of a ~1B Llama-shaped
    random model (prefill-style scoring) for BF16 vs emulated FP8 / NVFP4, with
    peak GPU memory. Times are medians of ``triton.testing.do_bench``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from qeval import kernels
from qeval.formats import get_format


REP_SCALE = 1.0  # --rep-scale: shorter timing windows for a quick run


def bench(fn, rep=300) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=50 * REP_SCALE, rep=rep * REP_SCALE, return_mode="median")


def table(rows, cols):
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    lines = [" | ".join(c.ljust(w) for c, w in zip(cols, widths)), "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(lines)


# --- (a) kernels -------------------------------------------------------------
# Bytes counted per element of the bf16 input, the least each operation must move
# through device memory, each input read once and each output written once:
#   fake-quant 2 in + 2 out = 4 B; packed quantize 2 in + codes + scales; dequantize
#   codes + scales in + 2 out. Per-token, 1x128, 128x128, MX and NVFP4 block scales
#   are computed in registers from the tile being quantized: one pass.
#   A dynamic per-tensor scale (FP8 per-tensor, the NVFP4 global scale) needs the
#   amax of the whole tensor before its first element is quantized. The 1 GiB tensor
#   is ~18x the L2 (60 MB on an H200), and registers + shared memory hold less, so the
#   input must be read twice: 2 (amax) + 2 + 2 = 6 B per element ("3 passes").
#   The share column is GB/s on those bytes over the copy's GB/s of the same run.
TARGETS = {"fake": 0.85, "dequant": 0.85, "quant": 0.70}


def section_kernels(res):
    x = torch.randn(16384, 32768, device="cuda", dtype=torch.bfloat16)
    n = x.numel()
    y = torch.empty_like(x)
    t_copy = bench(lambda: y.copy_(x))
    copy_bw = 4 * n / t_copy / 1e6  # GB/s, read + write
    del y
    amax = kernels.global_amax(x)
    rows = [{"quantizer": "copy (bf16 -> bf16)", "ms": f"{t_copy:.3f}", "GB/s": f"{copy_bw:.0f}", "share": "100%"}]
    times = {}

    def add(name, fn, nbytes, kind=None, basis="", rep=300):
        torch.cuda.synchronize()
        t = bench(fn, rep)
        times[name] = t
        bw = nbytes / t / 1e6
        row = {"quantizer": name, "ms": f"{t:.3f}", "GB/s": f"{bw:.0f}", "share": f"{bw / copy_bw:.1%}", "bytes": basis}
        if kind in TARGETS:
            row["target"] = f">= {TARGETS[kind]:.0%}"
            row["met"] = "yes" if bw / copy_bw >= TARGETS[kind] else "NO"
        rows.append(row)
        print(row, flush=True)

    fq, fq3 = 4 * n, 6 * n
    add("global amax (read only)", lambda: kernels.global_amax(x), 2 * n, basis="2 B/el")
    cases = [
        ("nvfp4", amax, "NVFP4 fake-quant, global amax known", fq, "4 B/el"),
        ("nvfp4", None, "NVFP4 fake-quant, dynamic (amax pass + quantize)", fq3, "6 B/el, 3 passes"),
        ("fp8_e4m3", amax, "FP8 E4M3 per-tensor fake-quant, static", fq, "4 B/el"),
        ("fp8_e4m3", None, "FP8 E4M3 per-tensor fake-quant, dynamic", fq3, "6 B/el, 3 passes"),
        ("fp8_e4m3:token", None, "FP8 E4M3 per-token fake-quant", fq, "4 B/el"),
        ("fp8_e4m3:block128", None, "FP8 E4M3 1x128 (activation) fake-quant", fq, "4 B/el"),
        ("mxfp8", None, "MXFP8 fake-quant (floor)", fq, "4 B/el"),
        ("mxfp4", None, "MXFP4 fake-quant (floor)", fq, "4 B/el"),
    ]
    for spec, a, name, nbytes, basis in cases:
        add(name, lambda: kernels.fake_quant(spec, x, amax=a, role="activation"), nbytes, "fake", basis)
    add("FP8 E4M3 128x128 (weight) fake-quant", lambda: kernels.fake_quant("fp8_e4m3:block128", x, role="weight"),
        fq, "fake", "4 B/el")
    q4, q4mx, q8mx = 2 * n + n // 2 + n // 16, 2 * n + n // 2 + n // 32, 3 * n + n // 32
    quant = [
        ("nvfp4", amax, "NVFP4 quantize (packed), amax known", q4, "2.56 B/el"),
        ("nvfp4", None, "NVFP4 quantize (packed), dynamic", q4 + 2 * n, "4.56 B/el, 3 passes"),
        ("fp8_e4m3", amax, "FP8 per-tensor quantize, static", 3 * n, "3 B/el"),
        ("fp8_e4m3:token", None, "FP8 per-token quantize (fused act quant)", 3 * n + 4 * 16384, "3 B/el"),
        ("mxfp8", None, "MXFP8 quantize (floor)", q8mx, "3.03 B/el"),
        ("mxfp8:rceil", None, "MXFP8 quantize (rceil)", q8mx, "3.03 B/el"),
        ("mxfp4", None, "MXFP4 quantize (floor)", q4mx, "2.53 B/el"),
        ("mxfp4:rceil", None, "MXFP4 quantize (rceil)", q4mx, "2.53 B/el"),
    ]
    for spec, a, name, nbytes, basis in quant:
        add(name, lambda: kernels.quantize(spec, x, amax=a, role="activation"), nbytes, "quant", basis)
    for spec, name in (("nvfp4", "NVFP4 dequantize (packed -> bf16)"), ("mxfp4", "MXFP4 dequantize (packed -> bf16)")):
        qt = kernels.quantize(spec, x, role="activation")
        add(name, lambda: kernels.dequantize(qt, torch.bfloat16), 2 * n + n // 2 + qt.scale.numel(), "dequant",
            "2.53-2.56 B/el")
        del qt
    x_act = x.view(65536, 8192)  # activation-shaped: rows fit one tile (single read)
    add("FP8 per-token quantize (fused act quant), 65536 x 8192",
        lambda: kernels.quantize_fp8_rowwise(x_act), 3 * n + 4 * 65536, "quant", "3 B/el")
    add("FP8 per-token fake-quant, 65536 x 8192",
        lambda: kernels.fake_quant("fp8_e4m3:token", x_act, role="activation"), fq, "fake", "4 B/el")
    _torchao_rows(x, add, times, rows, q8mx, q4mx)
    # the plain-torch reference for scale (eager), on a 1/8 slice to keep it short
    xs = x[:2048]
    t = bench(lambda: get_format("nvfp4")._quantize(xs, None, "activation").dequantize(torch.bfloat16), rep=200)
    bw = 4 * xs.numel() / t / 1e6
    rows.append({"quantizer": "NVFP4 fake-quant, plain-torch reference (1/8 tensor)", "ms": f"{t * 8:.3f} (x8)",
                 "GB/s": f"{bw:.0f}", "share": f"{bw / copy_bw:.1%}"})
    res["kernels"] = {"copy_GBps": copy_bw, "rows": rows, "device": torch.cuda.get_device_name()}
    print("\n(a) quantizers on a 1 GiB bf16 tensor (16384 x 32768); share = GB/s on the bytes column over copy's"
          "\n" + table(rows, ["quantizer", "ms", "GB/s", "share", "bytes", "target", "met"]))
    del x


def _torchao_rows(x, add, times, rows, q8mx, q4mx):
    """torchao's to_mx under torch.compile, the peer for MX quantize, and whether qeval is no slower."""
    try:
        from torchao.prototype.mx_formats.mx_tensor import ScaleCalculationMode, to_mx
    except ImportError as e:
        rows.append({"quantizer": f"torchao to_mx: not installed ({e})"})
        return
    import torchao

    for spec, elem, mode, nbytes in (("mxfp8", torch.float8_e4m3fn, "FLOOR", q8mx),
                                     ("mxfp8:rceil", torch.float8_e4m3fn, "RCEIL", q8mx),
                                     ("mxfp4", torch.float4_e2m1fn_x2, "FLOOR", q4mx),
                                     ("mxfp4:rceil", torch.float4_e2m1fn_x2, "RCEIL", q4mx)):
        fn = torch.compile(lambda t, e=elem, m=mode: to_mx(t, e, 32, getattr(ScaleCalculationMode, m)))
        name = f"torchao {torchao.__version__} to_mx {spec} (torch.compile)"
        try:
            fn(x)
        except Exception as e:  # a peer failure is reported, not fatal
            rows.append({"quantizer": f"{name}: {type(e).__name__}: {str(e)[:80]}"})
            continue
        add(name, lambda: fn(x), nbytes, basis="same as qeval's")
        ours = {"mxfp8": "MXFP8 quantize (floor)", "mxfp8:rceil": "MXFP8 quantize (rceil)",
                "mxfp4": "MXFP4 quantize (floor)", "mxfp4:rceil": "MXFP4 quantize (rceil)"}[spec]
        rows[-1]["target"] = f"qeval <= this ({ours})"
        rows[-1]["met"] = "yes" if times[ours] <= times[name] else "NO"


# --- (b) linears ---------------------------------------------------------------
def section_linear(res):
    rows = []
    m = 8192
    for size in (4096, 8192):
        torch.manual_seed(0)
        x = torch.randn(m, size, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(size, size, device="cuda", dtype=torch.bfloat16) * 0.02
        a_x = kernels.global_amax(x)
        flop = 2 * m * size * size
        w_fp8 = get_format("fp8_e4m3").fake_quant(w)  # cached, quantized once
        w_nv = get_format("nvfp4").fake_quant(w)
        q_nv = get_format("nvfp4").quantize(w)  # packed storage
        w8_t, s8_t = kernels.prepare_fp8_weight(w, "tensor")
        w8_c, s8_c = kernels.prepare_fp8_weight(w, "channel")
        variants = {
            "BF16": lambda: F.linear(x, w),
            "emulated FP8 W8A8 (act per-tensor static)": lambda: F.linear(kernels.fake_quant("fp8_e4m3", x, amax=a_x), w_fp8),
            "emulated FP8 W8A8 (act per-token)": lambda: F.linear(kernels.fake_quant("fp8_e4m3:token", x), w_fp8),
            "emulated NVFP4 W4A4 (static global amax)": lambda: F.linear(kernels.fake_quant("nvfp4", x, amax=a_x), w_nv),
            "emulated NVFP4 W4A4 (dynamic global amax)": lambda: F.linear(kernels.fake_quant("nvfp4", x), w_nv),
            "NVFP4 weight-only, cached dequantized weight": lambda: F.linear(x, w_nv),
            "NVFP4 weight-only, packed + torch dequant per call": lambda: F.linear(x, q_nv.dequantize(torch.bfloat16)),
            "NVFP4 weight-only, packed + kernel dequant per call":
                lambda: F.linear(x, kernels.dequantize(q_nv, torch.bfloat16)),
            "native FP8 per-tensor (static act amax)": lambda: kernels.fp8_linear(x, w8_t, s8_t, act_amax=a_x),
            "native FP8 row-wise (fused per-token act quant)": lambda: kernels.fp8_linear(x, w8_c, s8_c),
            "native FP8 row-wise, fast accum": lambda: kernels.fp8_linear(x, w8_c, s8_c, fast_accum=True),
        }
        xq, xs = kernels.quantize_fp8_rowwise(x)
        sb = s8_c.reshape(1, -1).contiguous()
        variants["_scaled_mm row-wise alone (no act quant)"] = lambda: torch._scaled_mm(
            xq, w8_c.t(), scale_a=xs, scale_b=sb, out_dtype=torch.bfloat16)
        base = None
        for name, fn in variants.items():
            t = bench(fn, rep=200)
            base = base or t
            rows.append({"shape": f"{m}x{size}x{size}", "linear": name, "ms": f"{t:.3f}",
                         "TFLOP/s": f"{flop / t / 1e9:.0f}", "vs BF16": f"{base / t:.2f}x"})
            print(rows[-1], flush=True)
        del x, w, w_fp8, w_nv, q_nv, w8_t, w8_c, xq
    res["linear"] = rows
    print("\n(b) linear layers, 8192 tokens\n" + table(rows, ["shape", "linear", "ms", "TFLOP/s", "vs BF16"]))


# --- (c) end to end ----------------------------------------------------------
def llama_1b():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    return model.eval()


class EmuLinear(torch.nn.Module):
    """Fallback emulation when qeval.quantize is unavailable: weight fake-quantized once in place
    (no second copy), activations through one fused kernel per call."""

    def __init__(self, lin, spec, amax):
        super().__init__()
        self.lin, self.spec, self.amax = lin, spec, amax
        with torch.no_grad():
            lin.weight.copy_(kernels.fake_quant(spec, lin.weight))

    def forward(self, x):
        return F.linear(kernels.fake_quant(self.spec, x, amax=self.amax, role="activation"), self.lin.weight,
                        self.lin.bias)


def _emulate_fallback(model, spec, batch):
    amaxes = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=name: amaxes.__setitem__(n, kernels.global_amax(a[0])))
             for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in name]
    with torch.no_grad():
        model(batch)
    for h in hooks:
        h.remove()
    for name, amax in amaxes.items():
        parent = model.get_submodule(name.rsplit(".", 1)[0])
        child = name.rsplit(".", 1)[1]
        setattr(parent, child, EmuLinear(getattr(parent, child), spec, amax))


def _build_policy(policy, ids, emulation):
    """The model under ``policy``; emulation "qeval" = qeval.quantize.quantize_model, "own" = the fallback."""
    model = llama_1b()
    if policy == "bf16":
        return model, "bf16"
    if emulation == "qeval":
        try:
            from qeval.quantize import quantize_model

            quantize_model(model, policy, mode="emulate", calibration=[ids[:1]], progress=False)
            return model, "qeval quantize_model (emulate)"
        except ImportError as e:
            print(f"quantize_model unavailable ({e}); using the benchmark's own emulation", flush=True)
    _emulate_fallback(model, {"fp8": "fp8_e4m3", "nvfp4": "nvfp4"}[policy], ids[:1])
    return model, "bench's own (in-place fake-quant weights)"


def section_e2e(res, batch=8, seq=1024, emulations=("qeval",)):
    rows = []
    ids = torch.randint(0, 32000, (batch, seq), device="cuda")
    todo = [("bf16", "bf16")] + [(p, e) for e in emulations for p in ("fp8", "nvfp4")]
    for policy, emulation in todo:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model, how = _build_policy(policy, ids, emulation)
        torch.cuda.reset_peak_memory_stats()

        def run():
            with torch.no_grad():
                model(ids, use_cache=False)

        t = bench(run, rep=2000)
        peak = torch.cuda.max_memory_allocated() / 2**30
        rows.append({"policy": policy, "path": how, "ms/batch": f"{t:.1f}", "tokens/s": f"{batch * seq / t * 1e3:.0f}",
                     "peak GiB": f"{peak:.2f}"})
        print(rows[-1], flush=True)
        del model
    base_t = float(rows[0]["ms/batch"])
    base_m = float(rows[0]["peak GiB"])
    for r in rows:
        r["vs BF16"] = f"{base_t / float(r['ms/batch']):.2f}x"
        r["memory vs BF16"] = f"{float(r['peak GiB']) / base_m:.2f}x"
    res["e2e"] = rows
    print(f"\n(c) ~1.1B Llama-shaped random model, batch {batch} x {seq} tokens, forward only\n"
          + table(rows, ["policy", "path", "ms/batch", "tokens/s", "vs BF16", "peak GiB", "memory vs BF16"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_gpu.json", help="JSON file to write")
    p.add_argument("--sections", default="kernels,linear,e2e")
    p.add_argument("--emulation", default="qeval", choices=["qeval", "own", "both"],
                   help="e2e: qeval.quantize.quantize_model, the benchmark's own in-place emulation, or both")
    p.add_argument("--rep-scale", type=float, default=1.0, help="scale the timing windows (e.g. 0.3 for a quick run)")
    args = p.parse_args(argv)
    global REP_SCALE
    REP_SCALE = args.rep_scale
    if not kernels.available():
        print("needs CUDA and Triton", file=sys.stderr)
        return 2
    import triton

    res = {"torch": torch.__version__, "triton": triton.__version__, "device": torch.cuda.get_device_name(),
           "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    emulations = ("qeval", "own") if args.emulation == "both" else (args.emulation,)
    fns = {"kernels": section_kernels, "linear": section_linear,
           "e2e": lambda r: section_e2e(r, emulations=emulations)}
    for s in args.sections.split(","):
        fns[s](res)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
