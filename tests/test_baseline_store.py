"""Where the baseline's log-probabilities wait for the policies: float16 spill, device store, room checks, peaks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_llama
from qeval.evaluate import baseline_store as bs
from qeval.evaluate.divergence import BaselineSpill, spill_bytes
from qeval.evaluate.perplexity import sliding_windows
from qeval.evaluate.stream import lm_pass
from qeval.pipeline import peaks


def _lm_like_logprobs(rows: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (base, quant) log-probs shaped like a language model's: a few likely tokens, a long tail."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 2.5
    hot = torch.randint(0, vocab, (rows, 8), generator=g)
    logits.scatter_add_(1, hot, torch.rand(rows, 8, generator=g, dtype=torch.float64) * 14)
    noise = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 0.08  # a mild quantization error
    return torch.log_softmax(logits, -1), torch.log_softmax(logits + noise, -1)


def _kl64(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    return (lp.exp() * (lp - lq)).sum(-1)


def test_float16_spill_adds_under_half_a_percent_to_kl(tmp_path):
    """The disk spill rounds to float16; renormalised on read, the KL it gives stays within 0.5% of float64.

    Without the renormalisation the error is first order (the rounded rows no
    longer sum to one); the assertion on ``raw`` shows the test can tell.
    """
    lp, lq = _lm_like_logprobs(96, 32768, seed=np.random.randint(1 << 30))
    ref = _kl64(lp, lq)
    assert 1e-3 < ref.mean() < 0.1
    spill = BaselineSpill(tmp_path / "s.npy", {}, dtype="float16")
    spill.open_write({0: 40, 1: 56}, lp.shape[1])
    spill.write(0, lp[:40].float())
    spill.write(1, lp[40:].float())
    spill.finish()
    spill.open_read({0: 40, 1: 56})
    back = torch.cat([spill.read(0), spill.read(1)])
    assert back.dtype == torch.float32
    assert torch.allclose(torch.logsumexp(back.double(), -1), torch.zeros(96, dtype=torch.float64), atol=1e-5)
    got = _kl64(back.double(), lq)
    assert abs(got.mean() - ref.mean()) / ref.mean() < 5e-3
    assert (got - ref).abs().max() < 2e-3
    raw = _kl64(lp.float().half().double(), lq)  # rounded, not renormalised
    # per row (a mean over rows can cancel): the unrenormalised error is an order of magnitude larger
    assert (raw - ref).abs().mean() > 3 * (got - ref).abs().mean()
    assert (tmp_path / "s.npy").stat().st_size <= spill_bytes(96, 32768, "float16")


def test_argmax_is_kept_exact_where_float16_ties():
    store = bs.DeviceSpill("cpu", dtype="float16")
    row = torch.full((1, 64), -30.0)
    row[0, 5], row[0, 9] = -0.70001, -0.70000  # equal in float16; token 9 is the larger in float32
    store.open_write({0: 1}, 64)
    store.write(0, row)
    store.finish()
    assert row.half()[0, 5] == row.half()[0, 9]
    assert store.argmax(0).tolist() == [9]


def test_device_store_gives_the_numbers_of_the_float32_file(tmp_path):
    torch.manual_seed(np.random.randint(1 << 30))
    base, ids = tiny_llama(), torch.randint(0, 128, (70,))
    quant = tiny_llama(seed=3)
    windows = sliding_windows(len(ids), 16, 12)
    disk = BaselineSpill(tmp_path / "f.npy", {}, dtype="float32")
    lm_pass(base, ids, windows, disk, baseline=True, progress=False)
    want = lm_pass(quant, ids, windows, disk, baseline=False, progress=False)
    dev = bs.DeviceSpill("cpu", dtype="float32")
    lm_pass(base, ids, windows, dev, baseline=True, progress=False)
    assert dev.complete()
    for _ in range(2):  # read by one policy after another
        assert lm_pass(quant, ids, windows, dev, baseline=False, progress=False) == want
    half = bs.DeviceSpill("cpu", dtype="float16")
    lm_pass(base, ids, windows, half, baseline=True, progress=False)
    got = lm_pass(quant, ids, windows, half, baseline=False, progress=False)
    assert got["top1_agreement"] == want["top1_agreement"] and got["perplexity"] == want["perplexity"]
    assert got["kl_mean"] == pytest.approx(want["kl_mean"], rel=5e-3)


@pytest.mark.parametrize("free,path,dtype", [(10 << 30, "device", "float32"), (5 << 28, "device", "float16"),
                                             (3 << 28, "disk", "float16")])
def test_choose_store_prefers_device_float32_then_float16_then_disk(monkeypatch, tmp_path, free, path, dtype):
    monkeypatch.setattr(bs, "device_free_bytes", lambda d: free)
    rows, vocab = 4096, 65536  # 1 GiB in float32, 0.5 GiB in float16
    c = bs.choose_store(rows, vocab, device="cuda:0", spill_path=tmp_path / "s.npy", reserve=256 << 20,
                        slack=256 << 20)
    assert (c.path, c.dtype) == (path, dtype)
    assert c.bytes_needed == spill_bytes(rows, vocab, dtype)
    assert isinstance(bs.make_store(c, {}), bs.DeviceSpill if path == "device" else BaselineSpill)


def test_choose_store_refuses_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(bs, "device_free_bytes", lambda d: 1000)
    monkeypatch.setattr(bs, "disk_free_bytes", lambda p: 5000)
    with pytest.raises(bs.StoreSpaceError) as e:
        bs.choose_store(100, 1000, device="cuda:1", spill_path=tmp_path / "x.npy", prefer="device")
    assert "cuda:1" in str(e.value) and "1000 bytes free" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(bs.StoreSpaceError) as e:
        bs.choose_store(100, 1000, device=None, spill_path=tmp_path / "x.npy")
    need = spill_bytes(100, 1000, "float16")
    assert str(tmp_path / "x.npy") in str(e.value) and f"need {need} bytes" in str(e.value)
    assert "5000 bytes free" in str(e.value)
    with pytest.raises(bs.StoreSpaceError) as e:  # host memory too small for a CPU model's store
        bs.choose_store(100, 1000, device="cpu", spill_path=tmp_path / "x.npy", prefer="device")
    assert "cpu" in str(e.value) and "1000 bytes free" in str(e.value)


def test_a_cpu_model_keeps_the_baseline_in_host_memory_in_float32(monkeypatch, tmp_path):
    """On the CPU the store is exact float32 in RAM when MemAvailable holds it, float16 when only that fits."""
    import psutil  # a peer's reading of the same number

    assert 0 < bs.host_available_bytes() <= psutil.virtual_memory().total
    monkeypatch.setattr(bs, "host_available_bytes", lambda: 10 << 30)
    c = bs.choose_store(4096, 65536, device="cpu", spill_path=tmp_path / "s.npy", reserve=0, slack=256 << 20)
    assert (c.path, c.dtype, c.where) == ("device", "float32", "cpu")
    store = bs.make_store(c, {})
    assert isinstance(store, bs.DeviceSpill) and store.device == torch.device("cpu")
    monkeypatch.setattr(bs, "host_available_bytes", lambda: 5 << 28)
    assert bs.choose_store(4096, 65536, device="cpu", spill_path=tmp_path / "s.npy", slack=256 << 20).dtype == "float16"


def test_run_refuses_before_the_baseline_pass_when_the_disk_is_too_small(monkeypatch, tmp_path, capsys):
    from test_run import build_tiny_model, write_recipe, _text

    from qeval.cli import main as cli_main

    root = tmp_path / "w"
    root.mkdir()
    build_tiny_model(root / "model")
    (root / "eval.txt").write_text(_text(1, 400), encoding="utf-8")
    (root / "calib.txt").write_text(_text(2, 400), encoding="utf-8")
    recipe = write_recipe(root)
    monkeypatch.setattr(bs, "disk_free_bytes", lambda p: 1234)
    monkeypatch.setattr(bs, "host_available_bytes", lambda: 999)  # nor does the CPU model's host memory
    called = []
    import qeval.pipeline.passes as passes

    monkeypatch.setattr(passes, "evaluate_baseline", lambda *a, **k: called.append(1))
    capsys.readouterr()
    rc = cli_main(["run", str(recipe), "--results-dir", str(tmp_path / "results"), "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert rc == 2 and not called
    assert len(err) == 1 and "baseline_logp.rank0.npy" in err[0] and "1234 bytes free" in err[0]
    assert not any((tmp_path / "results").rglob("*.json"))  # nothing half-written


def test_results_record_the_store_and_the_peaks(tmp_path):
    from test_run import build_tiny_model, write_recipe, _text

    from qeval.pipeline.runner import RunOptions, run_recipe

    root = tmp_path / "w"
    root.mkdir()
    build_tiny_model(root / "model")
    (root / "eval.txt").write_text(_text(1, 300), encoding="utf-8")
    (root / "calib.txt").write_text(_text(2, 300), encoding="utf-8")
    path = run_recipe(write_recipe(root, policies=["fp8-dynamic"]),
                      RunOptions(results_dir=tmp_path / "r", progress=False, print_table=False))
    res = json.loads(Path(path).read_text())
    for entry in (res["baseline"], res["policies"][0]):
        # a CPU model: exact float32 log-probs in host memory, no file
        assert entry["kl_store"]["path"] == "device" and entry["kl_store"]["dtype"] == "float32"
        assert entry["kl_store"]["where"] == "cpu"
        vocab = json.loads((root / "model" / "config.json").read_text())["vocab_size"]
        assert entry["kl_store"]["bytes_needed"] == spill_bytes(299, vocab, "float32")
        mem = entry["memory"]
        assert mem["gpu_peak_bytes"] is None and mem["host_peak_bytes"] > 10 << 20
        # how the forward ran: eagerly on a CPU, every window, and why
        windows = len(entry["metrics"]["windows"]["tokens"])
        forward = dict(entry["forward"])
        assert forward.pop("reason") in ("no CUDA device", "the model is not on one CUDA device (cpu)")
        assert forward == {"cuda_graph": False, "replayed_windows": 0, "eager_windows": windows, "record_s": 0.0}
    assert "dequantize_s" in res["policies"][0]["timings"]


def test_host_peak_is_reset_per_pass():
    model = torch.nn.Linear(2, 2)
    state = peaks.reset(model)
    big = np.ones(300 << 17)  # 300 MiB touched
    first = peaks.read(state)
    del big
    state = peaks.reset(model)
    second = peaks.read(state)
    assert first["host_peak_bytes"] >= (300 << 20)
    if first["host_peak_scope"] == "pass":
        assert second["host_peak_bytes"] < first["host_peak_bytes"] - (200 << 20)


def test_restore_frees_the_fake_quantized_copy_even_under_an_accelerate_hook():
    """A device_map hook puts the replacement in a reference cycle; restore must not wait for the collector."""
    import gc
    import weakref

    from accelerate.hooks import ModelHook, add_hook_to_module

    from conftest import input_ids
    from qeval.quantize import dequantize_model, quantize_model

    model = tiny_llama()
    ids = input_ids()
    with torch.no_grad():
        want = model(ids).logits
    target = model.model.layers[0].mlp.down_proj
    add_hook_to_module(target, ModelHook())
    quantize_model(model, "fp8-dynamic", progress=False)
    replacement = model.model.layers[0].mlp.down_proj
    assert replacement is not target and replacement.qweight.w_hat is not None
    w_hat = weakref.ref(replacement.qweight.w_hat)
    ref = weakref.ref(replacement)
    del replacement
    gc.disable()
    try:
        dequantize_model(model)
        assert w_hat() is None  # the copy is gone without a garbage collection
    finally:
        gc.enable()
    gc.collect()
    assert ref() is None
    assert model.model.layers[0].mlp.down_proj is target
    with torch.no_grad():
        assert torch.equal(model(ids).logits, want)
