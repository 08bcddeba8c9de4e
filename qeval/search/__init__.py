"""Find a per-layer policy: measure each group's sensitivity, then choose formats under a budget.

>>> from qeval.search import sensitivity, load_sensitivity, search, write_policy
>>> doc = load_sensitivity(sensitivity("recipes/quickstart.yaml", granularity="block"))
>>> s = search(doc, budget_bytes=131 * 2**20, name="searched-131MiB")
>>> write_policy(s.policy, "configs/policies/searched-131MiB.yaml")

This package strings together policy, quantize, evaluate and deploy (like
``qeval.pipeline``); nothing below it imports it.
"""

from qeval.search.budget import budget_from_bits, fit_budget, fit_report, parse_bytes, parse_target
from qeval.search.choose import Searched, policy_for, search, write_policy
from qeval.search.groups import Choice, Group, choices_for, find_groups, one_group_policy
from qeval.search.knapsack import Infeasible, solve
from qeval.search.scoring import SearchInputError, load_sensitivity, sensitivity

__all__ = [
    "Choice", "Group", "Infeasible", "SearchInputError", "Searched", "budget_from_bits", "choices_for",
    "find_groups", "fit_budget", "fit_report", "load_sensitivity", "one_group_policy", "parse_bytes",
    "parse_target", "policy_for", "search", "sensitivity", "solve", "write_policy",
]
