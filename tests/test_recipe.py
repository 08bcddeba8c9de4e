"""Recipe validation: the shipped recipes load, and bad input gives one line naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qeval.pipeline.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "name": "tiny",
    "seed": 1,
    "model": {"id": "some-org/some-model"},
    "eval_data": {"source": "gensim-wiki", "max_tokens": 256},
    "policies": ["fp8-dynamic", "nvfp4"],
    "gate": {"max_kl_mean": 0.1},
}


def write(tmp_path, data, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def edit(**changes):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = data
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[key]
        else:
            node[key] = value
    return data


@pytest.mark.parametrize("name", ["quickstart.yaml", "minilm-embeddings.yaml"])
def test_shipped_recipes_validate(name):
    recipe, sha = load_recipe(ROOT / "recipes" / name)
    assert len(sha) == 64
    assert recipe.name == Path(name).stem
    assert recipe.model.trust_remote_code is False


def test_quickstart_has_what_the_issue_asks_for():
    recipe, _ = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    assert {"bf16", "fp8-dynamic", "nvfp4", "nvfp4-weight-only", "mixed-fp4-fp8"} <= set(recipe.policy_names())
    assert recipe.tasks and recipe.gate and recipe.metrics.kl and recipe.metrics.top1
    assert recipe.eval_data.source != recipe.calibration.source  # calibrate on other text


def test_valid_recipe_defaults_and_hash(tmp_path):
    path = write(tmp_path, BASE)
    recipe, sha = load_recipe(path)
    import hashlib

    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert recipe.metrics.perplexity.window == 1024 and recipe.mode == "emulate"
    assert recipe.policy_names() == ["fp8-dynamic", "nvfp4"]


def test_name_defaults_to_file_stem(tmp_path):
    data = edit(name=KeyError)
    recipe, _ = load_recipe(write(tmp_path, data, "my-recipe.yaml"))
    assert recipe.name == "my-recipe"


@pytest.mark.parametrize(
    "changes,expect",
    [
        ({"eval_data__max_tokns": 5}, r"field 'eval_data.max_tokns': unknown field \(did you mean 'max_tokens'\?\)"),
        ({"polices": ["nvfp4"], "policies": KeyError}, r"field 'polices': unknown field \(did you mean 'policies'\?\)"),
        ({"model": KeyError}, r"field 'model': required field is missing"),
        ({"policies": ["nvfp4", "nvfp5"]}, r"field 'policies\[1\]' \(nvfp5\): no policy 'nvfp5'.*built-in policies: .*nvfp4"),
        ({"policies": []}, r"field 'policies'"),
        ({"policies": ["nvfp4", "nvfp4"]}, r"field 'policies\[1\]': policy 'nvfp4' is listed twice"),
        ({"policies": ["baseline"]}, r"'baseline' is reserved"),
        ({"policies": [{"rules": []}]}, r"field 'policies\[0\]': an inline policy needs a 'name'"),
        ({"policies": [{"name": "x", "default": {"weights": "int3"}}]}, r"field 'policies\[0\]' \(x\): .*unknown format"),
        ({"gate": {"max_kl_mean": "low"}}, r"gate: field 'max_kl_mean'.*valid number"),
        ({"gate": {"max_kl_man": 0.1}}, r"gate: unknown field 'max_kl_man'"),
        ({"gate": "no-such-gate"}, r"field 'gate': gate 'no-such-gate'"),
        ({"seed": "zero"}, r"field 'seed': .*valid integer.*'zero'"),
        ({"model__dtype": "float33"}, r"field 'model.dtype': .*'float32'"),
        ({"eval_data__source": "wiki"}, r"field 'eval_data.source': .*'gensim-wiki'"),
        ({"metrics": {"perplexity": {"window": 64, "stride": 128}}}, r"field 'metrics.perplexity': stride \(128\) must not exceed window"),
        ({"mode": "fast"}, r"field 'mode': .*'emulate'"),
        ({"emulation": "approx"}, r"field 'emulation': .*'exact'"),
        ({"name": "a b"}, r"field 'name': use letters"),
    ],
)
def test_bad_recipes_give_one_line_naming_file_and_field(tmp_path, changes, expect):
    path = write(tmp_path, edit(**changes))
    with pytest.raises(RecipeError, match=expect) as info:
        load_recipe(path)
    msg = str(info.value)
    assert msg.startswith(str(path) + ":") and "\n" not in msg


def test_local_text_files_checked(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "ok.txt").write_text("some text here", encoding="utf-8")
    for fname, expect in [("empty.txt", "is empty"), ("latin1.txt", "not UTF-8"), ("missing.txt", "does not exist")]:
        path = write(tmp_path, edit(eval_data={"source": "file", "path": fname}))
        with pytest.raises(RecipeError, match=rf"field 'eval_data.path': .*{expect}"):
            load_recipe(path)
    recipe, _ = load_recipe(write(tmp_path, edit(eval_data={"source": "file", "path": "ok.txt"})))
    assert Path(recipe.eval_data.path) == tmp_path / "ok.txt"  # relative to the recipe's folder


@pytest.mark.parametrize(
    "text,expect",
    [("a: [1, 2", "not valid YAML"), ("- just\n- a list\n", "a recipe is a YAML mapping")],
)
def test_unparsable_files(tmp_path, text, expect):
    with pytest.raises(RecipeError, match=expect):
        load_recipe(write(tmp_path, text))
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(RecipeError, match="not UTF-8"):
        load_recipe(tmp_path / "bin.yaml")


POLICY_FILE = """name: fp8-midmlp
rules:
  - kind: mlp
    weights: fp8_e4m3:channel
    activations: fp8_e4m3:token
"""


def test_a_policy_file_path_is_named_by_its_own_name(tmp_path):
    (tmp_path / "my").mkdir()
    (tmp_path / "my" / "x.yaml").write_text(POLICY_FILE, encoding="utf-8")
    # relative to the recipe's folder, not the working directory
    recipe, _ = load_recipe(write(tmp_path, edit(policies=["fp8-dynamic", "my/x.yaml"])))
    assert recipe.policy_names() == ["fp8-dynamic", "fp8-midmlp"]
    assert Path(recipe.policies[1]).is_file()  # rewritten so the runner finds it from anywhere


@pytest.mark.parametrize(
    "text, expected",
    [
        (POLICY_FILE.replace("fp8-midmlp", "fp8-dynamic"), r"policy 'fp8-dynamic' is listed twice"),
        (POLICY_FILE.replace("name: fp8-midmlp", "name: my mid/mlp"), r"policy name 'my mid/mlp' cannot name a results file"),
        (POLICY_FILE.replace("fp8-midmlp", "baseline"), r"'baseline' is reserved"),
    ],
)
def test_policy_file_names_are_checked_when_the_recipe_loads(tmp_path, text, expected):
    (tmp_path / "p.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError, match=r"r\.yaml: field 'policies\[1\]'.*" + expected):
        load_recipe(write(tmp_path, edit(policies=["fp8-dynamic", str(tmp_path / "p.yaml")])))
