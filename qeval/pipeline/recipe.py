"""The recipe file: one model, its evaluation data, the policies to compare, the
metrics and their sizes, lm-eval tasks, a gate, a hardware target and a seed.
Validated with pydantic (unknown keys are errors, with a did-you-mean hint); every
problem is one line that names the file and the field::

    recipes/x.yaml: field 'metrics.perplexity.windw': unknown field (did you mean 'window'?)

See ``recipes/quickstart.yaml`` for a commented example of every section.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from qeval.data.text import TextSpec
from qeval.files import parse_yaml
from qeval.models import ModelSpec


class RecipeError(ValueError):
    """A recipe that cannot be used; the message is one line naming the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextSource(TextSpec):
    """Text for perplexity/KL: a ``qeval.data`` text spec (``source: gensim-wiki``,
    ``gensim-lee``, or ``file`` with ``path``) and how many tokens of it to use."""

    max_tokens: int = Field(4096, gt=1)
    # stop a policy's pass once each named interval's half-width is this small (else at max_tokens),
    # e.g. {kl_mean: 0.005}; the baseline always scores every window (policies are compared against it)
    target_ci: dict[Literal["perplexity", "kl_mean", "top1_agreement"], float] | None = None

    @field_validator("target_ci")
    @classmethod
    def _positive(cls, v):
        for key, width in (v or {}).items():
            if not width > 0:
                raise ValueError(f"target_ci.{key} is a half-width and must be > 0, got {width}")
        return v

    def text_spec(self) -> TextSpec:
        return TextSpec.model_validate(self.model_dump(include=set(TextSpec.model_fields)))


class Calibration(TextSpec):
    """Calibration batches for static activation scales (use another source than the eval text)."""

    n_batches: int = Field(4, ge=1)
    seq_len: int = Field(512, ge=2)

    def text_spec(self) -> TextSpec:
        return TextSpec.model_validate(self.model_dump(include=set(TextSpec.model_fields)))


class PerplexityConfig(_Strict):
    window: int = Field(1024, ge=2)
    stride: int | None = Field(None, ge=1)  # default: window (no overlap)

    @model_validator(mode="after")
    def _stride(self):
        if self.stride is not None and self.stride > self.window:
            raise ValueError(f"stride ({self.stride}) must not exceed window ({self.window})")
        return self


class Metrics(_Strict):
    perplexity: PerplexityConfig | None = Field(default_factory=PerplexityConfig)
    kl: bool = True  # KL(base || quant) mean and p99 over the same positions
    top1: bool = True
    chunk: int = Field(256, ge=1)  # positions per step of log-softmax / KL (scratch memory)
    confidence: float = Field(0.95, ge=0.5, lt=1)  # of the intervals stored and shown (the gate has its own)
    bootstrap: int = Field(1000, ge=10)  # resamples of windows for the KL p99 interval (seeded with the recipe seed)
    baseline_store: Literal["auto", "device", "disk"] = "auto"  # baseline log-probs: auto = in memory if they fit
    cuda_graph: bool = True  # replay each window's forward from a CUDA graph where safe (evaluate/graphs.py)


# lm_eval.simple_evaluate arguments qeval sets itself (a task's `lm_eval_args` may not)
_QEVAL_SETS = {"model", "model_args", "tasks", "task_manager", "limit", "batch_size", "device", "random_seed",
               "numpy_random_seed", "torch_random_seed", "fewshot_random_seed", "evaluation_tracker"}


class TaskSpec(_Strict):
    """One lm-eval task. The options below have lm-eval's names and go to
    ``lm_eval.simple_evaluate`` unchanged; ``lm_eval_args`` passes any other of its arguments."""

    name: str
    limit: int | float | None = Field(None, gt=0)  # examples per task (a fraction if < 1; None: all)
    batch_size: int = Field(8, ge=1)
    num_fewshot: int | None = Field(None, ge=0)  # None: the task's own default
    apply_chat_template: bool | str = False
    fewshot_as_multiturn: bool | None = None
    system_instruction: str | None = None
    gen_kwargs: str | dict[str, Any] | None = None  # generation arguments of generative tasks
    log_samples: bool = False  # per-example inputs/outputs -> samples/<policy>/<task>.jsonl in the run
    lm_eval_args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("lm_eval_args")
    @classmethod
    def _args(cls, v):
        taken = sorted(set(v) & (_QEVAL_SETS | set(cls.model_fields)))
        if taken:
            raise ValueError(f"{', '.join(taken)}: set by qeval or by the task's own fields, not in lm_eval_args")
        return v

    def lm_eval_options(self) -> dict[str, Any]:
        """The options that differ from lm-eval's defaults, as ``simple_evaluate`` keywords."""
        out = {k: getattr(self, k) for k in ("num_fewshot", "fewshot_as_multiturn", "system_instruction", "gen_kwargs")
               if getattr(self, k) is not None}
        flags = {k: getattr(self, k) for k in ("apply_chat_template", "log_samples") if getattr(self, k)}
        return {**out, **flags, **self.lm_eval_args}


