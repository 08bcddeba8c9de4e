"""Per-layer precision policies: load a policy file, resolve it on a model.

>>> from qeval.policy import load_policy, plan
>>> p = plan(model, load_policy("mixed-fp4-fp8"))
>>> p.summary()["bytes_after"]
"""

from .planner import Plan, PlanEntry, plan
from .schema import KINDS, Policy, Rule, builtin_policies, load_policy

__all__ = ["KINDS", "Plan", "PlanEntry", "Policy", "Rule", "builtin_policies", "load_policy", "plan"]
