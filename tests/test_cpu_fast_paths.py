"""The CPU emulation's cheaper forms of the same numbers: in-place rounding, the max-pool block amax,
the epilogue that works in its accumulator, and one activation quantization shared by the projections
that read the same input. Each must give the bits of the plain definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import input_ids, tiny_llama
from qeval.formats.base import block_max
from qeval.formats import elements
from qeval.formats.elements import round_e2m1, round_fp8
from qeval.quantize import gemm, quantized, weight
from refs import bits, e2m1, e4m3, e5m2

NAN, INF = float("nan"), float("inf")


def _values(scale: float, ties: list[float]) -> torch.Tensor:
    """Dense grid, ties and their float32 neighbours, fresh randoms over many magnitudes, subnormals, zeros."""
    g = torch.Generator().manual_seed(torch.randint(1 << 30, ()).item())
    t = torch.tensor(ties)
    t = torch.cat([t, -t])
    rand = torch.randn(60_001, generator=g) * 10.0 ** torch.randint(-42, 5, (60_001,), generator=g).float()
    return torch.cat([torch.linspace(-1.4 * scale, 1.4 * scale, 30_001), t, torch.nextafter(t, torch.tensor(1e30)),
                      torch.nextafter(t, torch.tensor(-1e30)), rand,
                      torch.tensor([0.0, -0.0, 1e-45, -1e-45, 2.0**-126, 3e38, -3e38, NAN])])


@pytest.mark.parametrize("kind", ["e2m1", "e4m3", "e5m2"])
def test_rounding_in_place_gives_the_bits_of_the_reference(kind):
    """``inplace=True`` (and a scratch tensor for the quanta) overwrites its input with the out-of-place bits,
    which are those of the float64 reference; with NaN kept."""
    if kind == "e2m1":
        v, ref = _values(6.0, [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 7.0]), e2m1
        fn = lambda a, **kw: round_e2m1(a, **kw)  # noqa: E731
    else:
        dt = torch.float8_e4m3fn if kind == "e4m3" else torch.float8_e5m2
        fmax = 448.0 if kind == "e4m3" else 57344.0
        v, ref = _values(fmax, [2.0**-10, 2.0**-9 * 3, 0.5625, 1.0625, fmax, fmax * 1.03]), (e4m3 if kind == "e4m3" else e5m2)
        fn = lambda a, **kw: round_fp8(a, dt, finite=True, **kw)  # noqa: E731
    want = fn(v)
    nan = v.isnan()
    assert torch.equal(want.isnan(), nan)
    assert torch.equal(bits(want[~nan]), bits(ref(v[~nan].double())))
    for kw in ({}, {"scratch": torch.empty_like(v)} if kind == "e2m1" else {}):
        a = v.clone()
        got = fn(a, inplace=True, **kw)
        assert got.data_ptr() == a.data_ptr()  # in the input's own memory
        assert torch.equal(got.isnan(), nan) and torch.equal(bits(got[~nan]), bits(want[~nan]))


def test_round_fp8_with_inf_never_works_in_place():
    """Inf needs the input after rounding (NaN in E4M3, kept in E5M2): ``inplace`` is ignored without ``finite``."""
    v = torch.tensor([INF, -INF, 500.0, -0.0, NAN])
    a = v.clone()
    got = round_fp8(a, torch.float8_e5m2, inplace=True)
    assert torch.equal(bits(a.nan_to_num(0.0)), bits(v.nan_to_num(0.0)))
    assert got[:4].tolist() == [INF, -INF, 512.0, -0.0] and got[4].isnan()
    assert round_fp8(v.clone(), torch.float8_e4m3fn, inplace=True)[:2].isnan().all()


@pytest.mark.parametrize("shape", [(3, 5, 16), (1, 16), (7, 2, 9, 32), (16,), (2, 0, 16)])
def test_block_max_is_the_nan_propagating_max_of_each_block(shape):
    g = torch.Generator().manual_seed(torch.randint(1 << 30, ()).item())
    a = torch.randn(shape, generator=g) * 10.0 ** torch.randint(-40, 30, shape, generator=g).float()
    flat = a.reshape(-1, shape[-1])
    for i in range(min(flat.shape[0], shape[-1])):  # a NaN at every position of some block, Inf in others
        flat[i, i] = NAN if i % 2 == 0 else (INF if i % 4 == 1 else -INF)
    if flat.shape[0]:
        flat[-1] = -0.0
    want = np.max(a.double().numpy(), axis=-1) if a.numel() else np.zeros(shape[:-1])  # numpy: NaN propagates
    got = block_max(a)
    assert got.shape == a.shape[:-1]
    assert np.array_equal(got.double().numpy(), want, equal_nan=True)
    # a non-contiguous input (a view) gives the same
    wide = torch.cat([a, a], dim=-1)[..., : shape[-1]]
    assert np.array_equal(block_max(wide).double().numpy(), want, equal_nan=True)


def test_epilogue_in_place_gives_the_same_bits_and_only_then_overwrites_acc():
    g = torch.Generator().manual_seed(torch.randint(1 << 30, ()).item())
    m, n = 37, 300
    acc = torch.randn(m, n, generator=g) * 100
    acc[0, :5] = torch.tensor([NAN, INF, -0.0, 1e-40, 3e38])
    one, rows, cols = (torch.rand(s, generator=g) + 0.1 for s in ((), (m, 1), (n, 1)))
    bias = torch.randn(n, generator=g)
    for sx, sw, bb in [(None, None, None), (one, one * 7e-3, bias), (rows, cols, None), (one, cols, bias.bfloat16()),
                       (rows, None, bias), (None, one, None)]:
        for dt in (torch.float32, torch.bfloat16, torch.float16):
            keep = acc.clone()
            want = gemm.epilogue_torch(acc, sx, sw, bb, dt)
            assert torch.equal(bits(acc.nan_to_num(0.0)), bits(keep.nan_to_num(0.0)))  # untouched by default
            own = acc.clone()
            got = gemm.epilogue_torch(own, sx, sw, bb, dt, inplace=True)
            nan = want.isnan()
            assert torch.equal(got.isnan(), nan) and torch.equal(bits(got[~nan]), bits(want[~nan]))
            if sx is not None or sw is not None or bb is not None:
                assert not torch.equal(own.nan_to_num(0.0), keep.nan_to_num(0.0))  # it did work in acc


def test_activation_quantization_is_reused_only_for_the_same_input():
    """One tensor, one format, one amax value: computed once. A changed tensor (in place: its version moves),
    another amax, another tensor with the same values, or an inference tensor: computed again, and right."""
    g = torch.Generator().manual_seed(torch.randint(1 << 30, ()).item())
    x = torch.randn(33, 64, generator=g)
    amax = torch.tensor(float(x.abs().max()))
    weight._LAST_ACT[0] = None
    first = weight._cpu_act_operand("nvfp4", x, amax)
    assert weight._cpu_act_operand("nvfp4", x, amax) is first
    assert weight._cpu_act_operand("nvfp4", x, amax.clone()) is first  # equal value, another tensor
    changes = [
        lambda: (x.mul_(2.0), amax),  # same memory, new values
        lambda: (x, amax * 0.5),  # another amax
        lambda: (x, None),  # dynamic
        lambda: (x.clone(), amax),  # another tensor
    ]
    prev = first
    for change in changes:
        xx, aa = change()
        got = weight._cpu_act_operand("nvfp4", xx, aa)
        want = gemm.act_operand("nvfp4", xx, aa, torch.float32)
        assert got is not prev and torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        prev = got
    assert weight._cpu_act_operand("fp8_e4m3:token", x, None) is not prev  # another format
    with torch.inference_mode():
        xi = torch.randn(4, 32)
    assert weight._cpu_act_operand("nvfp4", xi, None) is not weight._cpu_act_operand("nvfp4", xi, None)


@pytest.mark.parametrize("policy", ["nvfp4", "fp8-dynamic", "mixed-fp4-fp8"])
def test_shared_activation_quantization_leaves_model_outputs_unchanged(policy, monkeypatch):
    """q/k/v and gate/up share their input's quantization: the logits have the bits of quantizing it per call."""
    model, ids = tiny_llama(), input_ids()
    calib = [input_ids(seed=5)]
    with quantized(model, policy, calibration=calib), torch.no_grad():
        calls = []
        real = gemm.act_operand
        monkeypatch.setattr(gemm, "act_operand", lambda *a: (calls.append(1), real(*a))[1])
        shared = model(input_ids=ids).logits
        n_shared = len(calls)
        monkeypatch.setattr(weight, "_cpu_act_operand", lambda spec, x2, amax: gemm.act_operand(spec, x2, amax, torch.float32))
        each = model(input_ids=ids).logits
        assert len(calls) - n_shared > n_shared  # computed fewer times when shared
    assert torch.equal(bits(shared), bits(each))


