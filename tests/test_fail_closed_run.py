"""Issue 16 with a tiny model on disk: --resume never mixes inputs, NaN never reads as a match,
bad input is refused before the first forward pass, a full disk leaves a resumable run."""

from __future__ import annotations

import errno
import json
import math

import pytest
import torch
import yaml

from qeval.cli import main
from qeval.pipeline.runner import RunOptions, run_recipe
from test_run import _text, build_tiny_model, numbers, recipe_dict


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("closed-run")
    build_tiny_model(root / "model")
    (root / "eval.txt").write_text(_text(1, 700), encoding="utf-8")
    (root / "other.txt").write_text(_text(7, 700), encoding="utf-8")
    (root / "calib.txt").write_text(_text(2, 700), encoding="utf-8")
    return root


def _recipe(root, name="r.yaml", **over):
    data = recipe_dict(root, **over)
    data["eval_data"] = {**data["eval_data"], "max_tokens": 160} if data.get("eval_data") else None
    path = root / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _opts(tmp_path, **kw):
    return RunOptions(results_dir=tmp_path / "results", progress=False, print_table=False, **kw)


class Killed(Exception):
    pass


def _kill_on(monkeypatch, victim: str, evaluated: list):
    import qeval.pipeline.passes as passes

    real = passes.evaluate_policy
    state = {"on": True}

    def spy(recipe_, ctx, name, *a, **k):
        evaluated.append(name)
        if name == victim and state["on"]:
            raise Killed(f"simulated kill in {name}")
        return real(recipe_, ctx, name, *a, **k)

    monkeypatch.setattr(passes, "evaluate_policy", spy)
    return state


def _one_line(capsys, prefix="qeval run: error:") -> str:
    """The one error line (transformers' own weight-loading bar may also be on stderr; no traceback)."""
    text = capsys.readouterr().err
    assert "Traceback" not in text, text
    err = [ln for ln in text.splitlines() if ln.startswith("qeval run:")]
    assert len(err) == 1 and err[0].startswith(prefix), text
    return err[0]


# ---------------------------------------------------------------------------
# item 1: --resume is keyed by everything a result depends on


def test_resume_after_the_eval_text_changed_recomputes_everything(ws, tmp_path, monkeypatch, capsys):
    """Kill after the first policy, change the text, resume: the numbers are those of a clean run on
    the new text (the old baseline and fp8-dynamic are not mixed in)."""
    text = ws / "changing.txt"
    text.write_text((ws / "eval.txt").read_text())
    recipe = _recipe(ws, "text.yaml", eval_data={"source": "file", "path": str(text)})
    evaluated: list = []
    state = _kill_on(monkeypatch, "nvfp4", evaluated)
    with pytest.raises(Killed):
        run_recipe(recipe, _opts(tmp_path, run_id="k"))
    text.write_text((ws / "other.txt").read_text())  # same recipe file, other text
    state["on"] = False
    evaluated.clear()
    resumed = json.loads(run_recipe(recipe, _opts(tmp_path, run_id="k", resume=True)).read_text())
    assert evaluated == ["fp8-dynamic", "nvfp4"]
    assert "eval_tokens" in capsys.readouterr().err  # says which input changed
    clean = json.loads(run_recipe(recipe, _opts(tmp_path, run_id="clean")).read_text())
    assert numbers(resumed) == numbers(clean)


def test_resume_after_the_model_changed_recomputes(ws, tmp_path, monkeypatch):
    model = tmp_path / "model"
    build_tiny_model(model, seed=0)
    recipe = _recipe(ws, "model.yaml", model={"id": str(model), "dtype": "float32", "device": "cpu"})
    evaluated: list = []
    state = _kill_on(monkeypatch, "nvfp4", evaluated)
    with pytest.raises(Killed):
        run_recipe(recipe, _opts(tmp_path, run_id="m"))
    build_tiny_model(model, seed=3)  # re-saved weights, same file names
    state["on"] = False
    evaluated.clear()
    resumed = json.loads(run_recipe(recipe, _opts(tmp_path, run_id="m", resume=True)).read_text())
    assert evaluated == ["fp8-dynamic", "nvfp4"]
    clean = json.loads(run_recipe(recipe, _opts(tmp_path, run_id="clean")).read_text())
    assert numbers(resumed) == numbers(clean)


