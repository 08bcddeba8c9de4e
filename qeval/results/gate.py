"""The deployment gate: thresholds from YAML -> a verdict per policy.

A gate file (``configs/gates/<name>.yaml`` or a recipe's ``gate:``)::

    max_perplexity_increase_pct: 10   # (ppl - base_ppl) / base_ppl * 100 <= threshold
    max_kl_mean: 0.1
    max_kl_p99: 1.0
    min_top1_agreement: 0.9
    min_task_recovery: 95             # percent, or {default: 95, social_iqa: 90}
    min_embedding_cosine: 0.99        # compared with embedding_cosine_mean
    confidence: 0.95                  # one-sided confidence of a failure (text metrics and tasks)
    policies: all                     # or a list of policy names

Values are compared unrounded. A metric measured nowhere in the run (perplexity
of an encoder) is skipped; one that the baseline or another policy has but a
policy lacks fails.

KL, top-1 and the perplexity increase (paired with the baseline) use one-sided
bounds at ``confidence`` from the per-window sums (``intervals.judge``): they
fail "significantly" or pass "within noise", bounds in the detail and JUnit.

Task gates use the stderr. With recovery threshold ``r`` the allowed accuracy
drop is ``d = base_acc * (1 - r/100)``; the observed drop is
``D = base_acc - acc``; the standard error of ``D`` is
``se = sqrt(se_q**2 + se_b**2)`` (independent estimates). The check fails only
when ``D - d > z * se`` with ``z`` the one-sided normal quantile of
``confidence``: a shortfall that noise explains passes, and the detail says
"within noise"; a real one says "significantly".
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qeval.files import read_yaml
from qeval.paths import CONFIGS
from qeval.results import intervals
from qeval.results.sanity import finite_logits_checks, nothing_checked, quantizes_nothing_check
from qeval.results.summary import relation

GATES_DIR = CONFIGS / "gates"


class GateError(ValueError):
    """A bad gate file or gate request; the message is one line naming the file and field."""


class Gate(BaseModel):
    """Thresholds; every one optional. ``None`` means "not checked"."""

    # strict: "0.1" (a string) or true is a wrong type, not a number to coerce
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    max_perplexity_increase_pct: float | None = Field(default=None, ge=0)
    max_kl_mean: float | None = Field(default=None, ge=0)
    max_kl_p99: float | None = Field(default=None, ge=0)
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1)
    min_task_recovery: Union[float, dict[str, float], None] = Field(default=None)
    min_embedding_cosine: float | None = Field(default=None, ge=-1, le=1)
    confidence: float = Field(default=0.95, ge=0.5, lt=1)
    policies: Union[Literal["all"], list[str]] = "all"

    @field_validator("min_task_recovery")
    @classmethod
    def _recovery_in_range(cls, v):
        values = v.values() if isinstance(v, dict) else ([] if v is None else [v])
        for x in values:
            if not 0 <= x <= 1000:
                raise ValueError(f"recovery thresholds are percentages (0..1000), got {x}")
        return v

    @field_validator("policies")
    @classmethod
    def _some_policies(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("an empty list gates nothing: use 'all' or name the policies")
        return v

    def thresholds(self) -> list[str]:
        """The threshold fields this gate sets (a gate with none checks nothing)."""
        return [k for k in THRESHOLDS if getattr(self, k) is not None]

    def task_threshold(self, task: str) -> float | None:
        r = self.min_task_recovery
        if isinstance(r, dict):
            return r.get(task, r.get("default"))
        return r

    def applies_to(self, name: str) -> bool:
        return self.policies == "all" or name in self.policies


THRESHOLDS = ("max_perplexity_increase_pct", "max_kl_mean", "max_kl_p99", "min_top1_agreement",
              "min_task_recovery", "min_embedding_cosine")

# fields whose type is a union: pydantic's per-branch messages read badly, so say what fits
_EXPECTED = {
    "min_task_recovery": "a number (percent) or a mapping like {default: 95, social_iqa: 90}",
    "policies": "'all' or a list of policy names",
}


def _one_line(err: ValidationError, where: str) -> str:
    e = err.errors()[0]
    field = str(e["loc"][0]) if e["loc"] else "(top level)"
    if e["type"] == "extra_forbidden":
        valid = ", ".join(Gate.model_fields)
        return f"{where}: unknown field '{field}' (valid: {valid})"
    if field in _EXPECTED and e["type"] != "value_error":
        return f"{where}: field '{field}' must be {_EXPECTED[field]} (got {e.get('input')!r})"
    # nested location (a task name) after the field, e.g. min_task_recovery.social_iqa
    return f"{where}: field '{field}': {e['msg']} (got {e.get('input')!r})"


def parse_gate(data: Any, where: str = "gate") -> Gate:
    """Validate a gate mapping; GateError with one line naming ``where`` and the field."""
    if isinstance(data, Gate):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise GateError(f"{where}: a gate is a mapping of thresholds, got {type(data).__name__}")
    try:
        gate = Gate.model_validate(data)
    except ValidationError as err:
        raise GateError(_one_line(err, where)) from None
    if not gate.thresholds():  # a gate that checks nothing would pass everything: fail closed
        raise GateError(f"{where}: sets no threshold, so it would pass anything (give at least one of {', '.join(THRESHOLDS)})")
    return gate


def load_gate(path: str | os.PathLike) -> Gate:
    """Read and validate a gate YAML file."""
    data = read_yaml(path, "gate file", GateError)
    return parse_gate(data, str(path))


def gate_names() -> list[str]:
    return sorted(p.stem for p in GATES_DIR.glob("*.yaml"))


def resolve_gate(spec: Any) -> Gate:
    """A Gate from a Gate, a dict, a file path, or a name in ``configs/gates/``."""
    if isinstance(spec, (Gate, dict)) or spec is None:
        return parse_gate(spec)
    text = str(spec)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_gate(path)
    named = GATES_DIR / f"{text}.yaml"
    if named.is_file():
        return load_gate(named)
    raise GateError(f"gate {text!r}: no such file or named gate (named gates: {', '.join(gate_names()) or 'none'})")


# ---------------------------------------------------------------------------
# Evaluation


def _num(x: Any) -> float | None:
    """A float, or None for missing / non-numeric values (lm-eval writes "N/A" stderrs)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def _missing_check(name, metric, op, threshold, measured_elsewhere: bool, what: str) -> dict:
    # Not measured anywhere in the run: the metric does not apply (an encoder has no
    # perplexity) or the recipe left it out -> skip. Measured for others: this policy's
    # evaluation lost it -> fail, never pass silently.
    if not measured_elsewhere:
        return {"name": name, "metric": metric, "op": op, "threshold": threshold, "value": None,
                "passed": True, "skipped": True, "detail": f"skipped: {what} not measured in this run"}
    return {"name": name, "metric": metric, "op": op, "threshold": threshold, "value": None,
            "passed": False, "detail": f"{what} missing for this policy but measured for others in the run"}


