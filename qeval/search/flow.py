"""``qeval search`` end to end: sensitivity (or a saved one), budgets, solve, write, judge."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qeval.files import atomic_write_json
from qeval.search.budget import budget_from_bits, fit_budget, fit_report, parse_bytes, parse_target
from qeval.search.choose import search, write_policy
from qeval.search.scoring import SearchInputError, load_sensitivity, sensitivity


@dataclass
class SearchRequest:
    recipe: str | None
    sensitivity: str | None = None  # a sensitivity.json (default: measure, or resume, for the recipe)
    max_bytes: list[str] = field(default_factory=list)
    bits: list[float] = field(default_factory=list)
    fit: list[str] = field(default_factory=list)
    context: int | None = None
    batch: int | None = None
    model: str | None = None  # config the --fit budget is computed for (default: the recipe's model)
    granularity: str = "block"
    formats: list[str] | None = None
    tokens: int | None = None
    out: Path | None = None
    evaluate: bool = False
    policies: list[str] | None = None  # the recipe's policies to evaluate beside (default: all)
    limit_tokens: int | None = None
    tasks: bool = True  # with evaluate: also the recipe's lm-eval tasks
    progress: bool = True


def _budgets(req: SearchRequest, doc: dict) -> list[tuple[str, int, object]]:
    """(name, budget bytes, fit target or None) for every budget asked for."""
    out = []
    for text in req.max_bytes:
        try:
            b = parse_bytes(text)
        except ValueError as err:
            raise SearchInputError(f"--max-bytes: {err}") from None
        out.append((f"search-{b / 2**20:.2f}MiB", b, None))
    for bits in req.bits:
        try:
            out.append((f"search-{bits:g}bit", budget_from_bits(doc, bits), None))
        except ValueError as err:
            raise SearchInputError(str(err)) from None
    for text in req.fit:
        try:
            target = parse_target(text)
            b = fit_budget(_fit_model(req, doc), target, req.context, req.batch)
        except ValueError as err:
            raise SearchInputError(f"--fit: {err}" if not str(err).startswith("--fit") else str(err)) from None
        out.append((f"search-fit-{target.label.replace(':', '-')}", b, target))
    if not out:
        raise SearchInputError("give a budget: --max-bytes SIZE, --bits B or --fit GPU (e.g. 1xH100)")
    return out


def _fit_model(req: SearchRequest, doc: dict):
    return req.model or doc.get("recipe") or req.recipe


def run_search(req: SearchRequest) -> tuple[list[dict], dict | None]:
    """Solve every budget; write ``<name>.yaml`` and ``<name>.json``; optionally judge them.

    Returns:
        one row per budget (``Searched.to_dict()`` plus the policy file, the fit
        check, the measured KLs), and the evaluation run's results (or None).
    """
    if req.sensitivity:
        doc = load_sensitivity(req.sensitivity)
    else:
        if not req.recipe:
            raise SearchInputError("give a recipe, or --sensitivity FILE from `qeval sensitivity`")
        doc = load_sensitivity(sensitivity(req.recipe, req.granularity, req.formats, req.tokens,
                                           progress=req.progress))
    recipe = req.recipe or doc.get("recipe")
    out = Path(req.out) if req.out else Path("results") / doc.get("recipe_name", "search") / "search"
    rows, results = [], None
    for name, budget, target in _budgets(req, doc):
        from qeval.search.knapsack import Infeasible

        try:
            s = search(doc, budget, name, req.formats if req.sensitivity else None)
        except Infeasible as err:
            raise SearchInputError(f"{name}: {err}") from None
        path = write_policy(s.policy, out / f"{name}.yaml")
        row = {**s.to_dict(), "policy_file": str(path)}
        if target is not None:
            row["fit"] = fit_report(_fit_model(req, doc), s.policy, target, req.context, req.batch)
        rows.append(row)
    if req.evaluate:
        from qeval.search.judge import evaluate_on_eval_text, measure_on_calibration

        calib = measure_on_calibration(recipe, [r["policy"] for r in rows], doc["text"].get("tokens"), req.progress)
        for r, m in zip(rows, calib):
            r["measured_calibration"] = {k: m.get(k) for k in ("kl_mean", "kl_stderr", "kl_p99", "top1_agreement")}
        results = evaluate_on_eval_text(recipe, [r["policy"] for r in rows], out, progress=req.progress,
                                        limit_tokens=req.limit_tokens, keep=req.policies,
                                        tasks=req.tasks)
        by_name = {e.get("name"): e for e in results.get("policies") or []}
        for r in rows:
            r["measured_eval"] = ((by_name.get(r["name"]) or {}).get("metrics") or {}).get("kl_mean")
    for r in rows:
        atomic_write_json(out / f"{r['name']}.json", r)
    return rows, results
