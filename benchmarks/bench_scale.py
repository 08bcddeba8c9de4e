"""`qeval run` at 8B and 70B shape on the GPUs at hand, beside a plain forward over the same windows (issue 11).

    PYTHONPATH=. python3 benchmarks/bench_scale.py [--models 8b,70b] [--tokens 16384] [--stores auto,disk]

A Llama-3.1 model of the shape in ``configs/models/llama-3.1-<size>`` with
random bf16 weights made on the GPU (no download), a word-level tokenizer of
the model's 128,256-token vocabulary, random words as text, windows of 2,048,
policies fp8-dynamic and nvfp4 (emulated), through the real ``run_recipe``
(only the model loader is replaced by the in-memory model; each window's forward is
replayed from a CUDA graph where safe, as in any run). Printed per pass:
qeval's time and its ratio to a plain Hugging Face forward + log_softmax over
the same windows (timed first, same process), quantize / dequantize seconds,
allocator peak, and the run directory's peak bytes (polled every 50 ms).

The 70B shape is spread over every visible GPU (``accelerate.dispatch_model``);
decoder layers that do not fit in ``--weight-share`` of their memory (room is
left for the fake-quantized copy and the logits) are left out, with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def word_tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", eos_token="w1", pad_token="w2")


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def layer_budget(cfg, gpus: int, share: float) -> int:
    """Decoder layers that fit in ``share`` of the GPUs' memory beside embeddings and lm_head."""
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    per_layer = 2 * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h)
    fixed = 2 * 2 * v * h
    if not gpus:
        return cfg.num_hidden_layers
    room = sum(torch.cuda.get_device_properties(d).total_memory for d in range(gpus)) * share
    return max(1, min(cfg.num_hidden_layers, int((room - fixed) // per_layer)))


def build_model(size: str, share: float, tiny: bool = False, gpus: int | None = None):
    """Random bf16 Llama of ``size``'s shape on the visible GPUs; returns (model, note)."""
    from accelerate import dispatch_model, init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig.from_pretrained(ROOT / "configs" / "models" / f"llama-3.1-{size}")
    if tiny:  # a CPU smoke test of this script
        cfg.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "vocab_size": 1000})
    gpus = torch.cuda.device_count() if gpus is None else min(gpus, torch.cuda.device_count())
    where = (lambda d: f"cuda:{d}") if gpus else (lambda d: "cpu")
    full = cfg.num_hidden_layers
    cfg.num_hidden_layers = layer_budget(cfg, gpus, share)
    note = f"{cfg.num_hidden_layers}/{full} layers on {gpus} GPU(s)"
    if cfg.num_hidden_layers < full:
        print(f"{size}: {full - cfg.num_hidden_layers} of {full} decoder layers do not fit in {share:.0%} of "
              f"{gpus} GPU(s) beside a quantized copy; running {cfg.num_hidden_layers}", flush=True)
    with init_empty_weights():
        model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16)
    n = cfg.num_hidden_layers
    per = -(-n // max(gpus, 1))
    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0}
    device_map.update({f"model.layers.{k}": k // per for k in range(n)})
    device_map.update({"model.norm": max(gpus - 1, 0), "lm_head": max(gpus - 1, 0)})
    g = torch.Generator(device=where(0)).manual_seed(0)
    for name, p in list(model.named_parameters()):
        dev = next(d for prefix, d in device_map.items() if name.startswith(prefix + "."))
        if name.endswith("norm.weight"):
            value = torch.ones(p.shape, dtype=torch.bfloat16, device=where(dev))
        else:
            value = torch.empty(p.shape, dtype=torch.bfloat16, device=where(dev))
            value.normal_(0, 0.02, generator=g if dev == 0 else None)
        set_module_tensor_to_device(model, name, where(dev), value=value)
    if gpus <= 1:
        model.to(where(0))  # the rotary buffers
    else:
        model = dispatch_model(model, device_map=device_map)
    return model.eval(), note


def plain_forward(model, ids: torch.Tensor, window: int) -> float:
    """Seconds for HF forward + float32 log_softmax over the windows (the bar)."""
    dev = model.get_input_embeddings().weight.device

    def one(a, b):
        logits = model(input_ids=ids[a:b].unsqueeze(0).to(dev), use_cache=False).logits[0]
        return torch.log_softmax(logits.float(), dim=-1)

    with torch.no_grad():
        one(0, window)  # warm-up
        _sync()
        t = time.perf_counter()
        for a in range(0, ids.numel() - 1, window):
            one(a, min(a + window, ids.numel()))
        _sync()
    return time.perf_counter() - t


class DirPeak(threading.Thread):
    """Largest total size of a directory tree seen while running."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.peak, self.stop = path, 0, threading.Event()

    def run(self):
        while not self.stop.wait(0.05):
            total = 0
            for root, _, files in os.walk(self.path):
                for f in files:
                    try:
                        total += os.stat(os.path.join(root, f)).st_blocks * 512  # allocated, not apparent
                    except OSError:
                        pass
            self.peak = max(self.peak, total)


def run_qeval(model, tok, text_path: Path, work: Path, tokens: int, window: int, store: str,
              graph: bool = True) -> tuple[dict, int]:
    import qeval.models
    from qeval.pipeline.runner import RunOptions, run_recipe

    recipe = {
        "name": "scale", "seed": 0,
        "model": {"id": str(work), "dtype": "bfloat16"},
        "eval_data": {"source": "file", "path": str(text_path), "max_tokens": tokens},
        "calibration": {"source": "file", "path": str(text_path), "n_batches": 2, "seq_len": 256},
        "policies": ["fp8-dynamic", "nvfp4"], "mode": "emulate",
        "metrics": {"perplexity": {"window": window, "stride": window}, "baseline_store": store, "cuda_graph": graph},
    }
    import yaml

    rpath = work / f"scale-{store}-{graph}.yaml"
    rpath.write_text(yaml.safe_dump(recipe))
    import qeval.pipeline.preflight

    qeval.models.resolve = lambda spec: qeval.models.Source(None, f"random-{work.name}", None)  # in memory only
    qeval.models.load_model = lambda spec: (model, tok)
    qeval.pipeline.preflight.check = lambda *a, **k: []  # it reads the model's files; this model has none
    results_dir = work / f"results-{store}-{graph}"
    results_dir.mkdir(exist_ok=True)
    poll = DirPeak(results_dir)
    poll.start()
    path = run_recipe(rpath, RunOptions(results_dir=results_dir, progress=False, print_table=False))
    poll.stop.set()
    poll.join()
    return json.loads(Path(path).read_text()), poll.peak


def first_quantize(model, tok, text_path: Path, window: int = 2048) -> str:
    """Quantize, one forward of a window, restore: once per policy before the timed runs, so that
    every kernel (weight and activation quantizers, the epilogue, the metrics) is compiled; their seconds."""
    from qeval.data import calibration_batches
    from qeval.quantize import dequantize_model, quantize_model

    calib = [b.to(model.get_input_embeddings().weight.device)
             for b in calibration_batches(tok, {"source": "file", "path": str(text_path)}, 2, 256)]
    out = []
    for name in ("fp8-dynamic", "nvfp4"):
        _sync()
        t = time.perf_counter()
        quantize_model(model, name, calibration=calib, progress=False)
        _sync()
        t1 = time.perf_counter()
        with torch.no_grad():  # the activation and epilogue kernels compile at their first call
            model(calib[0][:, :1].repeat(1, window))
        _sync()
        t1, fwd = time.perf_counter(), time.perf_counter() - t1
        dequantize_model(model)
        _sync()
        out.append(f"{name} {t1 - fwd - t:.2f} + {time.perf_counter() - t1:.2f} s (first forward {fwd:.2f} s)")
    from qeval.evaluate.fused import row_metrics

    lp = torch.zeros(2, model.config.vocab_size, device=model.get_output_embeddings().weight.device)
    t = time.perf_counter()
    row_metrics(lp, lp)  # the policy passes' metrics kernel compiles here, not in the first timed pass
    _sync()
    out.append(f"metrics kernel {time.perf_counter() - t:.2f} s")
    return ", ".join(out)


def gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def _graph_note(note: dict | None) -> str:
    if not note:
        return "-"
    if note["cuda_graph"]:
        return f"{note['replayed_windows']} replayed, {note['eager_windows']} eager"
    return f"no: {note['reason']}"


def report(size: str, note: str, tokens: int, plain: float, res: dict, peak_dir: int, store: str) -> list[dict]:
    rows = [{"model": size, "store": store, "pass": "plain HF forward + log_softmax", "s": f"{plain:.2f}", "x plain": "1.00"}]
    entries = [("baseline", res["baseline"])] + [(p["name"], p) for p in res["policies"]]
    for name, e in entries:
        t, m = e["timings"], e.get("memory") or {}
        rows.append({
            "model": size, "store": store, "pass": f"qeval {name}", "s": f"{t['eval_s']:.2f}",
            "x plain": f"{t['eval_s'] / plain:.2f}",
            "quantize s": f"{t['quantize_s']:.2f}" if "quantize_s" in t else "-",
            "dequantize s": f"{t['dequantize_s']:.2f}" if "dequantize_s" in t else "-",
            "GPU peak GiB": gib(m.get("gpu_peak_bytes")), "host peak GiB": gib(m.get("host_peak_bytes")),
            "KL store": "{path} {dtype}".format(**e["kl_store"]) if e.get("kl_store") else "-",
            "KL": f"{e['metrics'].get('kl_mean'):.4g}" if e["metrics"].get("kl_mean") is not None else "-",
            "non-finite": e["metrics"].get("nonfinite_logits", "-"),
            "CUDA graph": _graph_note(e.get("forward")),
        })
    rows[0]["run dir peak GiB"] = f"{peak_dir / 2**30:.3f}"
    vocab = res["baseline"]["kl_store"]["bytes_needed"] if res["baseline"].get("kl_store") else 0
    print(f"{size} ({note}), {tokens} tokens: run directory peak {peak_dir} bytes; store needed {vocab} bytes",
          flush=True)
    return rows


def table(rows, cols):
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    out = [" | ".join(c.ljust(w) for c, w in zip(cols, widths)), "-|-".join("-" * w for w in widths)]
    out += [" | ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="8b:1,70b", help="sizes, each optionally :GPUs to use (default: all)")
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--stores", default="auto", help="baseline stores to run: auto, device, disk (comma-separated)")
    p.add_argument("--graphs", default="on", help="CUDA graph replay of the passes: on, off, or on,off to compare")
    p.add_argument("--weight-share", type=float, default=0.42, help="share of GPU memory for the bf16 weights")
    p.add_argument("--out", default="bench_scale.json")
    p.add_argument("--tiny", action="store_true", help="tiny dimensions on the CPU: a smoke test of the script")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.tiny:
        print("bench_scale: needs a CUDA GPU", file=sys.stderr)
        return 2
    import transformers

    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "-"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    head = (f"{gpu} x{torch.cuda.device_count()}, torch {torch.__version__}, "
            f"triton {tv}, transformers {transformers.__version__}")
    print(head, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        for spec in args.models.split(","):
            size, _, n_gpus = spec.partition(":")
            try:
                model, note = build_model(size, args.weight_share, args.tiny, int(n_gpus) if n_gpus else None)
            except torch.cuda.OutOfMemoryError as err:
                print(f"{size}: skipped, it does not fit: {str(err).splitlines()[0]}", flush=True)
                continue
            tok = word_tokenizer(model.config.vocab_size)
            g = torch.Generator().manual_seed(1)
            words = torch.randint(3, model.config.vocab_size, (args.tokens + 64,), generator=g).tolist()
            text_path = work / "eval.txt"
            text_path.write_text(" ".join(f"w{i}" for i in words))
            ids = torch.tensor(words[: args.tokens])
            plain = plain_forward(model, ids, args.window)
            cold = first_quantize(model, tok, text_path, args.window)
            print(f"{size}: first quantize + dequantize in this process (Triton JIT included): {cold}", flush=True)
            for store in args.stores.split(","):
                for graph in args.graphs.split(","):
                    torch.cuda.empty_cache()
                    res, peak_dir = run_qeval(model, tok, text_path, work, args.tokens, args.window, store,
                                              graph == "on")
                    rows += report(size, note, args.tokens, plain, res, peak_dir, store)
                with open(args.out, "w") as f:
                    json.dump({"head": head, "rows": rows}, f, indent=1)
            del model
            torch.cuda.empty_cache()
    cols = ["model", "store", "pass", "s", "x plain", "quantize s", "dequantize s", "GPU peak GiB", "host peak GiB",
            "KL store", "KL", "non-finite", "CUDA graph", "run dir peak GiB"]
    print("\n" + head + "\n" + table(rows, cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