def _compare(name, metric, op, threshold, value) -> dict:
    if not math.isfinite(value):
        return {"name": name, "metric": metric, "op": op, "threshold": threshold, "value": value,
                "passed": False, "detail": f"{metric} = {value} is not finite"}
    passed = value <= threshold if op == "<=" else value >= threshold
    margin = threshold - value if op == "<=" else value - threshold
    how = f"margin {margin:.4g}" if passed else f"{'over' if op == '<=' else 'short'} by {-margin:.4g}"
    return {"name": name, "metric": metric, "op": op, "threshold": threshold, "value": value, "passed": passed,
            "detail": f"{'passes' if passed else 'fails'}: {relation(metric, value, op, threshold)} ({how})"}


def _bound_check(name, metric, op, threshold, value, bounds, confidence, what=None) -> dict:
    check = {**_compare(name, metric, op, threshold, value), "confidence": confidence}
    if not math.isfinite(value):
        return check
    if bounds is None:
        check["detail"] += "; no interval stored (older results or one window), point estimate only"
        return check
    passed, verdict = intervals.judge(value, bounds, op, threshold)
    check.update(passed=passed, interval=list(bounds), detail=(
        f"{verdict}: {relation(what or metric, value, op, threshold)}, "
        f"{confidence:g} one-sided bounds [{bounds[0]:.4g}, {bounds[1]:.4g}]"))
    if verdict == "passes within noise":
        check["within_noise"] = True
    return check


