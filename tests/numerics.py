"""Comparing fp32 results of two code paths (not a fixture module).

Two code paths that compute the same thing (a masked vs a grouped attention, a batch
of 1 vs 2 through a Linear) run GEMMs of different shapes, and those pick different
kernels: AMD and Intel machines of this kind differ by a few ULP (1e-6 at magnitudes
4-8 is ~2 ULP). Compare such results relative to their scale, never with an absolute
1e-6. Bitwise equality is only for the same computation on the same machine.
"""

from __future__ import annotations

import torch

RTOL = 1e-5


def assert_close_fp32(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    """Equal up to ``rtol`` of each value, and of the tensor's largest magnitude for values
    near zero (a sum of products near zero keeps the absolute error of its terms)."""
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-3))
