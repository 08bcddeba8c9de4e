"""What a run concludes, in sentences: the verdict, the GPU each policy needs, what each
policy does, why a policy failed, and how small a drop each task could detect.

Everything here reads a results dict (``results.json``); nothing is measured again.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

from qeval.console import as_number as _num

# gate check name -> short label (table cells, failure reasons)
SHORT = {
    "max_perplexity_increase_pct": "ppl +%", "max_kl_mean": "KL mean", "max_kl_p99": "KL p99",
    "min_top1_agreement": "top-1", "min_embedding_cosine": "cosine",
}


def mib(n: Any) -> str:
    v = _num(n)
    if v is None:
        return "-"
    return f"{v / 2**30:.2f} GiB" if v >= 2**30 else f"{v / 2**20:.2f} MiB" if v >= 2**20 else f"{v / 2**10:.1f} KiB"


def short_check(name: str) -> str:
    if name.startswith("min_task_recovery["):
        return name[len("min_task_recovery["):-1]
    return SHORT.get(name, name)


def relation(what: str, value: float, op: str, threshold: float) -> str:
    """The relation that holds, in words: ``kl_mean 0.1026 > 0.1 allowed``, ``top1 0.9 >= 0.85 required``
    (never "fails: kl_mean 0.1026 <= 0.1 required", which reads like a true statement)."""
    holds = value <= threshold if op == "<=" else value >= threshold
    shown = op if holds else (">" if op == "<=" else "<")
    return f"{what} {value:.6g} {shown} {threshold:g} {'allowed' if op == '<=' else 'required'}"


def failed_checks(entry: dict) -> list[dict]:
    verdict = entry.get("gate")
    if not isinstance(verdict, dict):
        return []
    return [c for c in verdict.get("checks", []) if not c.get("passed") and not c.get("skipped")]


def kv_format(entry: dict) -> str:
    """The KV-cache format a policy stores (``bf16`` unless a rule quantizes it)."""
    rec = entry.get("recommendation") or {}
    return str((entry.get("plan_summary") or {}).get("kv_cache") or rec.get("kv_cache") or "bf16")


def kv_cache_bytes(entry: dict) -> float | None:
    """KV-cache bytes at the recipe's hardware context x batch (from the stored recommendation)."""
    rec = entry.get("recommendation") or {}
    per_token = _num(rec.get("kv_bytes_per_token"))
    context, batch = _num(rec.get("context")), _num(rec.get("batch"))
    if per_token is None or context is None or batch is None:
        return None
    return per_token * context * batch


def gpu_label(option: dict | None) -> str | None:
    """``1x H100 SXM 80GB MIG 1g.10gb`` / ``8x H200 SXM 141GB`` / ``2 nodes x 8x H100 ...``."""
    if not isinstance(option, dict):
        return None
    name = option.get("gpu_name") or option.get("gpu") or "?"
    mig = f" MIG {option['mig_profile']}" if option.get("mig_profile") else ""
    nodes = int(option.get("nodes") or 1)
    per_node = int(option.get("count") or 1) // max(nodes, 1) if nodes > 1 else int(option.get("count") or 1)
    text = f"{per_node}x {name}{mig}"
    return f"{nodes} nodes x {text}" if nodes > 1 else text


def _passing(results: dict) -> list[dict]:
    return [p for p in results.get("policies") or [] if isinstance(p.get("gate"), dict) and p["gate"].get("passed")]


def _smallest(entries: list[dict]) -> dict | None:
    """Fewest weight + KV-cache bytes; ties go to the lower mean KL."""
    def key(p):
        total = (_num(p.get("weight_bytes")) or math.inf) + (kv_cache_bytes(p) or 0.0)
        kl = _num((p.get("metrics") or {}).get("kl_mean"))
        return (total, kl if kl is not None else math.inf)

    return min(entries, key=key) if entries else None


def _saving(entry: dict, baseline_bytes: float | None) -> str:
    saved = _num(entry.get("savings_vs_bf16"))
    out = f"{saved * 100:.1f}% of weight memory saved" if saved is not None else "weight saving unknown"
    if baseline_bytes:
        out += f" ({mib(entry.get('weight_bytes'))} of {mib(baseline_bytes)})"
    return out


def _fit(entry: dict) -> str:
    rec = entry.get("recommendation") or {}
    label = gpu_label(rec.get("recommended"))
    if not label:
        return "no GPU recommendation stored"
    return f"fits {label} at {rec.get('context')} context x batch {rec.get('batch')}"


def verdict(results: dict) -> str:
    """One line that says what the run concludes."""
    policies = [p for p in results.get("policies") or [] if p.get("name")]
    base_bytes = _num((results.get("baseline") or {}).get("weight_bytes"))
    if not policies:
        return "No policy was evaluated."
    gated = [p for p in policies if isinstance(p.get("gate"), dict)]
    if not gated:
        best = _smallest(policies)
        return (f"No gate set: smallest policy {best['name']}, {_saving(best, base_bytes)}, {_fit(best)}; "
                "set `gate:` in the recipe for a pass/fail verdict.")
    passing = _passing(results)
    n_fail = len(gated) - len(passing)
    tail = f"; {n_fail} of {len(gated)} policies fail the gate" if n_fail else f"; all {len(gated)} policies pass"
    if passing:
        best = _smallest(passing)
        return f"Smallest policy that passes: {best['name']}, {_saving(best, base_bytes)}, {_fit(best)}{tail}."
    closest = min(gated, key=lambda p: (len(failed_checks(p)), _num(p.get("weight_bytes")) or math.inf))
    reasons = "; ".join(_reason(c) for c in failed_checks(closest))
    return f"No policy passes the gate. Closest: {closest['name']} ({reasons})."