def _simple_checks(gate: Gate, metrics: dict, measured: set[str]) -> list[dict]:
    checks = []
    for key, metric, op in (("max_kl_mean", "kl_mean", "<="), ("max_kl_p99", "kl_p99", "<="),
                            ("min_top1_agreement", "top1_agreement", ">="),
                            ("min_embedding_cosine", "embedding_cosine_mean", ">=")):
        threshold = getattr(gate, key)
        if threshold is None:
            continue
        value = _num(metrics.get(metric))
        if value is None:
            checks.append(_missing_check(key, metric, op, threshold, metric in measured, metric))
        elif metric == "embedding_cosine_mean":
            checks.append(_compare(key, metric, op, threshold, value))
        else:
            b = intervals.bounds(metrics, metric, gate.confidence)
            checks.append(_bound_check(key, metric, op, threshold, value, b, gate.confidence))
    return checks


def _perplexity_check(gate: Gate, metrics: dict, base: dict, measured: set[str]) -> list[dict]:
    threshold = gate.max_perplexity_increase_pct
    if threshold is None:
        return []
    name, metric = "max_perplexity_increase_pct", "perplexity_increase_pct"
    ppl, base_ppl = _num(metrics.get("perplexity")), _num(base.get("perplexity"))
    if base_ppl is None or ppl is None:
        what = "baseline perplexity" if base_ppl is None else "perplexity"
        return [_missing_check(name, metric, "<=", threshold, "perplexity" in measured, what)]
    if not base_ppl > 0:
        return [{"name": name, "metric": metric, "op": "<=", "threshold": threshold, "value": None,
                 "passed": False, "detail": f"baseline perplexity {base_ppl} is not a positive number"}]
    diff = intervals.paired_difference(metrics, base, "perplexity", 2 * gate.confidence - 1)  # one-sided bounds
    if diff is not None and math.isfinite(ppl):
        value, b = diff.value, (diff.lo, diff.hi)
    else:
        value, b = ((ppl - base_ppl) / base_ppl * 100 if math.isfinite(ppl) else math.inf), None
    check = _bound_check(name, metric, "<=", threshold, value, b, gate.confidence, what="perplexity increase %")
    if math.isfinite(value):
        paired = f" (paired over {diff.windows} windows)" if diff is not None else ""
        check["detail"] += f"; perplexity {ppl:.4g} vs baseline {base_ppl:.4g}{paired}"
    return [check]


def task_check(task: str, entry: dict, base_entry: dict, threshold: float, confidence: float) -> dict:
    """The stderr-aware recovery check of one task (see the module docstring)."""
    name, metric = f"min_task_recovery[{task}]", f"tasks.{task}.recovery"
    acc = _num(entry.get("acc"))
    base_acc = _num(entry.get("baseline_acc"))
    if base_acc is None:
        base_acc = _num(base_entry.get("acc"))
    check = {"name": name, "metric": metric, "op": ">=", "threshold": threshold, "value": None,
             "confidence": confidence}
    if acc is None or base_acc is None:
        missing = "accuracy" if acc is None else "baseline accuracy"
        return {**check, "passed": False, "detail": f"{task}: {missing} missing, cannot check recovery"}
    se_q = _num(entry.get("stderr"))
    se_b = _num(entry.get("baseline_stderr"))
    if se_b is None:
        se_b = _num(base_entry.get("stderr"))
    bad = [what for what, v in (("accuracy", acc), ("baseline accuracy", base_acc), ("stderr", se_q),
                                 ("baseline stderr", se_b)) if v is not None and not math.isfinite(v)]
    if bad:  # a NaN/Inf stderr makes every shortfall look like noise: cannot be checked, so it fails
        return {**check, "passed": False, "detail": f"{task}: {bad[0]} is not finite, cannot check recovery"}
    se = math.sqrt((se_q or 0.0) ** 2 + (se_b or 0.0) ** 2)
    z = NormalDist().inv_cdf(confidence)
    allowed = base_acc * (1 - threshold / 100)  # d
    drop = base_acc - acc  # D
    shortfall = drop - allowed  # > 0: point estimate below the threshold
    recovery = acc / base_acc * 100 if base_acc > 0 else None
    rec = f"recovery {recovery:.2f}%" if recovery is not None else "recovery n/a (baseline acc 0)"
    noise = f"z({confidence:g})={z:.3f} x se {se:.4g} = {z * se:.4g}"
    facts = f"acc {acc:.4g} vs baseline {base_acc:.4g}, drop {drop:+.4g}, allowed {allowed:.4g}"
    if not math.isfinite(shortfall):
        passed, verdict = False, "fails: accuracy not finite"
    elif shortfall > z * se:
        passed, verdict = False, f"fails significantly: shortfall {shortfall:.4g} > {noise}"
    elif shortfall > 0:
        passed, verdict = True, f"passes within noise: below {threshold:g}% but shortfall {shortfall:.4g} <= {noise}"
    elif -shortfall >= z * se and se > 0:
        passed, verdict = True, f"passes significantly: {-shortfall:.4g} above the allowed drop, >= {noise}"
    else:
        passed, verdict = True, f"passes, but the margin {-shortfall:.4g} is within noise ({noise})"
    if se_q is None and se_b is None:
        verdict += "; no stderr reported, point estimate only"
    check.update(value=recovery, passed=passed, stderr=se, detail=f"{task}: {rec}, {threshold:g}% required; {verdict}; {facts}")
    if passed and shortfall > 0:
        check["within_noise"] = True
    return check


