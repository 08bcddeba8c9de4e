"""The bit tricks of the FP4 kernels' E2M1 code, replayed in float32 on the CPU.

``qeval/kernels/_common.py::e2m1_mag`` computes the E2M1 magnitude code of a
clamped quotient m in [0, 6] without a table or comparisons: one FMA adds the
exact magic 2^E (2^22 + 107) (E the binade, 0 below 2) and the code is the low
byte of s + (s >> 22) over the sum's bits. The GPU tests compare the kernel with
the reference for every float32 numerator; this test checks the identity itself
where CI can run it, against RNE onto the grid in float64 (ties to the even code).
"""

from __future__ import annotations

from pathlib import Path

import torch

import qeval

GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)
MAGIC = 4194411.0  # 2^22 + 107, as in e2m1_mag


def e2m1_mag(m: torch.Tensor) -> torch.Tensor:
    """The kernel's steps on float32 m in [0, 6]: the product e * MAGIC is exact (e a power of
    two), so float32 multiply then add rounds once, as the FMA does."""
    b = m.view(torch.int32)
    e = torch.maximum(b & 0x7F800000, torch.tensor(0x3F800000, dtype=torch.int32)).view(torch.float32)
    s = (e * MAGIC + m).view(torch.int32)
    return (s + (s >> 22)) & 0xFF


def reference_code(m: torch.Tensor) -> torch.Tensor:
    md = m.double()
    i = (torch.searchsorted(GRID, md, right=True) - 1).clamp(max=6)
    lo, hi = md - GRID[i], GRID[i + 1] - md
    up = (hi < lo) | ((hi == lo) & (i % 2 == 1))  # a tie goes to the even code
    return torch.where(md >= 6, 7, i + up.long()).int()


def test_the_magic_is_the_kernels():
    src = (Path(qeval.__file__).parent / "kernels" / "_common.py").read_text()
    assert f"fma(e.to(tl.float32, bitcast=True), {MAGIC}, m)" in src and "return s + (s >> 22)" in src


def test_e2m1_magnitude_code_from_the_magic_sum():
    top = int(torch.tensor(6.0).view(torch.int32))
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    sweep = torch.arange(int(torch.randint(0, 61, (1,), generator=gen)), top + 1, 61, dtype=torch.int64)
    # every pattern within 200 ulps of each grid point, midpoint (the ties) and binade edge
    points = torch.tensor([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0])
    near = (points.view(torch.int32).long()[:, None] + torch.arange(-200, 201)[None, :]).flatten()
    small = torch.arange(0, 4096, dtype=torch.int64)  # zero and the subnormals
    bits = torch.cat([sweep, near, small]).clamp(0, top).int()
    m = bits.view(torch.float32)
    got, want = e2m1_mag(m), reference_code(m)
    bad = (got != want).nonzero().flatten()
    assert bad.numel() == 0, f"{bad.numel()} codes differ, first at m = {m[bad[:5]].tolist()}"
    assert set(want.tolist()) == set(range(8))  # every code was reached