class EmbeddingConfig(_Strict):
    """Encoders: cosine of sentence embeddings to the baseline's, and a similarity benchmark."""

    sentences: str | dict[str, Any] = "gensim-lee"  # text spec whose non-empty lines are embedded
    max_sentences: int = Field(256, ge=2)
    max_length: int = Field(128, ge=4)
    batch_size: int = Field(32, ge=1)
    similarity: str | None = "lee"  # ``qeval.data.similarity_benchmark`` name; None to skip
    similarity_pairs: int | None = Field(None, ge=2)  # first N rated pairs (None: all)


class Hardware(_Strict):
    """Deployment target for ``qeval.deploy.recommend``."""

    context: int = Field(4096, ge=1)
    batch: int = Field(1, ge=1)
    gpu: str | None = None


class Recipe(_Strict):
    name: str | None = None  # default: the file's stem
    description: str | None = None
    seed: int = Field(0, ge=0, lt=2**63)  # torch, numpy and random all take it
    model: ModelSpec
    eval_data: TextSource | None = None  # causal LMs: text for perplexity, KL, top-1
    calibration: Calibration | None = None
    policies: list[str | dict[str, Any]] = Field(min_length=1)
    mode: Literal["emulate", "native"] = "emulate"
    # emulate: "exact" = the tensor core's arithmetic (block-scaled operands, FP32 accumulation, per-tensor /
    # per-row scales on the output); "fake_quant" = a matmul of fake-quantized tensors in the model's dtype
    emulation: Literal["exact", "fake_quant"] = "exact"
    metrics: Metrics = Field(default_factory=Metrics)
    tasks: list[TaskSpec] = Field(default_factory=list)
    embeddings: EmbeddingConfig | None = None
    gate: str | dict[str, Any] | None = None  # inline thresholds, or a configs/gates name / path
    hardware: Hardware = Field(default_factory=Hardware)
    _names: list[str] = PrivateAttr(default_factory=list)  # each policy's own name, set by load_recipe

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", v):
            raise ValueError("use letters, digits and . _ + - (it names the results folder)")
        return v

    @model_validator(mode="after")
    def _data_for_metrics(self):
        if self.model.kind != "encoder" and self.eval_data is None and self.embeddings is None and not self.tasks:
            raise ValueError("give 'eval_data' (text for perplexity/KL), 'tasks' or 'embeddings': nothing to measure")
        return self

    # -- derived
    def policy_names(self) -> list[str]:
        """Each policy's name: the built-in name, an inline policy's ``name``, or for a
        policy given as a file path the ``name:`` inside that file (its stem if none)."""
        if len(self._names) == len(self.policies):
            return list(self._names)
        return [p if isinstance(p, str) else str(p.get("name")) for p in self.policies]


