"""Intervals read back from results.json: the table's ±, paired differences in ``qeval compare``,
the significant-only ranking in report.md, and the gate's "significantly" / "within noise"."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from scipy import stats as sps

from qeval.cli import main
from qeval.results import intervals
from qeval.results.gate import evaluate_gate
from qeval.results.report import report_markdown

K, N = 10, 200  # windows, tokens per window


def _entry(name, kl_means, top1_share, nll_means):
    n = [N] * K
    kl_sum = [float(x) * N for x in kl_means]
    top1 = [int(round(float(x) * N)) for x in top1_share]
    nll = [float(x) * N for x in nll_means]
    metrics = {
        "kl_mean": math.fsum(kl_sum) / (N * K), "top1_agreement": sum(top1) / (N * K),
        "perplexity": math.exp(math.fsum(nll) / (N * K)), "kl_p99": 1.0, "tokens": N * K,
        "windows": {"key": "same-text", "tokens": n, "nll": nll, "kl_sum": kl_sum, "top1": top1},
        "ci": {"confidence": 0.95, "windows": K},
    }
    return {"name": name, "metrics": metrics, "weight_bytes": 500}


def _results(seed=7):
    """Two policies on the same windows: the text's difficulty varies a lot from window to window,
    policy b is worse than a by 0.004 nats of KL on every window (plus small noise)."""
    rng = np.random.default_rng(seed)
    difficulty = rng.gamma(2.0, 0.02, K)
    base_nll = 3.0 + rng.normal(0, 0.3, K)
    a = _entry("a", difficulty + rng.normal(0, 0.0005, K), np.full(K, 0.9), base_nll + 0.01 + rng.normal(0, 0.002, K))
    b = _entry("b", difficulty + 0.004 + rng.normal(0, 0.0005, K), np.full(K, 0.9), base_nll + 0.05 + rng.normal(0, 0.002, K))
    base = {"metrics": {"perplexity": math.exp(float(np.mean(base_nll))),
                        "windows": {"key": "same-text", "tokens": [N] * K, "nll": [float(x) * N for x in base_nll]}},
            "weight_bytes": 1000}
    return {"schema_version": 2, "recipe": {"name": "syn", "config": {}}, "run_id": "r",
            "baseline": base, "policies": [a, b]}


def test_interval_recomputed_at_any_confidence_matches_scipy():
    res = _results()
    m = res["policies"][0]["metrics"]
    per_window = np.asarray(m["windows"]["kl_sum"]) / N
    for c in (0.8, 0.95, 0.99):
        ref = sps.t.interval(c, K - 1, loc=per_window.mean(), scale=sps.sem(per_window))
        assert intervals.interval(m, "kl_mean", c) == (pytest.approx(ref[0]), pytest.approx(ref[1]))
    lo, hi = intervals.interval(m, "perplexity", 0.95)
    nll = np.asarray(m["windows"]["nll"]) / N
    ref = sps.t.interval(0.95, K - 1, loc=nll.mean(), scale=sps.sem(nll))
    assert (lo, hi) == (pytest.approx(math.exp(ref[0])), pytest.approx(math.exp(ref[1])))
    assert intervals.interval({"kl_mean": 0.1}, "kl_mean", 0.95) is None  # schema 1: no windows


def test_separate_intervals_overlap_but_compare_reports_a_significant_paired_difference(tmp_path, capsys):
    res = _results()
    a, b = (p["metrics"] for p in res["policies"])
    ia, ib = intervals.interval(a, "kl_mean", 0.95), intervals.interval(b, "kl_mean", 0.95)
    assert ia[1] > ib[0] and ib[1] > ia[0], (ia, ib)  # the separate intervals overlap
    diff = intervals.paired_difference(a, b, "kl_mean", 0.95)
    assert diff.significant and diff.hi < 0 and diff.better() == "a"
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    assert main(["compare", str(path), "--markdown"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| a | b | 10 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    kl_cell = cells[4]
    assert kl_cell.endswith("significant") and "within noise" not in kl_cell, row
    assert cells[5].endswith("within noise")  # top-1 is equal on every window
    # the table shows the separate intervals as ±
    assert any("±" in line for line in out.splitlines() if line.startswith("| a |"))
    # a different text (another key) is never paired
    res["policies"][1]["metrics"]["windows"]["key"] = "other-text"
    path.write_text(json.dumps(res))
    assert main(["compare", str(path), "--markdown"]) == 0
    assert "Paired differences" not in capsys.readouterr().out


def test_report_ranks_only_where_significant():
    res = _results()
    text = report_markdown(res, plot_name=None)
    assert "- KL mean: a > b" in text
    assert "- top-1: a ~ b" in text or "- top-1: b ~ a" in text
    assert "- ppl: a > b" in text  # +0.04 nats per token on every window


def _gate(**kw):
    return {"policies": "all", **kw}


def test_gate_threshold_inside_the_interval_is_within_noise(tmp_path):
    res = _results()
    m = res["policies"][1]["metrics"]
    lower, upper = intervals.bounds(m, "kl_mean", 0.95)
    threshold = (lower + m["kl_mean"]) / 2  # below the estimate, above the lower bound
    check = evaluate_gate(res, _gate(max_kl_mean=threshold))["b"]["checks"][0]
    assert m["kl_mean"] > threshold and check["passed"] is True and check.get("within_noise") is True
    assert "within noise" in check["detail"] and check["interval"] == [pytest.approx(lower), pytest.approx(upper)]
    # below the lower bound: a significant failure
    failing = evaluate_gate(res, _gate(max_kl_mean=lower * 0.9))["b"]["checks"][0]
    assert failing["passed"] is False and "fails significantly" in failing["detail"]
    # the confidence comes from the gate: at 0.6 the same threshold is beyond the (narrower) bound
    low_conf = evaluate_gate(res, _gate(max_kl_mean=threshold, confidence=0.6))["b"]["checks"][0]
    assert intervals.bounds(m, "kl_mean", 0.6)[0] > threshold and low_conf["passed"] is False
    # top-1 mirrors it
    t1 = evaluate_gate(res, _gate(min_top1_agreement=0.95))["b"]["checks"][0]
    assert t1["passed"] is False and "significantly" in t1["detail"]  # 0.9 on every window: no spread


def test_gate_perplexity_increase_is_paired_with_the_baseline():
    res = _results()
    check = evaluate_gate(res, _gate(max_perplexity_increase_pct=4.0))["b"]["checks"][0]
    # b's NLL is baseline + 0.05 per token (noise 0.002): +5.1% perplexity, significantly above 4%,
    # although the separate perplexity intervals (window spread 0.3 nats) are far wider
    assert check["value"] == pytest.approx(math.expm1(0.05) * 100, abs=0.2)
    assert check["passed"] is False and "fails significantly" in check["detail"] and "paired over 10 windows" in check["detail"]
    lo, hi = intervals.interval(res["policies"][1]["metrics"], "perplexity", 0.95)
    assert (hi - lo) / res["policies"][1]["metrics"]["perplexity"] > 0.1


def test_gate_cli_and_junit_carry_the_interval(tmp_path, capsys):
    res = _results()
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    gate = tmp_path / "g.yaml"
    gate.write_text("max_kl_mean: 0.001\nconfidence: 0.9\n")
    junit = tmp_path / "gate.xml"
    assert main(["gate", str(path), "--gate", str(gate), "--junit", str(junit)]) == 1
    assert "0.9 one-sided bounds" in capsys.readouterr().out
    failures = ET.parse(junit).getroot().findall(".//failure")
    assert failures and all("one-sided bounds [" in f.get("message") for f in failures)


def test_schema_1_results_are_still_read_with_point_estimates(tmp_path, capsys):
    old = {"schema_version": 1, "recipe": {"name": "old"}, "run_id": "r",
           "baseline": {"metrics": {"perplexity": 20.0}}, "policies": [{"name": "p", "metrics": {"kl_mean": 0.2, "perplexity": 21.0}}]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(old))
    assert main(["compare", str(path), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "0.2" in out and "±" not in out and "Paired" not in out
    check = evaluate_gate(old, {"max_kl_mean": 0.1})["p"]["checks"][0]
    assert check["passed"] is False and "point estimate only" in check["detail"]
