"""Kernels on a tensor of the second GPU while the first is current (a model spread by device_map)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qeval import kernels
from qeval.formats import get_format

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not kernels.available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs and Triton"),
]


@pytest.mark.parametrize("spec", ["fp8_e4m3:token", "fp8_e4m3", "nvfp4", "mxfp8"])
def test_fake_quant_on_another_gpu_gives_the_reference_bits(spec):
    g = torch.Generator().manual_seed(int(np.random.randint(1 << 30)))
    x = torch.randn(512, 1024, generator=g).to(torch.bfloat16)
    want = get_format(spec).fake_quant(x, role="activation")  # the plain-torch definition, on the CPU
    with torch.cuda.device(0):
        y = torch.full((512, 1024), float("nan"), device="cuda:1", dtype=torch.bfloat16)
        got = get_format(spec).fake_quant(x.to("cuda:1"), role="activation")
        y.copy_(got)
    assert got.device == torch.device("cuda:1")
    assert torch.equal(y.cpu().view(torch.int16), want.view(torch.int16))
