"""Where checkpoint layouts and qeval disagree about what a stored number means: the one place.

qeval's QTensor (``qeval.formats``) holds DECODE scales: ``x_hat = code * scale``
(FP8, MX) and ``x_hat = code * (fp32(s_b) * s_g)`` (NVFP4, one float32 product,
then one multiply). The layouts differ as follows, and every writer and reader
in ``qeval.export`` converts through the functions here:

- FP8 ``weight_scale`` / ``input_scale`` / ``k_scale`` / ``v_scale``: decode
  scales (``amax / 448``) in both compressed-tensors and Model Optimizer: the
  same numbers as qeval, stored as float32 (per tensor ``[1]``, per channel
  ``[N, 1]``, 128x128 blocks ``[ceil(N/128), ceil(K/128)]``).
- NVFP4 global scale:
  - Model Optimizer ``weight_scale_2`` / ``input_scale``: decode
    (``amax / (6 * 448)``), its dequantize multiplies ``fp32(s_b) * s_2``: the
    qeval rule exactly.
  - compressed-tensors ``weight_global_scale`` / ``input_global_scale``: ENCODE
    (``6 * 448 / amax``); its reader decodes a block as ``s_b / G`` (one float32
    division). ``fl(s_b / G) == fl(s_b * s_g)`` holds for every block scale
    only for some fp32 ``G``; :func:`encode_global_scale` searches the fp32
    neighbours of ``1 / s_g`` for the ``G`` that reproduces qeval's block
    scale for the most blocks of this tensor (and says how many it cannot).
    Those blocks differ by one float32 ulp of the scale, which disappears in
    a BF16 model for all but ~2^-15 of them. qeval writes the exact decode
    scale in the safetensors metadata too, so its own reader gets the QTensor
    back bit for bit; for a foreign checkpoint :func:`decode_global_scale`
    picks the ``s_g`` that reproduces the producer's ``s_b / G`` for the most
    blocks.
- Signed zero (E2M1 code 8 = -0.0): qeval and compressed-tensors write the
  IEEE sign of a value that rounds to zero and decode code 8 as -0.0; Model
  Optimizer encodes by ``x < 0`` (never code 8) and decodes code 8 as +0.0.
  Codes are read as stored; -0.0 == +0.0, so values compare equal.
- Block-scale clamps (NVFP4): qeval clamps ``s_b`` to [2^-9, 448] and stores
  1.0 for an all-zero block (as Model Optimizer); llm-compressor stores 0.125
  for a zero block. A reader takes scales as stored, so clamps only matter to
  a producer; a zero block decodes to zeros under every convention.
- MX scales: E8M0 biased exponents as uint8 in compressed-tensors (qeval's
  ``float8_e8m0fnu`` storage, same bits).
- Static activation scales: qeval keeps a calibration ``amax`` and derives the
  scale at run time; a checkpoint stores the scale. :func:`amax_for_scale`
  gives an amax whose derived scale is the stored one exactly.
"""

from __future__ import annotations

import torch

E4M3_MAX = 448.0
NVFP4_RANGE = 6.0 * 448.0  # E2M1 max x E4M3 max: amax / NVFP4_RANGE is the decode global scale
_NEIGHBOURS = 24  # fp32 ulps searched on each side
_WIDE = 64  # for the encode scale (wider searches found no better G on test models)


def _ulps(x: torch.Tensor, n: int) -> torch.Tensor:
    """The fp32 values within ``n`` ulps of the float32 scalar ``x`` (x itself first)."""
    out = [x]
    up, down = x, x
    inf, zero = torch.tensor(float("inf")), torch.tensor(0.0)
    for _ in range(n):
        up, down = torch.nextafter(up, inf), torch.nextafter(down, zero)
        out += [up, down]
    return torch.stack(out)


def _ulp_range(x: torch.Tensor, n: int) -> torch.Tensor:
    """The fp32 values within ``n`` ulps of positive ``x``, ordered x, x+1, x-1, x+2, ... (from the bits)."""
    bits = x.float().reshape(1).view(torch.int32).long()
    steps = torch.arange(1, n + 1)
    order = torch.cat([torch.zeros(1, dtype=torch.long), torch.stack((steps, -steps), 1).flatten()])
    return (bits + order).clamp(1, 0x7F7FFFFF).to(torch.int32).view(torch.float32)


