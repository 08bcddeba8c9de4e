"""Metrics against independent float64 computations on tiny random models."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from qeval.evaluate.divergence import BaselineSpill, kl_rows, percentile, top1_matches
from qeval.evaluate.embeddings import cosine_to_baseline, spearman
from qeval.evaluate.perplexity import perplexity, sliding_windows
from qeval.evaluate.stream import Shard, gather_stats, lm_pass, local_pass, summarize
from qeval.evaluate.tasks import recovery, with_baseline

VOCAB = 97


def tiny_llama(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger logits than the default init: distributions far from uniform
        model.lm_head.weight.mul_(40)
    return model


def perturbed(model, scale=0.05, seed=1):
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std().clamp_min(1e-3))
    return other


def tokens(n=61, seed=3):
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


# -- independent reference: token t is scored with context ids[b(t):t], b(t) the
# first window start (a multiple of stride) with b + window >= t
def _context_start(t, window, stride):
    return max(0, math.ceil((t - window) / stride) * stride)


@torch.no_grad()
def ref_logprobs(model, ids, window, stride):
    """float64 log-probabilities [n-1, vocab] for tokens 1..n-1, one forward per token."""
    rows = []
    for t in range(1, len(ids)):
        b = _context_start(t, window, stride)
        logits = model(input_ids=ids[b:t].unsqueeze(0)).logits[0, -1].double()
        rows.append(torch.log_softmax(logits, -1))
    return torch.stack(rows)


@pytest.mark.parametrize("n,window,stride", [(10, 4, 3), (37, 8, 8), (64, 16, 5), (5, 16, 16), (2, 2, 1), (33, 32, 1)])
def test_windows_score_every_token_once_with_formula_context(n, window, stride):
    seen = []
    for w in sliding_windows(n, window, stride):
        assert w.end - w.begin <= window
        assert w.begin < w.first_target <= w.stop_target - 1 < w.end + 1
        for t in range(w.first_target, w.stop_target):
            assert w.begin == _context_start(t, window, stride), (t, w)
            seen.append(t)
    assert seen == list(range(1, n))


def test_windows_reject_bad_sizes():
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(10, 4, 5)
    with pytest.raises(ValueError, match="2 tokens"):
        sliding_windows(1, 4, 4)


@pytest.mark.parametrize("window,stride", [(64, 64), (16, 16), (16, 5)])
def test_perplexity_matches_float64_reference(window, stride):
    model, ids = tiny_llama(), tokens()
    ref = ref_logprobs(model, ids, window, stride)
    nll = -ref.gather(1, ids[1:].view(-1, 1)).sum().item()
    ppl, count = perplexity(model, ids, window, stride)
    assert count == len(ids) - 1
    assert ppl == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_kl_rows_matches_float64_formula_and_is_chunk_invariant():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(37, 5003, generator=g) * 4
    b = a + torch.randn(37, 5003, generator=g)
    logp, logq = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    p64, q64 = torch.softmax(a.double(), -1), torch.softmax(b.double(), -1)
    ref = (p64 * (p64.log() - q64.log())).sum(-1)
    got = kl_rows(logp, logq, chunk=7)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)
    assert torch.equal(got, kl_rows(logp, logq, chunk=10_000))
    assert torch.equal(kl_rows(logp, logp, chunk=5), torch.zeros(37))


def test_kl_handles_zero_probabilities():
    logp = torch.log(torch.tensor([[1.0, 0.0, 0.0]]))  # -inf entries
    logq = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0]]), -1)
    assert kl_rows(logp, logq).item() == pytest.approx(-logq[0, 0].item(), rel=1e-6)


def test_percentile_and_top1_against_hand_computation():
    rng = np.random.default_rng(0)
    vals = rng.exponential(size=1001)
    s = np.sort(vals)
    pos = 0.99 * (len(s) - 1)
    lo = int(math.floor(pos))
    expect = s[lo] + (pos - lo) * (s[lo + 1] - s[lo])
    assert percentile(vals, 99) == pytest.approx(expect, rel=1e-12)
    a = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.0, 0.0, 1.0]])
    b = torch.tensor([[0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.0, 0.1, 0.9]])
    assert top1_matches(a, b) == 2


def _lm_reference(base, quant, ids, window, stride):
    lp = ref_logprobs(base, ids, window, stride)
    lq = ref_logprobs(quant, ids, window, stride)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    nll_q = -lq.gather(1, ids[1:].view(-1, 1)).sum().item()
    top1 = (lp.argmax(-1) == lq.argmax(-1)).double().mean().item()
    return kl.numpy(), math.exp(nll_q / (len(ids) - 1)), top1


@pytest.mark.parametrize("window,stride,chunk", [(16, 16, 256), (16, 6, 3)])
def test_lm_pass_kl_top1_ppl_match_reference(tmp_path, window, stride, chunk):
    base, ids = tiny_llama(), tokens()
    quant = perturbed(base)
    windows = sliding_windows(len(ids), window, stride)
    spill = BaselineSpill(tmp_path / "spill.npy", {"k": 1})
    b = lm_pass(base, ids, windows, spill, baseline=True, chunk=chunk, progress=False)
    assert spill.complete()
    q = lm_pass(quant, ids, windows, spill, baseline=False, chunk=chunk, progress=False)
    kl_ref, ppl_ref, top1_ref = _lm_reference(base, quant, ids, window, stride)
    assert kl_ref.mean() > 1e-3  # the perturbation matters, so the comparison means something
    assert q["tokens"] == b["perplexity_tokens"] == len(ids) - 1
    assert q["kl_mean"] == pytest.approx(kl_ref.mean(), rel=1e-3)
    assert q["kl_p99"] == pytest.approx(np.percentile(kl_ref, 99), rel=1e-3)
    assert q["perplexity"] == pytest.approx(ppl_ref, rel=1e-5)
    assert q["top1_agreement"] == pytest.approx(top1_ref, abs=1e-12)


def test_sharded_windows_sum_to_the_single_process_numbers(tmp_path):
    base, ids = tiny_llama(), tokens(n=80)
    quant = perturbed(base, scale=0.1)
    windows = sliding_windows(len(ids), 16, 16)
    one = BaselineSpill(tmp_path / "one.npy", {})
    lm_pass(base, ids, windows, one, baseline=True, progress=False)
    single = lm_pass(quant, ids, windows, one, baseline=False, progress=False)
    stats = []
    for rank in range(3):
        shard = Shard(rank, 3)
        spill = BaselineSpill(tmp_path / f"r{rank}.npy", {})
        local_pass(base, ids, windows, spill, baseline=True, shard=shard, progress=False)
        stats += local_pass(quant, ids, windows, spill, baseline=False, shard=shard, progress=False)
    merged = summarize(gather_stats(stats, Shard()), with_kl=True, replicates=1000)
    assert single["windows"].pop("key") and single["ci"].pop("stopped_by") == "max_tokens"  # added by lm_pass
    assert single.pop("forward")["eager_windows"] == len(windows)
    assert merged == single  # exactly (intervals and p99 bootstrap too): per-window sums added in window order


def test_spill_marker_detects_partial_or_other_runs(tmp_path):
    spill = BaselineSpill(tmp_path / "s.npy", {"run": "a"}, dtype="float32")
    spill.open_write({0: 2, 1: 3}, 4)
    spill.write(0, torch.ones(2, 4))
    assert not spill.complete()  # killed before finish: redone on resume
    spill.write(1, torch.zeros(3, 4))
    spill.finish()
    assert spill.complete()
    assert not BaselineSpill(tmp_path / "s.npy", {"run": "b"}, dtype="float32").complete()
    assert not BaselineSpill(tmp_path / "s.npy", {"run": "a"}, dtype="float16").complete()  # another format
    spill.open_read({0: 2, 1: 3})
    assert torch.equal(spill.read(1), torch.zeros(3, 4)) and torch.equal(spill.read(0), torch.ones(2, 4))


def test_cosine_and_spearman_against_hand_values():
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    quant = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    out = cosine_to_baseline(base, quant)
    assert out["embedding_cosine_min"] == pytest.approx(1 / math.sqrt(2))
    assert out["embedding_cosine_mean"] == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    # ties get average ranks: x ranks [1, 2.5, 2.5, 4], y ranks [1, 2, 3, 4]
    rx, ry = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4.0])
    expect = np.corrcoef(rx, ry)[0, 1]
    assert spearman([3, 5, 5, 9], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(expect)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_recovery_and_baseline_fields():
    assert recovery(0.45, 0.5) == pytest.approx(90.0)
    assert recovery(0.3, 0.0) is None
    out = with_baseline({"t": {"acc": 0.4, "stderr": 0.01, "n": 10}}, {"t": {"acc": 0.5, "stderr": 0.02}})
    assert out["t"]["baseline_acc"] == 0.5 and out["t"]["baseline_stderr"] == 0.02
    assert out["t"]["recovery"] == pytest.approx(80.0)


@pytest.mark.parametrize("policy", ["fp8-dynamic", "nvfp4", "mixed-fp4-fp8"])
def test_measured_weight_bytes_match_the_analytic_plan(policy):
    """Codec storage (codes + scales of real QTensors) vs the plan's formula: two code paths."""
    from qeval.pipeline.weights import measured_weight_bytes
    from qeval.policy import load_policy, plan
    from qeval.quantize import quantized

    model = tiny_llama(layers=3)  # mixed-fp4-fp8 keeps the first and last block BF16
    ref = plan(model, load_policy({"name": "none"}))
    # unquantized: BF16 of every parameter, counted by hand
    assert measured_weight_bytes(model, ref) == 2 * sum(p.numel() for p in model.parameters())
    calib = [tokens(n=32, seed=9).view(1, -1)]
    with quantized(model, policy, calibration=calib, progress=False) as p:
        measured = measured_weight_bytes(model, p)
        assert measured == p.bytes_after
        assert measured < ref.bytes_before