# --- the clamp to the grid's top, skipped where it cannot change a value ---------------------------------------
_GRIDS = {"e2m1": (6.0, 1, e2m1), "e4m3": (448.0, 3, e4m3), "e5m2": (57344.0, 2, e5m2)}


def _round_unclamped(kind: str, v: torch.Tensor) -> torch.Tensor:
    if kind == "e2m1":
        return round_e2m1(v.clone(), inplace=True, saturate=False)
    dt = torch.float8_e4m3fn if kind == "e4m3" else torch.float8_e5m2
    return round_fp8(v.clone(), dt, finite=True, inplace=True, saturate=False)


@pytest.mark.parametrize("kind", sorted(_GRIDS))
def test_saturation_check_is_tight_at_the_top_of_each_grid(kind):
    """Below the midpoint past the top value, rounding without the clamp gives the saturating reference's bits
    (every value up to the bound: a dense grid, ties, neighbours, fresh randoms, zeros, subnormals); from the
    midpoint on the check asks for the clamp, and right there it is needed (RNE goes to the step above)."""
    vmax, mbits, ref = _GRIDS[kind]
    step = 2.0 ** (math.floor(math.log2(vmax)) - mbits)
    mid = torch.tensor(vmax + step / 2)
    below = torch.nextafter(mid, torch.tensor(0.0))
    assert not elements.saturation_needed(below, vmax, mbits)
    assert elements.saturation_needed(mid, vmax, mbits)
    for special in (INF, NAN, 1e30):
        assert elements.saturation_needed(torch.tensor(special), vmax, mbits)
    g = torch.Generator().manual_seed(torch.randint(1 << 30, ()).item())
    b = float(below)
    grid = torch.cat([torch.linspace(0, b, 50_001), torch.rand(50_000, generator=g) * b,
                      torch.rand(20_000, generator=g) * b * 10.0 ** torch.randint(-45, 0, (20_000,), generator=g).float(),
                      torch.tensor([b, vmax, vmax - step / 4, 0.0, 1e-45, 2.0**-126])])
    v = torch.cat([grid, -grid])
    assert torch.equal(bits(_round_unclamped(kind, v)), bits(ref(v.double())))
    # the check is tight: just past the midpoint (at it, for a top that is an odd step) an unclamped value
    # leaves the grid
    over = torch.nextafter(mid, torch.tensor(1e30)) if kind == "e4m3" else mid
    assert float(_round_unclamped(kind, over.reshape(1))[0]) == vmax + step != float(ref(over.double().reshape(1))[0])


