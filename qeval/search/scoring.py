"""Sensitivity: the KL of quantizing one group alone, for every group and candidate format.

Scored on the recipe's CALIBRATION text (never its eval text, which stays for
judging the searched policy): ``tokens`` tokens of it (default the recipe's
``n_batches x seq_len``) in windows of ``seq_len``, with the recipe's
calibration batches for static scales, exactly as ``qeval run`` would score a
policy on that text. The baseline runs once (its log-probabilities spilled to
disk, its block outputs kept for replay); then one pass per (group, format).
Each finished group is saved at once (atomic JSON), so an interrupted pass
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from qeval.files import atomic_write_json, read_json
from qeval.uncertainty import ratio_estimate
from qeval.search.groups import BF16, DEFAULT_FORMATS, Choice, choices_for, find_groups, group_bytes, one_group_policy

VERSION = 2  # 2: kl_stderr is the window-level (cluster) standard error


class SearchInputError(ValueError):
    """Bad input for sensitivity / search; one line naming the file and field."""


@dataclass
class Bench:
    """The loaded model and the text every pass scores."""

    recipe: object
    recipe_path: Path
    sha256: str
    model: object
    tokenizer: object
    device: object
    token_ids: torch.Tensor
    windows: list
    calibration: list | None
    spill: object
    replay: object


def prepare(recipe_path, tokens: int | None = None, workdir: Path | None = None, progress: bool = True) -> Bench:
    """Load the recipe's model and calibration text; run the baseline once (spill + block outputs)."""
    from qeval.data import calibration_batches, load_text, token_stream
    from qeval.evaluate.divergence import BaselineSpill
    from qeval.evaluate.perplexity import sliding_windows
    from qeval.evaluate.stream import local_pass
    from qeval.models import load_model
    from qeval.pipeline.recipe import load_recipe
    from qeval.pipeline.runner import seed_everything
    from qeval.search.replay import Replay

    recipe_path = Path(recipe_path)
    recipe, sha = load_recipe(recipe_path)
    c = recipe.calibration
    if c is None:
        raise SearchInputError(f"{recipe_path}: field 'calibration': missing; sensitivity scores on the calibration "
                               "text (the eval text is kept for judging the result)")
    n = tokens or c.n_batches * c.seq_len
    if n < 2:
        raise SearchInputError(f"--tokens must be at least 2, got {n}")
    seed_everything(recipe.seed)
    model, tokenizer = load_model(recipe.model)
    ids = token_stream(tokenizer, load_text(c.text_spec()), n).view(-1).long()
    if ids.numel() < n:
        raise SearchInputError(f"{recipe_path}: field 'calibration': the text has {ids.numel()} tokens, "
                               f"--tokens asks for {n}")
    windows = sliding_windows(int(ids.numel()), min(c.seq_len, int(ids.numel())), min(c.seq_len, int(ids.numel())))
    try:
        device = model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        device = None
    calib = calibration_batches(tokenizer, c.text_spec(), c.n_batches, c.seq_len)
    if device is not None:
        calib = [b.to(device) for b in calib]
    workdir = Path(workdir or Path("results") / (recipe.name or recipe_path.stem) / "sensitivity")
    spill = BaselineSpill(workdir / "spill" / "baseline_logp.npy", {"recipe": sha, "tokens": n})
    replay = Replay(model)
    with replay.record():
        local_pass(model, ids, windows, spill, baseline=True, device=device, chunk=recipe.metrics.chunk,
                   desc="baseline", progress=progress)
    return Bench(recipe, recipe_path, sha, model, tokenizer, device, ids, windows, calib, spill, replay)


def measure(bench: Bench, policy, skip_layer: int | None = None) -> dict:
    """KL(baseline || model under ``policy``) on the scoring text: mean, its standard error, p99, top-1."""
    from qeval.evaluate.stream import local_pass, summarize
    from qeval.pipeline.runner import seed_everything
    from qeval.quantize import quantized

    seed_everything(bench.recipe.seed)
    with bench.replay.skip_before(skip_layer):
        with quantized(bench.model, policy, mode=bench.recipe.mode, calibration=bench.calibration, progress=False,
                       emulation=bench.recipe.emulation):
            stats = local_pass(bench.model, bench.token_ids, bench.windows, bench.spill, baseline=False,
                               device=bench.device, chunk=bench.recipe.metrics.chunk, progress=False)
    out = summarize(stats, with_kl=True)
    # the window is the unit of sampling (positions inside one are correlated): a per-token
    # interval covered the true mean only 39-78% of the time at nominal 95% (tests/test_uncertainty.py)
    out["kl_stderr"] = ratio_estimate([s.kl_sum for s in stats], [s.n for s in stats]).se
    return out


