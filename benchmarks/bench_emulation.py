"""Speed of the exact emulation (scales in the epilogue) against the fake-quant emulation and BF16 (issue 18).

    PYTHONPATH=. python3 benchmarks/bench_emulation.py [--tokens 8192] [--hidden 4096]

One linear layer (hidden x hidden, ``--tokens`` rows) and a 2-block
Llama-shaped model with random BF16 weights, on the GPU when there is one
(else a smaller CPU size). Each policy runs under ``emulation="fake_quant"``
and ``"exact"``; times are medians (CUDA events via ``triton.testing.do_bench``
on a GPU, ``time.perf_counter`` on the CPU), printed as a table with the ratio
to the BF16 module of the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from qeval.quantize import quantized

POLICIES = ["fp8-dynamic", "fp8", "nvfp4", "nvfp4-weight-only", "mxfp8", "mxfp4"]


def timer(fn, cuda: bool) -> float:
    """Median milliseconds of ``fn()``."""
    if cuda:
        import triton

        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    fn()
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) * 1e3)
    return statistics.median(runs)


class OneLinear(nn.Module):
    def __init__(self, hidden: int, device, dtype):
        super().__init__()
        self.proj = nn.Linear(hidden, hidden, bias=False, device=device, dtype=dtype)

    def forward(self, x):
        return self.proj(x)


def llama(hidden: int, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=4096, hidden_size=hidden, intermediate_size=int(hidden * 2.6875) // 64 * 64,
                      num_hidden_layers=2, num_attention_heads=hidden // 128, num_key_value_heads=max(1, hidden // 512),
                      max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM(cfg).to(dtype).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=None)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.bfloat16)
    tokens = args.tokens or (8192 if cuda else 256)
    hidden = args.hidden or (4096 if cuda else 512)
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"{name}, torch {torch.__version__}, {dtype}, linear {hidden}x{hidden} with {tokens} tokens; "
          f"2-block Llama, hidden {hidden}, {tokens} tokens")
    torch.manual_seed(0)
    x = torch.randn(tokens, hidden, device=device, dtype=dtype)
    ids = torch.randint(0, 4096, (max(1, tokens // 1024), min(tokens, 1024)), device=device)
    lin, model = OneLinear(hidden, device, dtype), llama(hidden, device, dtype)
    with torch.no_grad():
        base_lin = timer(lambda: lin(x), cuda)
        base_model = timer(lambda: model(input_ids=ids).logits, cuda)
        rows = [("bf16", "-", base_lin, base_model)]
        for policy in POLICIES:
            for emulation in ("fake_quant", "exact"):
                with quantized(lin, policy, calibration=[{"x": x}], emulation=emulation):
                    t_lin = timer(lambda: lin(x), cuda)
                with quantized(model, policy, calibration=[ids], emulation=emulation):
                    t_model = timer(lambda: model(input_ids=ids).logits, cuda)
                rows.append((policy, emulation, t_lin, t_model))
    print(f"{'policy':<18} {'emulation':<11} {'linear ms':>10} {'x bf16':>7} {'model ms':>10} {'x bf16':>7}")
    for policy, emulation, t_lin, t_model in rows:
        print(f"{policy:<18} {emulation:<11} {t_lin:>10.3f} {t_lin / base_lin:>7.2f} {t_model:>10.3f} {t_model / base_model:>7.2f}")


if __name__ == "__main__":
    main()
