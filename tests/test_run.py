"""``qeval run`` end to end on a tiny random Llama saved to disk, with a tokenizer built offline."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from qeval.cli import main as cli_main
from qeval.pipeline.runner import RunOptions, run_recipe
from qeval.results.store import SCHEMA_VERSION

WORDS = (
    "the a quantized model keeps most of its quality when scales are chosen well but four bit weights "
    "lose more than eight bit ones and activations matter too so we measure perplexity divergence and "
    "agreement on text that the model has never seen before today river mountain city north south"
).split()


def _text(seed: int, n_words: int) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_words // 12):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(12)) + " .")
    return "\n".join(lines) + "\n"


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A Llama with a word-level tokenizer, saved as safetensors + tokenizer files (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", "<pad>", "."] + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, eos_token_id=1, pad_token_id=2, bos_token_id=1,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper next-token distributions than the default init
        model.lm_head.weight.mul_(30)
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("qeval-run")
    build_tiny_model(root / "model")
    (root / "eval.txt").write_text(_text(1, 700), encoding="utf-8")
    (root / "calib.txt").write_text(_text(2, 700), encoding="utf-8")
    return root


def recipe_dict(root: Path, **over) -> dict:
    data = {
        "name": "tiny",
        "seed": 0,
        "model": {"id": str(root / "model"), "dtype": "float32", "device": "cpu"},
        "eval_data": {"source": "file", "path": str(root / "eval.txt"), "max_tokens": 300},
        "calibration": {"source": "file", "path": str(root / "calib.txt"), "n_batches": 2, "seq_len": 32},
        "policies": ["fp8-dynamic", "nvfp4"],
        "metrics": {"perplexity": {"window": 64, "stride": 48}, "chunk": 16},
        "gate": {"max_kl_mean": 0.5, "min_top1_agreement": 0.5},
    }
    data.update(over)
    return data


def write_recipe(root: Path, name: str = "tiny.yaml", **over) -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(recipe_dict(root, **over)), encoding="utf-8")
    return path


def _opts(tmp_path, **kw) -> RunOptions:
    return RunOptions(results_dir=tmp_path / "results", progress=False, print_table=False, **kw)


def numbers(results: dict) -> dict:
    """Every measured number of a results.json (timings excluded)."""
    out = {"baseline": results["baseline"]["metrics"]}
    for p in results["policies"]:
        out[p["name"]] = {"metrics": p["metrics"], "bytes": (p["weight_bytes"], p["weight_bytes_measured"])}
    return out


@pytest.fixture(scope="module")
def first_run(workspace, tmp_path_factory):
    """One uninterrupted run of the default recipe (shared by several tests)."""
    out = tmp_path_factory.mktemp("first")
    return run_recipe(write_recipe(workspace), _opts(out, run_id="r1")), out


def test_run_writes_results_with_the_documented_shape(first_run):
    path, out = first_run
    res = json.loads(path.read_text())
    assert path == out / "results" / "tiny" / "r1" / "results.json"
    assert res["schema_version"] == SCHEMA_VERSION == 2 and res["run_id"] == "r1" and res["recipe"]["name"] == "tiny"
    assert res["environment"]["seed"] == 0 and res["environment"]["device"] == "cpu"
    assert res["environment"]["model_devices"] == ["cpu"] and res["environment"]["world_size"] == 1
    base = res["baseline"]["metrics"]
    assert base["perplexity_tokens"] == 299 and math.isfinite(base["perplexity"]) and base["kl_mean"] is None
    by = {p["name"]: p for p in res["policies"]}
    assert list(by) == ["fp8-dynamic", "nvfp4"]
    for p in by.values():
        m = p["metrics"]
        assert m["tokens"] == 299 and 0 <= m["top1_agreement"] <= 1 and m["kl_p99"] >= m["kl_mean"] * 0.5
        assert 0 < p["weight_bytes"] < res["baseline"]["weight_bytes"]
        assert p["savings_vs_bf16"] == pytest.approx(1 - p["weight_bytes"] / p["plan_summary"]["bytes_before"])
        assert p["weight_bytes_measured"] > 0 and set(p["timings"]) >= {"quantize_s", "eval_s"}
        assert p["gate"]["checks"] and isinstance(p["gate"]["passed"], bool)
        assert p["mode"] == "emulate" and p["emulation"] == "exact"
        # intervals around every text metric; per-window sums (one number per window) for paired comparisons
        ci, win = m["ci"], m["windows"]
        assert ci["confidence"] == 0.95 and ci["windows"] == len(win["tokens"]) > 1 and ci["stopped_by"] == "max_tokens"
        assert sum(win["tokens"]) == 299 and len(win["nll"]) == len(win["kl_sum"]) == len(win["top1"]) == ci["windows"]
        assert math.fsum(win["kl_sum"]) / 299 == pytest.approx(m["kl_mean"], rel=1e-12) and sum(win["top1"]) / 299 == m["top1_agreement"]
        for key in ("perplexity", "kl_mean", "top1_agreement", "kl_p99"):
            lo, hi = ci[key]
            assert lo <= m[key] <= hi, key
        assert win["key"] == base["windows"]["key"]  # the same tokens as the baseline: paired
    # 4-bit weights and activations lose more than FP8
    assert by["nvfp4"]["metrics"]["kl_mean"] > by["fp8-dynamic"]["metrics"]["kl_mean"] > 0
    assert by["nvfp4"]["weight_bytes"] < by["fp8-dynamic"]["weight_bytes"]
    assert not (path.parent / "spill").exists()  # baseline log-probs removed at the end


def _without_clock(results: dict) -> str:
    """results.json as text minus what may differ between identical runs: times, run id, paths,
    memory peaks and the free bytes the baseline store saw (machine state, not results)."""
    def entry(e: dict) -> dict:
        e = {k: v for k, v in e.items() if k not in ("timings", "memory")}
        if "kl_store" in e:
            e["kl_store"] = {k: v for k, v in e["kl_store"].items() if k not in ("bytes_free", "where")}
        if e.get("forward"):
            e["forward"] = {k: v for k, v in e["forward"].items() if k != "record_s"}
        return e

    out = {k: v for k, v in results.items() if k not in ("environment", "run_id")}
    out["baseline"] = entry(out["baseline"])
    out["policies"] = [entry(p) for p in out["policies"]]
    return json.dumps(out, sort_keys=True)


def test_same_seed_same_numbers(workspace, tmp_path, first_run):
    """Reproducibility: a second run of the same recipe on the same machine gives bit-identical
    results.json numbers (metrics, intervals, the p99 bootstrap, per-window sums, gate verdicts)."""
    a = json.loads(first_run[0].read_text())
    b = json.loads(run_recipe(write_recipe(workspace), _opts(tmp_path, run_id="b")).read_text())
    assert numbers(a) == numbers(b)
    assert _without_clock(a) == _without_clock(b)
    assert a["policies"][0]["metrics"]["ci"]["kl_p99_bootstrap"]["levels"]  # the bootstrap is in what was compared


def test_target_ci_stops_a_policy_early_and_says_so(workspace, tmp_path):
    data = {"source": "file", "path": str(workspace / "eval.txt"), "max_tokens": 300}
    loose = write_recipe(workspace, "target.yaml", policies=["nvfp4"], eval_data={**data, "target_ci": {"kl_mean": 10.0}})
    res = json.loads(run_recipe(loose, _opts(tmp_path, run_id="loose")).read_text())
    m, base = res["policies"][0]["metrics"], res["baseline"]["metrics"]
    assert m["ci"]["stopped_by"] == "target_ci" and m["ci"]["target"] == {"kl_mean": 10.0}
    assert m["ci"]["windows"] == 2 and m["tokens"] == sum(m["windows"]["tokens"]) < 299  # the first interval was narrow enough
    assert base["perplexity_tokens"] == 299  # the baseline scores every window
    assert m["windows"]["tokens"] == base["windows"]["tokens"][:2]  # a prefix: still paired with the baseline
    tight = write_recipe(workspace, "target2.yaml", policies=["nvfp4"], eval_data={**data, "target_ci": {"kl_mean": 1e-9}})
    m = json.loads(run_recipe(tight, _opts(tmp_path, run_id="tight")).read_text())["policies"][0]["metrics"]
    assert m["ci"]["stopped_by"] == "max_tokens" and m["tokens"] == 299
    bad = write_recipe(workspace, "target3.yaml", eval_data={**data, "target_ci": {"kl_p50": 0.1}})
    assert _cli(bad, "--results-dir", tmp_path / "r") == 2


def test_target_ci_is_refused_under_several_processes(workspace, monkeypatch):
    from qeval.evaluate import distributed
    from qeval.pipeline.recipe import load_recipe

    recipe, _ = load_recipe(write_recipe(workspace, "t4.yaml", eval_data={
        "source": "file", "path": str(workspace / "eval.txt"), "target_ci": {"kl_mean": 0.01}}))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(distributed.DistributedSetupError, match="target_ci"):
        distributed.setup(recipe)


class Killed(Exception):
    pass


def test_resume_after_a_kill_reuses_finished_policies(workspace, tmp_path, monkeypatch, first_run, capsys):
    import qeval.pipeline.passes as passes

    recipe = write_recipe(workspace)  # the recipe of first_run: fp8-dynamic, nvfp4
    evaluated = []
    real = passes.evaluate_policy

    def spy(recipe_, ctx, name, *a, **k):
        evaluated.append(name)
        if name == "nvfp4" and kill["on"]:
            raise Killed("simulated kill in the middle of nvfp4")
        return real(recipe_, ctx, name, *a, **k)

    kill = {"on": True}
    monkeypatch.setattr(passes, "evaluate_policy", spy)
    with pytest.raises(Killed):
        run_recipe(recipe, _opts(tmp_path, run_id="k"))
    run_dir = tmp_path / "results" / "tiny" / "k"
    assert sorted(p.name for p in (run_dir / "policies").glob("*.json")) == ["baseline.json", "fp8-dynamic.json"]
    assert not (run_dir / "results.json").exists()
    first = (run_dir / "policies" / "fp8-dynamic.json").read_bytes()

    kill["on"] = False
    evaluated.clear()
    capsys.readouterr()
    opts = RunOptions(results_dir=tmp_path / "results", progress=True, print_table=False, resume=True)
    resumed = json.loads(run_recipe(recipe, opts).read_text())  # latest run
    assert evaluated == ["nvfp4"]  # fp8-dynamic and the baseline were reused
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[")]
    assert lines[0].startswith("[1/3] baseline:") and "reused from the interrupted run" in lines[0], lines
    assert lines[1].startswith("[3/3] nvfp4:") and " s; elapsed " in lines[1], lines
    assert (run_dir / "policies" / "fp8-dynamic.json").read_bytes() == first
    whole = json.loads(first_run[0].read_text())
    assert numbers(resumed) == numbers(whole)  # the spill was rebuilt and gives the same KL


def test_resume_of_a_changed_recipe_recomputes_what_changed(workspace, tmp_path, capsys):
    """A resumed run never mixes inputs: a new seed changes every entry's inputs, so all are redone."""
    recipe = write_recipe(workspace, "changing.yaml", policies=["bf16"])
    run_recipe(recipe, _opts(tmp_path, run_id="c", limit_tokens=32))
    write_recipe(workspace, "changing.yaml", policies=["bf16"], seed=5)
    capsys.readouterr()
    rc = cli_main(["run", str(recipe), "--resume", "--run-id", "c", "--limit-tokens", "32",
                   "--results-dir", str(tmp_path / "results"), "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "baseline was computed from other inputs (seed)" in err and "bf16 was computed from other inputs" in err
    res = json.loads((tmp_path / "results" / "tiny" / "c" / "results.json").read_text())
    assert res["recipe"]["config"]["seed"] == 5 and res["baseline"]["inputs"]["seed"] == 5


def test_policies_subset_and_limit_tokens(workspace, tmp_path):
    recipe = write_recipe(workspace)
    res = json.loads(run_recipe(recipe, _opts(tmp_path, policies=["nvfp4"], limit_tokens=100)).read_text())
    assert [p["name"] for p in res["policies"]] == ["nvfp4"]
    assert res["baseline"]["metrics"]["perplexity_tokens"] == 99
    assert res["recipe"]["config"]["overrides"] == {"limit_tokens": 100}


def test_a_policy_given_by_file_path_runs_under_its_own_name(workspace, tmp_path):
    """The bug of issue 17: a recipe listing a policy file evaluated the first policies, then died."""
    (tmp_path / "my").mkdir()
    (tmp_path / "my" / "mid.yaml").write_text(
        "name: fp8-mid\nrules:\n  - kind: mlp\n    weights: fp8_e4m3:channel\n", encoding="utf-8")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(workspace, policies=["fp8-dynamic", "my/mid.yaml"])), encoding="utf-8")
    res = json.loads(run_recipe(recipe, _opts(tmp_path, limit_tokens=64)).read_text())
    by = {p["name"]: p for p in res["policies"]}
    assert list(by) == ["fp8-dynamic", "fp8-mid"]
    assert by["fp8-mid"]["metrics"]["kl_mean"] > 0 and by["fp8-mid"]["policy"]["name"] == "fp8-mid"
    # --policies takes the name or the entry as written
    again = run_recipe(recipe, _opts(tmp_path, policies=["my/mid.yaml"], limit_tokens=64, run_id="sub"))
    assert [p["name"] for p in json.loads(again.read_text())["policies"]] == ["fp8-mid"]