def test_fixing_a_broken_inline_policy_keeps_the_finished_baseline(ws, tmp_path, monkeypatch):
    """Item 8: the recipe changes (an inline policy fixed), what the baseline depends on does not."""
    import qeval.pipeline.passes as passes

    broken = {"name": "mine", "rules": [{"kind": "linear", "weights": "nvfp4", "activations": "nvfp4"}]}
    recipe = _recipe(ws, "inline.yaml", policies=["fp8-dynamic", broken])
    evaluated: list = []
    state = _kill_on(monkeypatch, "mine", evaluated)
    with pytest.raises(Killed):
        run_recipe(recipe, _opts(tmp_path, run_id="i"))
    baseline_file = tmp_path / "results" / "tiny" / "i" / "policies" / "baseline.json"
    saved = baseline_file.read_bytes()
    fixed = {**broken, "rules": [{"kind": "linear", "weights": "nvfp4", "activations": "none"}]}
    recipe = _recipe(ws, "inline.yaml", policies=["fp8-dynamic", fixed])
    state["on"] = False
    evaluated.clear()
    calls = []
    real_base = passes.evaluate_baseline
    monkeypatch.setattr(passes, "evaluate_baseline", lambda *a, **k: calls.append(1) or real_base(*a, **k))
    res = json.loads(run_recipe(recipe, _opts(tmp_path, run_id="i", resume=True)).read_text())
    assert evaluated == ["mine"] and not calls  # baseline and fp8-dynamic reused
    assert baseline_file.read_bytes() == saved
    assert [p["name"] for p in res["policies"]] == ["fp8-dynamic", "mine"]
    assert res["policies"][1]["policy"]["rules"][0]["activations"] in (None, "none")


# ---------------------------------------------------------------------------
# item 2: NaN/Inf


