"""Run lm-evaluation-harness tasks on an in-memory model (quantized or not).

Offline tasks (``qeval.tasks.builders.BUILDERS``) are built into the cache and
registered through ``TaskManager(include_path=...)``; any other name is passed
to lm-eval's own task index unchanged, so users who are online can run e.g.
``hellaswag`` by name.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os

from qeval.tasks.builders import BUILDERS, BuiltTask


def prepare_tasks(tasks: list, seed: int = 0):
    """Build the offline tasks among ``tasks`` and return ``(task_manager, names)``:
    an lm-eval ``TaskManager`` that knows them, and ``{qeval name: lm-eval name}``.

    A task is a name (an offline task of ``BUILDERS``, or any lm-eval task) or a
    ``BuiltTask`` already written (e.g. by ``builders.write_task``).

    lm-eval's default task index (~14k YAML files, seconds to scan) is only
    loaded when a task is not one of ours.
    """
    from lm_eval.tasks import TaskManager

    names, folders, need_defaults = {}, [], False
    for task in tasks:
        built = task if isinstance(task, BuiltTask) else BUILDERS[task](seed=seed) if task in BUILDERS else None
        if built is None:
            names[task] = task
            need_defaults = True
        else:
            names[built.name] = built.lm_eval_name
            folders.append(str(built.folder))
    manager = TaskManager(include_path=folders or None, include_defaults=need_defaults)
    unknown = [t for t in names.values() if t not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"unknown lm-eval task(s): {', '.join(unknown)}; offline tasks: {', '.join(sorted(BUILDERS))}"
        )
    return manager, names


@contextlib.contextmanager
def _quiet(bars: bool = False):
    """lm-eval and datasets log per task and draw progress bars. Their log lines are
    silenced; with ``bars`` lm-eval's request bars stay on stderr (progress for a
    phase that takes minutes), else both streams are captured (exceptions still propagate)."""
    loggers = [logging.getLogger(n) for n in ("lm-eval", "lm_eval", "datasets", "transformers")]
    levels = [lg.level for lg in loggers]
    old_env = os.environ.get("HF_DATASETS_DISABLE_PROGRESS_BARS")
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    try:
        import datasets

        datasets.disable_progress_bars()
    except Exception:  # noqa: BLE001 - best effort only
        pass
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        sink = io.StringIO()
        with contextlib.ExitStack() as stack:
            stack.enter_context(contextlib.redirect_stdout(sink))
            if not bars:
                stack.enter_context(contextlib.redirect_stderr(sink))
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if old_env is None:
            os.environ.pop("HF_DATASETS_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = old_env


@contextlib.contextmanager
def _no_env_info():
    """lm-eval records the environment by running torch's collect_env (a dozen
    subprocesses, ~1.7 s per call); qeval's results record the environment once."""
    import lm_eval.evaluator

    real = lm_eval.evaluator.add_env_info
    lm_eval.evaluator.add_env_info = lambda results: None
    try:
        yield
    finally:
        lm_eval.evaluator.add_env_info = real


def _num(value):
    """A float, or None for lm-eval's "N/A" / NaN."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _json_safe(value):
    """lm-eval's configs may hold callables or numpy scalars: keep what JSON can hold, str() the rest."""
    import json

    return json.loads(json.dumps(value, default=str))


def summarize(block: dict) -> dict:
    """qeval's summary of one task's lm-eval result block (``{"acc,none": ..., "acc_stderr,none": ...}``).

    ``metric`` is the task's primary metric: ``acc`` for multiple choice, else the first one
    lm-eval reports (``exact_match,strict-match`` for a generative task); ``acc`` and ``stderr``
    hold its value (recovery and the gate use them). Every metric is also under ``scores``.
    """
    # metric keys are "<metric>,<filter>"; others ("alias", "name", ...) are labels
    scores = {k: _num(v) for k, v in block.items() if "," in k and "_stderr," not in k}
    stderrs = {k.replace("_stderr,", ","): _num(v) for k, v in block.items() if "_stderr," in k}
    primary = "acc,none" if "acc,none" in scores else next(iter(scores), None)
    return {
        "metric": None if primary is None else primary.removesuffix(",none"),
        "acc": scores.get(primary),
        "stderr": stderrs.get(primary),
        "acc_norm": scores.get("acc_norm,none"),
        "acc_norm_stderr": stderrs.get("acc_norm,none"),
        "scores": {k.removesuffix(",none"): v for k, v in scores.items()},
    }


def run_lm_eval(model, tokenizer, tasks: list, limit: int | float | None = None,
                batch_size: int = 8, seed: int = 0, quiet: bool = True, **options) -> dict[str, dict]:
    """Evaluate ``model`` (an ``nn.Module`` already on its device) on ``tasks``.

    Returns ``{task: summary}`` with the qeval task names as keys; a summary is
    ``summarize``'s dict plus ``n`` (examples) and ``lm_eval``: lm-eval's own block
    for the task (``results`` in its "acc,none" layout, ``config``, ``version``,
    ``n-shot``, ``higher_is_better``, ``n-samples``), and ``samples`` when
    ``log_samples=True``. ``limit`` is lm-eval's (first N documents, or a fraction).
    ``options`` (``num_fewshot``, ``apply_chat_template``, ``fewshot_as_multiturn``,
    ``system_instruction``, ``gen_kwargs``, ``log_samples``, ...) go to
    ``lm_eval.simple_evaluate`` unchanged. All of lm-eval's seeds are set from
    ``seed``, so the same inputs give the same numbers. With ``quiet=False`` lm-eval's
    own progress bars are shown (its log lines stay quiet).
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    manager, names = prepare_tasks(tasks, seed=seed)
    kwargs = {"num_fewshot": None, "log_samples": False, "bootstrap_iters": 1000}  # acc's stderr is analytic
    kwargs.update(options)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet(bars=not quiet))
        stack.enter_context(_no_env_info())
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(names.values()),
            task_manager=manager,
            limit=limit,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            **kwargs,
        )
    results = {}
    for task, lm_name in names.items():
        block = out["results"].get(lm_name, {})
        summary = summarize(block)
        summary["n"] = int(out.get("n-samples", {}).get(lm_name, {}).get("effective", 0))
        summary["lm_eval"] = _json_safe({
            "results": block,
            "config": out.get("configs", {}).get(lm_name),
            "version": out.get("versions", {}).get(lm_name),
            "n-shot": out.get("n-shot", {}).get(lm_name),
            "higher_is_better": out.get("higher_is_better", {}).get(lm_name),
            "n-samples": out.get("n-samples", {}).get(lm_name),
        })
        if kwargs.get("log_samples") and out.get("samples"):
            summary["samples"] = _json_safe(out["samples"].get(lm_name, []))
        results[task] = summary
    return results
