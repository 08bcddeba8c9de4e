"""``qeval run``: the baseline and every policy of a recipe, saved as each finishes.

Order of work (cheap checks first, so bad input fails before any model work and
leaves nothing half-written):

1. validate the recipe (policies, gate, local text files) and the model path;
2. create or reopen the run directory (``qeval.results.RunDir``);
3. load the model, the evaluation tokens and the calibration batches;
4. the baseline (perplexity, tasks, embeddings; its log-probabilities spilled to
   the run directory for KL), unless a resumed run already has it;
5. each policy: plan, quantize, evaluate against the baseline, restore the
   original modules, save ``policies/<name>.json``;
6. assemble ``results.json`` (with the gate verdicts), report, print the table.

Same recipe and seed give the same numbers: the seed is reset before every
evaluation, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from qeval.evaluate import graphs
from qeval.evaluate.stream import Shard
from qeval.pipeline import heap
from qeval.pipeline.recipe import Recipe, RecipeError, load_recipe, recipe_to_dict



@dataclass
class RunOptions:
    """Command-line overrides of ``qeval run``."""

    resume: bool = False
    run_id: str | None = None
    results_dir: Path = Path("results")
    policies: list[str] | None = None  # subset of the recipe's policies, in the recipe's order
    limit_tokens: int | None = None  # cap on evaluation tokens (and task examples, embedding sentences)
    progress: bool = True
    print_table: bool = True
    dry_run: bool = False  # validate everything, run nothing (run_recipe returns None)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _select_policies(recipe: Recipe, path, wanted: list[str] | None) -> list[tuple[str, object]]:
    """(name, source) of the policies to run; ``wanted`` may give a policy's name or its entry as written."""
    names = recipe.policy_names()
    pairs = list(zip(names, recipe.policies))
    if not wanted:
        return pairs
    files = {str(Path(p).resolve()): n for n, p in pairs if isinstance(p, str)}

    def by_entry(w: str) -> str:  # a path as written in the recipe (relative to it) or from here
        for cand in (Path(w), Path(path).parent / w):
            if str(cand.resolve()) in files:
                return files[str(cand.resolve())]
        return w

    wanted = [w if w in names else by_entry(w) for w in wanted]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise RecipeError(f"{path}: --policies names {', '.join(unknown)}, not in the recipe (its policies: {', '.join(names)})")
    return [p for p in pairs if p[0] in wanted]


