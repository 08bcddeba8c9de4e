"""The results.json schema, as commented TypedDicts (documentation that type
checkers can read; at runtime only ``qeval.results.validate_results`` checks the
shape readers rely on).

``total=False`` marks keys that may be absent: a metric that does not apply to a
model (perplexity of an encoder) is ``null`` or missing, and readers must
tolerate both. Bump ``qeval.results.SCHEMA_VERSION`` on incompatible changes.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict


class TaskMetrics(TypedDict, total=False):
    acc: float  # accuracy of this model on the task
    stderr: float | None  # lm-eval's standard error of ``acc`` (None if it gave "N/A")
    baseline_acc: float  # the unquantized model's accuracy (absent in the baseline entry)
    baseline_stderr: float | None
    recovery: float | None  # acc / baseline_acc * 100; None when baseline_acc == 0
    n: int  # examples evaluated


class Metrics(TypedDict, total=False):
    perplexity: float | None  # sliding-window perplexity (decoders only)
    perplexity_tokens: int  # tokens scored for the perplexity
    kl_mean: float | None  # mean KL(baseline || quantized) per token, nats, full vocab (absent in baseline)
    kl_p99: float | None  # 99th percentile of the per-token KL
    top1_agreement: float | None  # share of positions with the same argmax token
    tokens: int  # tokens used for KL / top-1
    tasks: dict[str, TaskMetrics]  # lm-eval tasks by name
    embedding_cosine_mean: float | None  # encoders: cosine to the baseline's embeddings
    embedding_cosine_min: float | None
    similarity_spearman: float | None  # encoders: ranking score on a similarity benchmark


class GateCheck(TypedDict, total=False):
    name: str  # gate key, e.g. "max_kl_mean" or "min_task_recovery[social_iqa]"
    metric: str  # metric compared, e.g. "kl_mean", "tasks.social_iqa.recovery"
    op: Literal["<=", ">="]
    threshold: float
    value: float | None  # the unrounded measured value (None when not measured)
    passed: bool
    skipped: bool  # True when the metric does not apply to this model (absent in the baseline too)
    detail: str  # one line for people: value, threshold, margin, and for tasks "significantly"/"within noise"


class GateVerdict(TypedDict):
    passed: bool
    checks: list[GateCheck]


class PolicyEntry(TypedDict, total=False):
    name: str
    policy: dict[str, Any]  # the policy as validated, as a dict
    mode: str  # "emulate" or "native": which compute path ran
    plan_summary: dict[str, Any]  # Plan.summary()
    metrics: Metrics
    weight_bytes: int  # analytic, incl. scales
    weight_bytes_measured: int  # bytes of the tensors actually held
    savings_vs_bf16: float  # 1 - weight_bytes / bf16 bytes
    timings: dict[str, float]  # seconds: quantize_s, eval_s, ...
    recommendation: dict[str, Any] | None  # qeval.deploy.recommend output, or None
    gate: GateVerdict | None  # filled by finalize when a gate is given


class BaselineEntry(TypedDict, total=False):
    name: str  # "baseline"
    metrics: Metrics  # without KL/top-1/recovery
    weight_bytes: int
    timings: dict[str, float]


class Environment(TypedDict, total=False):
    qeval: str
    python: str
    platform: str
    torch: str | None
    transformers: str | None
    lm_eval: str | None
    device: str  # "cpu" or the GPU name
    git_commit: str | None
    seed: int | None
    started: str  # ISO 8601 UTC
    finished: str


class RecipeInfo(TypedDict):
    name: str
    path: str
    sha256: str
    config: dict[str, Any]  # the validated recipe as a dict


class Results(TypedDict, total=False):
    schema_version: int  # SCHEMA_VERSION; bump on incompatible changes
    recipe: RecipeInfo
    run_id: str
    environment: Environment
    baseline: BaselineEntry
    policies: list[PolicyEntry]
    gate: dict[str, Any] | None  # {"config": {...gate as dict...}, "passed": bool} when a gate ran


def run_label(results: Results) -> str:
    """``<recipe>/<run-id>``: how compare and reports name a run."""
    recipe = (results.get("recipe") or {}).get("name") or "?"
    return f"{recipe}/{results.get('run_id') or '?'}"
