"""Gate checks that make the gate fail closed: a number that is not a number, a policy
that quantized nothing, a policy on which no threshold could be checked.

A check that cannot be evaluated is a failure, never a silent pass. These are
added to every verdict by ``qeval.results.gate.check_policy``; they appear only
when they fail, so a healthy run's checks are the gate's thresholds alone.
"""

from __future__ import annotations


def finite_logits_checks(metrics: dict, base: dict) -> list[dict]:
    """Positions whose logits held NaN/Inf (baseline or policy): every number from them is meaningless."""
    checks = []
    for who, m in (("policy", metrics), ("baseline", base)):
        n = m.get("nonfinite_logits")
        if n is None or (isinstance(n, (int, float)) and not isinstance(n, bool) and n == 0):
            continue
        checks.append({"name": "finite_logits", "metric": "nonfinite_logits", "op": "<=", "threshold": 0,
                       "value": n, "passed": False,
                       "detail": f"the {who}'s logits are NaN/Inf at {n} positions: its metrics are not numbers"})
    return checks


def quantizes_nothing_check(entry: dict) -> list[dict]:
    """A policy that asks for formats but whose plan quantized no module is a mistake (a glob that missed)."""
    summary, policy = entry.get("plan_summary"), entry.get("policy")
    if not isinstance(summary, dict) or not isinstance(policy, dict):
        return []
    rules = [r for r in [*(policy.get("rules") or []), policy.get("default")] if isinstance(r, dict)]
    asked = any(r.get(k) not in (None, "none", "bf16") for r in rules for k in ("weights", "activations", "kv_cache"))
    formats = [f for k in ("weights", "activations") if isinstance(summary.get(k), dict) for f in summary[k]]
    if not asked or summary.get("kv_cache") or any(f != "bf16" for f in formats):
        return []
    return [{"name": "quantizes_something", "metric": "plan_summary", "op": ">=", "threshold": 1, "value": 0,
             "passed": False, "detail": "the policy names formats but quantized no module (every weight stayed BF16)"}]


def nothing_checked(checks: list[dict]) -> list[dict]:
    """A failing check when every threshold was skipped (all metrics null, or none measured)."""
    if any(not c.get("skipped") for c in checks):
        return []
    return [{"name": "checks_applied", "metric": None, "op": ">=", "threshold": 1, "value": 0, "passed": False,
             "detail": "no gate threshold could be checked for this policy "
                       "(its metrics are missing, or none of the gate's metrics were measured)"}]