def test_tasks_are_run_and_recovery_computed(workspace, tmp_path, monkeypatch):
    """The lm-eval glue: baseline and policy accuracies, recovery = quant / base x 100.

    lm-eval itself is replaced by a stand-in scored by the model (top-1 on fixed
    prompts), so a changed model changes the accuracy."""
    import qeval.tasks

    def fake_run_lm_eval(model, tokenizer, tasks, limit=None, batch_size=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(3, model.config.vocab_size, (limit, 9), generator=g)
        with torch.no_grad():
            pred = model(input_ids=ids[:, :8]).logits[:, -1].argmax(-1)
            ref_pred = ids[:, 8]  # random answers: accuracy is the share the model "guesses"
        acc = float((pred % 4 == ref_pred % 4).float().mean())
        return {t: {"acc": acc, "stderr": 0.05, "acc_norm": None, "n": limit} for t in tasks}

    monkeypatch.setattr(qeval.tasks, "run_lm_eval", fake_run_lm_eval)
    recipe = write_recipe(workspace, "tasks.yaml", tasks=[{"name": "word_analogy", "limit": 64}],
                          policies=["nvfp4"], eval_data=None, metrics={"perplexity": None})
    res = json.loads(run_recipe(recipe, _opts(tmp_path)).read_text())
    assert res["policies"][0]["metrics"]["kl_mean"] is None  # no eval text: tasks only
    base = res["baseline"]["metrics"]["tasks"]["word_analogy"]
    for p in res["policies"]:
        t = p["metrics"]["tasks"]["word_analogy"]
        assert t["baseline_acc"] == base["acc"] and t["n"] == 64
        assert t["recovery"] == pytest.approx(t["acc"] / base["acc"] * 100)


def _cli(*args) -> int:
    return cli_main(["run", *map(str, args), "--no-progress"])


def test_bad_input_exits_2_and_writes_nothing(workspace, tmp_path, capsys):
    out = tmp_path / "results"
    bad_field = write_recipe(workspace, "bad1.yaml", policies=["nvfp4"], metrics={"perplexty": {}})
    no_model = write_recipe(workspace, "bad2.yaml", model={"id": str(workspace / "nope")})
    pickles = tmp_path / "pickled"
    pickles.mkdir()
    (pickles / "config.json").write_text("{}")
    (pickles / "pytorch_model.bin").write_bytes(b"not really")
    pickled = write_recipe(workspace, "bad3.yaml", model={"id": str(pickles)})
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    empty_text = write_recipe(workspace, "bad4.yaml", eval_data={"source": "file", "path": str(empty)})
    cases = [
        (bad_field, "field 'metrics.perplexty': unknown field (did you mean 'perplexity'?)"),
        (no_model, "model path does not exist"),
        (pickled, "pickle"),
        (empty_text, "field 'eval_data.path': text file is empty"),
    ]
    for recipe, expect in cases:
        assert _cli(recipe, "--results-dir", out) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expect in err[0], err
    # a results directory that is not writable (a file where a folder must go)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _cli(write_recipe(workspace), "--results-dir", blocker / "sub") == 2
    assert "not writable" in capsys.readouterr().err
    assert _cli(write_recipe(workspace), "--results-dir", out, "--policies", "mxfp4") == 2
    assert "not in the recipe" in capsys.readouterr().err
    assert not out.exists() or not any(out.rglob("*.json"))  # nothing half-written


def test_a_failing_first_evaluation_leaves_no_run_directory(workspace, tmp_path, monkeypatch):
    import qeval.pipeline.passes as passes

    def boom(*a, **k):
        raise Killed("baseline failed")

    monkeypatch.setattr(passes, "evaluate_baseline", boom)
    with pytest.raises(Killed):
        run_recipe(write_recipe(workspace), _opts(tmp_path, run_id="gone"))
    assert not (tmp_path / "results" / "tiny" / "gone").exists()


@pytest.mark.slow
def test_two_processes_give_the_numbers_of_one(workspace, tmp_path):
    """torchrun with 2 CPU processes (gloo): windows split, sums gathered exactly."""
    recipe = write_recipe(workspace, "dist.yaml", policies=["nvfp4"])
    one = json.loads(run_recipe(recipe, _opts(tmp_path, run_id="one")).read_text())
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           "-m", "qeval", "run", str(recipe), "--run-id", "two", "--results-dir", str(tmp_path / "results"), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "results" / "tiny" / "two" / "results.json").read_text())
    assert two["environment"]["world_size"] == 2
    assert numbers(two) == numbers(one)


