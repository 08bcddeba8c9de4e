"""Speed of the exact emulation (scales in the epilogue) against the fake-quant emulation and BF16 (issue 18).

    PYTHONPATH=. python3 benchmarks/bench_emulation.py [--tokens 8192] [--layers 4]

On a GPU: a Llama-3.1-8B-shaped model (hidden 4096, intermediate 14336, 32
heads / 8 KV heads, 128,256-token vocabulary) with ``--layers`` decoder layers
and random BF16 weights built on the GPU, ``--tokens`` tokens in windows of
2,048; and one MLP-shaped linear (4096 -> 14336) on the same tokens. On a CPU
the same with small dimensions. Each policy runs under ``emulation="fake_quant"``
and ``"exact"``, the exact one through each CUDA epilogue path
(``qeval.quantize.gemm.CUDA_GEMM``: "cublas" = torch.mm with FP32 output + one
fused epilogue kernel, "triton" = one Triton GEMM with the scales applied in
registers, "torch" = the unfused plain-torch epilogue, for the first policy
only). Times are medians (CUDA events via ``triton.testing.do_bench`` on a
GPU, ``time.perf_counter`` on the CPU), printed as a table with the ratio to
the BF16 forward of the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from qeval.quantize import gemm, quantized

POLICIES = ["fp8-dynamic", "fp8", "nvfp4", "nvfp4-weight-only", "mxfp8", "mxfp4"]


def timer(fn, cuda: bool) -> float:
    """Median milliseconds of ``fn()``."""
    if cuda:
        import triton

        return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")
    fn()
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) * 1e3)
    return statistics.median(runs)


class OneLinear(nn.Module):
    def __init__(self, k: int, n: int, device, dtype):
        super().__init__()
        self.proj = nn.Linear(k, n, bias=False, device=device, dtype=dtype)

    def forward(self, x):
        return self.proj(x)


def llama(cuda: bool, layers: int):
    from transformers import AutoModelForCausalLM, LlamaConfig

    dims = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8)
    if not cuda:
        dims = dict(vocab_size=4096, hidden_size=512, intermediate_size=1792, num_attention_heads=4, num_key_value_heads=1)
    cfg = LlamaConfig(num_hidden_layers=layers, max_position_embeddings=4096, tie_word_embeddings=False, **dims)
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval(), cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=None)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--paths", default="cublas,triton", help="exact-emulation CUDA epilogue paths to time")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.bfloat16)
    tokens = args.tokens or (8192 if cuda else 256)
    window = min(tokens, 2048 if cuda else 128)
    model, cfg = llama(cuda, args.layers)
    hidden, inter = cfg.hidden_size, cfg.intermediate_size
    if cuda:
        import triton

        name = f"{torch.cuda.get_device_name()}, torch {torch.__version__}, Triton {triton.__version__}"
    else:
        name = f"CPU, torch {torch.__version__}"
    print(f"{name}; {dtype}; Llama {args.layers} layers (hidden {hidden}, intermediate {inter}, vocab {cfg.vocab_size}), "
          f"{tokens} tokens in windows of {window}; linear {hidden} -> {inter} on {tokens} tokens")
    torch.manual_seed(0)
    x = torch.randn(tokens, hidden, device=device, dtype=dtype)
    ids = torch.randint(0, cfg.vocab_size, (max(1, tokens // window), window), device=device)
    lin = OneLinear(hidden, inter, device, dtype)
    paths = args.paths.split(",") if cuda else ["cublas"]
    runs = []
    for i, policy in enumerate(POLICIES):
        runs += [(policy, "fake_quant", "-")] + [(policy, "exact", p) for p in paths]
        runs += [(policy, "exact", "torch")] if cuda and i == 0 else []
    default = gemm.CUDA_GEMM
    with torch.no_grad():
        base_lin = timer(lambda: lin(x), cuda)
        base_model = timer(lambda: model(input_ids=ids).logits, cuda)
        rows = [("bf16", "-", "-", base_lin, base_model)]
        for policy, emulation, path in runs:
            gemm.CUDA_GEMM = default if path == "-" else path
            with quantized(lin, policy, calibration=[{"x": x}], emulation=emulation, progress=False):
                t_lin = timer(lambda: lin(x), cuda)
            with quantized(model, policy, calibration=[ids[:1]], emulation=emulation, progress=False):
                t_model = timer(lambda: model(input_ids=ids).logits, cuda)
            rows.append((policy, emulation, path, t_lin, t_model))
            print(f"  {policy} {emulation} {path}: linear {t_lin:.3f} ms, model {t_model:.3f} ms", flush=True)
    gemm.CUDA_GEMM = default
    print(f"{'policy':<18} {'emulation':<11} {'path':<7} {'linear ms':>10} {'x bf16':>7} {'model ms':>10} {'x bf16':>7}")
    for policy, emulation, path, t_lin, t_model in rows:
        print(f"{policy:<18} {emulation:<11} {path:<7} {t_lin:>10.3f} {t_lin / base_lin:>7.2f} {t_model:>10.3f} "
              f"{t_model / base_model:>7.2f}")
    print(f"(default CUDA path: {default})")


if __name__ == "__main__":
    main()
