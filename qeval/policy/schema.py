"""The policy file: an ordered list of rules, validated with pydantic.

A rule picks modules (by name, kind and decoder-layer index) and says which
format their weights, their input activations and (for attention layers)
their KV cache take. The first rule that matches a module wins; modules no
rule matches get the ``default`` rule. See ``configs/policies/*.yaml`` for the
syntax, documented in every built-in file.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any, Literal

from qeval.files import read_yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qeval.formats import format_specs
from qeval.paths import CONFIGS

CONFIG_DIR = CONFIGS / "policies"

# kinds a rule may name; "linear" is the broad one (attention, mlp, experts and
# plain linears), the others are exact
KINDS = ("linear", "attention", "mlp", "experts", "router", "embedding", "lm_head")
# kinds never quantized unless a rule names them (by kind, or by a name pattern
# that spells the module's own name)
PROTECTED_KINDS = ("embedding", "lm_head", "router")
KV_FORMATS = ("fp8_e4m3", "nvfp4", "none")
# what `kind: linear` covers
LINEAR_KINDS = ("linear", "attention", "mlp", "experts")


def _format_choices() -> str:
    return ", ".join([*format_specs(), "none"])


def _check_format(value: str | None) -> str | None:
    if value is None:
        return None
    key = str(value).strip().lower()
    if key not in (*format_specs(), "none"):
        raise ValueError(f"unknown format {value!r}; valid choices: {_format_choices()}")
    return key


def _as_list(value: Any) -> list | None:
    if value is None:
        return None
    return list(value) if isinstance(value, (list, tuple)) else [value]


class _Formats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: str = "none"
    activations: str = "none"
    kv_cache: str | None = None
    act_scale: Literal["static", "dynamic"] = "static"

    @field_validator("weights", "activations")
    @classmethod
    def _fmt(cls, v: str) -> str:
        return _check_format(v)

    @field_validator("kv_cache")
    @classmethod
    def _kv(cls, v: str | None) -> str | None:
        if v is None:
            return None
        key = str(v).strip().lower()
        if key not in KV_FORMATS:
            raise ValueError(f"unknown kv_cache format {v!r}; valid choices: {', '.join(KV_FORMATS)}")
        return key


class DefaultRule(_Formats):
    """What every quantizable module no rule matched gets (never the protected kinds)."""


class Rule(_Formats):
    """One rule. Matchers (all given ones must hold):

    - ``name``: glob(s) on the fully-qualified module name (``model.layers.*.mlp.*``),
      or ``re:<regex>`` (``re.search``); a list means any of them.
    - ``kind``: one or more of ``KINDS``.
    - ``layers``: decoder-layer indices, ints (negative count from the end) or
      inclusive ranges ``"a..b"``; ``first: N`` / ``last: N`` add the first / last
      N blocks. A module outside the decoder blocks never matches a layer selector.
    """

    name: str | list[str] | None = None
    kind: str | list[str] | None = None
    layers: list[int | str] | None = None
    first: int | None = Field(default=None, ge=0)
    last: int | None = Field(default=None, ge=0)
    optional: bool = False
    weights: str  # required: a rule always says what its weights become

    @field_validator("name", mode="after")
    @classmethod
    def _names(cls, v):
        for pat in _as_list(v) or []:
            if pat.startswith("re:"):
                try:
                    re.compile(pat[3:])
                except re.error as err:
                    raise ValueError(f"bad regex {pat[3:]!r}: {err}") from None
        return v

    @field_validator("kind", mode="after")
    @classmethod
    def _kinds(cls, v):
        for k in _as_list(v) or []:
            if k not in KINDS:
                raise ValueError(f"unknown kind {k!r}; valid choices: {', '.join(KINDS)}")
        return v

    @field_validator("layers", mode="after")
    @classmethod
    def _layers(cls, v):
        for item in v or []:
            if isinstance(item, str) and not re.fullmatch(r"\s*-?\d+\s*\.\.\s*-?\d+\s*", item):
                raise ValueError(f"bad layer range {item!r}; write an int or 'a..b' (inclusive)")
        return v

    @model_validator(mode="after")
    def _has_matcher(self):
        if self.name is None and self.kind is None and self.layers is None and self.first is None and self.last is None:
            raise ValueError("a rule needs at least one of name, kind, layers, first, last (use `default:` for the rest)")
        return self


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "policy"
    description: str = ""
    kv_cache: str | None = None  # applies to every attention layer unless a rule sets its own
    default: DefaultRule = DefaultRule()
    rules: list[Rule] = []
    source: str | None = Field(default=None, exclude=True)  # file it came from, for messages

    @field_validator("kv_cache")
    @classmethod
    def _kv(cls, v):
        return _Formats._kv(v)

    def where(self) -> str:
        return self.source or f"policy {self.name!r}"


class CompiledRule:
    """A rule with its patterns compiled, and the layer set resolved per stack length."""

    def __init__(self, rule: Rule):
        self.rule = rule
        self.kinds = set(_as_list(rule.kind) or [])
        self.patterns: list[tuple[str, re.Pattern]] = []
        for pat in _as_list(rule.name) or []:
            rx = re.compile(pat[3:]) if pat.startswith("re:") else re.compile(fnmatch.translate(pat))
            self.patterns.append((pat, rx))
        self.has_layers = rule.layers is not None or rule.first is not None or rule.last is not None
        self._layer_cache: dict[int, frozenset[int]] = {}

    def layer_set(self, n: int) -> frozenset[int]:
        cached = self._layer_cache.get(n)
        if cached is None:
            out: set[int] = set()
            for item in self.rule.layers or []:
                if isinstance(item, int):
                    out.add(item % n if -n <= item < n else item)
                else:
                    a, b = (int(s) for s in item.split(".."))
                    a, b = (a % n if a < 0 else a), (b % n if b < 0 else b)
                    out.update(range(a, b + 1))
            out.update(range(min(self.rule.first or 0, n)))
            out.update(range(max(n - (self.rule.last or 0), 0), n))
            cached = self._layer_cache[n] = frozenset(out)
        return cached

    def matches(self, name: str, kind: str, layer: int | None, n_layers: int | None) -> bool:
        protected = kind in PROTECTED_KINDS
        if self.kinds:
            if kind not in self.kinds and not ("linear" in self.kinds and kind in LINEAR_KINDS):
                return False
        elif protected and not self.patterns:
            return False
        if self.patterns:
            hit = [pat for pat, rx in self.patterns if (rx.search(name) if pat.startswith("re:") else rx.match(name))]
            if not hit:
                return False
            # a catch-all pattern does not "name" an embedding / lm_head / router
            if protected and kind not in self.kinds:
                leaf = name.rsplit(".", 1)[-1]
                if not any(leaf in pat for pat in hit):
                    return False
        if self.has_layers:
            if layer is None or not n_layers or layer not in self.layer_set(n_layers):
                return False
        return True


# --- loading -------------------------------------------------------------------
def _fail(where: str, err: ValidationError) -> ValueError:
    errors = err.errors()
    # a misspelt field also makes the real one "missing": report the misspelling
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = ""
    for part in first["loc"]:
        if isinstance(part, int):
            loc += f"[{part}]"
        elif part not in ("function-after[_has_matcher()]",) and not str(part).startswith(("function-", "list[", "str", "int")):
            loc += f".{part}" if loc else str(part)
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "literal_error":
        msg = f"{msg} (got {first.get('input')!r})"
    if first["type"] == "missing":
        msg = "field required"
    if first["type"] == "extra_forbidden":
        fields = Rule.model_fields if any(isinstance(p, int) for p in first["loc"]) else Policy.model_fields
        fields = [f for f in fields if f != "source"]
        msg = f"unknown field; valid fields: {', '.join(fields)}"
    return ValueError(f"{where}: {loc or 'policy'}: {msg}")


def builtin_policies() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_policy(source: str | Path | dict | Policy) -> Policy:
    """Load and validate a policy.

    Args:
        source: a built-in name (``"nvfp4"`` -> ``configs/policies/nvfp4.yaml``),
            a path to a YAML file, a dict with the same content, or a Policy.

    Raises:
        ValueError: one line naming the file, the rule index, the field and the
            valid choices; FileNotFoundError for an unknown name or path.
    """
    if isinstance(source, Policy):
        return source
    if isinstance(source, dict):
        data, where = dict(source), f"policy {source.get('name', '<dict>')!r}"
    else:
        path = Path(source)
        if not path.suffix and not path.exists():
            path = CONFIG_DIR / f"{source}.yaml"
            if not path.exists():
                raise FileNotFoundError(
                    f"no policy {str(source)!r}: not a file, and no configs/policies/{source}.yaml; "
                    f"built-in policies: {', '.join(builtin_policies())}"
                )
        elif not path.exists():
            raise FileNotFoundError(f"policy file {path} does not exist")
        where = str(path)
        data = read_yaml(path, "policy file") or {}
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping with `rules:`, got {type(data).__name__}")
        data.setdefault("name", path.stem)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as err:
        raise _fail(where, err) from None
    policy.source = where
    return policy