def _key(sha: str, granularity: str, choices: list[Choice], tokens: int, mode: str) -> str:
    blob = json.dumps([sha, granularity, [asdict(c) for c in choices], tokens, mode, VERSION], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _load_previous(path: Path, key: str) -> dict:
    if not path.exists():
        return {}
    try:
        old = read_json(path, "sensitivity file")
    except ValueError:
        return {}
    return old.get("scores", {}) if old.get("key") == key else {}


def sensitivity(recipe_path, granularity: str = "block", formats=None, tokens: int | None = None,
                out_dir: Path | None = None, progress: bool = True) -> Path:
    """Measure every (group, format); return the path of ``sensitivity.json`` (resumes a finished part).

    Raises:
        SearchInputError, RecipeError, ModelLoadError, DataError: bad input, one line.
    """
    from qeval.pipeline.recipe import load_recipe

    recipe, sha = load_recipe(recipe_path)
    name = recipe.name or Path(recipe_path).stem
    root = Path(out_dir) if out_dir else Path("results") / name / "sensitivity"
    c = recipe.calibration
    n = tokens or (c.n_batches * c.seq_len if c is not None else 0)
    t0 = time.perf_counter()
    from qeval.policy import load_policy

    for f in formats or DEFAULT_FORMATS:  # before any model work: an unknown name fails at once
        try:
            f == BF16 or load_policy(f)
        except (ValueError, FileNotFoundError) as err:
            raise SearchInputError(f"--formats: {err}") from None
    bench = prepare(recipe_path, tokens, root / ".work", progress)
    try:
        doc, folder, path = _measure_all(bench, recipe, sha, name, granularity, formats, n, root, progress)
    finally:
        bench.spill.remove()
        shutil.rmtree(root / ".work", ignore_errors=True)
        if root.is_dir() and not any(root.iterdir()):  # failed before anything was measured: leave nothing
            root.rmdir()
    doc["complete"] = True
    doc["seconds"] = time.perf_counter() - t0
    atomic_write_json(path, doc)
    try:
        from qeval.search.show import plot_sensitivity

        plot_sensitivity(doc, folder / "sensitivity.png")
    except ImportError:  # matplotlib missing: the JSON and the table still stand
        pass
    return path


def _measure_all(bench: Bench, recipe, sha: str, name: str, granularity: str, formats, n: int, root: Path,
                 progress: bool) -> tuple[dict, Path, Path]:
    """Every (group, format) not measured yet; saves after each group."""
    c = recipe.calibration
    try:
        choices = choices_for(bench.model, list(formats or DEFAULT_FORMATS))
    except (ValueError, FileNotFoundError) as err:
        raise SearchInputError(f"--formats: {err}") from None
    groups, fixed = find_groups(bench.model, granularity)
    group_bytes(bench.model, groups, choices)
    key = _key(sha, granularity, choices, n, recipe.mode)
    folder = root / f"{granularity}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sensitivity.json"
    scores = _load_previous(path, key)
    doc = {
        "kind": "qeval-sensitivity", "version": VERSION, "key": key,
        "recipe": str(bench.recipe_path), "recipe_name": name, "recipe_sha256": sha,
        "mode": recipe.mode, "granularity": granularity,
        "text": {**c.text_spec().model_dump(exclude_none=True), "tokens": int(bench.token_ids.numel()),
                 "window": c.seq_len, "note": "the recipe's calibration text"},
        "choices": [asdict(ch) for ch in choices],
        "groups": [g.to_dict() for g in groups],
        "fixed_bytes": fixed,
        "scores": scores,
        "complete": False,
    }
    todo = [g for g in groups if any(ch.name not in scores.get(g.id, {}) for ch in choices)]
    if scores and todo:
        print(f"qeval sensitivity: resuming {path}: {len(groups) - len(todo)} of {len(groups)} groups done",
              file=sys.stderr)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo) * (len(choices) - 1), desc=f"sensitivity ({granularity})", unit="pass",
               disable=not progress, dynamic_ncols=True)
    try:
        for g in todo:
            row = dict(scores.get(g.id, {}))
            for ch in choices:
                if ch.name in row:
                    continue
                if ch.name == BF16:  # nothing quantized: the baseline itself
                    row[ch.name] = {"kl_mean": 0.0, "kl_stderr": 0.0, "kl_p99": 0.0, "top1_agreement": 1.0}
                    continue
                m = measure(bench, one_group_policy(g, ch), g.layer)
                row[ch.name] = {k: m[k] for k in ("kl_mean", "kl_stderr", "kl_p99", "top1_agreement", "perplexity")}
                bar.update(1)
            scores[g.id] = row
            doc["scores"] = scores
            atomic_write_json(path, doc)
    finally:
        bar.close()
    return doc, folder, path


def load_sensitivity(path) -> dict:
    """A ``sensitivity.json`` (or the folder holding one), checked for completeness."""
    p = Path(path)
    if p.is_dir():
        p = p / "sensitivity.json"
    doc = read_json(p, "sensitivity file", error=SearchInputError)
    if not isinstance(doc, dict) or doc.get("kind") != "qeval-sensitivity":
        raise SearchInputError(f"{p}: not a qeval sensitivity file (field 'kind')")
    if not doc.get("complete"):
        raise SearchInputError(f"{p}: field 'complete': the sensitivity pass did not finish; run it again to resume")
    return doc