def _cases(spec: str):
    """(name, x, amax): typical rows of many magnitudes, odd widths, zero and -0 rows, NaN/Inf rows, bf16, scales
    that are float32 subnormals (FP8), blocks far below the tensor's max (E4M3-subnormal NVFP4 block scales), a
    static amax below the data (saturation)."""
    g = torch.Generator().manual_seed(torch.randint(1 << 30, ()).item())
    x = torch.randn(67, 304, generator=g) * 10.0 ** torch.randint(-8, 4, (67, 1), generator=g).float()
    x[3] = 0.0
    x[4] = -0.0
    yield "typical", x, None
    yield "odd width", x[:, :301].contiguous(), None
    yield "bf16", x.bfloat16(), None
    poisoned = x.clone()
    poisoned[5, 7], poisoned[9, 2], poisoned[10, 40] = NAN, INF, -INF
    yield "nan/inf", poisoned, None
    tiny = x.clone()
    tiny[6] = torch.randn(304, generator=g) * 1e-37  # FP8: amax / max is a float32 subnormal
    tiny[7] = torch.randn(304, generator=g) * 3e-43  # ... of a few ulps, too coarse: x / s reaches past the top
    yield "subnormal scales", tiny, None
    sub = torch.rand(5, 48, generator=g) * 2 - 1
    sub[2, 3] = 1.0  # amax / max = 1.4 ulps of float32's subnormals: the scale rounds to 1 ulp, 40% low
    yield "all subnormal", sub * (1.4 * 2.0**-149 * (57344.0 if "e5m2" in spec else 448.0)), None
    far = torch.randn(8, 64, generator=g) * 1e-3
    far[0, 0] = 1e3  # NVFP4: the other blocks' scales are E4M3 subnormals, coarse enough to push x / s past 7
    far[1, 16:32] = torch.linspace(-6.9e-3, 6.9e-3, 16)
    yield "far blocks", far, None
    if spec == "nvfp4" or spec == "fp8_e4m3":  # formats with a static per-tensor amax
        top = x.abs().max()
        yield "static amax below the data", x, float(top / 50)  # float32 values, as qeval holds them
        yield "static amax above the data", x, float(top * 3)