def test_python_evaluate_returns_what_qeval_run_writes(workspace, first_run):
    """``qeval.evaluate`` on the in-memory model = the run's results.json, number for number."""
    import copy

    import qeval
    from qeval.models import load_model

    res = json.loads(first_run[0].read_text())
    rd = recipe_dict(workspace)
    model, tok = load_model(rd["model"])
    out = qeval.evaluate(
        model, rd["policies"], tokenizer=tok, text=(workspace / "eval.txt").read_text(encoding="utf-8"),
        calibration=rd["calibration"], max_tokens=300, window=64, stride=48, chunk=16, gate=rd["gate"],
    )
    assert numbers(out) == numbers(res)
    assert [p["gate"]["passed"] for p in out["policies"]] == [p["gate"]["passed"] for p in res["policies"]]
    assert out["policies"][0].keys() >= {"name", "policy", "plan_summary", "metrics", "weight_bytes", "timings"}
    # the model ends as it started, and a model quantized elsewhere is measured as it is vs a reference
    quant = copy.deepcopy(model)
    qeval.quantize_model(quant, "fp8-dynamic", progress=False)
    as_is = qeval.evaluate(quant, [], tokenizer=tok, baseline=model, text=(workspace / "eval.txt"),
                           max_tokens=300, window=64, stride=48, chunk=16)
    got, want = as_is["policies"][0], out["policies"][0]
    assert got["name"] == "model"
    assert got["metrics"]["kl_mean"] == pytest.approx(want["metrics"]["kl_mean"], rel=1e-6)
    assert got["metrics"]["top1_agreement"] == want["metrics"]["top1_agreement"]


