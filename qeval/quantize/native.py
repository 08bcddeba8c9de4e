"""Which formats run natively on which device, and the native GEMMs.

Native FP8 (W8A8, E4M3): ``torch._scaled_mm`` with per-tensor or row-wise
float32 scales; needs CUDA compute capability >= 8.9 (Ada, Hopper,
Blackwell), and also runs on the CPU build of torch. Native NVFP4 (W4A4):
``torch._scaled_mm`` with ``float4_e2m1fn_x2`` operands and swizzled E4M3
block scales, Blackwell only (sm_100+, CUDA >= 12.8). Weight-only rules
(``activations: none``) run anywhere: packed weights, dequantized in forward.
"""

from __future__ import annotations

import math

import torch

from qeval.formats import QTensor, get_format

FP8_WEIGHTS = ("fp8_e4m3", "fp8_e4m3:channel")
FP8_ACTIVATIONS = ("fp8_e4m3", "fp8_e4m3:token")


def device_name(device: torch.device) -> tuple[str, tuple[int, int] | None]:
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{cap[0]}{cap[1]})", cap
    return device.type.upper(), None


def native_kind(name: str, weights: str | None, activations: str | None, device: torch.device, shape: tuple[int, int]) -> str:
    """``"fp8"``, ``"nvfp4"`` or ``"weight_only"`` for a module in native mode, or raise.

    Raises:
        ValueError: the rule has no native path on this device; the message
            names the module, the GPU, the format and the alternatives.
    """
    if weights is None:
        raise ValueError(f"{name}: native mode needs quantized weights (activations-only rule {activations!r}); use mode='emulate'")
    if activations is None:
        return "weight_only"
    gpu, cap = device_name(device)
    n, k = shape
    alternatives = "use mode='emulate', or a weight-only rule (activations: none)"
    if weights in FP8_WEIGHTS and activations in FP8_ACTIVATIONS:
        if cap is not None and cap < (8, 9):
            raise ValueError(f"{name}: native FP8 ({weights} x {activations}) needs compute capability >= 8.9; this is {gpu}; {alternatives}")
        if n % 16 or k % 16:
            raise ValueError(f"{name}: native FP8 GEMM needs both dims divisible by 16, weight is {n}x{k}; {alternatives}")
        return "fp8"
    if weights == "nvfp4" and activations == "nvfp4":
        if cap is None or cap < (10, 0):
            raise ValueError(
                f"{name}: native NVFP4 W4A4 needs a Blackwell GPU (sm_100+); this is {gpu}; {alternatives}"
            )
        if k % 32 or n % 16:
            raise ValueError(f"{name}: native NVFP4 GEMM needs K % 32 == 0 and N % 16 == 0, weight is {n}x{k}; {alternatives}")
        return "nvfp4"
    raise ValueError(
        f"{name}: no native kernel in qeval for weights {weights} with activations {activations} on {gpu} "
        f"(native: FP8 {'/'.join(FP8_WEIGHTS)} x {'/'.join(FP8_ACTIVATIONS)}; NVFP4 W4A4 on Blackwell); {alternatives}"
    )


def fp8_linear(x2: torch.Tensor, qx: QTensor, w_fp8: torch.Tensor, w_scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``x2 [M, K] @ W[N, K].T`` from FP8 codes: per-tensor scales, or row-wise when either side is per-row."""
    from qeval.kernels.linear import scaled_mm_fp8

    return scaled_mm_fp8(qx.data, qx.scale, w_fp8, w_scale, out_dtype)


def to_blocked(scales: torch.Tensor) -> torch.Tensor:
    """cuBLAS's swizzled layout of block scales (128x4 tiles), as torchao writes it."""
    rows, cols = scales.shape
    nr, nc = math.ceil(rows / 128), math.ceil(cols / 4)
    padded = scales.new_zeros((nr * 128, nc * 4))
    padded[:rows, :cols] = scales
    blocks = padded.view(nr, 128, nc, 4).permute(0, 2, 1, 3)
    return blocks.reshape(-1, 4, 32, 4).transpose(1, 2).reshape(-1, 32, 16).flatten()


def nvfp4_linear(qx: QTensor, qw: QTensor, out_dtype: torch.dtype) -> torch.Tensor:
    """NVFP4 W4A4 GEMM on Blackwell (untested here: no sm_100 machine was available).

    Operands are the packed E2M1 codes viewed as ``float4_e2m1fn_x2`` (element
    2i in the low nibble, as qeval packs them); block scales E4M3 in the
    swizzled layout; the two float32 global scales multiply the output.
    """
    a = qx.data.view(torch.float4_e2m1fn_x2)
    b = qw.data.view(torch.float4_e2m1fn_x2)
    sa = to_blocked(qx.scale.view(qx.scale.shape[0], -1))
    sb = to_blocked(qw.scale.view(qw.scale.shape[0], -1))
    out = torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.float32)
    return (out * (qx.global_scale * qw.global_scale)).to(out_dtype)


def fmt_static(spec: str | None) -> bool:
    return spec is not None and get_format(spec).static_scale