@pytest.mark.parametrize("spec", ["nvfp4", "fp8_e4m3:token", "fp8_e4m3", "fp8_e5m2"])
def test_fast_paths_skip_the_clamp_only_where_it_changes_nothing(spec, monkeypatch):
    """split_values and fake_quant (the CPU fast paths, clamp skipped where ``saturation_needed`` says so) give
    the bits of the packed codes decoded, and fake_quant those of the float64 reference; both branches run."""
    from qeval.formats import fp8 as fp8_mod, get_format, nvfp4 as nvfp4_mod
    from refs import fp8_ref, nvfp4_ref

    seen = []
    real = elements.saturation_needed
    for mod in (fp8_mod, nvfp4_mod):
        monkeypatch.setattr(mod, "saturation_needed", lambda *a: (seen.append(real(*a)), seen[-1])[1])
    fmt = get_format(spec)
    for name, x, amax in _cases(spec):
        inner, outer = fmt.gemm_split(fmt.quantize(x, amax=amax, role="activation", nonfinite="propagate"))
        want = inner.dequantize(torch.float32)
        got, scale = fmt.split_values(x, amax=amax, role="activation", nonfinite="propagate")
        assert torch.equal(got.isnan(), want.isnan()), name
        assert torch.equal(bits(got.nan_to_num(0.0)), bits(want.nan_to_num(0.0))), name
        assert torch.equal(bits(scale), bits(outer)), name
        fq = fmt.fake_quant(x, amax=amax, role="activation", nonfinite="propagate")
        dq = fmt.quantize(x, amax=amax, role="activation", nonfinite="propagate").dequantize(x.dtype)
        assert torch.equal(fq.isnan(), dq.isnan()) and torch.equal(bits(fq.nan_to_num(0.0)), bits(dq.nan_to_num(0.0))), name
        if x.dtype == torch.float32 and x.shape[-1] % 16 == 0 and bool(torch.isfinite(x).all()):
            if spec == "nvfp4":
                ref = nvfp4_ref(x, amax)[0]
            else:
                xf = x.double()
                a = xf.abs().amax(-1, keepdim=True) if spec.endswith(":token") else (
                    xf.abs().amax() if amax is None else torch.tensor(amax, dtype=torch.float64))
                ref = fp8_ref(x, a, fmt.dtype is torch.float8_e4m3fn and 448.0 or 57344.0,
                              e4m3 if fmt.dtype is torch.float8_e4m3fn else e5m2)
            assert torch.equal(bits(fq), bits(ref)), name
    assert True in seen and False in seen  # the clamp was skipped somewhere and kept somewhere
