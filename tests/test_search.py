"""qeval sensitivity / qeval search: the solver, the measured sensitivities, the written policy, --fit."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest
import torch
import yaml

from qeval.cli import main as cli_main
from qeval.policy import load_policy, plan
from qeval.search import (
    Infeasible, budget_from_bits, choices_for, find_groups, fit_budget, fit_report, load_sensitivity,
    one_group_policy, parse_bytes, parse_target, search, sensitivity, solve, write_policy,
)
from qeval.search.groups import group_bytes
from qeval.search.knapsack import total

WORDS = (
    "the a quantized model keeps most of its quality when scales are chosen well but four bit weights "
    "lose more than eight bit ones and activations matter too so we measure divergence on text river city"
).split()


# --- the solver -------------------------------------------------------------
def _brute(costs, values, budget):
    best = None
    for pick in itertools.product(*[range(len(c)) for c in costs]):
        b, v = total(costs, values, pick)
        if b <= budget and (best is None or v < best - 1e-15):
            best = v
    return best


@pytest.mark.parametrize("seed", range(40))
def test_knapsack_matches_brute_force(seed):
    rng = random.Random(seed)
    groups = rng.randint(1, 6)
    costs, values = [], []
    for _ in range(groups):
        k = rng.randint(1, 4)
        scale = rng.choice([1, 1000, 10**6])  # bytes of real layers are large numbers
        costs.append([rng.randint(0, 50) * scale + rng.randint(0, 9) for _ in range(k)])
        # damages spanning orders of magnitude, ties and zeros included
        values.append([rng.choice([0.0, 1e-5 * rng.random(), rng.random(), 0.5]) for _ in range(k)])
    lo = sum(min(c) for c in costs)
    hi = sum(max(c) for c in costs)
    budget = rng.randint(lo, hi) if rng.random() < 0.9 else lo
    pick = solve(costs, values, budget)
    used, got = total(costs, values, pick)
    assert used <= budget
    assert got == pytest.approx(_brute(costs, values, budget), rel=1e-9, abs=1e-12)


def test_knapsack_refuses_an_impossible_budget():
    with pytest.raises(Infeasible, match="over the budget"):
        solve([[10, 20], [5]], [[1.0, 0.0], [0.0]], 14)
    assert solve([[10, 20], [5]], [[1.0, 0.0], [0.0]], 15) == [0, 0]
    assert solve([[10, 20], [5]], [[1.0, 0.0], [0.0]], 25) == [1, 0]


def test_parse_sizes_and_targets():
    assert parse_bytes("120MiB") == 120 * 2**20 and parse_bytes("1.5GB") == 1_500_000_000 and parse_bytes("77") == 77
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("12 parsecs")
    assert parse_target("1xH100").label == "1xh100" and parse_target("h100:3g.40gb").mig == "3g.40gb"
    assert parse_target("8 x b200").count == 8


# --- a tiny model on disk, its recipe ------------------------------------------
def _text(seed: int, n_words: int) -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) + " ." for _ in range(n_words // 12)) + "\n"


def _tiny_model(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", "<pad>", "."] + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, eos_token_id=1, pad_token_id=2, bos_token_id=1)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # sharp distributions: KLs well above float noise
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder


def _recipe(root: Path, name: str = "tiny.yaml", **over) -> Path:
    data = {
        "name": "tiny", "seed": 0,
        "model": {"id": str(root / "model"), "dtype": "float32", "device": "cpu"},
        "eval_data": {"source": "file", "path": str(root / "eval.txt"), "max_tokens": 200},
        "calibration": {"source": "file", "path": str(root / "calib.txt"), "n_batches": 2, "seq_len": 32},
        "policies": ["fp8-dynamic", "nvfp4-weight-only"],
        "metrics": {"perplexity": {"window": 64, "stride": 64}, "chunk": 16},
    }
    data.update(over)
    path = root / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("qeval-search")
    _tiny_model(root / "model")
    (root / "eval.txt").write_text(_text(1, 600), encoding="utf-8")
    (root / "calib.txt").write_text(_text(2, 600), encoding="utf-8")
    recipe = _recipe(root)
    path = sensitivity(recipe, "block", ["nvfp4", "fp8-dynamic", "nvfp4-weight-only"], out_dir=root / "sens",
                       progress=False)
    return root, recipe, load_sensitivity(path)


def test_sensitivity_file_covers_every_group_and_format(tiny):
    _, _, doc = tiny
    assert doc["complete"] and doc["granularity"] == "block" and doc["text"]["tokens"] == 64
    assert [g["id"] for g in doc["groups"]] == [f"{i}.{k}" for i in range(3) for k in ("attention", "mlp")]
    for g in doc["groups"]:
        row = doc["scores"][g["id"]]
        assert set(row) == {"bf16", "nvfp4", "fp8-dynamic", "nvfp4-weight-only"} and row["bf16"]["kl_mean"] == 0
        # 4-bit weights and activations hurt more than FP8 on every group
        assert row["nvfp4"]["kl_mean"] > row["fp8-dynamic"]["kl_mean"] > 0
        assert g["bytes"]["nvfp4"] < g["bytes"]["fp8-dynamic"] < g["bytes"]["bf16"] == 2 * g["params"]
    assert (Path(doc["recipe"]).parent / "sens").is_dir()


@pytest.mark.parametrize("group,fmt", [("0.mlp", "nvfp4-weight-only"), ("2.attention", "nvfp4"),
                                       ("1.mlp", "fp8-dynamic")])
def test_sensitivity_equals_qeval_run_of_the_one_group_policy(tiny, tmp_path, group, fmt):
    """The sensitivity of (group, format) is the KL `qeval run` reports for the one-group policy on that text."""
    from qeval.pipeline.runner import RunOptions, run_recipe
    from qeval.search.choose import parts

    root, _, doc = tiny
    groups, choices = parts(doc)
    g = next(x for x in groups if x.id == group)
    c = next(x for x in choices if x.name == fmt)
    policy = one_group_policy(g, c)
    # the calibration text as eval text, the same windows: exactly what sensitivity scored
    recipe = _recipe(root, "one.yaml", policies=[policy],
                     eval_data={"source": "file", "path": str(root / "calib.txt"), "max_tokens": 64},
                     metrics={"perplexity": {"window": 32, "stride": 32}, "chunk": 16})
    res = json.loads(run_recipe(recipe, RunOptions(results_dir=tmp_path, progress=False,
                                                   print_table=False)).read_text())
    measured = res["policies"][0]["metrics"]["kl_mean"]
    assert measured > 0
    assert doc["scores"][group][fmt]["kl_mean"] == pytest.approx(measured, rel=1e-6)
    # and its stderr is the run's window-level one: the half-width of the stored interval over t(k-1)
    from scipy.stats import t

    ci = res["policies"][0]["metrics"]["ci"]
    lo, hi = ci["kl_mean"]
    k = ci["windows"]
    assert k >= 2
    se = (hi - lo) / 2 / t.ppf(0.5 + ci["confidence"] / 2, k - 1)
    assert doc["scores"][group][fmt]["kl_stderr"] == pytest.approx(se, rel=1e-6)


def test_searched_policy_loads_and_plans_to_the_chosen_formats(tiny, tmp_path):
    from qeval.models import load_model
    from qeval.search.choose import parts

    root, _, doc = tiny
    groups, choices = parts(doc)
    model, _ = load_model({"id": str(root / "model"), "dtype": "float32"})
    full = plan(model, load_policy("bf16")).bytes_after
    small = plan(model, load_policy("nvfp4-weight-only")).bytes_after
    by_choice = {c.name: c for c in choices}
    for budget in (small, (small + full) // 2, int(small * 1.1), full):
        s = search(doc, budget, name="searched")
        path = write_policy(s.policy, tmp_path / f"s{budget}.yaml")
        p = plan(model, load_policy(path))
        assert p.bytes_after == s.weight_bytes <= budget
        for g in groups:
            c = by_choice[s.picks[g.id]]
            for m in g.modules:
                e = p.entry(m)
                assert (e.weights or "none", e.activations or "none") == (c.weights, c.activations), (m, c)
        # everything outside the groups stays BF16
        assert all(not e.quantized for e in p.entries if not any(e.name in g.modules for g in groups))
        # exact: nothing of smaller predicted KL fits (checked against every assignment)
        best = min(
            (sum(doc["scores"][g.id][c]["kl_mean"] for g, c in zip(groups, combo))
             for combo in itertools.product(*[[c.name for c in choices]] * len(groups))
             if doc["fixed_bytes"] + sum(g.bytes[c] for g, c in zip(groups, combo)) <= budget),
        )
        assert s.predicted_kl == pytest.approx(best, rel=1e-12, abs=1e-15)
    assert search(doc, full, name="x").predicted_kl == 0  # all BF16 fits


def test_bits_budget_counts_the_searched_linears(tiny):
    _, _, doc = tiny
    params = sum(g["params"] for g in doc["groups"])
    assert budget_from_bits(doc, 16) == doc["fixed_bytes"] + 2 * params
    s = search(doc, budget_from_bits(doc, 6.0))
    assert s.bits_per_weight <= 6.0 and s.group_params == params


def test_compact_rules_share_consecutive_layers(tiny, tmp_path):
    from qeval.search.choose import parts, policy_for

    _, _, doc = tiny
    groups, choices = parts(doc)
    picks = {g.id: ("fp8-dynamic" if g.kind == "attention" else "nvfp4-weight-only") for g in groups}
    picks["1.mlp"] = "bf16"
    pol = policy_for(groups, choices, picks, "x")
    assert [(r.get("kind"), r["layers"], r["weights"]) for r in pol["rules"]] == [
        ("attention", ["0..2"], "fp8_e4m3:channel"), ("mlp", [0], "nvfp4"), ("mlp", [2], "nvfp4")]


def test_cli_search_writes_a_policy_and_refuses_bad_budgets(tiny, tmp_path, capsys):
    root, _, doc = tiny
    sens = next((root / "sens").glob("block-*/sensitivity.json"))
    rc = cli_main(["search", "--sensitivity", str(sens), "--bits", "6", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "search-6bit" in out and (tmp_path / "search-6bit.yaml").exists()
    load_policy(tmp_path / "search-6bit.yaml")
    row = json.loads((tmp_path / "search-6bit.json").read_text())
    assert row["bits_per_weight"] <= 6 and row["predicted_kl"] > 0
    rc = cli_main(["search", "--sensitivity", str(sens), "--max-bytes", "3 parsecs", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("qeval search: error: --max-bytes") and "\n" not in err
    rc = cli_main(["search", "--sensitivity", str(sens), "--max-bytes", "1KiB", "--out", str(tmp_path / "no")])
    assert rc == 2 and "over the budget" in capsys.readouterr().err and not (tmp_path / "no").exists()


class Killed(Exception):
    pass


def test_sensitivity_resumes_finished_groups(tiny, tmp_path, monkeypatch):
    """An interrupted pass keeps the groups it finished and measures only the rest."""
    import qeval.search.scoring as sens

    root, recipe, doc = tiny
    calls, armed = [], [True]
    real = sens.measure

    def flaky(bench, policy, skip_layer=None):
        calls.append(policy["name"])
        if armed[0] and len(calls) == 3:
            raise Killed
        return real(bench, policy, skip_layer)

    monkeypatch.setattr(sens, "measure", flaky)
    with pytest.raises(Killed):
        sensitivity(recipe, "block", ["nvfp4-weight-only", "fp8-dynamic"], out_dir=tmp_path, progress=False)
    saved = json.loads(next(tmp_path.glob("block-*/sensitivity.json")).read_text())
    assert not saved["complete"] and list(saved["scores"]) == ["0.attention"]
    calls.clear()
    armed[0] = False
    path = sensitivity(recipe, "block", ["nvfp4-weight-only", "fp8-dynamic"], out_dir=tmp_path, progress=False)
    assert len(calls) == 2 * 5  # the 5 groups left, 2 formats each
    again = load_sensitivity(path)
    for gid, row in again["scores"].items():  # same numbers as the uninterrupted pass
        for f in ("nvfp4-weight-only", "fp8-dynamic"):
            assert row[f]["kl_mean"] == doc["scores"][gid][f]["kl_mean"]


# --- MoE: experts are groups; replay gives the full forward's numbers -----------
@pytest.mark.parametrize("builder", ["tiny_mixtral", "tiny_qwen3_moe", "tiny_llama"])
@pytest.mark.parametrize("granularity", ["block", "linear"])
def test_groups_partition_the_linears_and_one_group_policies_hit_only_their_group(builder, granularity):
    import conftest

    model = getattr(conftest, builder)(layers=3)
    groups, fixed = find_groups(model, granularity)
    choices = choices_for(model, ["nvfp4", "fp8-dynamic"])
    group_bytes(model, groups, choices)
    base = plan(model, load_policy("bf16"))
    linear = [e.name for e in base.entries if e.kind in ("attention", "mlp", "experts", "linear")]
    assert sorted(m for g in groups for m in g.modules) == sorted(linear)  # each linear in one group
    assert fixed + sum(g.bytes["bf16"] for g in groups) == base.bytes_after
    if builder != "tiny_llama":
        assert any(g.kind == "experts" or "experts" in g.id for g in groups)
    for g in groups:
        for c in choices[1:]:
            p = plan(model, load_policy(one_group_policy(g, c)))
            hit = {e.name for e in p.entries if e.quantized}
            assert hit == set(g.modules), (g.id, c.name)
            assert all((e.weights, e.activations) == (c.weights, c.activations) for e in p.entries if e.quantized)
            assert p.bytes_after == base.bytes_after - g.bytes["bf16"] + g.bytes[c.name]


@pytest.mark.parametrize("builder", ["tiny_mixtral", "tiny_llama"])
def test_replayed_blocks_give_the_full_forward_bit_for_bit(builder):
    import conftest

    from qeval.quantize import quantized
    from qeval.search.choose import parts  # noqa: F401  (the package imports cleanly)
    from qeval.search.replay import Replay

    model = getattr(conftest, builder)(layers=3)
    groups, _ = find_groups(model, "block")
    choices = choices_for(model, ["nvfp4"])
    ids = [torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    rp = Replay(model)
    with torch.no_grad(), rp.record():
        for x in ids:
            model(input_ids=x)
    assert len(rp.outputs) == 2
    calls = []
    late = [g for g in groups if g.layer == 2]
    for g in late:
        pol = one_group_policy(g, choices[1])
        with torch.no_grad():
            with quantized(model, pol, calibration=ids):
                full = [model(input_ids=x).logits for x in ids]
            blocks = rp.blocks
            hook = blocks[0].self_attn.register_forward_hook(lambda *a: calls.append(1))
            with rp.skip_before(g.layer), quantized(model, pol, calibration=ids):
                fast = [model(input_ids=x).logits for x in ids]
            hook.remove()
        for a, b in zip(full, fast):
            assert torch.equal(a, b)
    assert calls == []  # block 0 never ran under replay
    assert "forward" not in vars(rp.blocks[0])  # the class's forward is back


# --- --fit on a bundled 8B config (meta device) ---------------------------------
def test_fit_budget_on_llama_8b_fits_the_target_and_not_the_next_cheaper_option():
    from qeval.deploy.load import load_model as load_meta

    loaded = load_meta("llama-3.1-8b")
    groups, fixed = find_groups(loaded.model, "linear")
    choices = choices_for(loaded.model, ["nvfp4-weight-only", "fp8-dynamic"])
    group_bytes(loaded.model, groups, choices)
    rng = random.Random(0)
    scores = {}
    for g in groups:  # synthetic damages: 4-bit > 8-bit > BF16, varying by layer
        s8 = rng.random() * 1e-3
        scores[g.id] = {"bf16": {"kl_mean": 0.0}, "fp8-dynamic": {"kl_mean": s8},
                        "nvfp4-weight-only": {"kl_mean": s8 * (5 + 20 * rng.random())}}
    doc = {"groups": [g.to_dict() for g in groups], "choices": [c.__dict__ for c in choices],
           "fixed_bytes": fixed, "scores": scores, "recipe": "synthetic", "granularity": "linear"}
    target = parse_target("1xH100")
    # batch 8 at 8K: BF16 fits with room to spare (and on a 40 GB MIG slice): the budget does not bind
    loose = fit_budget(loaded, target, 8192, 8)
    assert search(doc, loose).predicted_kl == 0
    # batch 54 at 8K: the KV cache leaves ~10 GiB for weights, between all-NVFP4 and all-BF16
    budget = fit_budget(loaded, target, 8192, 54)
    s = search(doc, budget, name="fit")
    assert 0 < s.predicted_kl and s.weight_bytes <= budget
    assert s.weight_bytes > budget - max(g.bytes["bf16"] for g in groups)  # the budget is used, not wasted
    rep = fit_report(loaded, s.policy, target, 8192, 54)
    assert rep["fits"] and rep["need_bytes"] <= rep["usable_bytes"]
    assert rep["next_cheaper"] is not None and not rep["next_cheaper"]["fits"]
    # and the recommender itself agrees on the target option
    from qeval.deploy.recommend import recommend

    r = recommend(loaded, s.policy, context=8192, batch=54, gpus=["h100"])
    one = next(o for o in r["options"] if o["count"] == 1 and not o["mig_profile"] and o["nodes"] == 1)
    assert one["fits_with_headroom"]
    # one step more bytes than the budget would not fit
    over = fit_report(loaded, search(doc, budget + 2 * 2**30, name="over").policy, target, 8192, 54)
    assert not over["fits"]


def test_evaluate_runs_searched_policies_beside_the_recipes_own(tiny, tmp_path):
    """--evaluate: KL on the calibration text (vs the prediction) and a normal run on the eval text."""
    from qeval.search.flow import SearchRequest, run_search

    root, recipe, doc = tiny
    sens = next((root / "sens").glob("block-*/sensitivity.json"))
    bf16 = doc["fixed_bytes"] + sum(g["bytes"]["bf16"] for g in doc["groups"])
    req = SearchRequest(recipe=str(recipe), sensitivity=str(sens), bits=[6.0], max_bytes=[str(bf16)],
                        out=tmp_path / "out", evaluate=True, policies=["nvfp4-weight-only"], progress=False)
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)  # results/ of the evaluation run land here
    try:
        rows, results = run_search(req)
    finally:
        os.chdir(cwd)
    by = {p["name"]: p for p in results["policies"]}
    assert list(by) == ["nvfp4-weight-only", f"search-{bf16 / 2**20:.2f}MiB", "search-6bit"]
    for r in rows:
        e = by[r["name"]]
        assert e["weight_bytes"] == r["weight_bytes"] and e["metrics"]["kl_mean"] == r["measured_eval"]
        assert r["measured_calibration"]["kl_mean"] >= 0
    full, six = rows
    assert full["predicted_kl"] == 0 and full["measured_calibration"]["kl_mean"] == 0 and full["measured_eval"] == 0
    assert six["predicted_kl"] > 0 and six["measured_calibration"]["kl_mean"] > 0
    # the search's only evidence is the calibration text; the eval text is another text
    assert results["recipe"]["config"]["eval_data"]["path"] != doc["text"]["path"]
    assert json.loads((tmp_path / "out" / "search-6bit.json").read_text())["measured_eval"] == six["measured_eval"]
    assert len(list((tmp_path / "results" / "tiny").iterdir())) == 1  # the run directory; no scratch left


def test_cli_sensitivity_refuses_bad_input_with_one_line(tiny, tmp_path, capsys):
    root, recipe, _ = tiny
    rc = cli_main(["sensitivity", str(recipe), "--formats", "nvfp5", "--out", str(tmp_path / "a"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("qeval sensitivity: error: --formats") and "nvfp5" in err and "\n" not in err
    rc = cli_main(["sensitivity", str(recipe), "--formats", "mixed-fp4-fp8", "--out", str(tmp_path / "b"),
                   "--no-progress"])
    assert rc == 2 and "not a uniform policy" in capsys.readouterr().err
    no_calib = _recipe(root, "nocal.yaml", calibration=None)
    rc = cli_main(["sensitivity", str(no_calib), "--out", str(tmp_path / "c"), "--no-progress"])
    assert rc == 2 and "calibration" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abc")  # nothing half-written
