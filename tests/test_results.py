"""qeval.results.store: atomic writes, the run directory, resume bookkeeping, environment capture."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qeval.results.store import (
    SCHEMA_VERSION,
    ResultsError,
    RunDir,
    atomic_write_json,
    environment,
    load_results,
)

SHA = "0123456789abcdef" * 4
CONFIG = {"name": "tiny", "seed": 0, "policies": ["fp8", "nvfp4"], "model": {"id": "tiny-model"}}


def _create(root, **kw):
    return RunDir.create(root, "tiny", "recipes/tiny.yaml", kw.pop("sha", SHA), CONFIG, **kw)


def _entry(kl, wb=1000):
    return {"mode": "emulate", "metrics": {"perplexity": 20 + kl, "kl_mean": kl, "top1_agreement": 1 - kl},
            "weight_bytes": wb, "timings": {"eval_s": 1.0}}


def _tmp_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------
# atomic writes


def test_atomic_write_roundtrip_keeps_nonfinite_floats(tmp_path):
    data = {"perplexity": math.inf, "kl": 0.25, "nested": {"x": [1, 2]}, "path": Path("a/b")}
    atomic_write_json(tmp_path / "r.json", data)
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["perplexity"] == math.inf and back["kl"] == 0.25 and back["path"] == "a/b"
    assert _tmp_files(tmp_path) == []


@pytest.mark.parametrize("crash_at", ["os.fsync", "os.replace"])
def test_crash_mid_write_leaves_previous_file(tmp_path, monkeypatch, crash_at):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"version": 1})
    before = target.read_bytes()

    def boom(*a, **k):
        raise OSError("simulated crash")

    monkeypatch.setattr(crash_at, boom)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_json(target, {"version": 2, "big": list(range(10000))})
    assert target.read_bytes() == before
    assert _tmp_files(tmp_path) == []  # the partial temp file was removed


def test_unserialisable_value_touches_nothing(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"version": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_killed_process_loses_no_finished_policy(tmp_path):
    """A real SIGKILL in the middle of save_policy: earlier policies survive, the partial one is ignored."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from qeval.results.store import RunDir
        rd = RunDir.create({str(tmp_path)!r}, "tiny", "recipes/tiny.yaml", {SHA!r}, {{}}, run_id="r1")
        rd.save_policy("baseline", {{"metrics": {{"perplexity": 20.0}}, "weight_bytes": 10}})
        rd.save_policy("fp8", {{"metrics": {{"kl_mean": 0.01}}, "weight_bytes": 5}})
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)   # die with the temp file half done
        rd.save_policy("nvfp4", {{"metrics": {{"kl_mean": 0.5}}, "weight_bytes": 3}})
        print("not reached")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert "not reached" not in proc.stdout
    policies = tmp_path / "tiny" / "r1" / "policies"
    assert _tmp_files(policies), "the kill should have left a temp file behind"
    rd = RunDir.create(tmp_path, "tiny", "recipes/tiny.yaml", SHA, {}, resume=True)
    assert rd.resumed and rd.run_id == "r1"
    done = rd.load_finished()
    assert list(done) == ["baseline", "fp8"]
    assert done["fp8"]["metrics"]["kl_mean"] == 0.01
    rd.save_policy("nvfp4", {"metrics": {"kl_mean": 0.5}, "weight_bytes": 3})
    assert set(rd.load_finished()) == {"baseline", "fp8", "nvfp4"}


# ---------------------------------------------------------------------------
# run directory and resume


def test_create_writes_manifest_and_layout(tmp_path):
    rd = _create(tmp_path)
    assert re.fullmatch(r"\d{8}-\d{6}", rd.run_id)
    assert rd.path == tmp_path / "tiny" / rd.run_id
    assert rd.policies_dir.is_dir()
    manifest = json.loads((rd.path / "run.json").read_text())
    assert manifest["recipe"] == {"name": "tiny", "path": "recipes/tiny.yaml", "sha256": SHA, "config": CONFIG}
    assert not rd.resumed and rd.load_finished() == {}


def test_same_run_id_refused_without_resume(tmp_path):
    _create(tmp_path, run_id="r1")
    with pytest.raises(ResultsError, match="already exists.*--resume"):
        _create(tmp_path, run_id="r1")


def test_two_runs_in_the_same_second_get_distinct_dirs(tmp_path):
    a, b = _create(tmp_path), _create(tmp_path)
    assert a.path != b.path


def test_resume_finds_finished_policies(tmp_path):
    rd = _create(tmp_path, run_id="r1")
    rd.save_policy("baseline", {"metrics": {"perplexity": 20.0}, "weight_bytes": 2000})
    rd.save_policy("fp8", _entry(0.04))
    rd.release()  # the first process is done (a run directory is locked while in use)
    again = _create(tmp_path, resume=True)  # no run id: the latest run of the recipe
    assert again.resumed and again.path == rd.path
    done = again.load_finished()
    assert list(done) == ["baseline", "fp8"]
    assert done["fp8"]["metrics"]["kl_mean"] == 0.04 and done["fp8"]["name"] == "fp8"


