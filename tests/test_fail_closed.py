"""Issue 16 without a model: the gate fails closed, every command keeps the exit-code contract
(0 pass, 1 gate failure, 2 bad input or error, 130 interrupted; one line, no traceback), YAML is
bounded, written files follow the umask, a run directory is locked."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest
import yaml

from qeval.cli import main

GATE = {"max_kl_mean": 0.1, "min_top1_agreement": 0.9, "min_task_recovery": 95}


def _results(policies: dict, baseline: dict | None = None) -> dict:
    return {
        "schema_version": 1,
        "recipe": {"name": "syn", "path": "syn.yaml", "sha256": "0" * 64, "config": {}},
        "run_id": "r1",
        "baseline": {"metrics": baseline if baseline is not None else
                     {"perplexity": 20.0, "tasks": {"t": {"acc": 0.85, "stderr": 0.02}}}},
        "policies": [{"name": n, "metrics": m} for n, m in policies.items()],
    }


def _gate(tmp_path, results: dict, gate=GATE, *extra) -> tuple[int, str, str]:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    gfile = tmp_path / "gate.yaml"
    gfile.write_text(yaml.safe_dump(gate) if isinstance(gate, dict) else gate)
    return main(["gate", str(path), "--gate", str(gfile), *extra])


def _one_line_error(capsys, prefix: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(prefix), err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------------------
# item 3: the gate fails closed


@pytest.mark.parametrize("stderr", [math.nan, math.inf])
def test_gate_task_with_nonfinite_stderr_fails(tmp_path, capsys, stderr):
    """0.10 vs 0.85 with a NaN/Inf stderr used to "pass within noise"."""
    task = {"acc": 0.10, "stderr": stderr, "baseline_acc": 0.85, "baseline_stderr": 0.02}
    good = {"kl_mean": 0.01, "top1_agreement": 0.99, "tasks": {"t": {**task, "acc": 0.85, "stderr": 0.02}}}
    rc = _gate(tmp_path, _results({"bad": {"kl_mean": 0.01, "top1_agreement": 0.99, "tasks": {"t": task}},
                                   "good": good}))
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL  bad" in out and "PASS  good" in out
    assert "stderr is not finite" in out


def test_gate_all_null_metrics_fail_instead_of_passing_with_zero_checks(tmp_path, capsys):
    nulls = {"perplexity": None, "kl_mean": None, "kl_p99": None, "top1_agreement": None, "tasks": {}}
    rc = _gate(tmp_path, _results({"a": dict(nulls), "b": dict(nulls)}, baseline=dict(nulls)))
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL  a" in out and "FAIL  b" in out and "no gate threshold could be checked" in out


def test_gate_empty_policy_list_or_no_threshold_is_bad_input(tmp_path, capsys):
    res = _results({"p": {"kl_mean": 0.01, "top1_agreement": 0.99}})
    assert _gate(tmp_path, res, {**GATE, "policies": []}) == 2
    assert "empty list gates nothing" in _one_line_error(capsys, "qeval gate: error:")
    assert _gate(tmp_path, res, {"confidence": 0.9}) == 2
    assert "sets no threshold" in _one_line_error(capsys, "qeval gate: error:")
    assert _gate(tmp_path, _results({}), GATE) == 2  # results without policies: nothing gated is no pass
    assert "no policies to gate" in _one_line_error(capsys, "qeval gate: error:")


def test_gate_fails_on_nonfinite_logits_in_policy_or_baseline(tmp_path, capsys):
    ok = {"kl_mean": 0.0, "top1_agreement": 1.0, "nonfinite_logits": 0}
    nan_policy = {**ok, "nonfinite_logits": 37}
    assert _gate(tmp_path, _results({"ok": ok, "nan": nan_policy}, baseline={"perplexity": 3.0})) == 1
    out = capsys.readouterr().out
    assert "PASS  ok" in out and "FAIL  nan" in out and "NaN/Inf at 37 positions" in out
    assert _gate(tmp_path, _results({"ok": ok}, baseline={"perplexity": 3.0, "nonfinite_logits": 5})) == 1
    assert "baseline's logits are NaN/Inf" in capsys.readouterr().out


def test_gate_fails_a_policy_that_quantizes_nothing(tmp_path, capsys):
    entry = {"kl_mean": 0.0, "top1_agreement": 1.0}
    res = _results({"missed": entry, "bf16": entry}, baseline={"perplexity": 3.0})
    summary = {"weights": {"bf16": 14}, "activations": {"bf16": 14}, "kv_cache": None}
    res["policies"][0].update(plan_summary=summary, policy={"rules": [{"name": "x.*", "weights": "nvfp4"}]})
    res["policies"][1].update(plan_summary=summary, policy={"rules": []})  # bf16 asks for nothing: fine
    assert _gate(tmp_path, res) == 1
    out = capsys.readouterr().out
    assert "FAIL  missed" in out and "PASS  bf16" in out and "quantized no module" in out


# ---------------------------------------------------------------------------
# item 5: one line and exit 2 for malformed results, for gate and compare


MALFORMED = {
    "string_baseline": lambda r: r.update(baseline="x"),
    "string_metrics": lambda r: r["policies"][0].update(metrics="x"),
    "string_tasks": lambda r: r["policies"][0]["metrics"].update(tasks="abc"),
    "string_task": lambda r: r["policies"][0]["metrics"].update(tasks={"t": "abc"}),
    "string_gate": lambda r: r.update(gate="strict"),
    "list_recipe": lambda r: r.update(recipe=[1]),
    "string_recipe_config": lambda r: r["recipe"].update(config="x"),
    "int_policy": lambda r: r.update(policies=[3]),
    "string_plan_summary": lambda r: r["policies"][0].update(plan_summary="x"),
}


@pytest.mark.parametrize("command", ["gate", "compare"])
@pytest.mark.parametrize("mutation", sorted(MALFORMED))
def test_malformed_results_are_one_line_exit_2(tmp_path, capsys, command, mutation):
    res = _results({"p": {"kl_mean": 0.01, "top1_agreement": 0.99, "tasks": {}}})
    MALFORMED[mutation](res)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    assert main([command, str(path)]) == 2
    _one_line_error(capsys, f"qeval {command}: error:")


@pytest.mark.parametrize("command", ["gate", "compare"])
def test_deeply_nested_json_is_one_line_exit_2(tmp_path, capsys, command):
    path = tmp_path / "deep.json"
    path.write_text('{"policies": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert main([command, str(path)]) == 2
    assert "nested too deeply" in _one_line_error(capsys, f"qeval {command}: error:")


def test_ctrl_c_is_one_line_exit_130(monkeypatch, capsys):
    import qeval.commands.formats as formats

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(formats, "run", interrupted)
    assert main(["formats"]) == 130
    assert "interrupted" in _one_line_error(capsys, "qeval formats:")


def test_an_unexpected_error_is_one_line_exit_2_not_a_traceback(monkeypatch, capsys):
    import qeval.commands.formats as formats

    def broken(args):
        raise KeyError("surprise")

    monkeypatch.setattr(formats, "run", broken)
    assert main(["formats"]) == 2
    assert "surprise" in _one_line_error(capsys, "qeval formats: error:")
    monkeypatch.setenv("QEVAL_DEBUG", "1")  # a developer gets the traceback back
    with pytest.raises(KeyError):
        main(["formats"])


def test_usage_errors_are_one_line_exit_2(capsys):
    assert main(["gate"]) == 2  # RESULTS missing
    _one_line_error(capsys, "qeval gate: error:")
    assert main(["run", "x.yaml", "--limit-tokens", "many"]) == 2
    _one_line_error(capsys, "qeval run: error:")


def test_full_disk_reads_as_one_line(monkeypatch, capsys):
    import errno

    import qeval.commands.formats as formats

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/results/x/policies/.nvfp4.json.tmp")

    monkeypatch.setattr(formats, "run", full)
    assert main(["formats"]) == 2
    err = _one_line_error(capsys, "qeval formats: error: no space left on device")
    assert "--resume" in err and "nvfp4.json" in err


# ---------------------------------------------------------------------------
# item 8: YAML alias bombs, umask, relative gate files


def _bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines)


def test_yaml_alias_bomb_in_a_recipe_field_is_refused_quickly(tmp_path):
    import time

    from qeval.pipeline.recipe import RecipeError, load_recipe

    indented = "\n".join("    " + line for line in _bomb().splitlines())
    text = f"model:\n  id: gpt2\n  device_map:\n{indented}\npolicies: [fp8]\n"
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    t = time.perf_counter()
    with pytest.raises(RecipeError, match=r"bomb.yaml: recipe refused: expands to [\d,]+ values through aliases"):
        load_recipe(path)
    assert time.perf_counter() - t < 5


def test_yaml_self_reference_and_oversize_are_refused():
    from qeval.files import MAX_YAML_BYTES, parse_yaml

    with pytest.raises(ValueError, match="refers to a node that contains it"):
        parse_yaml(b"a: &x [1, *x]", "x.yaml")
    with pytest.raises(ValueError, match="at most"):
        parse_yaml(b"#" * (MAX_YAML_BYTES + 1), "big.yaml")
    # ordinary anchors still work
    assert parse_yaml(b"base: &b {weights: nvfp4}\nrule: *b\n", "ok.yaml") == {
        "base": {"weights": "nvfp4"}, "rule": {"weights": "nvfp4"}}


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, mask):
    from qeval.files import atomic_write_json

    old = os.umask(mask)
    try:
        path = atomic_write_json(tmp_path / f"r{mask:o}.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_gate_file_named_in_a_recipe_resolves_from_the_recipe_folder(tmp_path, monkeypatch):
    from qeval.pipeline.recipe import load_recipe

    folder = tmp_path / "recipes"
    (folder / "gates").mkdir(parents=True)
    (folder / "gates" / "mine.yaml").write_text("max_kl_mean: 0.02\n")
    (folder / "text.txt").write_text("some words to read\n")
    recipe = {"model": {"id": "gpt2"}, "policies": ["fp8"], "gate": "gates/mine.yaml",
              "eval_data": {"source": "file", "path": "text.txt"}}
    (folder / "r.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(tmp_path)  # not the recipe's folder
    loaded, _ = load_recipe(folder / "r.yaml")
    assert loaded.gate == str(folder / "gates" / "mine.yaml")
    assert loaded.eval_data.path == str(folder / "text.txt")


def test_huge_seed_is_one_line(tmp_path):
    from qeval.pipeline.recipe import RecipeError, load_recipe

    path = tmp_path / "seed.yaml"
    path.write_text(yaml.safe_dump({"model": {"id": "gpt2"}, "policies": ["fp8"], "seed": 10**23,
                                    "eval_data": {"source": "gensim-lee"}}))
    with pytest.raises(RecipeError, match=r"field 'seed'"):
        load_recipe(path)


# ---------------------------------------------------------------------------
# item 7: one process per run directory


def test_a_second_process_on_a_locked_run_gets_one_line_naming_the_holder(tmp_path):
    import socket

    from qeval.results.store import ResultsError, RunDir

    first = RunDir.create(tmp_path, "r", "r.yaml", "0" * 64, {}, run_id="run1")
    try:
        # a second open of the lock is a second holder, even in this process (flock is per open file)
        with pytest.raises(ResultsError) as info:
            RunDir.create(tmp_path, "r", "r.yaml", "0" * 64, {}, run_id="run1", resume=True)
        msg = str(info.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in msg and "\n" not in msg
    finally:
        first.release()
    again = RunDir.create(tmp_path, "r", "r.yaml", "0" * 64, {}, run_id="run1", resume=True)  # free now
    assert again.resumed
    again.release()


# ---------------------------------------------------------------------------
# item 8: compare says when runs were measured on different things


def test_compare_warns_when_runs_differ_in_model_text_or_tokens(tmp_path, capsys):
    def run(name, model, text, tokens):
        res = _results({"p": {"kl_mean": 0.01, "top1_agreement": 0.99}},
                       baseline={"perplexity": 20.0, "perplexity_tokens": tokens})
        res["run_id"] = name
        res["recipe"]["config"] = {"model": {"id": model}, "eval_data": {"source": "file", "path": text}}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(res))
        return str(path)

    a = run("a", "org/llama", "wiki.txt", 2047)
    same = run("same", "org/llama", "wiki.txt", 2047)
    b = run("b", "org/qwen", "news.txt", 511)
    assert main(["compare", a, same, "--markdown"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["compare", a, b, "--markdown"]) == 0
    err = capsys.readouterr().err
    for what in ("model", "evaluation text", "token count"):
        assert f"qeval compare: warning: runs differ in {what} (" in err, err
    assert "org/qwen" in err and "511" in err