def _distinct_scales(block_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct float32 values of an E4M3 block-scale tensor and how many blocks hold each."""
    values, counts = torch.unique(block_scale.float().flatten(), return_counts=True)
    keep = torch.isfinite(values) & (values != 0)
    return values[keep], counts[keep]


def _pairs(block_scale: torch.Tensor, codes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct (block scale, E2M1 magnitude) pairs with their element counts (magnitude 1 per block if no codes)."""
    from qeval.formats.elements import E2M1_MAGNITUDES

    if codes is None:
        values, counts = _distinct_scales(block_scale)
        return values, torch.ones_like(values), counts
    # one bin per (E4M3 bit pattern, magnitude code): 256 x 8
    sbits = block_scale.contiguous().view(torch.uint8).long().unsqueeze(-1)
    mag = (codes & 7).long().reshape(*block_scale.shape, -1)
    counts = torch.bincount((sbits * 8 + mag).flatten(), minlength=2048)
    idx = counts.nonzero().flatten()
    scales = (idx // 8).to(torch.uint8).view(torch.float8_e4m3fn).float()
    mags = torch.tensor(E2M1_MAGNITUDES)[idx % 8]
    keep = torch.isfinite(scales) & (scales != 0) & (mags != 0)
    return scales[keep], mags[keep], counts[idx][keep]


def encode_global_scale(block_scale: torch.Tensor, decode: torch.Tensor, codes: torch.Tensor | None = None):
    """compressed-tensors' ``weight_global_scale`` for qeval's NVFP4 (``s_b``, ``s_g``, optional codes).

    compressed-tensors decodes ``bf16(fl(code * fl(s_b / G)))``; qeval
    ``fl(code * fl(s_b * s_g))``. Returns ``(G, fp32_off, bf16_off)``: the
    float32 ``G`` among the neighbours of ``1/s_g`` that makes the fewest
    elements differ after rounding to BF16 (the reader's output dtype), then
    in float32, and those two counts (elements; blocks when ``codes`` is None).
    """
    s_g = decode.float().reshape(())
    scales, mags, counts = _pairs(block_scale, codes)
    want = mags * (scales * s_g)
    want16 = want.to(torch.bfloat16)
    cands = _ulp_range(torch.tensor(1.0) / s_g, _WIDE)  # sorted by distance from 1/s_g
    got = mags * (scales / cands[:, None])  # [candidate, pair]
    off16 = ((got.to(torch.bfloat16) != want16) * counts).sum(-1)
    off32 = ((got != want) * counts).sum(-1)
    i = int(torch.argmin(off16 * (int(counts.sum()) + 1) + off32))  # BF16 first, then float32; nearest on ties
    best, best_key = cands[i], (int(off16[i]), int(off32[i]))
    return best.reshape(1), best_key[1], best_key[0]


def decode_global_scale(block_scale: torch.Tensor, encode: torch.Tensor) -> tuple[torch.Tensor, int]:
    """qeval's decode ``s_g`` for a compressed-tensors ``G``: the inverse of :func:`encode_global_scale`.

    Returns ``(s_g, blocks)`` with ``blocks`` the number of blocks whose
    ``fl(s_b * s_g)`` differs from the producer's ``fl(s_b / G)`` (0 = exact).
    """
    g = encode.float().reshape(())
    values, counts = _distinct_scales(block_scale)
    target = values / g
    best, best_bad = None, None
    for s in _ulps(torch.tensor(1.0) / g, _NEIGHBOURS):
        bad = int(counts[(values * s) != target].sum())
        if best_bad is None or bad < best_bad:
            best, best_bad = s, bad
        if bad == 0:
            break
    return best.reshape(()), best_bad


def amax_for_scale(scale: torch.Tensor, fmax: float) -> torch.Tensor:
    """An amax whose qeval decode scale ``fl(amax / fmax)`` is ``scale`` exactly (float32 scalar).

    ``fmax`` is 448 for an FP8 scale, 6 * 448 for an NVFP4 decode global scale.
    """
    s = scale.float().reshape(())
    divisor = torch.tensor(fmax)
    guess = s * divisor
    for a in _ulps(guess, _NEIGHBOURS):
        if a / divisor == s:
            return a
    return guess  # not reachable for normal scales; the closest amax then


def fp8_amax_scale(amax: torch.Tensor) -> torch.Tensor:
    """The FP8 decode scale qeval derives from a calibration amax (1 when amax is 0)."""
    a = amax.float().reshape(())
    return torch.where(a == 0, torch.ones(()), a / torch.tensor(E4M3_MAX)).reshape(1)


def nvfp4_global_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """qeval's NVFP4 decode global scale from an amax (1 when amax is 0)."""
    a = amax.float().reshape(())
    return torch.where(a == 0, torch.ones(()), a / torch.tensor(NVFP4_RANGE))


def e8m0_to_uint8(scale: torch.Tensor) -> torch.Tensor:
    """qeval's ``float8_e8m0fnu`` MX scales as the uint8 biased exponents checkpoints store."""
    return scale.view(torch.uint8) if scale.dtype != torch.uint8 else scale


def uint8_to_e8m0(scale: torch.Tensor) -> torch.Tensor:
    return scale.view(torch.float8_e8m0fnu) if scale.dtype == torch.uint8 else scale
