"""Resolve a policy on a concrete model: which rule and formats each module gets, and the bytes.

``plan(model, policy)`` reads module classes, names and parameter shapes only,
so it is as fast on a meta-device model with hundreds of billions of
parameters as on a tiny one. Byte counts: BF16 (2 bytes/param) before; after,
each quantized weight matrix costs ``get_format(spec).nbytes((N, K))`` (codes
plus scales), fused MoE experts one such matrix per expert (each expert has its
own scales, as in deployed checkpoints), and everything else stays 2 bytes.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from dataclasses import asdict, dataclass, field

from torch import nn

from qeval.formats import get_format

from .modules import ModuleInfo, describe_modules
from .schema import PROTECTED_KINDS, CompiledRule, Policy, load_policy

BASE_BYTES = 2  # BF16, the baseline precision of every delta
QUANTIZABLE = ("linear", "attention", "mlp", "experts", "router", "embedding", "lm_head")


@dataclass
class PlanEntry:
    name: str
    kind: str
    layer: int | None
    rule: int | None  # index into policy.rules; None = default rule / not quantizable
    weights: str | None  # format spec, None = stays BF16
    activations: str | None
    kv_cache: str | None
    params: int
    bytes_before: int
    bytes_after: int
    act_scale: str = "static"
    tied_to: str | None = None  # its weight is another module's (counted there)

    @property
    def quantized(self) -> bool:
        return self.weights is not None or self.activations is not None


@dataclass
class Plan:
    entries: list[PlanEntry]
    policy: str = "policy"
    kv_cache: str | None = None
    num_layers: int | None = None
    kv_cache_by_layer: dict[int, str] = field(default_factory=dict)

    @property
    def total_params(self) -> int:
        return sum(e.params for e in self.entries)

    @property
    def bytes_before(self) -> int:
        return sum(e.bytes_before for e in self.entries)

    @property
    def bytes_after(self) -> int:
        return sum(e.bytes_after for e in self.entries)

    def entry(self, name: str) -> PlanEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)

    def quantized_entries(self) -> list[PlanEntry]:
        return [e for e in self.entries if e.quantized]

    def summary(self) -> dict:
        """Module counts per weight / activation format, and totals."""
        return {
            "policy": self.policy,
            "modules": len(self.entries),
            "weights": dict(Counter(e.weights or "bf16" for e in self.entries if e.kind in QUANTIZABLE)),
            "activations": dict(Counter(e.activations or "bf16" for e in self.entries if e.kind in QUANTIZABLE)),
            "kv_cache": self.kv_cache,
            "total_params": self.total_params,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "ratio": self.bytes_after / self.bytes_before if self.bytes_before else 1.0,
        }

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "kv_cache": self.kv_cache,
            "num_layers": self.num_layers,
            "kv_cache_by_layer": {str(k): v for k, v in self.kv_cache_by_layer.items()},
            "summary": self.summary(),
            "entries": [asdict(e) for e in self.entries],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        return cls(
            entries=[PlanEntry(**e) for e in data["entries"]],
            policy=data.get("policy", "policy"),
            kv_cache=data.get("kv_cache"),
            num_layers=data.get("num_layers"),
            kv_cache_by_layer={int(k): v for k, v in (data.get("kv_cache_by_layer") or {}).items()},
        )


def _fmt(spec: str | None) -> str | None:
    return None if spec in (None, "none") else spec


def _entry(info: ModuleInfo, rule_idx, fmt_rule, kv: str | None, seen: dict[int, str]) -> PlanEntry:
    mod = info.module
    params = before = after = 0
    tied_to = None
    wspec = _fmt(fmt_rule.weights) if fmt_rule is not None else None
    fmt = get_format(wspec) if wspec else None
    for pname, p in mod._parameters.items():
        if p is None:
            continue
        owner = seen.get(id(p))
        if owner is not None:  # tied: counted at its first owner
            tied_to = owner
            if fmt is not None and pname in info.weights:  # a separate quantized copy would exist
                count, n, k = info.weights[pname]
                after += count * fmt.nbytes((n, k))
            continue
        seen[id(p)] = info.name
        numel = math.prod(p.shape)
        params += numel
        before += BASE_BYTES * numel
        if fmt is not None and pname in info.weights:
            count, n, k = info.weights[pname]
            after += count * fmt.nbytes((n, k))
        else:
            after += BASE_BYTES * numel
    return PlanEntry(
        name=info.name,
        kind=info.kind,
        layer=info.layer,
        rule=rule_idx,
        weights=wspec,
        activations=_fmt(fmt_rule.activations) if fmt_rule is not None else None,
        kv_cache=kv,
        params=params,
        bytes_before=before,
        bytes_after=after,
        act_scale=fmt_rule.act_scale if fmt_rule is not None else "static",
        tied_to=tied_to,
    )


def plan(model: nn.Module, policy) -> Plan:
    """Resolve ``policy`` on ``model`` without touching any weight data.

    Args:
        model: any ``nn.Module`` (Hugging Face models get kinds and layers
            detected); meta-device models work.
        policy: a :class:`Policy` or anything :func:`load_policy` accepts.

    Raises:
        ValueError: a rule (not ``optional: true``) matches no module; the
            message names the rule and the closest module names.
    """
    policy = load_policy(policy)
    rules = [CompiledRule(r) for r in policy.rules]
    hits = [0] * len(rules)
    infos = describe_modules(model)
    seen: dict[int, str] = {}
    entries: list[PlanEntry] = []
    kv_by_layer: dict[int, str] = {}
    n_layers = None
    for info in infos:
        n_layers = n_layers or info.n_layers
        chosen = None
        if info.kind in QUANTIZABLE:
            for i, cr in enumerate(rules):
                if cr.matches(info.name, info.kind, info.layer, info.n_layers):
                    hits[i] += 1
                    if chosen is None:
                        chosen = i
        if chosen is not None:
            fmt_rule, rule_idx = policy.rules[chosen], chosen
        elif info.kind in QUANTIZABLE and info.kind not in PROTECTED_KINDS:
            fmt_rule, rule_idx = policy.default, None
        else:
            fmt_rule, rule_idx = None, None
        kv = None
        if info.kind == "attention" and info.layer is not None:
            kv = fmt_rule.kv_cache if fmt_rule is not None and fmt_rule.kv_cache is not None else policy.kv_cache
            kv = _fmt(kv)
            if kv is not None:
                kv_by_layer.setdefault(info.layer, kv)
        entries.append(_entry(info, rule_idx, fmt_rule, kv, seen))

    for i, (cr, n) in enumerate(zip(rules, hits)):
        if n == 0 and not cr.rule.optional:
            raise ValueError(_no_match_message(policy, i, cr, infos))
    kv_counts = Counter(kv_by_layer.values())
    return Plan(
        entries=entries,
        policy=policy.name,
        kv_cache=kv_counts.most_common(1)[0][0] if kv_counts else None,
        num_layers=n_layers,
        kv_cache_by_layer=kv_by_layer,
    )


def _no_match_message(policy: Policy, i: int, cr: CompiledRule, infos: list[ModuleInfo]) -> str:
    r = cr.rule
    what = ", ".join(
        f"{k}={v!r}" for k, v in (("name", r.name), ("kind", r.kind), ("layers", r.layers), ("first", r.first), ("last", r.last))
        if v is not None
    )
    hint = ""
    names = [x.name for x in infos if x.kind in QUANTIZABLE]
    if cr.patterns:
        close: list[str] = []
        for pat, _ in cr.patterns:
            close += difflib.get_close_matches(pat.removeprefix("re:"), names, n=3, cutoff=0.4)
        if close:
            hint = f"; closest module names: {', '.join(dict.fromkeys(close))}"
    if not hint:
        kinds = sorted({x.kind for x in infos if x.kind in QUANTIZABLE})
        hint = f"; kinds in this model: {', '.join(kinds)}; e.g. {', '.join(names[:3])}"
    return f"{policy.where()}: rules[{i}] ({what}) matches no module of this model (mark it `optional: true` to allow){hint}"
