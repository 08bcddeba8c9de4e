"""qeval.kernels (Triton) against the plain-torch reference, bit for bit.

The reference is run on the CPU (it is the definition; see the note on CUDA
scalar division in ``test_cuda_reference_scalar_division``), the kernels on
the GPU. Codes and scales are compared as raw bits; dequantized values as
raw bits too, except that any NaN equals any NaN (GPUs write one canonical
NaN pattern). GPU tests run on the lent H100:
``python3 -m pytest tests/test_kernels.py -q -n 8`` (about 4 minutes,
mostly Triton compiling; 59 passed there on 2026-11-25 before the packed-FP4
pair kernels were added).
"""

from __future__ import annotations

import itertools
import zlib

import pytest
import torch

from qeval import kernels
from qeval.formats import format_specs, get_format

SPECS = [s for s in format_specs() if get_format(s).family in ("fp8", "nvfp4", "mxfp8", "mxfp4")]
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SHAPES = ((4, 64), (3, 17), (2, 5, 130), (33,), (129, 256), (1, 7), (2, 3, 16), (260, 384))
KINDS = ("normal", "wide", "ties", "zeros", "tiny", "huge")

gpu = pytest.mark.gpu
needs_kernels = pytest.mark.skipif(not kernels.available(), reason="needs CUDA and Triton")


def test_no_kernel_on_cpu():
    """CPU tensors (and cast formats) fall back: the entry points return None."""
    x = torch.randn(4, 32)
    assert kernels.quantize("nvfp4", x) is None
    assert kernels.fake_quant("fp8_e4m3", x) is None
    assert not kernels.supports("bf16", x)


def _bits(t: torch.Tensor) -> torch.Tensor:
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()]
    return t.contiguous().view(view)


def assert_same_bits(got: torch.Tensor | None, ref: torch.Tensor | None, what: str) -> None:
    if ref is None:
        assert got is None, what
        return
    got = got.cpu()
    assert got.shape == ref.shape and got.dtype == ref.dtype, (what, got.shape, ref.shape, got.dtype, ref.dtype)
    same = _bits(got) == _bits(ref)
    if got.element_size() > 1:  # float values: NaN == NaN
        same |= torch.isnan(got) & torch.isnan(ref)
    bad = (~same).nonzero()
    assert bad.numel() == 0, f"{what}: {len(bad)} of {same.numel()} differ, first at {bad[:3].tolist()}"


