"""Fuzzing the command line's contract (issue 16): mutated recipes, policies, gate files and
results.json files go to ``qeval run --dry-run``, ``qeval gate`` and ``qeval compare``; every
case must end with exit code 0, 1 or 2, never a traceback, and an exit 2 says one error line.

A seeded mutator (reproducible: the failing case's seed is in the assertion message) changes
types, ranges, keys (missing, extra, misspelt), nesting depth, number sizes, NaN/Inf, names
with ``../``, and the bytes of the file itself (truncated, non-UTF-8, YAML alias bombs, deep
nesting). ``main()`` runs in this process, so thousands of cases fit in CI time.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import random

import pytest
import yaml

from qeval.cli import main
from test_run import _text, build_tiny_model, recipe_dict

N = {"recipe": 500, "policy": 500, "gate": 800, "results": 800}

ATOMS = [
    None, True, False, 0, -1, 1, 7, 2**63, 10**30, -(10**30), 1.5, -0.0, 1e308, 5e-324, math.nan, math.inf, -math.inf,
    "", "x", "1e9", "../../etc/passwd", "a" * 300, "nvfp4", "fp8", "bf16", "all", "auto", "cuda:9", "native",
    "emulate", "linear", "re:[", "*", [], {}, [1, "a"], {"a": 1}, {"default": 95}, ["nvfp4"], "\u00e9\u4e2d\U0001f600",
]
# a field that names a model must never become a hub ID (no network in tests)
MODEL_IDS = ["/nonexistent/model", "", "./nope.gguf", "../x.bin", None, 3, {"a": 1}]


def _deep(n: int):
    out: list = []
    for _ in range(n):
        out = [out]
    return out


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


def _atom(rng: random.Random, path: tuple):
    if path[-2:] == ("model", "id") or path[-1:] == ("package",):
        return rng.choice(MODEL_IDS)
    r = rng.random()
    if r < 0.05:
        return _deep(rng.choice([30, 200]))
    if r < 0.10:
        return rng.uniform(-1e6, 1e6)
    return copy.deepcopy(rng.choice(ATOMS))


def mutate(rng: random.Random, doc, rounds: int = 3):
    """``doc`` with 1..rounds random edits (replace, delete, add, rename, wrap)."""
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, rounds)):
        paths = list(_paths(doc))
        path = rng.choice(paths)
        if not path:
            if rng.random() < 0.1:
                return _atom(rng, ("top",))
            continue
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        key = path[-1]
        op = rng.random()
        if op < 0.55:
            parent[key] = _atom(rng, path)
        elif op < 0.7:
            del parent[key]
        elif op < 0.8 and isinstance(parent, dict):
            parent[key + "x" if isinstance(key, str) else "extra"] = parent.pop(key)  # misspelt key
        elif op < 0.9:
            parent[key] = [parent[key]] if rng.random() < 0.5 else {"v": parent[key]}
        elif isinstance(parent, dict):
            parent[rng.choice(["extra", "name", "policies", "window", "weights", "layers"])] = _atom(rng, path)
        else:
            parent.append(_atom(rng, path))
    return doc


BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "\n".join(
    f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)) + "\n"


def damage(rng: random.Random, raw: bytes, yaml_file: bool) -> bytes:
    """The file's bytes broken: truncated, non-UTF-8, an alias bomb, deep nesting, empty, garbage."""
    r = rng.random()
    if r < 0.25:
        return raw[: rng.randrange(len(raw) + 1)]
    if r < 0.4:
        i = rng.randrange(len(raw) + 1)
        return raw[:i] + b"\xff\xfe\x80" + raw[i:]
    if r < 0.55 and yaml_file:
        return BOMB.encode() + raw
    if r < 0.7:
        return b"[" * 5000 + b"]" * 5000 if yaml_file else b'{"policies": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    if r < 0.8:
        return b""
    return bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))


