"""Number formats: every format qeval emulates, as small objects.

>>> from qeval.formats import get_format
>>> fmt = get_format("nvfp4")
>>> q = fmt.quantize(weight)          # real packed storage (QTensor)
>>> w_hat = q.dequantize(torch.bfloat16)
>>> fmt.fake_quant(weight)            # same bits as the two steps above
>>> fmt.bits_per_element((4096, 4096))

The semantics are those of ``shared/reference/formats.md`` ("qeval rule").
The plain-torch code here is the definition and imports nothing else of
qeval. ``qeval.kernels`` makes it faster on CUDA (tested bit for bit against
it): importing it (``qeval.quantize`` does) registers its kernels here.
"""

from __future__ import annotations

import torch

from .base import Format, QTensor
from .cast import CastFormat
from .fp8 import FP8Format
from .mx import MXFormat
from .nvfp4 import NVFP4Format

__all__ = ["Format", "QTensor", "FORMATS", "get_format", "format_specs"]

FORMATS: dict[str, Format] = {
    f.spec: f
    for f in (
        CastFormat("bf16", "bf16", dtype=torch.bfloat16, description="bfloat16 cast (the baseline)"),
        CastFormat("fp16", "fp16", dtype=torch.float16, description="float16 cast"),
        FP8Format("fp8_e4m3", "fp8", static_scale=True, description="FP8 E4M3, one fp32 scale per tensor"),
        FP8Format("fp8_e4m3:channel", "fp8", granularity="row", description="FP8 E4M3, one scale per output row (weights)"),
        FP8Format("fp8_e4m3:token", "fp8", granularity="row", description="FP8 E4M3, one dynamic scale per row (activations)"),
        FP8Format(
            "fp8_e4m3:block128", "fp8", block=128, granularity="block128",
            description="FP8 E4M3, 128x128 weight blocks / 1x128 activation groups",
        ),
        FP8Format("fp8_e5m2", "fp8", element="e5m2", static_scale=True, description="FP8 E5M2, one fp32 scale per tensor"),
        NVFP4Format("nvfp4", "nvfp4", block=16, static_scale=True, description="E2M1, 16-blocks, E4M3 block scales, fp32 global scale"),
        MXFormat("mxfp8", "mxfp8", block=32, element="e4m3", description="OCP MXFP8: E4M3, 32-blocks, E8M0 scales (floor)"),
        MXFormat("mxfp8:rceil", "mxfp8", block=32, element="e4m3", rounding="rceil", description="MXFP8 with round-up (rceil) scales"),
        MXFormat("mxfp4", "mxfp4", block=32, element="e2m1", description="OCP MXFP4: E2M1, 32-blocks, E8M0 scales (floor)"),
        MXFormat("mxfp4:rceil", "mxfp4", block=32, element="e2m1", rounding="rceil", description="MXFP4 with round-up (rceil) scales"),
    )
}


def format_specs() -> list[str]:
    return list(FORMATS)


def get_format(spec: str | Format) -> Format:
    """The format object for ``spec`` (e.g. ``"nvfp4"``, ``"fp8_e4m3:block128"``).

    Raises:
        ValueError: unknown spec; the message lists the valid ones.
    """
    if isinstance(spec, Format):
        return spec
    key = str(spec).strip().lower()
    try:
        return FORMATS[key]
    except KeyError:
        raise ValueError(f"unknown format {spec!r}; valid formats: {', '.join(FORMATS)}") from None
