"""Judge searched policies: their KL on the calibration text they were scored on (does the sum
predict it?) and a normal ``qeval run`` on the recipe's eval text beside the recipe's own policies."""

from __future__ import annotations

from pathlib import Path

import yaml

from qeval.files import atomic_write_bytes, read_yaml


def measure_on_calibration(recipe_path, policies: list[dict], tokens: int | None = None,
                           progress: bool = True) -> list[dict]:
    """KL of each policy on the scoring text of the sensitivity pass (one baseline, one pass each)."""
    import tempfile

    from qeval.search.scoring import measure, prepare

    with tempfile.TemporaryDirectory(prefix="qeval-search-") as work:  # the baseline spill: scratch only
        bench = prepare(recipe_path, tokens, Path(work), progress)
        return [measure(bench, p) for p in policies]


def derived_recipe(recipe_path, policies: list[dict], folder, tasks: bool = True) -> Path:
    """A copy of the recipe whose policies are its own plus ``policies`` (inline), written in ``folder``.

    ``tasks=False`` drops the recipe's lm-eval tasks (the comparison is about KL; tasks take the time).
    """
    raw = read_yaml(recipe_path, "recipe")
    if not tasks:
        raw.pop("tasks", None)
    own = list(raw.get("policies") or [])
    names = {p if isinstance(p, str) else p.get("name") for p in own}
    extra = [p for p in policies if p["name"] not in names]
    raw["policies"] = own + extra
    raw.setdefault("name", Path(recipe_path).stem)
    path = Path(folder) / "recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    head = f"# {Path(recipe_path)} with the searched policies added (written by qeval search --evaluate)\n"
    atomic_write_bytes(path, (head + yaml.safe_dump(raw, sort_keys=False, width=100)).encode("utf-8"))
    return path


def evaluate_on_eval_text(recipe_path, searched: list[dict], folder, results_dir=Path("results"),
                          progress: bool = True, limit_tokens: int | None = None,
                          keep: list[str] | None = None, tasks: bool = True) -> dict:
    """``qeval run`` of the recipe plus the searched policies; returns results.json as a dict.

    ``keep``: the recipe's own policies to evaluate beside them (default: all).
    """
    from qeval.pipeline.runner import RunOptions, run_recipe
    from qeval.results.store import load_results

    derived = derived_recipe(recipe_path, searched, folder, tasks)
    wanted = None if keep is None else [*keep, *[p["name"] for p in searched]]
    path = run_recipe(derived, RunOptions(results_dir=Path(results_dir), progress=progress, print_table=False,
                                          limit_tokens=limit_tokens, policies=wanted))
    return load_results(path)
