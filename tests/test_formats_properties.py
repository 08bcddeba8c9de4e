"""Property tests (hypothesis): idempotence and the half-step error bound."""

import math

import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from qeval.formats import FORMATS, get_format

SCALED = [s for s in FORMATS if s not in ("bf16", "fp16")]

# inside the fp16 range: a plain fp16 cast of 65520 is inf, which is tested elsewhere
finite32 = st.floats(min_value=-6e4, max_value=6e4, allow_nan=False, allow_infinity=False, width=32)
vectors = st.lists(finite32, min_size=1, max_size=80).map(lambda v: torch.tensor([v], dtype=torch.float32))
# A float32 scale derived from a subnormal amax (amax / 448 < 2^-126) keeps only a few bits, so
# the half-step bound can't hold there; those inputs are checked against the float64
# reference in test_formats_api.py instead.
normal_vectors = vectors.map(lambda x: torch.where(x.abs() < 1e-30, torch.zeros_like(x), x))


@settings(max_examples=60, deadline=None)
@given(x=vectors, spec=st.sampled_from(list(FORMATS)))
def test_fake_quant_is_idempotent(x, spec):
    fmt = get_format(spec)
    amax = x.abs().max() if fmt.static_scale else None  # same static scale both times
    once = fmt.fake_quant(x, amax=amax)
    assert torch.equal(fmt.fake_quant(once, amax=amax), once)


@settings(max_examples=60, deadline=None)
@given(x=vectors)
@example(x=torch.tensor([[0.0] * 15 + [56.0, 1e-5]]))  # a second block that rounds to zero
def test_nvfp4_dynamic_requantize_keeps_codes_and_block_scales(x):
    """With a dynamic global scale, re-deriving amax from x_hat may move s_g by an ulp;
    the E2M1 codes and E4M3 block scales are unchanged. This needs a normal float32
    global scale (amax / 2688): below that, s_g is subnormal and loses the bits that
    keep it stable (hypothesis found amax = 9.8e-45). A block whose codes all round to
    zero comes back as an all-zero block, whose scale is 1.0 by definition (hypothesis
    found [0, ..., 56, 1e-5]: 1e-5 is 0 under the smallest block scale, 2^-9)."""
    assume(x.abs().max().item() >= 6 * 448 * torch.finfo(torch.float32).tiny)
    fmt = get_format("nvfp4")
    q1 = fmt.quantize(x)
    q2 = fmt.quantize(q1.dequantize())
    assert torch.equal(q1.data, q2.data)
    codes = torch.stack([q1.data & 0xF, q1.data >> 4], -1).reshape(q1.data.shape[0], -1, 16)  # per block
    kept = ((codes & 7) != 0).any(-1)  # blocks with a nonzero magnitude
    s1, s2 = q1.scale.view(torch.uint8), q2.scale.view(torch.uint8)
    assert torch.equal(s1[kept], s2[kept])
    assert bool((s2[~kept] == 0x38).all())  # E4M3 1.0
    assert math.isclose(q1.global_scale.item(), q2.global_scale.item(), rel_tol=2**-22)


def _element_scale(q, fmt):
    """Each element's effective decode scale (float64, padded layout)."""
    from qeval.formats.elements import e8m0_decode

    n = q.data.shape[-1] * (2 if q.data.dtype == torch.uint8 else 1)
    if fmt.family == "nvfp4":
        s = q.scale.double() * q.global_scale.double()
        return s.repeat_interleave(16, -1)[..., :n]
    if fmt.family.startswith("mx"):
        return e8m0_decode(q.scale).double().repeat_interleave(32, -1)[..., :n]
    if fmt.spec == "fp8_e4m3:block128":
        return q.scale.double().repeat_interleave(128, -1)[..., :n]  # 1-row input: one row block
    return q.scale.double().expand(*q.data.shape[:-1], n)


def _half_step(v, element):
    """Half the grid spacing of the interval holding |v| (float64)."""
    a = v.abs()
    _, e = torch.frexp(torch.where(a > 0, a, torch.ones_like(a)))
    e = (e - 1).double()
    if element == "e2m1":
        return 2.0 ** (torch.clamp(e, min=0) - 2)
    mbits, emin = (3, -6) if element == "e4m3" else (2, -14)
    return 2.0 ** (torch.clamp(e, min=emin) - mbits - 1)


@settings(max_examples=80, deadline=None)
@given(x=normal_vectors, spec=st.sampled_from(SCALED))
def test_error_is_at_most_half_a_grid_step(x, spec):
    fmt = get_format(spec)
    q = fmt.quantize(x)
    k = x.shape[-1]
    scale = _element_scale(q, fmt)[..., :k]
    element = "e2m1" if fmt.family in ("nvfp4", "mxfp4") else ("e5m2" if "e5m2" in spec else "e4m3")
    vmax = {"e2m1": 6.0, "e4m3": 448.0, "e5m2": 57344.0}[element]
    v = x.double() / scale
    clip = torch.clamp(v.abs() - vmax, min=0)  # only MX floor scales can clip (by design of the OCP rule)
    if not spec.startswith("mx") or "rceil" in spec:
        assert (clip <= _half_step(torch.full_like(v, vmax), element)).all()
    bound = (_half_step(v.clamp(-vmax, vmax), element) + clip) * scale
    err = (x.double() - q.dequantize().double()).abs()
    assert (err <= bound * (1 + 2**-20) + 1e-45).all(), (err - bound).max()
