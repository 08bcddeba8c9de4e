"""Independent float64 references for the formats, written for the tests.

They share no code with ``qeval.formats``: rounding here is quantum-based
(``round(a / q) * q`` in float64, ties to even by ``torch.round``) where the
package uses thresholds and torch's float8 casts. float32 divisions are done
in float64 and then rounded to float32, which equals a correctly rounded
float32 division (double rounding is innocuous when 53 >= 2 * 24 + 2).
"""

from __future__ import annotations

import torch

F64 = torch.float64


def f32(t: torch.Tensor) -> torch.Tensor:
    """Round float64 values to float32 and back (float32 arithmetic result)."""
    return t.to(torch.float32).to(F64)


def _exponent(a: torch.Tensor) -> torch.Tensor:
    _, e = torch.frexp(a)
    return (e - 1).to(F64)


def round_minifloat(v: torch.Tensor, mbits: int, emin: int, vmax: float) -> torch.Tensor:
    """RNE of float64 ``v`` to a minifloat with ``mbits`` mantissa bits, min normal
    exponent ``emin`` (subnormals below), saturating at ``vmax``. Keeps the sign (also of 0)."""
    a = v.abs().clamp(max=vmax)
    e = torch.clamp(_exponent(torch.where(a > 0, a, torch.ones_like(a))), min=emin)
    quantum = torch.pow(torch.tensor(2.0, dtype=F64), e - mbits)
    r = torch.round(a / quantum) * quantum
    return torch.copysign(r.clamp(max=vmax), v)


def e4m3(v):
    return round_minifloat(v, 3, -6, 448.0)


def e5m2(v):
    return round_minifloat(v, 2, -14, 57344.0)


def e2m1(v):
    return round_minifloat(v, 1, 0, 6.0)


def fp8_ref(x: torch.Tensor, groups_amax: torch.Tensor, fmax: float, rounder) -> torch.Tensor:
    """x_hat for FP8 with decode scale amax / fmax (amax broadcast to x)."""
    x64 = x.to(F64)
    s = f32(groups_amax / fmax)
    s = torch.where(s == 0, torch.ones_like(s), s)  # amax 0, or a quotient below float32's range
    q = rounder(f32(x64 / s))
    return f32(q * s)


def nvfp4_ref(x: torch.Tensor, amax: float | None = None):
    """(x_hat, block_scale float64, global scale float64) for 2-D x with K % 16 == 0."""
    x64 = x.to(F64)
    a = x64.abs().max() if amax is None else torch.tensor(amax, dtype=F64)
    s_g = f32(a / 2688.0)
    s_g = torch.where(s_g == 0, torch.ones_like(s_g), s_g)  # amax 0, or a quotient below float32's range
    blocks = x64.reshape(*x64.shape[:-1], -1, 16)
    ab = blocks.abs().amax(-1)
    s_b = f32(ab / f32(6.0 * s_g))
    s_b = torch.where(s_b == 0, torch.ones_like(s_b), s_b).clamp(2.0**-9, 448.0)
    s_b = e4m3(s_b)
    eff = f32(s_b * s_g).unsqueeze(-1)
    q = e2m1(f32(blocks / eff))
    return f32(q * eff).reshape(x.shape), s_b, s_g


def mx_ref(x: torch.Tensor, emax: int, max_elem: float, rounder, rounding: str = "floor"):
    """(x_hat, exponent) for OCP MX with 32-blocks, K % 32 == 0."""
    x64 = x.to(F64)
    blocks = x64.reshape(*x64.shape[:-1], -1, 32)
    ab = blocks.abs().amax(-1)
    safe = torch.where(ab > 0, ab, torch.ones_like(ab))
    if rounding == "floor":
        e = _exponent(safe) - emax
    else:
        d = f32(safe / max_elem)
        m, ex = torch.frexp(d)
        e = torch.where(m == 0.5, ex - 1, ex).to(F64)
    e = torch.where(ab == 0, torch.full_like(e, -127.0), e).clamp(-127, 127)
    scale = torch.pow(torch.tensor(2.0, dtype=F64), e).unsqueeze(-1)
    q = rounder(f32(blocks / scale))
    return f32(q * scale).reshape(x.shape), e


