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


class OneLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(512, 384, bias=True)

    def forward(self, x):
        return self.proj(x)


@pytest.mark.parametrize("policy", ["fp8-dynamic", "fp8", "nvfp4", "mxfp8"])
@pytest.mark.parametrize("gemm_path", ["cublas", "triton"])
def test_emulated_linear_on_another_gpu_gives_the_same_bits(policy, gemm_path):
    """The exact emulation (activation operand, GEMM, epilogue) of a layer on the second GPU,
    with the first GPU current, equals the same layer on the first GPU bit for bit (a launch
    on the wrong device gave NaN for every position of a model spread over two GPUs)."""
    from qeval.quantize import gemm, quantized

    g = torch.Generator().manual_seed(int(np.random.randint(1 << 30)))
    x = torch.randn(300, 512, generator=g).to(torch.bfloat16)
    outs = []
    default = gemm.CUDA_GEMM
    gemm.CUDA_GEMM = gemm_path
    try:
        for dev in ("cuda:0", "cuda:1"):
            torch.manual_seed(0)
            model = OneLinear().to(dev, torch.bfloat16)
            with torch.cuda.device(0), torch.no_grad():
                with quantized(model, policy, calibration=[{"x": x[:64].to(dev)}], progress=False):
                    outs.append(model(x.to(dev)).cpu())
    finally:
        gemm.CUDA_GEMM = default
    assert torch.isfinite(outs[0]).all()
    assert torch.equal(outs[1].view(torch.int16), outs[0].view(torch.int16))