def test_python_run_is_qeval_run(workspace, tmp_path):
    import qeval

    res = qeval.run(write_recipe(workspace), results_dir=tmp_path, run_id="api", limit_tokens=64, progress=False)
    assert res["run_id"] == "api" and (tmp_path / "tiny" / "api" / "results.json").is_file()
    assert [p["name"] for p in res["policies"]] == ["fp8-dynamic", "nvfp4"]


def test_quick_mode_writes_the_recipe_it_runs(workspace, tmp_path, capsys):
    """lm-eval style flags, no recipe file: the recipe written to --output_path is what ran."""
    from qeval.pipeline.recipe import load_recipe

    out = tmp_path / "quick"
    (tmp_path / "calib.txt").write_text(_text(3, 2400), encoding="utf-8")  # 4 x 512 tokens: the recipe default
    argv = ["run", "--model", str(workspace / "model"), "--model_args", "dtype=float32,device=cpu",
            "--policies", "fp8-dynamic,nvfp4", "--eval_data", str(workspace / "eval.txt"),
            "--calibration", str(tmp_path / "calib.txt"), "--max_tokens", "300",
            "--output_path", str(out), "--run-id", "q", "--no-progress"]
    assert cli_main(argv) == 0
    written = out / "quick-model.yaml"
    recipe, _ = load_recipe(written)
    assert recipe.model.id == str(workspace / "model") and recipe.policy_names() == ["fp8-dynamic", "nvfp4"]
    assert recipe.eval_data.path == str(workspace / "eval.txt") and recipe.eval_data.max_tokens == 300
    quick = json.loads((out / "quick-model" / "q" / "results.json").read_text())
    again = json.loads(run_recipe(written, _opts(tmp_path / "again", run_id="again")).read_text())
    assert numbers(quick) == numbers(again) and quick["policies"][0]["metrics"]["kl_mean"] > 0
    err = capsys.readouterr().err
    assert "[3/3]" not in err and "Loading weights" not in err  # --no-progress: silent, model loading too