def bits(t: torch.Tensor) -> torch.Tensor:
    """float32 bit patterns, so that -0.0 != 0.0 and NaN == NaN compare as bits."""
    return t.to(torch.float32).contiguous().view(torch.int32)


def samples(kind: str, shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        x = torch.randn(shape, generator=g)
    elif kind == "student_t":  # heavy tails plus a few large outliers
        n = torch.randn(shape, generator=g)
        chi = torch.randn((3, *shape), generator=g).pow(2).sum(0) / 3
        x = n / chi.sqrt()
        flat = x.view(-1)
        idx = torch.randint(0, flat.numel(), (max(1, flat.numel() // 500),), generator=g)
        flat[idx] *= 50
    elif kind == "uniform":
        x = torch.rand(shape, generator=g) * 2 - 1
    else:
        raise ValueError(kind)
    return x.to(dtype)


def _pad_k(x: torch.Tensor, block: int) -> torch.Tensor:
    rem = x.shape[-1] % block
    return x if rem == 0 else torch.nn.functional.pad(x, (0, block - rem))


def gemm_parts(spec: str, x: torch.Tensor, role: str = "weight", amax: float | None = None):
    """(inner, outer) in float64 for a 2-D ``x`` [R, K]: what the tensor core multiplies
    (element codes x in-GEMM block scales) and the scale applied outside it, broadcast to
    [R, K] (per tensor, per row or per 128-group of K). ``inner * outer`` is the exact
    quantized value; the hardware's GEMM is ``sum_k inner_x outer_x inner_w outer_w``."""
    x64 = x.to(F64)
    r, k = x64.shape
    one = torch.ones_like(x64)
    if spec in ("bf16", "fp16"):
        return x.to(torch.bfloat16 if spec == "bf16" else torch.float16).to(F64), one
    if spec.startswith("mx"):
        emax, vmax, rounder = (8, 448.0, e4m3) if spec.startswith("mxfp8") else (2, 6.0, e2m1)
        hat, _ = mx_ref(_pad_k(x64, 32), emax, vmax, rounder, "rceil" if spec.endswith(":rceil") else "floor")
        return hat[:, :k], one  # q x 2^e is exact in float64: no rounding in f32(q * scale)
    if spec == "nvfp4":
        xp = _pad_k(x64, 16)
        a = xp.abs().max() if amax is None else torch.tensor(amax, dtype=F64)
        s_g = f32(a / 2688.0)
        s_g = torch.where(s_g == 0, torch.ones_like(s_g), s_g)  # amax 0, or a quotient below float32's range
        blocks = xp.reshape(r, -1, 16)
        s_b = f32(blocks.abs().amax(-1) / f32(6.0 * s_g))
        s_b = e4m3(torch.where(s_b == 0, torch.ones_like(s_b), s_b).clamp(2.0**-9, 448.0)).unsqueeze(-1)
        q = e2m1(f32(blocks / f32(s_b * s_g)))
        return (q * s_b).reshape(r, -1)[:, :k], one * s_g
    fmax, rounder = (57344.0, e5m2) if spec.startswith("fp8_e5m2") else (448.0, e4m3)
    if spec in ("fp8_e4m3", "fp8_e5m2"):
        groups = (x64.abs().max() if amax is None else torch.tensor(amax, dtype=F64)) * one
    elif spec in ("fp8_e4m3:channel", "fp8_e4m3:token"):
        groups = x64.abs().amax(-1, keepdim=True) * one
    else:  # block128: 128x128 weight blocks, 1x128 activation groups
        xp = _pad_k(x64, 128)
        kb = xp.shape[-1] // 128
        if role == "weight":
            nb = -(-r // 128)
            a = torch.nn.functional.pad(xp.abs(), (0, 0, 0, nb * 128 - r)).reshape(nb, 128, kb, 128).amax(dim=(1, 3))
            a = a.repeat_interleave(128, 0)[:r]
        else:
            a = xp.abs().reshape(r, kb, 128).amax(-1)
        groups = a.repeat_interleave(128, -1)[:, :k]
    s = f32(groups / fmax)
    s = torch.where(s == 0, torch.ones_like(s), s)  # amax 0, or a quotient below float32's range
    return rounder(f32(x64 / s)), s
