"""The multiple-choice knapsack: one choice per group, least total damage, total bytes within a budget.

Solved exactly as a 0/1 integer programme with ``scipy.optimize.milp`` (HiGHS):
binary ``x[g, c]``, ``sum_c x[g, c] = 1`` per group, ``sum bytes * x <= budget``.
Byte counts are integers and the answer is checked in integer arithmetic
afterwards. Choices that another choice of the same group beats on both bytes
and damage are dropped first (they are never needed for an optimum).
"""

from __future__ import annotations

import math

import numpy as np

# HiGHS stops within an absolute gap of 1e-6 on the objective: damages are
# rescaled so that this gap is far below any difference that matters
_OBJECTIVE_SCALE = 1e6


class Infeasible(ValueError):
    """Even the smallest choice of every group exceeds the budget."""


def _pareto(costs: list[int], values: list[float]) -> list[int]:
    """Indices of the choices no other choice dominates (fewer or equal bytes and less or equal damage)."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], values[i], i))
    keep, best = [], math.inf
    for i in order:
        if values[i] < best:
            keep.append(i)
            best = values[i]
    return keep


def solve(costs: list[list[int]], values: list[list[float]], budget: int) -> list[int]:
    """Index of the chosen option per group.

    Args:
        costs: bytes of each option of each group (integers).
        values: damage of each option (>= 0; smaller is better).
        budget: the most bytes all groups together may take.

    Raises:
        Infeasible: no selection fits the budget.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    if len(costs) != len(values) or any(len(c) != len(v) for c, v in zip(costs, values)):
        raise ValueError("costs and values must have the same shape")
    if not costs:
        return []
    floor = sum(min(c) for c in costs)
    if floor > budget:
        raise Infeasible(f"the smallest choice of every group needs {floor:,} bytes, over the budget of {budget:,}")
    keep = [_pareto(c, v) for c, v in zip(costs, values)]
    # bytes above each group's cheapest option: small numbers, well conditioned
    base = [min(c) for c in costs]
    slack = budget - floor
    idx = [(g, i) for g, k in enumerate(keep) for i in k]
    cost = np.array([costs[g][i] - base[g] for g, i in idx], dtype=np.float64)
    val = np.array([values[g][i] for g, i in idx], dtype=np.float64)
    top = float(val.max()) if len(val) else 0.0
    obj = val * (_OBJECTIVE_SCALE / top) if top > 0 else val
    one = np.zeros((len(keep), len(idx)))
    for j, (g, _) in enumerate(idx):
        one[g, j] = 1.0
    budget_slack = float(slack)
    while True:
        res = milp(
            obj,
            constraints=[LinearConstraint(one, 1, 1), LinearConstraint(cost[None, :], -np.inf, budget_slack)],
            integrality=np.ones(len(idx)),
            bounds=Bounds(0, 1),
            options={"mip_rel_gap": 0.0},
        )
        if res.x is None:
            raise Infeasible(f"no selection fits {budget:,} bytes ({res.message})")
        pick = [0] * len(keep)
        for j, (g, i) in enumerate(idx):
            if res.x[j] > 0.5:
                pick[g] = i
        used = sum(costs[g][pick[g]] for g in range(len(costs)))
        if used <= budget:
            return pick
        budget_slack -= used - budget  # a tolerance let it over by a few bytes: tighten and solve again


def total(costs, values, pick) -> tuple[int, float]:
    """(bytes, damage) of a selection."""
    return (sum(c[i] for c, i in zip(costs, pick)), math.fsum(v[i] for v, i in zip(values, pick)))
