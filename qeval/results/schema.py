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
    metric: str  # the task's primary metric: "acc" for multiple choice, else lm-eval's first (e.g. "exact_match")
    acc: float  # this model's value of ``metric`` (accuracy for multiple choice)
    stderr: float | None  # lm-eval's standard error of ``acc`` (None if it gave "N/A")
    scores: dict[str, float | None]  # every metric lm-eval reported ("acc_norm", "exact_match,strict-match", ...)
    lm_eval: dict[str, Any]  # lm-eval's own block: results ("acc,none" layout), config, version, n-shot, n-samples
    samples_file: str  # with log_samples: samples/<policy>/<task>.jsonl in the run directory
    baseline_acc: float  # the unquantized model's accuracy (absent in the baseline entry)
    baseline_stderr: float | None
    recovery: float | None  # acc / baseline_acc * 100; None when baseline_acc == 0
    n: int  # examples evaluated


class Intervals(TypedDict, total=False):
    """Confidence intervals of the text metrics (schema 2; ``qeval.uncertainty`` has the method).

    Each interval is ``[lo, hi]`` at ``confidence`` (two-sided), or None with fewer than 2 windows.
    """

    confidence: float  # the recipe's metrics.confidence (0.95 by default)
    windows: int  # windows evaluated: the sampling unit (tokens in a window are correlated)
    perplexity: list[float] | None  # exp of the t interval on the mean NLL (asymmetric)
    kl_mean: list[float] | None  # ratio estimator over windows, Student t with windows-1 df
    top1_agreement: list[float] | None
    kl_p99: list[float] | None  # percentile interval of a bootstrap over windows
    kl_p99_bootstrap: dict[str, Any]  # {"replicates", "seed", "levels": {"0.025": q, ...}}: the gate reads bounds here
    stopped_by: Literal["max_tokens", "target_ci"]  # what ended the pass (eval_data.target_ci)
    target: dict[str, float]  # eval_data.target_ci when the recipe set one


class WindowSums(TypedDict, total=False):
    """Per-window sums, one number per window and metric (schema 2): what paired comparisons,
    the gate's bounds at any confidence and ``qeval compare`` are computed from."""

    key: str  # sha256 of the token ids and window layout: equal keys = the same tokens
    tokens: list[int]  # tokens scored in each window
    nll: list[float]  # sum of -log p(target) (nats)
    kl_sum: list[float]  # sum of per-token KL (absent in the baseline)
    top1: list[int]  # positions with the baseline's argmax (absent in the baseline)


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
    ci: Intervals  # schema 2: intervals of the text metrics
    windows: WindowSums  # schema 2: per-window sums
    nonfinite_logits: int  # positions whose logits held NaN/Inf (any > 0 fails the gate)


class GateCheck(TypedDict, total=False):
    name: str  # gate key, e.g. "max_kl_mean" or "min_task_recovery[social_iqa]"
    metric: str  # metric compared, e.g. "kl_mean", "tasks.social_iqa.recovery"
    op: Literal["<=", ">="]
    threshold: float
    value: float | None  # the unrounded measured value (None when not measured)
    passed: bool
    skipped: bool  # True when the metric does not apply to this model (absent in the baseline too)
    detail: str  # one line for people: value, threshold, margin, "significantly"/"within noise", bounds
    confidence: float  # the gate's one-sided confidence (checks that use an interval or stderr)
    interval: list[float]  # text metrics: [lower, upper] one-sided bounds at ``confidence``
    within_noise: bool  # True when the point estimate is beyond the threshold but noise explains it


class GateVerdict(TypedDict):
    passed: bool
    checks: list[GateCheck]


class PassMemory(TypedDict, total=False):
    gpu_peak_bytes: int | None  # allocator peak (max_memory_allocated), reset per pass; max over the model's GPUs
    host_peak_bytes: int  # peak resident memory of the process (VmHWM)
    host_peak_scope: Literal["pass", "process"]  # reset per pass, or since the process started


