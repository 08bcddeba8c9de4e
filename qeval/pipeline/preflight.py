"""Everything about a run that can be checked before the first forward pass.

``qeval run`` calls :func:`check` after the recipe validated and before it
creates the run directory or loads weights; ``qeval run --dry-run`` calls only
this. A problem raises ``RecipeError`` (one line naming the file and field); a
doubt (a policy that quantizes nothing) comes back as a warning line.

What is checked:

- names that become files: the recipe's and every policy's (characters, length);
- the device: parses, exists (CUDA present, index in range);
- lm-eval tasks: every name is an offline task or in lm-eval's index; every
  ``lm_eval_args`` key is an argument of ``lm_eval.simple_evaluate``;
- the model's weight files are whole (safetensors header against the file size);
- every policy is planned on a meta-device copy of the model (no weights): rules
  that match nothing, layers out of range, activations on a non-linear module,
  native formats the target device cannot run (NVFP4 W4A4 off Blackwell), static
  scales without calibration;
- windows and calibration lengths fit the model's context.

After loading, :func:`check_weights` finds NaN/Inf in any weight tensor.
"""

from __future__ import annotations

import re
from pathlib import Path

from qeval.pipeline.recipe import Recipe, RecipeError

MAX_NAME = 100  # a policy name becomes policies/<name>.json and temp files around it
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
_META_CACHE: dict = {}  # (config source, kind) -> meta model: dry runs and fuzzing rebuild nothing
_TASK_INDEX: list = []  # lm-eval's task names, read once per process


def check(recipe: Recipe, path, selected: list[tuple[str, object]]) -> list[str]:
    """Validate what a run needs; return warning lines. Raises RecipeError (one line)."""
    path = Path(path)
    _check_name(path, "name", recipe.name)
    for i, (name, _) in enumerate(selected):
        _check_name(path, f"policies[{i}]", name)
    device = _check_device(path, recipe)
    _check_tasks(path, recipe)
    model = _meta_model(path, recipe)
    _check_lengths(path, recipe, model)
    return _check_policies(path, recipe, selected, model, device)


def _check_name(path: Path, field: str, name) -> None:
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or len(name) > MAX_NAME:
        shown = name if not isinstance(name, str) or len(name) <= 40 else name[:40] + "..."
        raise RecipeError(
            f"{path}: field {field!r}: {shown!r} cannot name a file: use at most {MAX_NAME} letters, digits "
            "and . _ + - (not starting with . or -)"
        )


