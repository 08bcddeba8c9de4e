"""What the search chooses between: groups of modules, and the formats (choices) each may take.

A *group* is one quantizable linear (``granularity="linear"``) or all linears
of one kind in one decoder block (``granularity="block"``: attention, MLP or
experts). A *choice* is the per-module format setting of a uniform policy
(``nvfp4``, ``fp8-dynamic``, ``nvfp4-weight-only``, ...; ``bf16`` is always
one): its weights, activations and activation scale. Bytes come from
``qeval.policy.plan``, so the searched policy's size is exactly what
``qeval plan`` / ``qeval run`` report for it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from qeval.policy import load_policy, plan
from qeval.policy.schema import LINEAR_KINDS

GRANULARITIES = ("linear", "block")
BF16 = "bf16"
DEFAULT_FORMATS = ("nvfp4-weight-only", "fp8-dynamic")  # W4A4 costs the same bytes as W4A16 and loses more


@dataclass(frozen=True)
class Choice:
    name: str
    weights: str  # format spec or "none"
    activations: str
    act_scale: str = "static"

    def rule(self) -> dict:
        out = {"weights": self.weights, "activations": self.activations}
        if self.activations != "none":
            out["act_scale"] = self.act_scale
        return out


@dataclass
class Group:
    id: str
    kind: str  # attention / mlp / experts / linear (block), or the module's leaf pattern (linear)
    layer: int | None
    modules: list[str]
    params: int
    pattern: str  # what a rule matches: a kind (block) or a regex with the layer index as \d+ (linear)
    bytes: dict[str, int] = field(default_factory=dict)  # choice name -> bytes of the group's modules

    def to_dict(self) -> dict:
        return asdict(self)


def _triple(e) -> tuple[str, str, str]:
    w, a = e.weights or "none", e.activations or "none"
    return w, a, e.act_scale if a != "none" else "static"


def choice_of(model, name: str) -> Choice:
    """The per-module setting of a uniform policy (every linear gets the same formats).

    Raises:
        ValueError: the policy sets a KV-cache format (not a per-layer weight
            choice) or gives different linears different formats.
    """
    if name == BF16:
        return Choice(BF16, "none", "none")
    policy = load_policy(name)
    if policy.kv_cache not in (None, "none") or any(r.kv_cache not in (None, "none") for r in policy.rules):
        raise ValueError(f"format {name!r}: the policy sets a KV-cache format; a search choice sets weights and "
                         "activations only")
    triples = {_triple(e) for e in plan(model, policy).entries if e.kind in LINEAR_KINDS}
    if len(triples) != 1:
        shown = ", ".join(f"{w}/{a}" for w, a, _ in sorted(triples))
        raise ValueError(f"format {name!r}: not a uniform policy (its linears get {shown}); "
                         "use uniform policies such as nvfp4, fp8-dynamic, nvfp4-weight-only, mxfp8")
    w, a, s = triples.pop()
    return Choice(name, w, a, s)


def choices_for(model, names) -> list[Choice]:
    """``bf16`` first, then each named uniform policy once."""
    out = [Choice(BF16, "none", "none")]
    for n in names:
        n = n.strip()
        if n and n not in [c.name for c in out]:
            out.append(choice_of(model, n))
    return out


def _leaf_pattern(name: str, layer: int | None) -> str:
    """An anchored regex for ``name`` with its decoder-layer index as ``\\d+``."""
    if layer is None:
        return "^" + re.escape(name) + "$"
    parts = name.split(".")
    idx = max(i for i, p in enumerate(parts) if p == str(layer))  # the innermost segment equal to the index
    return "^" + r"\.".join(re.escape(p) if j != idx else r"\d+" for j, p in enumerate(parts)) + "$"


def find_groups(model, granularity: str = "block") -> tuple[list[Group], int]:
    """The groups of ``model`` in model order, and the bytes of everything outside them (BF16)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    base = plan(model, load_policy({"name": BF16}))
    groups: dict[str, Group] = {}
    fixed = 0
    for e in base.entries:
        if e.kind not in LINEAR_KINDS or e.tied_to is not None:
            fixed += e.bytes_after
            continue
        if granularity == "linear":
            gid, kind, pattern = e.name, e.name.rsplit(".", 1)[-1], _leaf_pattern(e.name, e.layer)
        else:
            kind = e.kind
            gid = f"{e.layer}.{kind}" if e.layer is not None else e.name
            pattern = kind if e.layer is not None else _leaf_pattern(e.name, None)
        g = groups.setdefault(gid, Group(gid, kind, e.layer, [], 0, pattern))
        g.modules.append(e.name)
        g.params += e.params
        if g.kind == "linear" and granularity == "block":  # `kind: linear` would match every linear: name them
            parts = [x for x in g.pattern.split("|") if x != "linear"]
            g.pattern = "|".join(dict.fromkeys([*parts, _leaf_pattern(e.name, e.layer)]))
    return list(groups.values()), fixed


def group_bytes(model, groups: list[Group], choices: list[Choice]) -> None:
    """Fill ``group.bytes[choice]`` from one plan of each choice's uniform policy."""
    for c in choices:
        entries = {e.name: e for e in plan(model, load_policy(uniform_policy(c))).entries}
        for g in groups:
            g.bytes[c.name] = sum(entries[m].bytes_after for m in g.modules)


def uniform_policy(c: Choice) -> dict:
    if c.weights == "none" and c.activations == "none":
        return {"name": c.name}
    return {"name": c.name, "rules": [{"kind": "linear", **c.rule()}]}


def group_rule(g: Group, c: Choice, layers: list | None = None) -> dict:
    """A policy rule that matches exactly the modules of ``g`` (or of its pattern in ``layers``)."""
    if g.layer is None:
        return {"name": "re:" + g.pattern, **c.rule()}
    layers = layers if layers is not None else [g.layer]
    if g.pattern in LINEAR_KINDS:
        return {"kind": g.pattern, "layers": layers, **c.rule()}
    return {"name": "re:" + g.pattern, "layers": layers, **c.rule()}


def one_group_policy(g: Group, c: Choice) -> dict:
    """The policy that quantizes ``g`` alone with ``c`` (what the sensitivity of (g, c) measures)."""
    rules = [] if c.weights == "none" and c.activations == "none" else [group_rule(g, c)]
    return {"name": f"only-{g.id}-{c.name}", "rules": rules}
