"""Recipes and checkpoints: export a recipe's model under one of its policies, and
evaluate a ``checkpoint:`` policy entry.

A recipe policy entry ``{name: NAME, checkpoint: DIR}`` evaluates the packed
weights stored in DIR (compressed-tensors or Model Optimizer layout) on the
recipe's baseline model; a relative DIR is taken from the recipe's folder.
"""

from __future__ import annotations

from pathlib import Path

from qeval.export import export_checkpoint
from qeval.files import read_json
from qeval.pipeline.recipe import RecipeError, is_checkpoint_entry, load_recipe


def _recipe_of(recipe_or_run: str | Path):
    path = Path(recipe_or_run)
    if path.is_dir():
        manifest = read_json(path / "run.json", "run manifest", RecipeError)
        recipe_file = Path((manifest.get("recipe") or {}).get("path", ""))
        recipe, sha = load_recipe(recipe_file)
        if sha != manifest["recipe"].get("sha256"):
            raise RecipeError(f"{recipe_file}: changed since run {path} (its sha256 differs); export from the recipe itself")
        return recipe
    return load_recipe(path)[0]


def export_recipe(recipe_or_run: str | Path, policy: str, out: str | Path, layout: str, overwrite: bool = False):
    """Load a recipe's model (and calibration text) and export it under ``policy`` (a recipe policy name,
    a built-in name or a YAML path)."""
    from qeval.data import calibration_batches
    from qeval.models import load_model
    from qeval.pipeline.runner import seed_everything

    recipe = _recipe_of(recipe_or_run)
    names = recipe.policy_names()
    source = recipe.policies[names.index(policy)] if policy in names else policy
    if is_checkpoint_entry(source):
        raise RecipeError(f"policy {policy!r} is a checkpoint already ({source['checkpoint']})")
    seed_everything(recipe.seed)
    model, tokenizer = load_model(recipe.model)
    calibration = None
    if recipe.calibration is not None:
        c = recipe.calibration
        calibration = calibration_batches(tokenizer, c.text_spec(), c.n_batches, c.seq_len)
    return export_checkpoint(model, source, out, layout=layout, calibration=calibration, tokenizer=tokenizer,
                             overwrite=overwrite)
