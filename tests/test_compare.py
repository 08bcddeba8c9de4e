"""``qeval compare``: policies from several runs side by side."""

from __future__ import annotations

import json

import pytest

from qeval.cli import main


def _run(tmp_path, run_id, kls, as_dir=False):
    results = {
        "schema_version": 1,
        "recipe": {"name": "quick", "path": "recipes/quick.yaml", "sha256": "0" * 64, "config": {}},
        "run_id": run_id,
        "baseline": {"metrics": {"perplexity": 20.0}, "weight_bytes": 4096},
        "policies": [
            {"name": name, "weight_bytes": 1024, "metrics": {"perplexity": 20 + kl, "kl_mean": kl, "top1_agreement": 1 - kl}}
            for name, kl in kls.items()
        ],
    }
    folder = tmp_path / run_id
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(results))
    return folder if as_dir else folder / "results.json"


def _md_rows(out):
    return [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")]


def test_compare_two_runs_markdown_labels_each_row(tmp_path, capsys):
    a = _run(tmp_path, "ra", {"fp8": 0.04, "nvfp4": 0.5})
    b = _run(tmp_path, "rb", {"nvfp4": 0.45}, as_dir=True)  # a run dir works too
    assert main(["compare", str(a), str(b), "--markdown", "--metrics", "kl_mean", "top1_agreement"]) == 0
    rows = _md_rows(capsys.readouterr().out)
    assert rows[0] == ["run", "policy", "KL mean", "top-1"]
    body = [r for r in rows[2:]]
    assert [(r[0], r[1]) for r in body] == [
        ("quick/ra", "baseline"), ("quick/ra", "fp8"), ("quick/ra", "nvfp4"),
        ("quick/rb", "baseline"), ("quick/rb", "nvfp4"),
    ]
    by_key = {(r[0], r[1]): r for r in body}
    assert by_key[("quick/ra", "nvfp4")][2] == "0.5" and by_key[("quick/rb", "nvfp4")][2] == "0.45"
    assert by_key[("quick/rb", "nvfp4")][3] == f"{1 - 0.45:.3f}"
    assert by_key[("quick/ra", "baseline")][2] == "-"


def test_compare_single_run_has_no_run_column(tmp_path, capsys):
    a = _run(tmp_path, "ra", {"fp8": 0.04})
    assert main(["compare", str(a), "--markdown"]) == 0
    header = _md_rows(capsys.readouterr().out)[0]
    assert header[0] == "policy" and "ppl" in header and "KL mean" in header


def test_compare_terminal_table(tmp_path, capsys):
    a = _run(tmp_path, "ra", {"fp8": 0.04, "nvfp4": 0.5})
    b = _run(tmp_path, "rb", {"mxfp4": 1.35})
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    for text in ("quick/ra", "quick/rb", "fp8", "nvfp4", "mxfp4", "1.35"):
        assert text in out


@pytest.mark.parametrize("problem", ["missing", "bad_json", "bad_metric"])
def test_compare_bad_input_exit_2(tmp_path, capsys, problem):
    a = _run(tmp_path, "ra", {"fp8": 0.04})
    args = ["compare", str(a)]
    if problem == "missing":
        args[1] = str(tmp_path / "nope.json")
    elif problem == "bad_json":
        a.write_text("{")
    else:
        args += ["--metrics", "kl_mena"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qeval compare: error:") and len(err.splitlines()) == 1


def test_compare_says_what_changed_vs_the_first_run_and_when_gates_differ(tmp_path, capsys):
    a = _run(tmp_path, "ra", {"fp8": 0.04, "nvfp4": 0.5})
    b = _run(tmp_path, "rb", {"fp8": 0.04, "nvfp4": 0.45})
    data = json.loads(b.read_text())
    data["gate"] = {"config": {"max_kl_mean": 0.5}, "passed": True}
    b.write_text(json.dumps(data))
    assert main(["compare", str(a), str(b), "--metrics", "kl_mean", "kv_cache"]) == 0
    out = capsys.readouterr().out.splitlines()
    i = out.index("vs quick/ra:")
    notes = out[i + 1:]
    assert notes[0] == ("note: quick/rb used another gate than quick/ra (max_kl_mean 0.5 vs no gate): "
                        "their PASS/FAIL are not comparable")
    assert notes[1] == "quick/rb nvfp4: KL mean 0.5 -> 0.45 (-0.05)"
    assert not any("fp8:" in line for line in notes)  # unchanged policies are not listed