def test_quick_mode_task_options_and_bad_flags(tmp_path, capsys):
    from qeval.cli import build_parser
    from qeval.pipeline.quick import quick_recipe

    args = build_parser().parse_args(
        ["run", "--model", "hf", "--model_args", "pretrained=org/m,dtype=bfloat16,trust_remote_code=false",
         "--policies", "fp8", "--tasks", "word_analogy,winowhy", "--num_fewshot", "5", "--apply_chat_template",
         "--log_samples", "--limit", "50", "--output_path", str(tmp_path)])
    recipe = quick_recipe(args, ["fp8"])
    assert recipe["model"] == {"id": "org/m", "dtype": "bfloat16", "trust_remote_code": False}
    assert recipe["tasks"][1] == {"name": "winowhy", "batch_size": 8, "limit": 50, "num_fewshot": 5,
                                  "apply_chat_template": True, "log_samples": True}
    assert "eval_data" not in recipe  # tasks only, as lm-eval would run
    for argv, message in (
        (["--model", "m", "--model_args", "pretrained=x,bogus=1", "--policies", "fp8", "--output_path", "o"],
         "--model_args: unknown key 'bogus'"),
        (["--model", "m", "--policies", "fp8"], "quick mode needs --output_path"),
        (["--model", "m", "--output_path", "o"], "quick mode needs --policies"),
        (["recipe.yaml", "--tasks", "word_analogy"], "--tasks belongs to quick mode"),
    ):
        assert cli_main(["run", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


def test_resume_of_a_run_that_does_not_exist_exits_2(workspace, tmp_path, capsys):
    recipe = write_recipe(workspace)
    argv = ["run", str(recipe), "--resume", "--run-id", "nonexistent", "--results-dir", str(tmp_path), "--no-progress"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume: no run" in err[0] and "nonexistent" in err[0]
    assert not (tmp_path / "tiny" / "nonexistent").exists()


def test_quick_mode_fits_windows_to_the_model_context(tmp_path):
    """lm-eval reads max_length from --model_args or the model's config; quick mode shortens its windows to it."""
    from qeval.cli import build_parser
    from qeval.pipeline.quick import QuickError, quick_recipe

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 200}), encoding="utf-8")

    def recipe(*extra):
        args = build_parser().parse_args(["run", "--policies", "fp8", "--output_path", str(tmp_path), *extra])
        return quick_recipe(args, ["fp8"])

    local = recipe("--model", str(folder))
    assert local["metrics"] == {"perplexity": {"window": 200}} and local["calibration"]["seq_len"] == 200
    given = recipe("--model", str(folder), "--model_args", "max_length=100")  # the user's word wins
    assert given["metrics"]["perplexity"]["window"] == 100 and given["calibration"]["seq_len"] == 100
    long = recipe("--model", str(folder), "--model_args", "max_length=4096")  # longer than the defaults: kept
    assert "metrics" not in long and "seq_len" not in long["calibration"]
    assert "metrics" not in recipe("--model", "org/not-local")  # unknown context: the recipe's defaults
    with pytest.raises(QuickError, match="max_length=x1 is not a whole number"):
        recipe("--model", str(folder), "--model_args", "max_length=x1")


