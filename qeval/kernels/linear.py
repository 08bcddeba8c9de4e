"""Native FP8 W8A8 linear through ``torch._scaled_mm`` (Hopper and newer).

Weights are quantized once (:func:`prepare_fp8_weight`); activations are
quantized on every call by one fused kernel that writes FP8 codes and one
float32 scale per row (:func:`quantize_fp8_rowwise`), or with a static
per-tensor scale from a calibrated amax.
"""

from __future__ import annotations

import torch

from qeval.formats import get_format

_E4M3 = "fp8_e4m3"


def prepare_fp8_weight(weight: torch.Tensor, granularity: str = "channel") -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a [N, K] weight to E4M3 for :func:`fp8_linear`.

    Args:
        weight: [N, K] float tensor (CUDA for the fused kernel; any device works).
        granularity: "tensor" (one scale) or "channel" (one per output row).

    Returns:
        (w_fp8 [N, K] float8_e4m3fn, w_scale float32: shape [] or [N, 1]), the
        same bits as ``get_format("fp8_e4m3" or "fp8_e4m3:channel").quantize``.
    """
    if granularity not in ("tensor", "channel"):
        raise ValueError(f"granularity must be 'tensor' or 'channel', got {granularity!r}")
    spec = _E4M3 if granularity == "tensor" else f"{_E4M3}:channel"
    q = get_format(spec).quantize(weight)
    return q.data, q.scale


def quantize_fp8_rowwise(x: torch.Tensor, pad_rows_to: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One fused kernel: [M, K] float CUDA tensor -> (E4M3 codes [M', K], float32 scales [M', 1]).

    Same bits as ``get_format("fp8_e4m3:token").quantize(x)`` (scale = row amax / 448,
    1 for a zero row). ``M'`` is M rounded up to ``pad_rows_to``; padded rows
    are zero codes with scale 1 (what ``_scaled_mm`` needs for M % 16 != 0).
    """
    from . import launch

    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    m = x2.shape[0]
    rows = -(-m // pad_rows_to) * pad_rows_to
    q, s = launch.fp8_row_quant(x2, get_format(f"{_E4M3}:token"), out_rows=rows)
    if rows != m:
        q[m:].view(torch.uint8).zero_()
        s[m:] = 1.0
    return q, s


def _quantize_fp8_static(x2: torch.Tensor, amax, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    q = get_format(_E4M3).quantize(x2, amax=amax, nonfinite="propagate")
    data, scale = q.data, q.scale.reshape(())
    if rows != x2.shape[0]:
        pad = torch.zeros(rows - x2.shape[0], x2.shape[1], dtype=data.dtype, device=data.device)
        data = torch.cat([data, pad])
    return data, scale


def scaled_mm_fp8(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    bias: torch.Tensor | None = None,
    fast_accum: bool = False,
) -> torch.Tensor:
    """The one call into ``torch._scaled_mm`` for FP8: ``(a * sa) @ (b * sb)^T``.

    ``a`` [M, K] and ``b`` [N, K] are E4M3 codes; scales are float32, either
    both per tensor (one value each) or row-wise (``a_scale`` per row of a,
    ``b_scale`` per row of b). The scales are applied in the GEMM's epilogue.
    """
    sa, sb = a_scale.float(), b_scale.float()
    if sa.numel() == 1 and sb.numel() == 1:
        return torch._scaled_mm(a, b.t(), scale_a=sa.reshape(()), scale_b=sb.reshape(()), bias=bias,
                                out_dtype=out_dtype, use_fast_accum=fast_accum)
    m, n = a.shape[0], b.shape[0]
    sa = sa.reshape(-1, 1).expand(m, 1).contiguous()
    sb = sb.reshape(1, -1).expand(1, n).contiguous()
    # cuBLAS row-wise scaling writes BF16 only
    mm_dtype = torch.bfloat16 if a.is_cuda else out_dtype
    y = torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, bias=None if bias is None else bias.to(mm_dtype),
                         out_dtype=mm_dtype, use_fast_accum=fast_accum)
    return y.to(out_dtype)


def fp8_linear(
    x: torch.Tensor,
    w_fp8: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    act_amax: torch.Tensor | float | None = None,
    fast_accum: bool = False,
) -> torch.Tensor:
    """``x @ dequant(w)^T + bias`` on the FP8 tensor cores (W8A8, E4M3).

    Args:
        x: [..., K] bf16/fp16/fp32 CUDA activations.
        w_fp8: [N, K] float8_e4m3fn weight codes (:func:`prepare_fp8_weight`).
        w_scale: float32 decode scale: one value (per tensor) or [N] / [N, 1] (per channel).
        bias: optional [N].
        act_amax: static activation amax (calibration): per-tensor activation
            scale. None (default): dynamic per-token scales from one fused kernel.
        fast_accum: ``_scaled_mm``'s fast FP8 accumulation (faster, less exact).

    Returns:
        [..., N] in x's dtype. K and N must be multiples of 16 (cuBLAS FP8);
        M is padded internally.
    """
    k = x.shape[-1]
    n = w_fp8.shape[0]
    if k % 16 or n % 16:
        raise ValueError(f"fp8_linear needs K and N divisible by 16, got K={k}, N={n}")
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    rows = -(-m // 16) * 16
    b = bias.to(torch.bfloat16) if bias is not None else None
    if act_amax is not None:
        xq, xs = _quantize_fp8_static(x2, act_amax, rows)
        if w_scale.numel() != 1:  # row-wise weights need row-wise activation scales
            xs = xs.reshape(1, 1).expand(rows, 1)
    else:
        xq, xs = quantize_fp8_rowwise(x2, pad_rows_to=16)
    y = scaled_mm_fp8(xq, xs, w_fp8, w_scale, torch.bfloat16, bias=b, fast_accum=fast_accum)
    return y[:m].to(x.dtype).reshape(*x.shape[:-1], n)