class KLStore(TypedDict, total=False):
    path: Literal["device", "disk"]  # baseline log-probs held in device memory, or spilled to a file
    dtype: str  # "float32" or "float16" (2 B per entry; rows renormalised on read, argmax kept exact)
    where: str  # the device, or the spill file
    bytes_needed: int
    bytes_free: int  # on that device / disk when the run started


class ForwardNote(TypedDict, total=False):
    """How the text pass ran its forward (``qeval.evaluate.graphs``); rank 0's under several processes."""

    cuda_graph: bool  # True when windows were replayed from a CUDA graph (same numbers as eager)
    replayed_windows: int
    eager_windows: int  # the recorded window's own forward, and windows of another shape
    record_s: float  # host seconds of that first forward and its recording
    reason: str | None  # why no graph (CPU, several devices, a host sync in the forward, off in the recipe)


class PolicyEntry(TypedDict, total=False):
    name: str
    policy: dict[str, Any]  # the policy as validated, as a dict
    mode: str  # "emulate" or "native": which compute path ran
    emulation: str | None  # emulate mode: "exact" (scales in the epilogue) or "fake_quant"; None when native
    mx_scale_rule: str | None  # MX formats' scale rule: "rceil", "floor" (OCP) or "floor+rceil"; None without MX
    plan_summary: dict[str, Any]  # Plan.summary()
    metrics: Metrics
    weight_bytes: int  # analytic, incl. scales
    weight_bytes_measured: int  # bytes of the tensors actually held
    savings_vs_bf16: float  # 1 - weight_bytes / bf16 bytes
    timings: dict[str, float]  # seconds: quantize_s, eval_s, ...
    recommendation: dict[str, Any] | None  # qeval.deploy.recommend output, or None
    gate: GateVerdict | None  # filled by finalize when a gate is given
    memory: PassMemory  # peaks of this pass (quantize + evaluate + restore)
    kl_store: KLStore  # where the baseline's log-probs were read from
    forward: ForwardNote


class BaselineEntry(TypedDict, total=False):
    name: str  # "baseline"
    metrics: Metrics  # without KL/top-1/recovery
    weight_bytes: int
    timings: dict[str, float]
    memory: PassMemory
    kl_store: KLStore
    forward: ForwardNote


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


def shape_problem(data: Any) -> str | None:
    """What makes ``data`` unreadable as results (``field ...: problem``), or None.

    Only the containers readers index into are checked: an object where an
    object belongs, a list where a list belongs. Values inside may be null.
    """
    if not isinstance(data, dict):
        return f"not a qeval results file (top level is {type(data).__name__}, expected an object)"
    if not isinstance(data.get("policies"), list):
        return "field 'policies' is missing or not a list; is this a qeval results.json?"
    for key in ("baseline", "recipe", "gate", "environment"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            return f"field {key!r} must be an object"
    for key in ("config",):
        if (data.get("recipe") or {}).get(key) is not None and not isinstance(data["recipe"][key], dict):
            return f"field 'recipe.{key}' must be an object"
    if (data.get("gate") or {}).get("config") is not None and not isinstance(data["gate"]["config"], dict):
        return "field 'gate.config' must be an object"
    entries = [("baseline", data["baseline"])] if data.get("baseline") is not None else []
    entries += [(f"policies[{i}]", e) for i, e in enumerate(data["policies"])]
    for where, entry in entries:
        if not isinstance(entry, dict):
            return f"field {where!r} must be an object"
        if where != "baseline" and not isinstance(entry.get("name"), str):
            return f"field '{where}' needs a string 'name'"
        for key in ("metrics", "plan_summary", "policy", "timings", "gate"):
            if entry.get(key) is not None and not isinstance(entry[key], dict):
                return f"field '{where}.{key}' must be an object"
        tasks = (entry.get("metrics") or {}).get("tasks")
        if tasks is not None and not isinstance(tasks, dict):
            return f"field '{where}.metrics.tasks' must be an object"
        for name, task in (tasks or {}).items():
            if task is not None and not isinstance(task, dict):
                return f"field '{where}.metrics.tasks.{name}' must be an object"
    return None
