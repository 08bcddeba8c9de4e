"""qeval.results.gate and ``qeval gate``: thresholds, the stderr-aware task gate, exit codes, JUnit XML."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from statistics import NormalDist

import pytest

from qeval.cli import main
from qeval.results.gate import GATES_DIR, Gate, GateError, evaluate_gate, load_gate, parse_gate, resolve_gate, task_check

Z95 = 1.6448536269514722  # one-sided 95% normal quantile (tables), independent of the code under test


def _task(acc, base_acc, se=0.02, base_se=0.02, n=500):
    return {"acc": acc, "stderr": se, "baseline_acc": base_acc, "baseline_stderr": base_se,
            "recovery": acc / base_acc * 100, "n": n}


def _results(**policies):
    """A synthetic results dict: baseline ppl 20, social_iqa 0.5; each policy given as metrics kwargs."""
    return {
        "schema_version": 1,
        "recipe": {"name": "syn", "path": "recipes/syn.yaml", "sha256": "0" * 64, "config": {}},
        "run_id": "r1",
        "baseline": {"metrics": {"perplexity": 20.0, "tasks": {"social_iqa": {"acc": 0.5, "stderr": 0.02}}},
                     "weight_bytes": 1000},
        "policies": [{"name": name, "metrics": metrics, "weight_bytes": 500} for name, metrics in policies.items()],
    }


GOOD = {"perplexity": 20.5, "kl_mean": 0.02, "top1_agreement": 0.97, "tasks": {"social_iqa": _task(0.5, 0.5)}}
BAD = {"perplexity": 30.0, "kl_mean": 0.5, "top1_agreement": 0.6, "tasks": {"social_iqa": _task(0.3, 0.5, 0.01, 0.01)}}
GATE = {"max_perplexity_increase_pct": 10, "max_kl_mean": 0.1, "min_top1_agreement": 0.9, "min_task_recovery": 95}


def _checks(verdict):
    return {c["name"]: c for c in verdict["checks"]}


# ---------------------------------------------------------------------------
# the task gate uses both stderrs


def test_point_estimate_fails_but_within_noise_passes():
    # allowed drop 0.5 * 5% = 0.025, observed 0.04: recovery 92% < 95%, but the
    # shortfall 0.015 is below z * sqrt(0.02^2 + 0.02^2) = 0.0465
    check = task_check("t", _task(0.46, 0.5), {}, 95, 0.95)
    assert check["value"] == pytest.approx(92.0) and check["value"] < 95
    assert check["passed"] is True and check.get("within_noise") is True
    assert "within noise" in check["detail"] and "significantly" not in check["detail"]


def test_significant_shortfall_fails():
    # shortfall 0.075 >> 1.645 * 0.0141
    check = task_check("t", _task(0.40, 0.5, 0.01, 0.01), {}, 95, 0.95)
    assert check["passed"] is False and "fails significantly" in check["detail"]


def test_task_gate_decision_follows_the_confidence_level():
    se = math.hypot(0.02, 0.02)
    allowed = 0.5 * 0.05
    acc = 0.5 - allowed - 1.5 * se  # shortfall = 1.5 se: significant at 90% (z=1.28), not at 95% (z=1.645)
    assert NormalDist().inv_cdf(0.9) < 1.5 < Z95
    assert task_check("t", _task(acc, 0.5), {}, 95, 0.95)["passed"] is True
    assert task_check("t", _task(acc, 0.5), {}, 95, 0.90)["passed"] is False
    # exactly at z * se (plus a hair) fails: the comparison is unrounded
    acc_edge = 0.5 - allowed - Z95 * se * (1 + 1e-9)
    assert task_check("t", _task(acc_edge, 0.5), {}, 95, 0.95)["passed"] is False


def test_zero_stderr_compares_unrounded_point_estimate():
    # 94.99% recovery would round to 95.0 at one decimal; it must still fail
    check = task_check("t", _task(0.47495, 0.5, 0.0, 0.0), {}, 95, 0.95)
    assert check["value"] == pytest.approx(94.99)
    assert check["passed"] is False


def test_missing_stderr_is_point_estimate_only():
    entry = {"acc": 0.49, "baseline_acc": 0.5, "stderr": "N/A"}  # lm-eval writes "N/A" sometimes
    check = task_check("t", entry, {}, 95, 0.95)
    assert check["passed"] is True and "no stderr" in check["detail"]
    check = task_check("t", {"acc": 0.40, "baseline_acc": 0.5}, {}, 95, 0.95)
    assert check["passed"] is False


def test_baseline_accuracy_falls_back_to_baseline_entry():
    results = _results(p={"tasks": {"social_iqa": {"acc": 0.48, "stderr": 0.0}}})
    verdict = evaluate_gate(results, {"min_task_recovery": 99})["p"]
    check = _checks(verdict)["min_task_recovery[social_iqa]"]
    assert check["value"] == pytest.approx(96.0)  # 0.48 / 0.5 from the baseline entry
    # shortfall 0.015 vs z * 0.02 = 0.033: within noise
    assert check["passed"] is True and check["within_noise"]


def test_per_task_thresholds_and_default():
    results = _results(p={"tasks": {"a": _task(0.40, 0.5, 0, 0), "b": _task(0.40, 0.5, 0, 0), "c": _task(0.4, 0.5, 0, 0)}})
    results["baseline"]["metrics"]["tasks"] = {}
    checks = _checks(evaluate_gate(results, {"min_task_recovery": {"default": 95, "b": 80}})["p"])
    assert checks["min_task_recovery[a]"]["passed"] is False  # 80% < 95
    assert checks["min_task_recovery[b]"]["passed"] is True  # 80% >= 80
    checks = _checks(evaluate_gate(results, {"min_task_recovery": {"b": 80}})["p"])
    assert list(checks) == ["min_task_recovery[b]"]  # no default: other tasks are not gated


def test_task_missing_for_policy_fails():
    verdict = evaluate_gate(_results(p={"kl_mean": 0.0}), {"min_task_recovery": 95})["p"]
    assert verdict["passed"] is False
    assert "missing for this policy" in _checks(verdict)["min_task_recovery[social_iqa]"]["detail"]


# ---------------------------------------------------------------------------
# plain thresholds


def test_thresholds_are_inclusive_and_unrounded():
    at = evaluate_gate(_results(p={"kl_mean": 0.1, "top1_agreement": 0.9}), GATE)["p"]
    assert _checks(at)["max_kl_mean"]["passed"] and _checks(at)["min_top1_agreement"]["passed"]
    over = evaluate_gate(
        _results(p={"kl_mean": math.nextafter(0.1, 1), "top1_agreement": math.nextafter(0.9, 0)}), GATE
    )["p"]
    assert not _checks(over)["max_kl_mean"]["passed"] and not _checks(over)["min_top1_agreement"]["passed"]


def test_perplexity_increase_percent():
    def ppl_check(ppl):
        return _checks(evaluate_gate(_results(p={"perplexity": ppl}), {"max_perplexity_increase_pct": 10})["p"])[
            "max_perplexity_increase_pct"
        ]

    ok, bad = ppl_check(21.9), ppl_check(22.1)
    assert ok["passed"] and ok["value"] == pytest.approx((21.9 - 20) / 20 * 100)
    assert not bad["passed"] and bad["value"] == pytest.approx(10.5)
    assert not ppl_check(math.inf)["passed"] and not ppl_check(math.nan)["passed"]


def test_metric_measured_nowhere_is_skipped_but_missing_for_one_policy_fails():
    results = _results(a={"kl_mean": 0.01}, b={"kl_mean": 0.02, "top1_agreement": 0.99})
    results["baseline"]["metrics"] = {"similarity_spearman": 0.5}  # an encoder-like baseline
    verdicts = evaluate_gate(results, {"max_perplexity_increase_pct": 5, "min_top1_agreement": 0.9,
                                       "min_embedding_cosine": 0.99})
    a = _checks(verdicts["a"])
    assert a["max_perplexity_increase_pct"]["skipped"] and a["max_perplexity_increase_pct"]["passed"]
    assert a["min_embedding_cosine"]["skipped"]
    assert not a["min_top1_agreement"]["passed"]  # b measured it, a lost it
    assert verdicts["a"]["passed"] is False and verdicts["b"]["passed"] is True


def test_policy_selection():
    results = _results(good=GOOD, bad=BAD)
    assert list(evaluate_gate(results, {**GATE, "policies": ["good"]})) == ["good"]
    assert list(evaluate_gate(results, GATE, policies=["bad"])) == ["bad"]
    with pytest.raises(GateError, match="'nope' is not in the results"):
        evaluate_gate(results, GATE, policies=["nope"])


def test_baseline_is_not_gated():
    verdicts = evaluate_gate(_results(good=GOOD, bad=BAD), GATE)
    assert list(verdicts) == ["good", "bad"]
    assert verdicts["good"]["passed"] and not verdicts["bad"]["passed"]
    failed = {c["name"] for c in verdicts["bad"]["checks"] if not c["passed"]}
    assert failed == {"max_perplexity_increase_pct", "max_kl_mean", "min_top1_agreement", "min_task_recovery[social_iqa]"}


# ---------------------------------------------------------------------------
# gate files


@pytest.mark.parametrize(
    "text, field",
    [
        ("max_kl_mean: lots\n", "max_kl_mean"),
        ("max_kl_mean: true\n", "max_kl_mean"),
        ("min_task_recovery: '95'\n", "min_task_recovery"),
        ("min_task_recovery: {default: high}\n", "min_task_recovery"),
        ("confidence: 1.5\n", "confidence"),
        ("policies: some\n", "policies"),
        ("max_kl_maen: 0.1\n", "max_kl_maen"),
    ],
)
def test_bad_gate_file_names_file_and_field(tmp_path, text, field):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    with pytest.raises(GateError) as info:
        load_gate(path)
    msg = str(info.value)
    assert str(path) in msg and f"'{field}'" in msg and "\n" not in msg


def test_gate_file_not_yaml_or_missing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_kl_mean: [1,\n")
    with pytest.raises(GateError, match="not valid YAML"):
        load_gate(bad)
    with pytest.raises(GateError, match="no such gate file"):
        load_gate(tmp_path / "missing.yaml")
    with pytest.raises(GateError, match="named gates: .*default"):
        resolve_gate("no-such-gate")


def test_shipped_gates_load_and_strict_is_stricter():
    names = sorted(p.stem for p in GATES_DIR.glob("*.yaml"))
    assert {"default", "strict"} <= set(names)
    default, strict = resolve_gate("default"), resolve_gate("strict")
    assert isinstance(default, Gate) and strict.max_kl_mean < default.max_kl_mean
    assert strict.min_top1_agreement > default.min_top1_agreement
    assert parse_gate({"max_kl_mean": 1}).max_kl_mean == 1.0  # an int is a number


# ---------------------------------------------------------------------------
# the command: exit codes and JUnit


def _write(tmp_path, name, results):
    path = tmp_path / name
    path.write_text(json.dumps(results))
    return path


@pytest.fixture
def gate_file(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text("max_kl_mean: 0.1\nmin_top1_agreement: 0.9\nmin_task_recovery: 95\n")
    return path


def test_cli_exit_0_when_all_pass(tmp_path, gate_file, capsys):
    path = _write(tmp_path, "r.json", _results(good=GOOD))
    assert main(["gate", str(path), "--gate", str(gate_file)]) == 0
    assert "PASS  good" in capsys.readouterr().out


def test_cli_exit_1_when_one_fails(tmp_path, gate_file, capsys):
    path = _write(tmp_path, "r.json", _results(good=GOOD, bad=BAD))
    assert main(["gate", str(path), "--gate", str(gate_file)]) == 1
    out = capsys.readouterr().out
    assert "PASS  good" in out and "FAIL  bad" in out and "fails significantly" in out
    # only the passing policy requested -> 0
    assert main(["gate", str(path), "--gate", str(gate_file), "--policies", "good"]) == 0


def test_cli_run_dir_and_stored_gate(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    results = _results(p={**GOOD, "kl_mean": 0.05})
    results["gate"] = {"config": {"max_kl_mean": 0.01}, "passed": False}  # the gate the run used
    _write(run_dir, "results.json", results)
    assert main(["gate", str(run_dir)]) == 1  # stored gate: 0.05 > 0.01
    assert main(["gate", str(run_dir), "--gate", "default"]) == 0  # default: max_kl_mean 0.1


@pytest.mark.parametrize("problem", ["missing", "bad_json", "not_results", "bad_gate", "unknown_policy", "gate_missing"])
def test_cli_exit_2_on_bad_input(tmp_path, gate_file, capsys, problem):
    path = _write(tmp_path, "r.json", _results(good=GOOD))
    args = ["gate", str(path), "--gate", str(gate_file)]
    expect = str(path)
    if problem == "missing":
        args[1] = expect = str(tmp_path / "nope.json")
    elif problem == "bad_json":
        path.write_text('{"policies": [')
    elif problem == "not_results":
        path.write_text('{"hello": 1}')
    elif problem == "bad_gate":
        gate_file.write_text("max_kl_mean: high\n")
        expect = "max_kl_mean"
    elif problem == "unknown_policy":
        args += ["--policies", "ghost"]
        expect = "ghost"
    elif problem == "gate_missing":
        args[3] = expect = str(tmp_path / "nogate.yaml")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("qeval gate: error:") and expect in err


def test_python_m_qeval_gate_subprocess(tmp_path, gate_file):
    path = _write(tmp_path, "r.json", _results(good=GOOD, bad=BAD))
    proc = subprocess.run([sys.executable, "-m", "qeval", "gate", str(path), "--gate", str(gate_file)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "FAIL  bad" in proc.stdout


def test_junit_xml_parses_and_counts_failures(tmp_path, gate_file):
    one = _write(tmp_path, "one.json", _results(good=GOOD, bad=BAD))
    two = _write(tmp_path, "two.json", _results(good=GOOD))
    xml_path = tmp_path / "out" / "gate.xml"
    xml_path.parent.mkdir()
    assert main(["gate", str(one), str(two), "--gate", str(gate_file), "--junit", str(xml_path)]) == 1
    root = ET.parse(xml_path).getroot()
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [str(one), str(two)]
    # gate_file has 3 thresholds -> 3 checks per policy; BAD fails kl, top-1 and the task
    cases_one = suites[0].findall("testcase")
    assert len(cases_one) == 6 and suites[0].get("tests") == "6"
    failed = [c.get("name") for c in cases_one if c.find("failure") is not None]
    assert sorted(failed) == ["bad: max_kl_mean", "bad: min_task_recovery[social_iqa]", "bad: min_top1_agreement"]
    assert suites[0].get("failures") == "3" and suites[1].get("failures") == "0"
    assert root.get("failures") == "3" and root.get("tests") == "9"
    task_case = next(c for c in cases_one if c.get("name") == "bad: min_task_recovery[social_iqa]")
    assert "fails significantly" in task_case.find("failure").get("message")
