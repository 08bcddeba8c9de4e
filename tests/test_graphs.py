"""The evaluation forward replayed from a CUDA graph gives the eager forward's numbers, or runs eagerly and says why."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import tiny_llama
from qeval.evaluate.divergence import BaselineSpill
from qeval.evaluate.graphs import GraphedForward, why_not
from qeval.evaluate.perplexity import sliding_windows
from qeval.evaluate.stream import lm_pass

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _ids(n: int, vocab: int = 128, seed: int = 5) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def _passes(model, ids, windows, tmp_path, cuda_graph: bool, policy=None, calibration=None):
    """(baseline pass, policy pass) of ``model``: the policy's under ``quantized`` when given, else a perturbed copy's."""
    from qeval.quantize import quantized

    spill = BaselineSpill(tmp_path / f"spill-{cuda_graph}.npy", {})
    dev = next(model.parameters()).device
    base = lm_pass(model, ids, windows, spill, baseline=True, device=dev, progress=False, cuda_graph=cuda_graph)
    with quantized(model, policy or "fp8-dynamic", calibration=calibration, progress=False):
        pol = lm_pass(model, ids, windows, spill, baseline=False, device=dev, progress=False, cuda_graph=cuda_graph)
    return base, pol


def test_cpu_model_runs_eagerly_and_says_why(tmp_path):
    model, ids = tiny_llama(layers=1), _ids(40)
    windows = sliding_windows(len(ids), 16, 16)
    spill = BaselineSpill(tmp_path / "s.npy", {})
    out = lm_pass(model, ids, windows, spill, baseline=True, progress=False)
    note = out["forward"]
    assert note["cuda_graph"] is False and note["replayed_windows"] == 0
    assert note["eager_windows"] == len(windows)
    assert note["reason"] == ("no CUDA device" if not torch.cuda.is_available() else why_not(model))
    off = GraphedForward(model, enabled=False)
    assert off.reason.startswith("off")
    x = ids[:16].unsqueeze(0)
    assert torch.equal(off(x, use_cache=False), model(input_ids=x, use_cache=False).logits)


def test_forward_hooks_keep_the_forward_eager(monkeypatch):
    model = tiny_llama(layers=1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # past the device check, to the hooks
    h = model.model.layers[0].register_forward_hook(lambda *a: None)
    assert "forward hooks on model.layers.0" in why_not(model)
    h.remove()
    assert "not on one CUDA device (cpu)" in why_not(model)


def test_transformers_sees_one_eager_sequence_only_while_recording():
    from transformers import masking_utils
    from transformers.utils import import_utils

    from qeval.evaluate.graphs import _as_eager

    packed = torch.tensor([[0, 1, 2, 0, 1]])  # two sequences in one row
    find, capturing = masking_utils.find_packed_sequence_indices, import_utils.is_cuda_stream_capturing
    assert find(packed) is not None
    with pytest.raises(KeyError):
        with _as_eager({"use_cache": False}):
            assert masking_utils.find_packed_sequence_indices(packed) is None
            assert import_utils.is_cuda_stream_capturing() is False
            raise KeyError("restored on the way out")
    assert masking_utils.find_packed_sequence_indices is find and import_utils.is_cuda_stream_capturing is capturing
    with _as_eager({"position_ids": packed}):  # ids the caller packed: the check stays
        assert masking_utils.find_packed_sequence_indices(packed) is not None


def test_a_run_releases_the_parked_recording(tmp_path, monkeypatch):
    from qeval.evaluate import graphs
    from test_run import build_tiny_model, write_recipe, _text

    from qeval.pipeline.runner import RunOptions, run_recipe

    monkeypatch.setitem(graphs._PARKED, 0, "the last pass's graph")  # what a GPU run leaves parked
    build_tiny_model(tmp_path / "model")
    (tmp_path / "eval.txt").write_text(_text(1, 120), encoding="utf-8")
    (tmp_path / "calib.txt").write_text(_text(2, 120), encoding="utf-8")
    run_recipe(write_recipe(tmp_path, policies=["fp8-dynamic"]),
               RunOptions(results_dir=tmp_path / "r", progress=False, print_table=False))
    assert graphs._PARKED == {}


def test_recipe_switch_reaches_the_pass():
    from qeval.pipeline.recipe import Metrics

    assert Metrics().cuda_graph is True
    assert Metrics(cuda_graph=False).cuda_graph is False
    with pytest.raises(ValueError):
        Metrics(cuda_graph="sometimes")


# --- on a GPU ---------------------------------------------------------------------------------------------------
def _same(a: dict, b: dict) -> None:
    """Every number of two lm_pass results equal (the notes of how the forward ran aside)."""
    a, b = dict(a), dict(b)
    a.pop("forward"), b.pop("forward")
    assert a == b


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("policy", ["fp8-dynamic", "nvfp4", "mxfp4", "fp8"])
def test_replayed_windows_give_the_eager_numbers(tmp_path, policy):
    model = tiny_llama(dtype=torch.bfloat16, layers=2).cuda()
    ids = _ids(16 * 6 + 5)  # 6 full windows and a short last one (eager: another shape)
    windows = sliding_windows(len(ids), 16, 16)
    calib = [ids[:32].unsqueeze(0).cuda()]
    eager = _passes(model, ids, windows, tmp_path, False, policy, calib)
    graphed = _passes(model, ids, windows, tmp_path, True, policy, calib)
    for e, g in zip(eager, graphed):
        assert e["forward"]["cuda_graph"] is False and e["forward"]["reason"].startswith("off")
        note = dict(g["forward"])
        assert note.pop("record_s") > 0
        assert note == {"cuda_graph": True, "replayed_windows": len(windows) - 1, "eager_windows": 1, "reason": None}
        _same(e, g)
    assert graphed[1]["kl_mean"] > 0  # the policy changed the logits: the comparison is not of two baselines


class _Before(nn.Module):
    """A decoder layer with ``before(hidden_states)`` run first in every forward."""

    def __init__(self, inner, before):
        super().__init__()
        self.inner, self.before = inner, before

    def forward(self, hidden_states, *args, **kwargs):
        self.before(hidden_states)
        return self.inner(hidden_states, *args, **kwargs)


def _eager_then_graphed(tmp_path, n_windows: int, dtype=torch.bfloat16, layer_before=None):
    """``_passes`` of a tiny CUDA Llama over ``n_windows`` full windows, eager, then with graphs on (with
    ``layer_before`` run at the start of its first decoder layer from then on)."""
    model = tiny_llama(dtype=dtype, layers=2).cuda()
    ids = _ids(16 * n_windows)
    windows = sliding_windows(len(ids), 16, 16)
    eager = _passes(model, ids, windows, tmp_path, False)
    if layer_before is not None:
        model.model.layers[0] = _Before(model.model.layers[0], layer_before)
    return eager, _passes(model, ids, windows, tmp_path, True)


def _sync(hidden_states):
    float(hidden_states.abs().amax())  # reads a value back to the host


@pytest.mark.gpu
@gpu
def test_a_forward_that_syncs_runs_eagerly_with_the_same_numbers(tmp_path):
    eager, tried = _eager_then_graphed(tmp_path, 4, layer_before=_sync)
    for e, t in zip(eager, tried):
        assert t["forward"]["cuda_graph"] is False and "synchroniz" in t["forward"]["reason"]
        assert t["forward"]["eager_windows"] == 4
        _same(e, t)


@pytest.mark.gpu
@gpu
def test_float32_logits_are_not_overwritten_by_the_next_replay(tmp_path):
    eager, graphed = _eager_then_graphed(tmp_path, 5, dtype=torch.float32)
    assert graphed[0]["forward"]["replayed_windows"] == 5
    for e, g in zip(eager, graphed):
        _same(e, g)


@pytest.mark.gpu
@gpu
def test_recording_takes_the_eager_attention_path(monkeypatch):
    """Recorded, SDPA gets the causal flag and no mask, as eagerly (a mask would select other kernels)."""
    import transformers.integrations.sdpa_attention as sdpa

    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        calls.append((torch.cuda.is_current_stream_capturing(), attn_mask is None, bool(is_causal)))
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    monkeypatch.setattr(sdpa.torch.nn.functional, "scaled_dot_product_attention", spy)
    model = tiny_llama(dtype=torch.bfloat16, layers=2).cuda()
    ids = _ids(32).cuda().unsqueeze(0)
    forward = GraphedForward(model)
    with torch.no_grad():
        eager = model(input_ids=ids, use_cache=False).logits.clone()
        first = forward(ids, use_cache=False).clone()
        replay = forward(ids, use_cache=False).clone()
    assert forward.note["replayed_windows"] == 2  # the first call records, then replays
    assert {c[0] for c in calls} == {False, True}  # spied on both the eager forwards and the recording
    assert all(c[1:] == (True, True) for c in calls), calls
    assert torch.equal(first, eager) and torch.equal(replay, eager)
    forward.close()


def _fails_first_recording():
    """Raises the first time it runs inside a recording (as a lazy set-up might); ``failed`` says if it did."""

    def before(_hidden_states):
        if torch.cuda.is_current_stream_capturing() and not before.failed:
            before.failed = True
            raise RuntimeError("not ready yet")

    before.failed = False
    return before


@pytest.mark.gpu
@gpu
def test_a_failed_recording_is_retried_after_one_eager_window(tmp_path):
    fails = _fails_first_recording()
    eager, tried = _eager_then_graphed(tmp_path, 5, layer_before=fails)
    assert fails.failed
    first = dict(tried[0]["forward"])
    assert first.pop("record_s") > 0
    assert first == {"cuda_graph": True, "replayed_windows": 4, "eager_windows": 1, "reason": None}
    assert tried[1]["forward"]["replayed_windows"] == 5  # the policy's pass recorded at once
    for e, t in zip(eager, tried):
        _same(e, t)