def test_an_unknown_lm_eval_argument_is_refused_before_any_work(workspace, tmp_path, capsys):
    tasks = [{"name": "word_analogy", "limit": 2, "lm_eval_args": {"bootstrap_iter": 0}}]
    recipe = write_recipe(workspace, "badargs.yaml", tasks=tasks)
    argv = ["run", str(recipe), "--dry-run", "--results-dir", str(tmp_path), "--no-progress"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "field 'tasks[0].lm_eval_args.bootstrap_iter'" in err[0]
    assert "did you mean 'bootstrap_iters'?" in err[0] and not (tmp_path / "badargs").exists()


def test_progress_shows_loading_step_lines_and_an_eta(workspace, tmp_path, capfd):
    """Long runs are not quiet: transformers' loading bar, then one line per evaluation with elapsed time and an
    ETA over what is left (the --no-progress run of the quick-mode test shows none of it)."""
    argv = ["run", str(write_recipe(workspace)), "--results-dir", str(tmp_path), "--run-id", "p", "--limit-tokens", "64"]
    assert cli_main(argv) == 0
    err = capfd.readouterr().err
    assert "Loading weights" in err
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert [line.split(":")[0] for line in lines] == ["[1/3] baseline", "[2/3] fp8-dynamic", "[3/3] nvfp4"]
    assert "elapsed 0:" in lines[0] and ", ETA 0:" in lines[0] and "KL " in lines[1]
    assert "ETA" not in lines[2]  # nothing left


def test_clock_eta_is_the_mean_time_per_evaluation_times_those_left(monkeypatch):
    from qeval.pipeline import progress

    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    clock = progress.Clock(4)
    assert clock.line() == "elapsed 0:00"  # no evaluation done: no estimate yet
    now[0] += 30
    clock.tick()
    assert clock.line() == "elapsed 0:30, ETA 1:30"  # 30 s each, 3 left
    now[0] += 3600
    clock.tick()
    assert clock.line() == "elapsed 1:00:30, ETA 1:00:30"  # 1815 s each, 2 left
