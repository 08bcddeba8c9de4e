"""The FP8 CPU path's one-pass amax (aminmax, fallback on NaN/Inf) gives the bits of the long way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qeval.formats import get_format


def _long_way(x: torch.Tensor, per_row: bool, dtype=torch.float8_e4m3fn, fmax=448.0) -> torch.Tensor:
    xf = x.float()
    a = xf.abs()
    a = torch.where(torch.isfinite(a), a, torch.zeros(()))
    a = a.amax(-1, keepdim=True) if per_row else a.amax()
    s = torch.where(a == 0, torch.ones_like(a), a / torch.tensor(fmax))
    v = xf / s
    out = v.clamp(-fmax, fmax)
    out = torch.where(torch.isinf(v), torch.full_like(v, float("nan")), out)
    return (out.to(dtype).float() * s).to(x.dtype)


@pytest.mark.parametrize("spec,per_row", [("fp8_e4m3:token", True), ("fp8_e4m3", False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("poison", ["none", "nan", "inf", "-inf", "zero_row"])
def test_fp8_fake_quant_matches_the_long_way(spec, per_row, dtype, poison):
    g = torch.Generator().manual_seed(int(np.random.randint(1 << 30)))
    x = torch.randn(37, 301, generator=g) * 10.0 ** torch.randint(-6, 5, (37, 1), generator=g).float()
    x[5, 7] = {"none": x[5, 7], "nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"),
               "zero_row": x[5, 7]}[poison]
    if poison == "zero_row":
        x[11] = 0.0
        x[12] = -0.0
    x = x.to(dtype)
    got = get_format(spec).fake_quant(x, role="activation", nonfinite="propagate")
    want = _long_way(x, per_row)
    assert got.dtype == dtype
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(torch.nan_to_num(got, nan=0.0).view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                       torch.nan_to_num(want, nan=0.0).view(torch.int16 if dtype == torch.bfloat16 else torch.int32))