def _check_device(path: Path, recipe: Recipe):
    """The device the model will run on (``torch.device``), after checking that it exists."""
    import torch

    spec = recipe.model
    field, text = "model.device", spec.device
    if text is None and isinstance(spec.device_map, str) and spec.device_map not in _DEVICE_MAPS:
        field, text = "model.device_map", spec.device_map
    if text is None:
        if spec.device_map is not None and torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise RecipeError(f"{path}: field {field!r}: {text!r} is not a device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise RecipeError(f"{path}: field {field!r}: {text!r} asks for a CUDA GPU and this torch sees none")
        if device.index is not None and device.index >= n:
            raise RecipeError(f"{path}: field {field!r}: {text!r} but this machine has {n} CUDA GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise RecipeError(f"{path}: field {field!r}: {text!r} but MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise RecipeError(f"{path}: field {field!r}: {text!r}: qeval runs on cpu, cuda or mps")
    return device


def _check_tasks(path: Path, recipe: Recipe) -> None:
    from qeval.tasks import BUILDERS

    for i, task in enumerate(recipe.tasks):
        if task.name in BUILDERS:
            continue
        if not _TASK_INDEX:
            from lm_eval.tasks import TaskManager

            _TASK_INDEX.extend(TaskManager().all_tasks)
        if task.name not in _TASK_INDEX:
            raise RecipeError(
                f"{path}: field 'tasks[{i}].name': unknown lm-eval task {task.name!r} "
                f"(offline tasks: {', '.join(sorted(BUILDERS))})"
            )
    _check_lm_eval_args(path, recipe)


def _check_lm_eval_args(path: Path, recipe: Recipe) -> None:
    """``lm_eval_args`` name arguments of ``lm_eval.simple_evaluate``."""
    if not any(t.lm_eval_args for t in recipe.tasks):
        return
    import difflib
    import inspect

    import lm_eval

    known = set(inspect.signature(lm_eval.simple_evaluate).parameters)
    for i, task in enumerate(recipe.tasks):
        for key in task.lm_eval_args:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise RecipeError(f"{path}: field 'tasks[{i}].lm_eval_args.{key}': not an lm_eval.simple_evaluate argument{hint}")


def _config(recipe: Recipe, src):
    """The model's transformers config, without weights (a converted GGUF's cached config when there is one)."""
    from qeval.models import gguf_cache_folder, load_config

    if src.path is not None and src.gguf_file and recipe.model.gguf_cache:
        folder = gguf_cache_folder(src)
        if (folder / "qeval-gguf-source.json").is_file():
            from transformers import AutoConfig

            return AutoConfig.from_pretrained(folder)
    return load_config(recipe.model)


def _meta_model(path: Path, recipe: Recipe):
    """The model built on the meta device with the class ``qeval.models`` will load (so names match)."""
    import torch

    from qeval.models import ModelLoadError, detect_kind, resolve
    from qeval.models.files import check_weight_files, fingerprint

    spec = recipe.model
    try:
        src = resolve(spec)
        if src.path is not None and src.gguf_file is None:
            check_weight_files(src.path)
        key = (src.name_or_path, src.gguf_file, spec.kind, spec.trust_remote_code,
               str(fingerprint(src.path, src.gguf_file)))
        if key in _META_CACHE:
            return _META_CACHE[key]
        config = _config(recipe, src)
    except (ModelLoadError, ValueError, OSError) as err:
        raise RecipeError(f"{path}: field 'model': {str(err).strip().splitlines()[0]}") from None
    from transformers import AutoModel, AutoModelForCausalLM

    kind = detect_kind(config) if spec.kind == "auto" else spec.kind
    loader = AutoModelForCausalLM if kind == "causal_lm" else AutoModel
    moe = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    extra = {"experts_implementation": "eager"} if moe else {}
    try:
        with torch.device("meta"):
            model = loader.from_config(config, trust_remote_code=spec.trust_remote_code, **extra)
    except Exception as err:  # noqa: BLE001 - transformers raises many kinds for a config it cannot build
        raise RecipeError(f"{path}: field 'model': cannot build the model from its config: {err}") from None
    if len(_META_CACHE) > 8:
        _META_CACHE.clear()
    _META_CACHE[key] = model
    return model


def _check_lengths(path: Path, recipe: Recipe, model) -> None:
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    ctx = getattr(text_config, "max_position_embeddings", None)
    if not isinstance(ctx, int) or ctx <= 0:
        return
    if recipe.eval_data is not None and recipe.metrics.perplexity is not None:
        window = min(recipe.metrics.perplexity.window, recipe.eval_data.max_tokens)
        if window > ctx:
            raise RecipeError(
                f"{path}: field 'metrics.perplexity.window': windows of {window} tokens are longer than the "
                f"model's context ({ctx}, max_position_embeddings); use window <= {ctx}"
            )
    if recipe.calibration is not None and recipe.calibration.seq_len > ctx:
        raise RecipeError(
            f"{path}: field 'calibration.seq_len': {recipe.calibration.seq_len} is longer than the model's "
            f"context ({ctx}, max_position_embeddings)"
        )


def _needs_calibration(plan) -> list[str]:
    from qeval.formats import get_format

    out = []
    for e in plan.entries:
        static_act = e.activations is not None and e.act_scale == "static" and get_format(e.activations).static_scale
        static_kv = e.kv_cache is not None and e.act_scale == "static" and get_format(e.kv_cache).static_scale
        if static_act or static_kv:
            out.append(e.name)
    return out


def _check_policies(path: Path, recipe: Recipe, selected, model, device) -> list[str]:
    from qeval.policy import load_policy, plan
    from qeval.quantize.apply import check_quantizable

    warnings = []
    for i, (name, source) in enumerate(selected):
        where = f"{path}: field 'policies[{i}]' ({name})"
        if isinstance(source, dict) and "checkpoint" in source:  # a stored checkpoint: read when the recipe loaded
            continue
        try:
            policy = load_policy(source)
            p = plan(model, policy)
            check_quantizable(model, p, recipe.mode, device)
        except (ValueError, KeyError, FileNotFoundError) as err:
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RecipeError(f"{where}: {msg}") from None
        static = _needs_calibration(p)
        if static and recipe.calibration is None:
            raise RecipeError(
                f"{where}: {len(static)} module(s) use static activation/KV scales (e.g. {static[0]}) "
                "and the recipe has no 'calibration'; add one or use act_scale: dynamic"
            )
        if quantizes_nothing(p, policy):
            warnings.append(f"{where}: quantizes no module of this model (every weight stays BF16)")
    return warnings


def quantizes_nothing(plan, policy) -> bool:
    """A policy that names formats but whose plan quantizes no module (a glob that missed; not bf16)."""
    rules = [*policy.rules, policy.default]
    asks = any(getattr(r, f, None) not in (None, "none", "bf16") for r in rules for f in ("weights", "activations", "kv_cache"))
    return asks and not plan.quantized_entries() and not plan.kv_cache


def check_weights(model) -> None:
    """ValueError naming the first weight tensor holding NaN/Inf (every tensor is looked at).

    A model with one Inf weight gives NaN logits everywhere, and every metric
    computed from them is meaningless, so the run stops before the baseline.
    """
    import torch

    bad, first = 0, None
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point() and p.device.type != "meta" and not bool(torch.isfinite(p).all()):
                bad += 1
                if first is None:
                    n_nan, n_inf = int(torch.isnan(p).sum()), int(torch.isinf(p).sum())
                    first = f"{name} has {n_nan} NaN and {n_inf} Inf"
    if bad:
        more = f" (and {bad - 1} more tensor(s))" if bad > 1 else ""
        raise ValueError(f"model weights are not finite: {first}{more}; qeval cannot measure such a model")
