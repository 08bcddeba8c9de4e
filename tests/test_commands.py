"""`qeval formats` and `qeval plan` as a user types them (issue 17)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qeval.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_formats_static_table_is_the_computed_one():
    from qeval.commands.formats import DEFAULT_SHAPE, STATIC, _KEYS, computed_rows

    assert [dict(zip(_KEYS, r)) for r in STATIC] == computed_rows(DEFAULT_SHAPE)


def test_formats_answers_without_importing_torch():
    code = ("import sys; from qeval.cli import main; rc = main(['formats', '--json']); "
            "sys.exit(rc or ('torch' in sys.modules) * 7)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"format": "nvfp4"' in proc.stdout


def test_formats_other_shapes_are_computed(capsys):
    import json

    assert main(["formats", "--shape", "64", "48", "--json"]) == 0
    rows = {r["format"]: r["bytes"] for r in json.loads(capsys.readouterr().out)}
    assert rows["bf16"] == 64 * 48 * 2 and rows["fp8_e4m3"] == 64 * 48 + 4  # elements + one fp32 scale


@pytest.fixture
def llama_recipe(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                num_key_value_heads=2).save_pretrained(tmp_path / "model")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"id": str(tmp_path / "model")}, "policies": ["fp8"],
                                      "tasks": [{"name": "word_analogy"}]}), encoding="utf-8")
    return recipe


def test_plan_takes_a_recipe_and_groups_repeated_layers(llama_recipe, capsys):
    assert main(["plan", str(llama_recipe), "--policy", "mixed-fp4-fp8"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    # 7 linears per block x 2 groups (first/last stay bf16, middle quantized) + embedding + lm_head
    assert len(rows) == 16
    assert any("model.layers.*.mlp.down_proj" in r and "1-4" in r and " 4 " in r and "nvfp4" in r for r in rows)
    assert any("model.layers.*.mlp.down_proj" in r and "0, 5" in r for r in rows)
    assert "{" not in out and "MiB before" in out and "GiB" not in out  # one unit, no dict reprs
    weights = next(line for line in out.splitlines() if line.startswith("weights: "))
    assert "16 modules fp8_e4m3:channel" in weights and "12 modules nvfp4" in weights  # 4 middle blocks
