"""`qeval export` from a recipe, then the checkpoint evaluated back through a recipe's `checkpoint:` entry."""

from __future__ import annotations

import json

import pytest
import yaml
from test_run import _opts, _text, build_tiny_model, recipe_dict

from qeval.cli import main as cli_main
from qeval.pipeline.recipe import RecipeError, load_recipe
from qeval.pipeline.runner import run_recipe


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A tiny recipe, and its model exported as NVFP4 W4A16 (compressed-tensors) and FP8 W8A8 (modelopt) by the CLI."""
    root = tmp_path_factory.mktemp("ship")
    build_tiny_model(root / "model")
    (root / "eval.txt").write_text(_text(1, 700), encoding="utf-8")
    (root / "calib.txt").write_text(_text(2, 700), encoding="utf-8")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(root, policies=["nvfp4-weight-only", "fp8"])), encoding="utf-8")
    assert cli_main(["export", str(recipe), "--policy", "nvfp4-weight-only", "--format", "compressed-tensors",
                     "--out", str(root / "nvfp4a16")]) == 0
    assert cli_main(["export", str(recipe), "--policy", "fp8", "--format", "modelopt", "--out", str(root / "fp8")]) == 0
    return root


def test_export_refuses_what_the_layout_cannot_express_and_writes_nothing(shipped, capsys):
    out = shipped / "refused"
    code = cli_main(["export", str(shipped / "tiny.yaml"), "--policy", "fp8-block", "--format", "modelopt", "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (model loading bars aside)
    assert code == 2 and not out.exists()
    assert len(err) == 1 and "model.layers.0.self_attn.q_proj" in err[0] and "Model Optimizer" in err[0]
    assert cli_main(["export", str(shipped / "tiny.yaml"), "--policy", "fp8", "--format", "modelopt",
                     "--out", str(shipped / "fp8")]) == 2  # exists, no --force


def test_checkpoint_entries_give_the_metrics_of_the_policies_they_came_from(shipped, tmp_path):
    policies = ["nvfp4-weight-only", {"name": "shipped-nvfp4a16", "checkpoint": "nvfp4a16"},
                "fp8", {"name": "shipped-fp8", "checkpoint": str(shipped / "fp8")}]
    recipe = shipped / "gate-shipped.yaml"  # relative checkpoint folders are taken from the recipe's folder
    # a checkpoint's weights run dequantized to the model's dtype: the policies' fake_quant arithmetic
    recipe.write_text(yaml.safe_dump({**recipe_dict(shipped, policies=policies), "emulation": "fake_quant"}),
                      encoding="utf-8")
    results = json.loads(run_recipe(recipe, _opts(tmp_path)).read_text())
    by = {p["name"]: p for p in results["policies"]}
    keys = ("perplexity", "kl_mean", "kl_p99", "top1_agreement")
    for policy, shipped_name in (("nvfp4-weight-only", "shipped-nvfp4a16"), ("fp8", "shipped-fp8")):
        assert by[policy]["metrics"]["kl_mean"] > 0
        assert {k: by[shipped_name]["metrics"][k] for k in keys} == {k: by[policy]["metrics"][k] for k in keys}
        assert by[shipped_name]["weight_bytes"] == by[policy]["weight_bytes"]
        assert by[shipped_name]["emulation"] == by[policy]["emulation"] == "fake_quant"


def test_a_bad_checkpoint_entry_is_one_line_naming_file_and_tensor(shipped, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(shipped / "nvfp4a16", bad)
    sd = load_file(str(bad / "model.safetensors"))
    del sd["model.layers.1.mlp.down_proj.weight_global_scale"]
    save_file(sd, str(bad / "model.safetensors"))
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(shipped, policies=[{"name": "x", "checkpoint": str(bad)}])))
    with pytest.raises(RecipeError, match=r"bad\.yaml: field 'policies\[0\]' \(x\): .*model\.safetensors: "
                                          r"tensor model\.layers\.1\.mlp\.down_proj\.weight_global_scale is missing"):
        load_recipe(recipe)
    assert cli_main(["run", str(recipe), "--results-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    assert len([line for line in capsys.readouterr().err.splitlines() if "error" in line]) == 1
    assert not (tmp_path / "r" / "tiny").exists()
