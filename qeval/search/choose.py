"""From a sensitivity table and a byte budget to an ordinary policy file.

The predicted damage of a policy is the sum of its groups' KLs (each measured
with that group alone quantized); the search minimises it exactly (see
``knapsack``). The result is written as a policy YAML: ordered rules, first
match wins, one rule per run of consecutive layers where the same kind of
group took the same format; BF16 groups need no rule (the default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from qeval.files import atomic_write_bytes
from qeval.search import knapsack
from qeval.search.groups import BF16, Choice, Group, group_rule


@dataclass
class Searched:
    """One solved search."""

    name: str
    budget_bytes: int
    picks: dict[str, str]  # group id -> choice name
    weight_bytes: int  # whole model (plan bytes_after)
    group_bytes: int
    group_params: int
    predicted_kl: float
    predicted_kl_stderr: float
    policy: dict = field(default_factory=dict)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.group_bytes / self.group_params if self.group_params else math.nan

    def to_dict(self) -> dict:
        return {
            "name": self.name, "budget_bytes": self.budget_bytes, "weight_bytes": self.weight_bytes,
            "group_bytes": self.group_bytes, "bits_per_weight": self.bits_per_weight,
            "predicted_kl": self.predicted_kl, "predicted_kl_stderr": self.predicted_kl_stderr,
            "picks": self.picks, "policy": self.policy,
        }


def parts(doc: dict) -> tuple[list[Group], list[Choice]]:
    groups = [Group(**g) for g in doc["groups"]]
    choices = [Choice(**c) for c in doc["choices"]]
    return groups, choices


def search(doc: dict, budget_bytes: int, name: str = "searched", formats: list[str] | None = None) -> Searched:
    """The least predicted KL whose whole-model weight bytes are at most ``budget_bytes``.

    Args:
        doc: a sensitivity document (``load_sensitivity``).
        budget_bytes: bound on the model's weight bytes as ``qeval plan`` counts them.
        formats: restrict the choices to these names (``bf16`` stays available only if named or None).
    """
    groups, choices = parts(doc)
    if formats is not None:
        unknown = [f for f in formats if f not in [c.name for c in choices]]
        if unknown:
            raise ValueError(f"--formats: {', '.join(unknown)} not measured in the sensitivity file "
                             f"(it has {', '.join(c.name for c in choices)})")
        choices = [c for c in choices if c.name in formats]
    scores = doc["scores"]
    costs = [[g.bytes[c.name] for c in choices] for g in groups]
    values = [[float(scores[g.id][c.name]["kl_mean"]) for c in choices] for g in groups]
    fixed = int(doc["fixed_bytes"])
    pick = knapsack.solve(costs, values, budget_bytes - fixed)
    picks = {g.id: choices[i].name for g, i in zip(groups, pick)}
    used, kl = knapsack.total(costs, values, pick)
    err = math.sqrt(math.fsum(float(scores[g.id][choices[i].name].get("kl_stderr") or 0.0) ** 2
                              for g, i in zip(groups, pick)))
    policy = policy_for(groups, choices, picks, name, description=(
        f"Searched by qeval search from {doc.get('recipe')} ({doc.get('granularity')} sensitivity on the calibration "
        f"text, {doc.get('text', {}).get('tokens')} tokens): least summed KL within {budget_bytes:,} weight bytes. "
        f"Predicted KL {kl:.4g} (sum of single-group KLs), weights {fixed + used:,} bytes."))
    return Searched(name, budget_bytes, picks, fixed + used, used, sum(g.params for g in groups), kl, err, policy)


def policy_for(groups: list[Group], choices: list[Choice], picks: dict[str, str], name: str,
               description: str = "") -> dict:
    """Compact ordered rules: consecutive layers with the same pattern and choice share one rule."""
    by_name = {c.name: c for c in choices}
    runs: list[tuple[Group, Choice, list[int]]] = []  # (first group, choice, layers)
    open_run: dict[tuple[str, str], int] = {}  # (pattern, choice) -> index of the run its last layer ends
    for g in groups:
        c = by_name[picks[g.id]]
        if c.name == BF16:
            continue
        k = (g.pattern, c.name)
        i = open_run.get(k)
        if g.layer is not None and i is not None and runs[i][2][-1] == g.layer - 1:
            runs[i][2].append(g.layer)
            continue
        runs.append((g, c, [] if g.layer is None else [g.layer]))
        open_run[k] = len(runs) - 1
    rules = []
    for g, c, layers in runs:
        if g.layer is None:
            rules.append(group_rule(g, c))
        else:
            span = str(layers[0]) if len(layers) == 1 else f"{layers[0]}..{layers[-1]}"
            rules.append(group_rule(g, c, [int(span)] if len(layers) == 1 else [span]))
    return {"name": name, "description": description, "rules": rules}


HEADER = """\
# Written by `qeval search` (qeval/search/choose.py): an ordinary qeval policy.
# Ordered rules, first match wins; modules no rule matches stay BF16 (the default).
# Evaluate it like any policy: list this file under `policies:` in a recipe.
"""


def write_policy(policy: dict, path) -> Path:
    """Write ``policy`` as YAML (atomically), after checking it loads."""
    from qeval.policy import load_policy

    load_policy(dict(policy))  # refuse to write what would not load
    text = HEADER + yaml.safe_dump(policy, sort_keys=False, width=100)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, text.encode("utf-8"))