def _call(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, out.getvalue(), err.getvalue()


def _check(case: str, args: list[str]) -> int:
    rc, out, err = _call(args)
    assert rc in (0, 1, 2), f"{case}: exit {rc}\n{err[-2000:]}"
    assert "Traceback" not in err + out, f"{case}: traceback\n{err[-3000:]}"
    if rc == 2:
        command = f"qeval {args[0]}"
        lines = [ln for ln in err.splitlines() if ln.startswith(f"{command}: error") or ln.startswith("error:")]
        assert len(lines) == 1, f"{case}: exit 2 must say one error line, got:\n{err[-2000:]}"
    return rc


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    build_tiny_model(root / "model")
    (root / "eval.txt").write_text(_text(1, 300), encoding="utf-8")
    (root / "calib.txt").write_text(_text(2, 300), encoding="utf-8")
    return root


def _results() -> dict:
    task = {"acc": 0.8, "stderr": 0.02, "baseline_acc": 0.85, "baseline_stderr": 0.02, "recovery": 94.1, "n": 60}
    return {
        "schema_version": 1,
        "recipe": {"name": "fz", "path": "fz.yaml", "sha256": "0" * 64, "config": {"model": {"id": "m"}}},
        "run_id": "r1",
        "environment": {"device": "cpu", "seed": 0},
        "baseline": {"metrics": {"perplexity": 20.0, "perplexity_tokens": 100, "nonfinite_logits": 0,
                                 "tasks": {"t": {"acc": 0.85, "stderr": 0.02, "n": 60}}}, "weight_bytes": 1000},
        "policies": [
            {"name": "p", "metrics": {"perplexity": 21.0, "kl_mean": 0.05, "kl_p99": 0.4, "top1_agreement": 0.93,
                                      "tokens": 100, "nonfinite_logits": 0, "tasks": {"t": task}},
             "weight_bytes": 500, "savings_vs_bf16": 0.5, "plan_summary": {"weights": {"nvfp4": 3}},
             "policy": {"name": "p", "rules": [{"kind": "linear", "weights": "nvfp4"}]},
             "gate": {"passed": True, "checks": []}},
        ],
        "gate": {"config": {"max_kl_mean": 0.1}, "passed": True},
    }


GATE = {"max_perplexity_increase_pct": 10, "max_kl_mean": 0.1, "min_top1_agreement": 0.9,
        "min_task_recovery": {"default": 95, "t": 90}, "confidence": 0.95, "policies": "all"}
POLICY = {"name": "fz", "description": "fuzzed",
          "rules": [{"kind": "linear", "layers": [0], "weights": "nvfp4", "activations": "nvfp4", "act_scale": "dynamic"},
                    {"name": "*.mlp.*", "weights": "fp8_e4m3:channel", "activations": "fp8_e4m3:token"}],
          "default": {"weights": "none"}}


def _recipe(ws) -> dict:
    data = recipe_dict(ws)
    data["eval_data"]["max_tokens"] = 128
    data["metrics"] = {"perplexity": {"window": 64, "stride": 48}, "chunk": 16}
    data["hardware"] = {"context": 256, "batch": 1}
    return data


def _write(path, doc, rng, yaml_file: bool) -> None:
    try:
        raw = (yaml.safe_dump(doc, allow_unicode=True) if yaml_file else json.dumps(doc)).encode()
    except (RecursionError, ValueError):  # a mutation the serializer refuses: keep the file's old form
        raw = b"{}"
    if rng.random() < 0.2:
        raw = damage(rng, raw, yaml_file)
    path.write_bytes(raw)


@pytest.mark.parametrize("family", sorted(N))
def test_fuzzed_inputs_keep_the_exit_code_contract(ws, tmp_path, family):
    rng = random.Random(f"qeval-fuzz-{family}")
    results, gate = tmp_path / "results.json", tmp_path / "gate.yaml"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_results()))
    recipe = tmp_path / "recipe.yaml"
    seen = set()
    for i in range(N[family]):
        case = f"{family} case {i}"
        if family == "recipe":
            _write(recipe, mutate(rng, _recipe(ws)), rng, True)
            seen.add(_check(case, ["run", str(recipe), "--dry-run", "--results-dir", str(tmp_path / "out")]))
        elif family == "policy":
            data = _recipe(ws)
            data["policies"] = ["fp8-dynamic", mutate(rng, POLICY)]
            _write(recipe, data, rng, True)
            seen.add(_check(case, ["run", str(recipe), "--dry-run", "--results-dir", str(tmp_path / "out")]))
        elif family == "gate":
            results.write_text(json.dumps(_results()))
            _write(gate, mutate(rng, GATE), rng, True)
            seen.add(_check(case, ["gate", str(results), "--gate", str(gate)]))
        else:
            _write(results, mutate(rng, _results()), rng, False)
            seen.add(_check(case, ["gate", str(results)]))
            seen.add(_check(case, ["compare", str(results), str(other), "--markdown"]))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.json"))  # dry runs write nothing
    assert 2 in seen and (0 in seen or 1 in seen), seen  # the mutator reaches both valid and invalid inputs