def sample(kind: str, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    n = torch.Size(shape)
    if kind == "normal":
        x = torch.randn(n, generator=gen)
    elif kind == "wide":  # many binades, some overflow to inf in fp16 -> finite-only cases skip those
        x = torch.randn(n, generator=gen) * torch.exp(torch.randn(n, generator=gen) * 3)
    elif kind == "ties":  # values on rounding boundaries of E2M1 / E4M3 after power-of-two scaling
        grid = torch.tensor([0, 0.25, 0.5, 0.75, 1, 1.25, 1.75, 2.5, 3, 3.5, 5, 6, 7, 448, 464, 500, 1.0625, 1.1875])
        x = grid[torch.randint(0, len(grid), n, generator=gen)]
        x = x * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
        x = x * 2.0 ** torch.randint(-4, 4, n[:-1] + (1,), generator=gen).float()
    elif kind == "zeros":  # zero blocks, -0.0, small negatives that round to -0
        x = torch.randn(n, generator=gen)
        x[..., : n[-1] // 2] = 0.0
        x.view(-1)[::5] = -0.0
        x.view(-1)[::7] *= 1e-4
    elif kind == "tiny":  # subnormal territory (float32/bf16)
        x = torch.randn(n, generator=gen) * 1e-39
    else:  # "huge": near the top of each dtype
        x = torch.randn(n, generator=gen) * (6e4 if dtype == torch.float16 else 1e36)
    x = x.to(dtype)
    return torch.where(torch.isfinite(x), x, torch.zeros((), dtype=dtype))


def check(spec, x, amax=None, role="weight"):
    fmt = get_format(spec)
    ref = fmt.quantize(x, amax=amax, role=role, nonfinite="propagate")
    xc = x.cuda()
    got = kernels.quantize(fmt, xc, amax=amax, role=role)
    what = f"{spec} {tuple(x.shape)} {x.dtype} role={role} amax={amax}"
    assert got is not None, what
    assert got.shape == ref.shape and got.padded == ref.padded and got.role == ref.role, what
    assert_same_bits(got.data, ref.data, what + " codes")
    assert_same_bits(got.scale, ref.scale, what + " scales")
    assert_same_bits(got.global_scale, ref.global_scale, what + " global scale")
    assert_same_bits(got.dequantize(x.dtype), ref.dequantize(x.dtype), what + " dequantize")
    fast = kernels.dequantize(got, x.dtype)
    if fmt.family in ("nvfp4", "mxfp4"):
        assert_same_bits(fast, ref.dequantize(x.dtype), what + " kernels.dequantize")
    else:
        assert fast is None, what
    fq = kernels.fake_quant(fmt, xc, amax=amax, role=role)
    assert_same_bits(fq, ref.dequantize(x.dtype), what + " fake_quant")
    if role == "activation":
        check_split(fmt, xc, amax, ref, what)


def check_split(fmt, xc, amax, ref, what):
    """kernels.split: the exact emulation's operand, = gemm_split of the reference's QTensor."""
    if not (fmt.family == "nvfp4" or (fmt.family == "fp8" and fmt.granularity in ("tensor", "row"))):
        assert kernels.split(fmt, xc, amax, xc.dtype) is None, what
        return
    inner, outer = fmt.gemm_split(ref)
    for dt in dict.fromkeys((xc.dtype, torch.float32, torch.bfloat16)):
        got = kernels.split(fmt, xc, amax, dt)
        assert got is not None, what
        assert_same_bits(got[0], inner.dequantize(dt), f"{what} split inner in {dt}")
        assert_same_bits(got[1], outer, f"{what} split outer")


@gpu
@needs_kernels
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_matches_reference(spec, dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{spec} {dtype}".encode()))
    fmt = get_format(spec)
    for shape, kind in itertools.product(SHAPES, KINDS):
        x = sample(kind, shape, dtype, gen)
        roles = ("weight", "activation") if getattr(fmt, "granularity", "") == "block128" else ("activation",)
        for role in roles:
            check(spec, x, role=role)
            if fmt.static_scale:  # calibrated amax, smaller and larger than the data's
                check(spec, x, amax=1.5, role=role)
                check(spec, x, amax=torch.tensor(1e4), role=role)


@gpu
@needs_kernels
@pytest.mark.parametrize("spec", SPECS)
def test_large_tensor_tiling(spec):
    """A tensor spanning many programs in both grid axes, with a padded last dim."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(515, 4100, generator=gen).to(torch.bfloat16)
    check(spec, x, role="activation")
    check(spec, x, role="weight")


@gpu
@needs_kernels
@pytest.mark.parametrize("spec", ["nvfp4", "mxfp4", "mxfp4:rceil"])
def test_packed_quantize_odd_storage_offset(spec):
    """A contiguous view starting at an odd element can't be read as pairs: the fallback path runs."""
    gen = torch.Generator().manual_seed(9)
    base = torch.randn(1 + 8 * 64, generator=gen).to(torch.bfloat16)
    check(spec, base[1:].view(8, 64), role="activation")


@gpu
@needs_kernels
@pytest.mark.parametrize("spec", SPECS)
def test_nonfinite_propagate(spec):
    """NaN/Inf with nonfinite='propagate': NaN blocks and Inf codes as in the reference."""
    gen = torch.Generator().manual_seed(3)
    for dtype in DTYPES:
        x = torch.randn(6, 96, generator=gen).to(dtype)
        x[0, 3] = float("nan")
        x[1, 40] = float("inf")
        x[2, 70] = float("-inf")
        x[3, :] = float("inf")
        check(spec, x, role="activation")


@gpu
@needs_kernels
def test_format_methods_use_kernels_and_still_check():
    """Format.quantize / fake_quant on CUDA give the kernel's bits and still refuse NaN by default."""
    x = torch.randn(64, 64, dtype=torch.bfloat16)
    fmt = get_format("nvfp4")
    assert_same_bits(fmt.fake_quant(x.cuda()), fmt.fake_quant(x), "nvfp4 via Format.fake_quant")
    assert_same_bits(fmt.quantize(x.cuda()).data, fmt.quantize(x).data, "nvfp4 via Format.quantize")
    bad = x.cuda().clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        fmt.fake_quant(bad)


@gpu
@needs_kernels
def test_global_amax():
    gen = torch.Generator().manual_seed(5)
    for dtype in DTYPES:
        x = (torch.randn(3001, 77, generator=gen) * 10).to(dtype)
        x[5, 5] = float("inf")
        x[7, 7] = float("nan")
        fin = x.float().abs()
        want = fin[torch.isfinite(fin)].max()
        assert kernels.global_amax(x.cuda()).item() == want.item()


@gpu
@needs_kernels
def test_rowwise_act_quant_is_fp8_token_format():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(37, 512, generator=gen).to(torch.bfloat16)
    q, s = kernels.quantize_fp8_rowwise(x.cuda(), pad_rows_to=16)
    ref = get_format("fp8_e4m3:token").quantize(x)
    assert q.shape == (48, 512) and s.shape == (48, 1)
    assert_same_bits(q[:37], ref.data, "codes")
    assert_same_bits(s[:37], ref.scale, "scales")
    assert (q[37:].view(torch.uint8) == 0).all() and (s[37:] == 1).all()


@gpu
@needs_kernels
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs FP8 tensor cores")
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("static", [False, True])
def test_fp8_linear_matches_emulation(granularity, static):
    """Native W8A8 equals the emulated product of the same FP8 operands (up to accumulation/bf16 rounding)."""
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(3, 41, 256, generator=gen).to(torch.bfloat16).cuda()
    w = (torch.randn(384, 256, generator=gen) * 0.05).to(torch.bfloat16).cuda()
    bias = torch.randn(384, generator=gen).to(torch.bfloat16).cuda()
    w8, ws = kernels.prepare_fp8_weight(w, granularity)
    amax = 3.0 if static else None
    y = kernels.fp8_linear(x, w8, ws, bias, act_amax=amax)
    act = get_format("fp8_e4m3" if static else "fp8_e4m3:token")
    xq = act.quantize(x, amax=amax).dequantize(torch.float32)
    wq = w8.float() * ws.reshape(-1, 1)
    want = xq @ wq.t() + bias.float()
    assert y.shape == (3, 41, 384) and y.dtype == torch.bfloat16
    err = (y.float() - want).norm() / want.norm()
    assert err < 4e-3, err


@gpu
@needs_kernels
def test_scale_division_is_correctly_rounded_where_cuda_torch_is_not():
    """torch on CUDA divides by a Python scalar as a multiply by its reciprocal, so
    ``amax / 448`` run on CUDA can differ from the CPU (the definition) by an ulp.
    The kernels divide correctly rounded: their FP8 scale matches the CPU on amax
    values where CUDA torch does not."""
    a = torch.rand(20000) * 100
    differs = a[(a / 448.0) != (a.cuda() / 448.0).cpu()]
    if differs.numel() == 0:
        pytest.skip("this torch divides by CUDA scalars exactly; nothing to show")
    x = torch.randn(4, 32)
    for amax in differs[:20].tolist():
        got = kernels.quantize("fp8_e4m3", x.cuda(), amax=amax).scale
        want = get_format("fp8_e4m3").quantize(x, amax=amax).scale
        assert_same_bits(got, want, f"scale for amax={amax!r}")


@gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("spec", ["fp8_e4m3", "fp8_e4m3:token", "nvfp4", "mxfp8:rceil", "mxfp4"])
def test_reference_path_on_cuda_equals_cpu(spec):
    """The plain-torch definition gives the same bits on CUDA as on the CPU (its scale
    divisions are by tensors, which CUDA torch divides exactly)."""
    fmt = get_format(spec)
    gen = torch.Generator().manual_seed(17)
    for scale in (1.0, 37.3, 1e-3, 913.7):
        x = torch.randn(64, 256, generator=gen) * scale
        cpu = fmt._quantize(x, None, "activation").dequantize()
        cuda = fmt._quantize(x.cuda(), None, "activation").dequantize().cpu()
        assert_same_bits(cuda, cpu, f"{spec} at scale {scale}")


def test_override_holds_inside_its_block_only():
    """tuning.override: the shape merged over the configured one in the block, gone after it, also on an error."""
    from qeval.kernels import tuning

    cpu = torch.device("cpu")
    base = tuning.config("fp8_row", cpu)
    with pytest.raises(RuntimeError, match="inside"):
        with tuning.override("fp8_row", {"sweep_bk": 123}):
            assert tuning.config("fp8_row", cpu) == {**base, "sweep_bk": 123}
            raise RuntimeError("inside")
    assert tuning.config("fp8_row", cpu) == base and "fp8_row" not in tuning.OVERRIDE


def test_launch_shapes_cover_every_kernel():
    """configs/kernels.yaml: every key the launcher asks for has a default with its fields, powers of two."""
    import re
    from pathlib import Path

    from qeval.kernels import tuning

    src = Path(kernels.__file__).with_name("launch.py").read_text()
    keys = set(re.findall(r'tuning\.config\(\s*"(\w+)"', src))
    keys |= {k for pair in re.findall(r'tuning\.config\(\s*"(\w+)" if fake else "(\w+)"', src) for k in pair}
    default = tuning.table()["default"]
    assert keys and keys <= set(default), keys - set(default)
    need = {"fp8_row": {"tile", "warps", "max_single", "max_warps", "per_thread"}, "amax": {"block", "iters", "warps"},
            "fp8_tile2d": {"warps", "chunk"}, "fp8_tensor": {"tile", "warps"},
            "fp4_pairs": {"tile", "max_bk", "warps", "iters"}}
    for key in keys:
        fields = need.get(key, {"tile", "max_bk", "warps"})
        assert fields <= set(default[key]), (key, default[key])
        for field, v in default[key].items():
            assert v in ("m", "k") if field == "order" else v > 0 and v & (v - 1) == 0, (key, default[key])
    for name, own in tuning.table()["devices"].items():
        assert set(own) <= set(default), (name, set(own) - set(default))
        for key, fields in own.items():
            assert set(fields) <= set(default[key]) | {"order"}, (name, key, fields)
            assert fields.get("order", "m") in ("m", "k"), (name, key, fields)


@gpu
@needs_kernels
@pytest.mark.parametrize("spec", SPECS)
def test_scale_that_underflows_to_zero(spec):
    """An amax so small that amax / 448 (or / 2688) rounds to 0: the quotients are NaN or Inf,
    so the kernels must leave their all-finite short path and follow the reference."""
    tiny = torch.tensor([1.4e-45, -1.4e-45, 0.0, -0.0, 2.8e-45, 0.0, 1.4e-45, 4.2e-45] * 12).reshape(3, 32)
    check(spec, tiny, role="activation")
    if getattr(get_format(spec), "granularity", "") == "block128":
        check(spec, tiny, role="weight")


@gpu
@needs_kernels
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
@pytest.mark.parametrize("shape", [dict(tile=t, max_bk=b, warps=w, order=o, iters=i) for t, b, w, o, i in (
    (4096, 512, 4, "m", 1), (2048, 512, 2, "k", 1), (8192, 1024, 4, "k", 1), (8192, 512, 2, "m", 1),
    (2048, 256, 1, "m", 1), (16384, 1024, 8, "m", 1), (2048, 512, 2, "k", 4), (1024, 256, 1, "m", 3),
    (4096, 512, 4, "k", 16))], ids=lambda c: "{tile}-{max_bk}-{warps}{order}-x{iters}".format(**c))
def test_packed_fp4_gives_the_reference_bits_under_any_launch_shape(shape, dtype):
    """Launch shapes change speed, never bits: the packed-FP4 pair kernels under tuning candidates
    (some asking for 64-128 elements per thread, where the NVFP4 kernel gave wrong codes before
    launch.PAIRS_NVFP4_MAX_PER_THREAD; programs sweeping 3 to 16 column tiles, past the last
    one) on a tensor with masked edges, NaN, Inf and a zero block."""
    from qeval.kernels import tuning

    gen = torch.Generator().manual_seed(31)
    x = sample("normal", (333, 4112), dtype, gen) * 30
    x[5, 17], x[200, 4000], x[7, :16] = float("nan"), float("inf"), 0.0
    with tuning.override("fp4_pairs", shape):
        for spec in ("nvfp4", "mxfp4", "mxfp4:rceil"):
            check(spec, x, role="activation")
        check("nvfp4", x, amax=torch.tensor(100.0), role="activation")


@gpu
@needs_kernels
@pytest.mark.parametrize("max_single", [16384, 32768])
def test_long_rows(max_single):
    """FP8 per-row scales of rows longer than one default tile: one read per row or two sweeps."""
    from qeval.kernels import tuning

    gen = torch.Generator().manual_seed(29)
    with tuning.override("fp8_row", {"max_single": max_single, "max_warps": 32, "per_thread": 32}):
        for kind in ("normal", "ties", "zeros", "wide"):
            x = sample(kind, (5, 20000), torch.bfloat16, gen)
            check("fp8_e4m3:token", x, role="activation")
            check("fp8_e4m3:channel", x, role="weight")