def _poisoned_model(folder, layer: int, value: float):
    from safetensors.torch import load_file, save_file

    build_tiny_model(folder)
    file = folder / "model.safetensors"
    tensors = load_file(file)
    tensors[f"model.layers.{layer}.mlp.up_proj.weight"][3, 5] = value
    save_file(tensors, file, metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("layer,value", [(0, math.nan), (1, math.inf)])
def test_nonfinite_weights_in_any_layer_are_refused_before_the_baseline(ws, tmp_path, capsys, layer, value):
    model = _poisoned_model(tmp_path / "poisoned", layer, value)
    capsys.readouterr()
    recipe = _recipe(ws, "poison.yaml", model={"id": str(model), "dtype": "float32", "device": "cpu"})
    out = tmp_path / "results"
    assert main(["run", str(recipe), "--results-dir", str(out), "--no-progress"]) == 2
    err = _one_line(capsys)
    assert f"model.layers.{layer}.mlp.up_proj.weight has" in err and "not finite" in err
    assert not any(out.rglob("*.json"))  # no half-finished run directory


def test_nonfinite_logits_are_counted_and_fail_the_gate(ws, tmp_path, monkeypatch):
    """A policy whose output turns NaN: counted per pass, KL and top-1 are not a perfect match, the gate fails."""
    from qeval.evaluate import perplexity

    real = perplexity.window_logits
    state = {"poison": False}

    def logits(model, ids, w, device=None, forward=None):
        out = real(model, ids, w, device, forward)
        if state["poison"]:
            out[:, 0] = math.nan  # every position of the policy's pass
        return out

    import qeval.evaluate.stream as stream

    monkeypatch.setattr(stream, "window_logits", logits)
    import qeval.pipeline.passes as passes

    real_policy = passes.evaluate_policy

    def policy(recipe_, ctx, name, *a, **k):
        state["poison"] = name == "nvfp4"
        try:
            return real_policy(recipe_, ctx, name, *a, **k)
        finally:
            state["poison"] = False

    monkeypatch.setattr(passes, "evaluate_policy", policy)
    res = json.loads(run_recipe(_recipe(ws, "nan.yaml"), _opts(tmp_path)).read_text())
    by = {p["name"]: p for p in res["policies"]}
    n = by["nvfp4"]["metrics"]["perplexity_tokens"]
    assert by["nvfp4"]["metrics"]["nonfinite_logits"] == n
    assert by["fp8-dynamic"]["metrics"]["nonfinite_logits"] == 0
    assert res["baseline"]["metrics"]["nonfinite_logits"] == 0
    assert by["nvfp4"]["metrics"]["top1_agreement"] == 0.0  # NaN rows never "agree"
    assert not math.isfinite(by["nvfp4"]["metrics"]["kl_mean"])
    assert by["nvfp4"]["gate"]["passed"] is False
    assert any(c["name"] == "finite_logits" for c in by["nvfp4"]["gate"]["checks"])
    assert by["fp8-dynamic"]["gate"]["passed"] is True


# ---------------------------------------------------------------------------
# items 4 and 5: bad input is refused before the first forward pass, one line, exit 2


def _truncated(folder):
    build_tiny_model(folder)
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    return folder


def _garbage(folder):
    build_tiny_model(folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    return folder


BAD = {
    "rule_matches_nothing": (dict(policies=[{"name": "p", "rules": [{"name": "nothing.here", "weights": "nvfp4"}]}]),
                             "matches no module"),
    "layers_out_of_range": (dict(policies=[{"name": "p", "rules": [{"kind": "linear", "layers": [7], "weights": "nvfp4"}]}]),
                            "policies[0]"),
    "unknown_task": (dict(tasks=[{"name": "no_such_task_anywhere"}]), "unknown lm-eval task"),
    "native_nvfp4_on_cpu": (dict(mode="native", policies=["nvfp4"]), "Blackwell"),
    "impossible_device": (dict(model={"device": "cuda:7"}), "field 'model.device'"),
    "not_a_device": (dict(model={"device": "quantum"}), "is not a device"),
    "long_policy_name": (dict(policies=[{"name": "p" * 300, "rules": []}]), "cannot name a"),
    "dotdot_policy_name": (dict(policies=[{"name": "../escape", "rules": []}]), "cannot name a"),
    "static_scales_without_calibration": (dict(policies=["fp8"], calibration=None), "calibration"),
    "window_past_context": (dict(metrics={"perplexity": {"window": 100000}}, eval_data={"max_tokens": 100000}),
                            "longer than the model's context"),
    "window_as_float_text": (dict(metrics={"perplexity": {"window": "1e9"}}), "metrics.perplexity.window"),
    "huge_seed": (dict(seed=10**23), "field 'seed'"),
    "truncated_safetensors": ("truncated", "truncated"),
    "corrupt_safetensors": ("garbage", "not safetensors"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_before_any_forward_pass(ws, tmp_path, monkeypatch, capsys, case):
    import qeval.evaluate.perplexity as perplexity
    import qeval.evaluate.stream as stream

    def no_forward(*a, **k):
        raise AssertionError("a forward pass ran before the bad input was found")

    monkeypatch.setattr(stream, "window_logits", no_forward)
    monkeypatch.setattr(perplexity, "window_logits", no_forward)
    change, expect = BAD[case]
    data = recipe_dict(ws)
    if change == "truncated":
        data["model"]["id"] = str(_truncated(tmp_path / "m"))
    elif change == "garbage":
        data["model"]["id"] = str(_garbage(tmp_path / "m"))
    else:
        for k, v in change.items():
            if isinstance(v, dict) and isinstance(data.get(k), dict):
                data[k] = {**data[k], **v}
            else:
                data[k] = v
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "results"
    capsys.readouterr()  # building a model prints progress
    for extra in ([], ["--dry-run"]):
        assert main(["run", str(path), "--results-dir", str(out), "--no-progress", *extra]) == 2
        err = _one_line(capsys)
        assert expect in err, err
        assert not out.exists() or not any(out.rglob("*"))  # no run directory, no spill


def test_dry_run_validates_and_runs_nothing(ws, tmp_path, monkeypatch, capsys):
    import qeval.pipeline.runner as runner

    monkeypatch.setattr(runner, "_prepare", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    out = tmp_path / "results"
    assert main(["run", str(_recipe(ws, "dry.yaml")), "--results-dir", str(out), "--dry-run"]) == 0
    assert "nothing was run" in capsys.readouterr().out
    assert not out.exists()


def test_a_policy_that_quantizes_nothing_warns_in_run_and_plan(ws, tmp_path, capsys):
    missed = {"name": "missed", "rules": [{"name": "*.nope", "weights": "nvfp4", "optional": True}]}
    recipe = _recipe(ws, "missed.yaml", policies=[missed])
    assert main(["run", str(recipe), "--results-dir", str(tmp_path / "r"), "--dry-run"]) == 0
    assert "quantizes no module" in capsys.readouterr().err
    pol = tmp_path / "missed-policy.yaml"
    pol.write_text(yaml.safe_dump(missed))
    assert main(["plan", str(ws / "model"), "--policy", str(pol)]) == 0
    assert "quantizes no module" in capsys.readouterr().err


def test_short_text_with_the_default_window_runs(ws, tmp_path):
    """200 tokens under the default window and stride (1024): one window, not a traceback."""
    data = recipe_dict(ws, policies=["fp8-dynamic"], metrics={"chunk": 16})
    data["eval_data"]["max_tokens"] = 200
    recipe = ws / "short.yaml"
    recipe.write_text(yaml.safe_dump(data))
    res = json.loads(run_recipe(recipe, _opts(tmp_path)).read_text())
    assert res["baseline"]["metrics"]["perplexity_tokens"] == 199
    assert res["policies"][0]["metrics"]["tokens"] == 199


# ---------------------------------------------------------------------------
# item 6: a full disk


def test_full_disk_during_a_policy_is_one_line_and_resumable(ws, tmp_path, monkeypatch, capsys):
    import qeval.results.store as store

    recipe = _recipe(ws, "disk.yaml")
    real = store.atomic_write_json
    state = {"full": True}

    def write(path, obj):
        if state["full"] and path.name == "nvfp4.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, obj)

    monkeypatch.setattr(store, "atomic_write_json", write)
    out = tmp_path / "results"
    args = ["run", str(recipe), "--results-dir", str(out), "--run-id", "d", "--no-progress"]
    assert main(args) == 2
    err = _one_line(capsys, "qeval run: error: no space left on device")
    assert "--resume" in err
    run = out / "tiny" / "d"
    assert sorted(p.name for p in (run / "policies").glob("*.json")) == ["baseline.json", "fp8-dynamic.json"]
    assert not (run / "spill").exists() or not any((run / "spill").glob("*.npy"))  # space given back
    state["full"] = False
    assert main(args + ["--resume"]) == 0
    res = json.loads((run / "results.json").read_text())
    clean = json.loads(run_recipe(recipe, _opts(tmp_path, run_id="clean")).read_text())
    assert numbers(res) == numbers(clean)


def test_spill_space_is_reserved_up_front(tmp_path, monkeypatch):
    """The spill is allocated before it is written: a full disk is an OSError, not a SIGBUS later."""
    import os

    from qeval.evaluate.divergence import BaselineSpill

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    spill = BaselineSpill(tmp_path / "spill" / "x.npy", {"k": 1})
    with pytest.raises(OSError) as info:
        spill.open_write({0: 10}, 100)
    assert info.value.errno == errno.ENOSPC and str(tmp_path) in str(info.value.filename)
    assert not (tmp_path / "spill" / "x.npy").exists()
    assert torch.tensor(0).numel() == 1