def apply_overrides(recipe: Recipe, options: RunOptions) -> dict:
    """Apply ``--limit-tokens``; return the overrides that change numbers (folded into the run's hash)."""
    over = {}
    n = options.limit_tokens
    if n is not None:
        if n < 2:
            raise RecipeError(f"--limit-tokens must be at least 2, got {n}")
        over["limit_tokens"] = n
        if recipe.eval_data is not None:
            recipe.eval_data.max_tokens = min(recipe.eval_data.max_tokens, n)
            ppl = recipe.metrics.perplexity
            if ppl is not None and ppl.window > n:
                ppl.window = n
                ppl.stride = None if ppl.stride is None else min(ppl.stride, n)
        if recipe.calibration is not None:
            recipe.calibration.seq_len = min(recipe.calibration.seq_len, max(n, 2))
        # a small token budget also caps task examples and embedded sentences (quick trial runs)
        cap = max(4, n // 32)
        for t in recipe.tasks:
            t.limit = min(t.limit or cap, cap)
        if recipe.embeddings is not None:
            recipe.embeddings.max_sentences = min(recipe.embeddings.max_sentences, max(4, n // 16))
    return over


def run_hash(sha256: str, overrides: dict) -> str:
    if not overrides:
        return sha256
    blob = sha256 + json.dumps(overrides, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------


def run_recipe(recipe_path: str | Path, options: RunOptions | None = None) -> Path:
    """Run a recipe end to end; return the path of results.json.

    Raises:
        RecipeError, qeval.models.ModelLoadError, qeval.results.ResultsError,
        qeval.data.DataError: bad input, one line each (the CLI prints them, exit 2).
    """
    from qeval.evaluate import distributed
    from qeval.models import resolve
    from qeval.results.store import RunDir

    options = options or RunOptions()
    recipe, sha = load_recipe(recipe_path)
    overrides = apply_overrides(recipe, options)
    selected = _select_policies(recipe, recipe_path, options.policies)
    resolve(recipe.model)  # model path exists, no pickle: before anything is written
    from qeval.pipeline import preflight

    for line in preflight.check(recipe, recipe_path, selected):  # before any file or forward pass
        print(f"qeval: warning: {line}", file=sys.stderr)
    if options.dry_run:
        return None

    shard, device = distributed.setup(recipe)
    rundir = None
    if shard.rank == 0:
        try:
            rundir = RunDir.create(
                options.results_dir, recipe.name, str(recipe_path), run_hash(sha, overrides),
                {**recipe_to_dict(recipe), "overrides": overrides},
                run_id=options.run_id, resume=options.resume,
            )
        except Exception as err:
            if shard.world > 1:  # tell the other ranks, who wait for the run directory
                distributed.share_run(None, shard, str(err))
            raise
    try:
        return _run_in(recipe, options, overrides, selected, shard, device, rundir)
    finally:
        if rundir is not None:
            rundir.release()


def _run_in(recipe, options, overrides, selected, shard, device, rundir) -> Path:
    from qeval.evaluate import distributed

    run_path, finished = distributed.share_run(rundir, shard)
    started = _now()
    fresh = rundir is not None and not rundir.resumed
    try:
        ctx = _prepare(recipe, device, options, shard)
        devices = _model_devices(ctx.model)
        try:
            with heap.steady(all(d.type == "cpu" for d in devices)):  # no page faults per window (heap.py)
                _evaluate_all(recipe, ctx, selected, Path(run_path), rundir, finished, shard, options)
        finally:
            graphs.release()  # the memory pool the passes' recordings shared
    except BaseException as err:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:  # give the space back; --resume redoes the spill
            shutil.rmtree(Path(run_path) / "spill", ignore_errors=True)
        if fresh and not rundir.load_finished():
            shutil.rmtree(rundir.path, ignore_errors=True)  # nothing finished: leave no half-done run
        raise
    if shard.rank != 0:
        distributed.barrier(shard)
        return Path(run_path) / "results.json"
    from qeval.results.store import environment

    env = environment(seed=recipe.seed, device=_device_name(devices), started=started)
    env["world_size"] = shard.world
    env["model_devices"] = [str(d) for d in devices]
    env["eval_data"] = _data_note(recipe)
    distributed.barrier(shard)  # every rank is done with its spill
    path = rundir.finalize(environment=env, gate=recipe.gate, policy_order=[n for n, _ in selected])
    shutil.rmtree(Path(run_path) / "spill", ignore_errors=True)
    if options.print_table:
        _print_table(path)
    return path


def _now() -> str:
    from qeval.results.store import now_utc

    return now_utc()


def _model_devices(model) -> list[torch.device]:
    """The devices holding the model's parameters (several under ``device_map: auto``)."""
    return sorted({p.device for p in model.parameters()}, key=str)


def _device_name(devices: list[torch.device]) -> str:
    """``cpu``, the GPU's name, or ``2x <name>`` when the model is spread over GPUs."""
    cuda = [d for d in devices if d.type == "cuda"]
    if not cuda:
        return "cpu"
    name = torch.cuda.get_device_name(cuda[0])
    return name if len(cuda) == 1 else f"{len(cuda)}x {name}"


def _data_note(recipe: Recipe) -> dict:
    return {
        "eval": None if recipe.eval_data is None else recipe.eval_data.model_dump(exclude_none=True),
        "calibration": None if recipe.calibration is None else recipe.calibration.model_dump(exclude_none=True),
        "note": "the baseline is the model as loaded (a GGUF model's weights are already dequantized from its GGUF type)",
    }


def _print_table(path: Path) -> None:
    from qeval.results.store import load_results

    results = load_results(path)
    try:
        from qeval.results.report import print_table
    except ImportError:
        print(json.dumps(results, indent=1)[:4000])
    else:
        print_table(results)
    print(f"results: {path}")


# ---------------------------------------------------------------------------


@dataclass
class Context:
    model: object
    tokenizer: object
    device: object
    token_ids: torch.Tensor | None
    windows: list
    calibration: list | None
    encoder: bool
    state: dict = field(default_factory=dict)  # baseline embeddings, sentences: rebuilt on resume


def _prepare(recipe: Recipe, device, options: RunOptions, shard: Shard) -> Context:
    from qeval.data import calibration_batches, load_text, token_stream
    from qeval.evaluate.perplexity import sliding_windows
    from qeval.models import load_model
    from qeval.pipeline import progress

    seed_everything(recipe.seed)
    spec = recipe.model
    if device is not None and spec.device_map is None:
        spec = spec.model_copy(update={"device": str(device)})
    with progress.loading_bars(options.progress):
        model, tokenizer = load_model(spec)
    from qeval.pipeline.preflight import check_weights

    check_weights(model)  # NaN/Inf in any tensor: refused before the baseline
    encoder = recipe.eval_data is None
    token_ids, windows = None, []
    if recipe.eval_data is not None:
        text = load_text(recipe.eval_data.text_spec())
        token_ids = torch.as_tensor(token_stream(tokenizer, text, recipe.eval_data.max_tokens)).view(-1).long()
        ppl = recipe.metrics.perplexity
        window = ppl.window if ppl is not None else 1024
        stride = (ppl.stride or window) if ppl is not None else window
        n = int(token_ids.numel())
        if n < 2:
            from qeval.data import DataError

            raise DataError(f"eval_data gives {n} token(s) with this tokenizer; at least 2 are needed to score one")
        window = min(window, n)  # a text shorter than the window: one window over all of it
        windows = sliding_windows(n, window, min(stride, window))
    calibration = None
    if recipe.calibration is not None:
        c = recipe.calibration
        calibration = calibration_batches(tokenizer, c.text_spec(), c.n_batches, c.seq_len)
        if device is not None:
            calibration = [_to_device(b, device) for b in calibration]
    return Context(model, tokenizer, _input_device(model, device), token_ids, windows, calibration, encoder)


def _to_device(batch, device):
    if isinstance(batch, dict):
        return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    return batch.to(device) if hasattr(batch, "to") else batch


def _input_device(model, device):
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return device


def _evaluate_all(recipe, ctx: Context, selected, run_path: Path, rundir, finished: dict, shard: Shard, options) -> None:
    from qeval.pipeline import depends, passes, progress

    wanted = _inputs(recipe, ctx, selected)
    finished = _reusable(finished, wanted, recipe, ctx, rundir, shard)
    total = len(selected) + 1
    todo = [n for n, _ in selected if n not in finished]
    done_names = [n for n, _ in selected if n in finished]
    if shard.rank == 0 and done_names:
        print(f"qeval: resuming {rundir.path}: reusing {', '.join(done_names)}", file=sys.stderr)
    spill = passes.spill_for(run_path, shard, ctx, depends.key(wanted["baseline"]),
                             prefer=recipe.metrics.baseline_store)
    clock = progress.Clock(len(todo) + ("baseline" not in finished)) if options.progress else None  # None: no step lines
    step = 0
    reused = "baseline" in finished
    if not reused:
        seed_everything(recipe.seed)
        entry = {**passes.evaluate_baseline(recipe, ctx, spill, shard, options), "inputs": wanted["baseline"]}
        if shard.rank == 0:
            rundir.save_policy("baseline", _save_samples(rundir, "baseline", entry))
        finished = {**finished, "baseline": entry}
        if clock:
            clock.tick()
    elif todo:
        passes.ensure_baseline_state(recipe, ctx, spill, shard, options)
    step += 1
    progress.announce(shard, step, total, "baseline", finished["baseline"], clock, reused=reused)
    baseline = finished["baseline"]
    for name, source in selected:
        step += 1
        if name in finished:
            continue
        seed_everything(recipe.seed)
        entry = {**passes.evaluate_policy(recipe, ctx, name, source, baseline, spill, shard, options),
                 "inputs": wanted[name]}
        if shard.rank == 0:
            rundir.save_policy(name, _save_samples(rundir, name, entry))
        if clock:
            clock.tick()
        progress.announce(shard, step, total, name, entry, clock)
    if spill.where == "device":
        spill.remove()  # free the memory it held


def _inputs(recipe, ctx, selected) -> dict[str, dict]:
    """What each result of this run depends on (``qeval.pipeline.depends``), by name."""
    from qeval.pipeline import depends, passes
    from qeval.policy import load_policy

    sentences = passes.sentences(recipe, ctx) if recipe.embeddings is not None else None
    base = depends.baseline_inputs(recipe, ctx, sentences)
    out = {"baseline": base}
    for name, source in selected:
        if isinstance(source, dict) and "checkpoint" in source:  # a stored checkpoint: its files are the policy
            from qeval.models.files import fingerprint

            dump = {**source, "files": fingerprint(Path(source["checkpoint"]))}
        else:
            dump = load_policy(source).model_dump(mode="json")
        out[name] = depends.policy_inputs(base, dump, recipe, ctx)
    return out


def _reusable(finished: dict, wanted: dict, recipe, ctx, rundir, shard) -> dict:
    """The finished entries computed from exactly this run's inputs; the others are set aside (and redone)."""
    from qeval.pipeline import depends

    keep, stale = {}, []
    for name, entry in finished.items():
        expected = wanted.get(name)
        if expected is None:  # finished earlier, not selected now: held against its own policy
            policy = entry.get("policy") if isinstance(entry.get("policy"), dict) else {}
            expected = depends.policy_inputs(wanted["baseline"], policy, recipe, ctx)
        diff = depends.changed(entry.get("inputs"), expected)
        if diff:
            stale.append((name, diff))
        else:
            keep[name] = entry
    if shard.rank == 0:
        for name, diff in stale:
            print(f"qeval: {name} was computed from other inputs ({', '.join(diff)}): recomputing", file=sys.stderr)
            rundir.set_aside(name)
    return keep


def _save_samples(rundir, name: str, entry: dict) -> dict:
    """lm-eval's per-example samples (``log_samples``) go to ``samples/<name>/<task>.jsonl``, not results.json."""
    from qeval.files import atomic_write_bytes

    for task, res in ((entry.get("metrics") or {}).get("tasks") or {}).items():
        samples = res.pop("samples", None) if isinstance(res, dict) else None
        if samples is not None:
            lines = "".join(json.dumps(x, sort_keys=True, default=str) + "\n" for x in samples)
            atomic_write_bytes(rundir.path / "samples" / name / f"{task}.jsonl", lines.encode("utf-8"))
            res["samples_file"] = f"samples/{name}/{task}.jsonl"
    return entry