def _reason(check: dict) -> str:
    """``kl_mean 0.1026 > 0.1 allowed``: the failed relation, stated so that it is true."""
    name, value, threshold = check.get("name", "?"), _num(check.get("value")), _num(check.get("threshold"))
    if name.startswith("min_task_recovery["):
        rec = f"{value:.1f}%" if value is not None else "n/a"
        sig = "significantly" if not check.get("within_noise") else "within noise"
        return f"{short_check(name)} recovery {rec} < {threshold:g}% required ({sig})"
    if value is None or threshold is None:
        return f"{short_check(name)}: {check.get('detail', 'not measured')}"
    return relation(short_check(name), value, check.get("op") or "<=", threshold)


def failure_reasons(entry: dict) -> list[str]:
    return [_reason(c) for c in failed_checks(entry)]


def recommendation_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """One row per policy: the recommended GPU, the memory it needs and leaves, speed and price."""
    headers = ["policy", "recommended GPU", "weights", "KV cache", "free", "decode tok/s", "$/h", "native"]
    rows = []
    for p in results.get("policies") or []:
        rec = p.get("recommendation") or {}
        opt = rec.get("recommended")
        if not isinstance(opt, dict):
            note = p.get("recommendation_note") or "none fits" if rec else "not computed"
            rows.append([str(p.get("name")), note, "-", "-", "-", "-", "-", "-"])
            continue
        price = _num(opt.get("usd_per_hour"))
        rows.append([
            str(p.get("name")), gpu_label(opt) or "-", mib(opt.get("weights_bytes")), mib(opt.get("kv_cache_bytes")),
            mib(opt.get("headroom_bytes")), f"{_num(opt.get('decode_tokens_per_s')) or 0:,.0f}",
            "-" if price is None else f"{price:.2f}", "yes" if opt.get("native") else "no (see below)",
        ])
    return headers, rows


def rule_lines(entry: dict) -> list[str]:
    """A policy's rules in words, first match wins, and how many modules got each format."""
    policy = entry.get("policy") or {}
    out = []
    for i, rule in enumerate(policy.get("rules") or []):
        out.append(f"rule {i}: {_selector(rule)} -> {_formats(rule)}")
    default = policy.get("default") or {}
    out.append(f"everything else: {_formats(default)}")
    summary = entry.get("plan_summary") or {}
    for what in ("weights", "activations"):
        counts = summary.get(what) or {}
        if counts:
            out.append(f"{what}: " + ", ".join(f"{n} modules {fmt}" for fmt, n in sorted(counts.items(), key=lambda kv: -kv[1])))
    return out


def _selector(rule: dict) -> str:
    parts = []
    if rule.get("kind"):
        kinds = rule["kind"] if isinstance(rule["kind"], list) else [rule["kind"]]
        parts.append("kind " + " | ".join(map(str, kinds)))
    if rule.get("name"):
        names = rule["name"] if isinstance(rule["name"], list) else [rule["name"]]
        parts.append("name " + " | ".join(map(str, names)))
    if rule.get("layers") is not None:
        parts.append(f"layers {rule['layers']}")
    if rule.get("first"):
        parts.append(f"first {rule['first']} blocks")
    if rule.get("last"):
        parts.append(f"last {rule['last']} blocks")
    return ", ".join(parts) or "every module"


def _formats(rule: dict) -> str:
    w = rule.get("weights") or "none"
    a = rule.get("activations") or "none"
    text = "unchanged (bf16)" if w == "none" and a == "none" else (
        f"weights {w.replace('none', 'bf16')}, activations {a.replace('none', 'bf16')}")
    if a != "none" and rule.get("act_scale"):
        text += f" ({rule['act_scale']} scales)"
    if rule.get("kv_cache"):
        text += f", KV cache {rule['kv_cache']}"
    return text


def task_sensitivity(results: dict) -> list[str]:
    """Per task: the smallest accuracy drop its sample size can tell from noise."""
    base_tasks = ((results.get("baseline") or {}).get("metrics") or {}).get("tasks") or {}
    confidence = _num(((results.get("gate") or {}).get("config") or {}).get("confidence")) or 0.95
    z = NormalDist().inv_cdf(confidence)
    out = []
    for task, t in base_tasks.items():
        se, n = _num((t or {}).get("stderr")), (t or {}).get("n")
        if se is None:
            continue
        detectable = z * math.sqrt(2) * se  # both runs have about this stderr
        metric = (t or {}).get("metric") or "acc"
        out.append(
            f"{task}: n={n} examples, stderr {se:.3f}: {metric} drops smaller than about {detectable * 100:.1f} points "
            f"(z({confidence:g}) x sqrt(2) x stderr, about {z * math.sqrt(2):.1f} stderr) cannot be told from noise; "
            "raise `limit` for a sharper test."
        )
    return out