# ---------------------------------------------------------------------------
# Loading and error messages


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for did-you-mean hints)."""
    cls: Any = Recipe
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        cls = _first_model(ann)
        if cls is None:
            return None
    return cls


def _first_model(ann) -> type[BaseModel] | None:
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _format_error(path: Path, err: ValidationError) -> str:
    errors = err.errors()
    # a misspelt key shows up as "unknown" plus "missing": the unknown one carries the hint
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    # union types report one error per branch; the first non-union one is the useful one
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "dict", "int"))))
    where = _loc(loc) or "(top level)"
    kind = e["type"]
    if kind == "extra_forbidden":
        owner = _model_at(loc)
        hint = ""
        if owner is not None:
            close = difflib.get_close_matches(str(loc[-1]), list(owner.model_fields), n=1)
            valid = ", ".join(owner.model_fields)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (valid fields: {valid})"
        return f"{path}: field {where!r}: unknown field{hint}"
    if kind == "missing":
        return f"{path}: field {where!r}: required field is missing"
    msg = e["msg"].removeprefix("Value error, ")
    value = e.get("input")
    shown = f" (got {value!r})" if not isinstance(value, (dict, list)) and kind != "value_error" else ""
    return f"{path}: field {where!r}: {msg}{shown}"


def load_recipe(path: str | Path) -> tuple[Recipe, str]:
    """Read and validate a recipe; return ``(recipe, sha256 of the file)``.

    Checks beyond the schema: every policy name resolves (``configs/policies``),
    inline policies validate, and the gate validates.

    Raises:
        RecipeError: one line naming the file and field.
    """
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file does not exist") from None
    except OSError as err:
        raise RecipeError(f"{path}: cannot read recipe ({err.strerror or err})") from None
    data = parse_yaml(raw_bytes, path, "recipe", RecipeError)
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping (got {type(data).__name__})")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_format_error(path, err)) from None
    if recipe.name is None:
        recipe.name = path.stem
    _check_policies(path, recipe)
    _check_gate(path, recipe)
    _check_local_text(path, recipe)
    return recipe, hashlib.sha256(raw_bytes).hexdigest()


_FILE_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # a policy's name names its results file


def _is_path(entry: str) -> bool:
    return "/" in entry or "\\" in entry or Path(entry).suffix in (".yaml", ".yml")


def _check_policies(path: Path, recipe: Recipe) -> None:
    """Every policy loads; names (a file's own ``name:``) are unique, not 'baseline', and file-safe.

    A relative policy path that does not exist from the working directory is taken
    from the recipe's folder (and rewritten, so the runner finds it too).
    """
    from qeval.policy import load_policy

    names: list[str] = []
    for i, entry in enumerate(recipe.policies):
        if isinstance(entry, dict) and "name" not in entry:
            raise RecipeError(f"{path}: field 'policies[{i}]': an inline policy needs a 'name'")
        if isinstance(entry, str) and _is_path(entry):
            file = Path(entry).expanduser()
            if not file.is_absolute() and not file.exists() and (path.parent / file).exists():
                recipe.policies[i] = entry = str(path.parent / file)
        label = entry if isinstance(entry, str) else str(entry.get("name"))
        if label == "baseline":
            raise RecipeError(f"{path}: field 'policies[{i}]': 'baseline' is reserved for the unquantized model")
        if is_checkpoint_entry(entry):  # stored packed weights: checked by reading the folder
            _check_checkpoint(path, i, entry)
            name = label
            if not _FILE_SAFE.fullmatch(name):
                raise RecipeError(f"{path}: field 'policies[{i}]': policy name {name!r} cannot name a results file: "
                                  "use letters, digits and . _ + -")
            if name in names:
                raise RecipeError(f"{path}: field 'policies[{i}]': policy {name!r} is listed twice")
            names.append(name)
            continue
        try:
            policy = load_policy(entry)
        except Exception as err:  # noqa: BLE001 - policy errors are one-line ValueErrors; keep the message
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RecipeError(f"{path}: field 'policies[{i}]' ({label}): {msg}") from None
        name = policy.name if isinstance(entry, str) and _is_path(entry) else label
        if name == "baseline":
            raise RecipeError(f"{path}: field 'policies[{i}]': 'baseline' is reserved for the unquantized model")
        if not _FILE_SAFE.fullmatch(name):
            raise RecipeError(
                f"{path}: field 'policies[{i}]': policy name {name!r} cannot name a results file: "
                "use letters, digits and . _ + - (set `name:` in the policy)"
            )
        if name in names:
            raise RecipeError(f"{path}: field 'policies[{i}]': policy {name!r} is listed twice")
        names.append(name)
    recipe._names = names


def is_checkpoint_entry(entry) -> bool:
    """A policy entry ``{name: ..., checkpoint: DIR}``: evaluate a stored checkpoint (``qeval.export``)."""
    return isinstance(entry, dict) and "checkpoint" in entry


def _check_checkpoint(path: Path, index: int, entry: dict) -> None:
    """The folder exists and reads as a checkpoint; a relative folder is taken from the recipe's folder."""
    from qeval.export import ExportError, read_checkpoint

    extra = set(entry) - {"name", "checkpoint", "description"}
    if extra:
        raise RecipeError(f"{path}: field 'policies[{index}].{sorted(extra)[0]}': unknown field "
                          "(a checkpoint entry has name, checkpoint, description)")
    folder = Path(str(entry["checkpoint"])).expanduser()
    if not folder.is_absolute() and not folder.exists() and (path.parent / folder).exists():
        folder = path.parent / folder
    entry["checkpoint"] = str(folder)
    try:
        read_checkpoint(folder)
    except ExportError as err:
        raise RecipeError(f"{path}: field 'policies[{index}]' ({entry.get('name')}): {err}") from None


def _beside_recipe(recipe_path: Path, name: str) -> Path:
    """A relative file named in a recipe: in the recipe's folder when it is there, else as given (cwd)."""
    file = Path(name).expanduser()
    if not file.is_absolute() and (recipe_path.parent / file).exists():
        return recipe_path.parent / file
    return file


def _check_gate(path: Path, recipe: Recipe) -> None:
    if recipe.gate is None:
        return
    if isinstance(recipe.gate, str) and (Path(recipe.gate).suffix in (".yaml", ".yml") or "/" in recipe.gate):
        recipe.gate = str(_beside_recipe(path, recipe.gate))  # like eval_data.path: from the recipe's folder
    from qeval.results.gate import GateError, parse_gate, resolve_gate

    try:
        if isinstance(recipe.gate, dict):
            parse_gate(recipe.gate, where=f"{path}: gate")
        else:
            resolve_gate(recipe.gate)
    except GateError as err:
        msg = str(err)
        raise RecipeError(msg if msg.startswith(str(path)) else f"{path}: field 'gate': {msg}") from None


def _check_local_text(path: Path, recipe: Recipe) -> None:
    """Local text files: present, non-empty, UTF-8; relative paths are taken from the recipe's folder."""
    from qeval.data import DataError
    from qeval.data.text import read_utf8

    for field, spec in (("eval_data", recipe.eval_data), ("calibration", recipe.calibration)):
        if spec is None or spec.source != "file":
            continue
        file = _beside_recipe(path, spec.path)
        spec.path = str(file)
        try:
            read_utf8(file)
        except DataError as err:
            raise RecipeError(f"{path}: field '{field}.path': {err}") from None


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    return recipe.model_dump(mode="json")