def _task_checks(gate: Gate, metrics: dict, base: dict) -> list[dict]:
    if gate.min_task_recovery is None:
        return []
    tasks = metrics.get("tasks") or {}
    base_tasks = base.get("tasks") or {}
    checks = []
    for task in list(tasks) + [t for t in base_tasks if t not in tasks]:
        threshold = gate.task_threshold(task)
        if threshold is None:
            continue
        if task not in tasks:
            checks.append({"name": f"min_task_recovery[{task}]", "metric": f"tasks.{task}.recovery", "op": ">=",
                           "threshold": threshold, "value": None, "passed": False,
                           "detail": f"{task}: measured for the baseline but missing for this policy"})
            continue
        checks.append(task_check(task, tasks[task] or {}, base_tasks.get(task) or {}, threshold, gate.confidence))
    return checks


def measured_metrics(results: dict) -> set[str]:
    """Metric keys with a value in the baseline or any policy of a run."""
    found = set()
    entries = [results.get("baseline") or {}] + list(results.get("policies") or [])
    for entry in entries:
        for key, value in (entry.get("metrics") or {}).items():
            if value is not None:
                found.add(key)
    return found


def check_policy(entry: dict, baseline_metrics: dict, gate: Gate, measured: set[str] | None = None) -> dict:
    """The verdict ``{"passed": bool, "checks": [...]}`` of one policy entry.

    ``measured``: metric keys measured anywhere in the run (``measured_metrics``);
    default: those of this entry and the baseline.
    """
    metrics = entry.get("metrics") or {}
    if measured is None:
        measured = {k for m in (metrics, baseline_metrics) for k, v in m.items() if v is not None}
    checks = (
        finite_logits_checks(metrics, baseline_metrics)
        + _perplexity_check(gate, metrics, baseline_metrics, measured)
        + _simple_checks(gate, metrics, measured)
        + _task_checks(gate, metrics, baseline_metrics)
        + quantizes_nothing_check(entry)
    )
    checks += nothing_checked(checks)
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


def select_policies(results: dict, gate: Gate, names: list[str] | None = None) -> list[dict]:
    """The policy entries a gate applies to (``names`` overrides ``gate.policies``).

    Raises GateError for a requested name the results do not hold.
    """
    entries = results.get("policies") or []
    have = [e["name"] for e in entries]
    wanted = names if names else (None if gate.policies == "all" else list(gate.policies))
    if wanted is None:
        return list(entries)
    unknown = [n for n in wanted if n not in have]
    if unknown:
        raise GateError(f"policy {unknown[0]!r} is not in the results (policies: {', '.join(have) or 'none'})")
    return [e for e in entries if e["name"] in wanted]


def evaluate_gate(results: dict, gate: Gate | dict, policies: list[str] | None = None) -> dict[str, dict]:
    """Verdicts by policy name, in results order: ``{name: {"passed": bool, "checks": [...]}}``.

    The baseline is the reference and is not gated.
    """
    gate = parse_gate(gate)
    base = ((results.get("baseline") or {}).get("metrics")) or {}
    measured = measured_metrics(results)
    return {e["name"]: check_policy(e, base, gate, measured) for e in select_policies(results, gate, policies)}


def apply_gate(results: dict, gate: Gate) -> dict[str, dict]:
    """Evaluate and store the verdicts in ``results`` (each policy's ``gate``, and a top-level ``gate``)."""
    verdicts = evaluate_gate(results, gate)
    for entry in results.get("policies") or []:
        entry["gate"] = verdicts.get(entry["name"])
    results["gate"] = {"config": gate.model_dump(), "passed": all(v["passed"] for v in verdicts.values())}
    return verdicts


from qeval.results.junit import junit_xml  # noqa: E402,F401  (re-exported: qeval gate --junit)
