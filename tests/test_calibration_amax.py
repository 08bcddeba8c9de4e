"""quantizer.amax (calibration's max |x| over finite entries) against float64 numpy, with NaN/Inf and odd shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qeval.quantize import quantizer


def _reference(x: torch.Tensor) -> float:
    a = np.abs(x.detach().to(torch.float64).numpy())
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seed", range(6))
def test_amax_is_the_largest_finite_magnitude(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    shape = [(1,), (7, 13), (3, 5, 33), (256, 576)][seed % 4]
    x = (torch.randn(shape, generator=g) * 10 ** float(torch.randint(-6, 4, (), generator=g))).to(dtype)
    flat = x.view(-1)
    k = int(torch.randint(0, 4, (), generator=g))
    for i in torch.randint(0, flat.numel(), (k,), generator=g).tolist():  # some NaN / +-Inf entries
        flat[i] = [float("nan"), float("inf"), float("-inf"), 0.0][i % 4]
    got = quantizer.amax(x)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert float(got) == _reference(x)


@pytest.mark.parametrize("fill", [0.0, float("nan"), float("inf"), -0.0])
def test_amax_edge_cases(fill):
    x = torch.full((4, 16), fill)
    assert float(quantizer.amax(x)) == _reference(x)
    y = torch.tensor([-3.5, fill, 2.0])
    assert float(quantizer.amax(y)) == _reference(y) == 3.5