def test_resume_with_a_changed_recipe_records_it_and_keeps_the_entries(tmp_path):
    """The run directory takes the new recipe; which entries are still valid is the runner's call
    (each entry records its inputs: qeval.pipeline.depends), so nothing finished is thrown away here."""
    rd = _create(tmp_path, run_id="r1")
    rd.save_policy("fp8", _entry(0.04))
    rd.release()
    other = "f" * 64
    again = _create(tmp_path, run_id="r1", resume=True, sha=other)
    assert again.resumed and again.manifest["recipe"]["sha256"] == other
    manifest = json.loads((again.path / "run.json").read_text())
    assert manifest["recipe"]["sha256"] == other and manifest["recipe_changes"][0]["sha256_before"] == SHA
    assert list(again.load_finished()) == ["fp8"]
    again.set_aside("fp8")  # what the runner does with an entry whose inputs changed
    assert again.load_finished() == {} and (again.policies_dir / ".stale.fp8.json").is_file()


def test_resume_without_earlier_run_starts_fresh(tmp_path):
    rd = _create(tmp_path, resume=True)
    assert not rd.resumed and rd.load_finished() == {}


def test_corrupt_policy_file_is_named(tmp_path):
    rd = _create(tmp_path, run_id="r1")
    (rd.policies_dir / "fp8.json").write_text("{not json")
    with pytest.raises(ResultsError, match=r"fp8\.json: not valid JSON"):
        rd.load_finished()


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", ""])
def test_unsafe_policy_names_refused(tmp_path, name):
    rd = _create(tmp_path)
    with pytest.raises(ResultsError, match="cannot name a file"):
        rd.save_policy(name, _entry(0.1))


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.mark.parametrize("how", ["under_a_file", "read_only_dir"])
def test_unwritable_results_dir_fails_first_with_one_line(tmp_path, how):
    if how == "under_a_file":
        blocker = tmp_path / "some_file"
        blocker.write_text("x")
        root = blocker / "sub"
    else:
        if _is_root():
            pytest.skip("root ignores directory permissions; covered by under_a_file")
        root = tmp_path / "ro"
        root.mkdir()
        root.chmod(0o500)
    try:
        with pytest.raises(ResultsError) as info:
            _create(root)
    finally:
        if how == "read_only_dir":
            root.chmod(0o700)
    msg = str(info.value)
    assert "\n" not in msg and "not writable" in msg and str(root) in msg
    if how == "read_only_dir":
        assert list(root.iterdir()) == []


# ---------------------------------------------------------------------------
# finalize and reading


def test_finalize_assembles_results_report_and_plot(tmp_path):
    rd = _create(tmp_path, run_id="r1")
    rd.save_policy("baseline", {"metrics": {"perplexity": 20.0}, "weight_bytes": 2000, "timings": {"eval_s": 1.0}})
    rd.save_policy("nvfp4", _entry(0.5, wb=600))
    rd.save_policy("fp8", _entry(0.04, wb=1000))
    env = environment(seed=3)
    path = rd.finalize(environment=env, gate={"max_kl_mean": 0.1}, policy_order=["fp8", "nvfp4"])
    assert path == rd.path / "results.json"
    results = load_results(rd.path)  # a run dir works as well as the file
    assert results["schema_version"] == SCHEMA_VERSION
    assert results["recipe"]["sha256"] == SHA and results["run_id"] == "r1"
    assert results["baseline"]["metrics"] == {"perplexity": 20.0}
    assert [p["name"] for p in results["policies"]] == ["fp8", "nvfp4"]
    assert results["environment"]["seed"] == 3 and results["environment"]["finished"]
    verdicts = {p["name"]: p["gate"]["passed"] for p in results["policies"]}
    assert verdicts == {"fp8": True, "nvfp4": False}  # 0.04 <= 0.1 < 0.5
    assert results["gate"]["passed"] is False
    assert (rd.path / "report.md").read_text().startswith("# qeval report: tiny/r1")
    assert (rd.path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _tmp_files(rd.path) == [] and _tmp_files(rd.policies_dir) == []


def test_finalize_orders_by_completion_by_default(tmp_path):
    rd = _create(tmp_path, run_id="r1")
    for name in ["zeta", "alpha", "mid"]:
        rd.save_policy(name, _entry(0.1))
    rd.finalize(report=False)
    assert [p["name"] for p in load_results(rd.results_file)["policies"]] == ["zeta", "alpha", "mid"]
    assert not (rd.path / "report.md").exists()


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "no such file"),
        ("{oops", "not valid JSON"),
        ("[1, 2]", "not a qeval results file"),
        ('{"policies": {"a": 1}}', "field 'policies'"),
        ('{"schema_version": 99, "policies": []}', "schema_version 99"),
    ],
)
def test_load_results_bad_input_one_line(tmp_path, content, expected):
    file = tmp_path / "results.json"
    if content is not None:
        file.write_text(content)
    with pytest.raises(ResultsError) as info:
        load_results(file)
    assert expected in str(info.value) and str(file) in str(info.value) and "\n" not in str(info.value)


def test_environment_matches_independent_sources():
    import torch

    env = environment(seed=7, device="cpu")
    assert env["python"] == platform.python_version()
    assert env["torch"] == torch.__version__.split("+")[0] or env["torch"] == torch.__version__
    assert env["seed"] == 7 and env["device"] == "cpu"
    from qeval import __version__

    assert env["qeval"] == __version__
    commit = env["git_commit"]
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit)
    json.dumps(env)  # all plain JSON


def test_resume_of_a_run_id_that_does_not_exist_is_refused(tmp_path):
    _create(tmp_path, run_id="20261125-183000")
    with pytest.raises(ResultsError, match=r"cannot resume: no run .*tiny/nonexistent \(runs of tiny: 20261125-183000\)"):
        _create(tmp_path, run_id="nonexistent", resume=True)
    assert not (tmp_path / "tiny" / "nonexistent").exists()
