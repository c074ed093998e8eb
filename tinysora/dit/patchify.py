"""Latent cube <-> spacetime patch tokens, with (t, h, w) positions.

The one place where latents become tokens; the DiT and the pipeline both use it.
Tokens are laid out in (t, h, w) raster order: token n = (i * gh + j) * gw + k for
patch (i, j, k) of a (gt, gh, gw) grid.
"""

from __future__ import annotations

import torch
from einops import rearrange

Patch = tuple[int, int, int]


def grid_size(latent_shape: tuple[int, int, int], patch: Patch) -> tuple[int, int, int]:
    """(t, h, w) latent size -> (gt, gh, gw) patch grid; raises if a side does not divide."""
    t, h, w = latent_shape
    pt, ph, pw = patch
    if t % pt or h % ph or w % pw:
        raise ValueError(f"latent size (t={t}, h={h}, w={w}) is not divisible by the patch {patch}")
    return t // pt, h // ph, w // pw


def grid_positions(grid: tuple[int, int, int], time_span: float = 0.0) -> torch.Tensor:
    """(N, 3) float tensor of (t, h, w) patch coordinates in token order.

    ``time_span`` 0: t counts latent frames (0, 1, 2, ...). ``time_span`` > 0: a clip's
    latent frames are spread evenly over [0, time_span] whatever their number, so t is
    clip time (the Shapes World defines every motion over the whole clip: a 65-frame
    clip is a 17-frame clip sampled 4x finer). With time_span 4 a 17-frame clip
    (5 latent frames) keeps the integer positions 0..4.
    """
    gt, gh, gw = grid
    t = torch.arange(gt, dtype=torch.float32)
    if time_span > 0 and gt > 1:
        t = t * (time_span / (gt - 1))
    tt, hh, ww = torch.meshgrid(
        t,
        torch.arange(gh, dtype=torch.float32),
        torch.arange(gw, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([tt, hh, ww], dim=-1).reshape(-1, 3)


def patchify(x: torch.Tensor, patch: Patch) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(B, C, T, H, W) -> tokens (B, N, C * pt * ph * pw) and the grid (gt, gh, gw)."""
    grid = grid_size(tuple(x.shape[2:]), patch)
    pt, ph, pw = patch
    tokens = rearrange(x, "b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw)", pt=pt, ph=ph, pw=pw)
    return tokens, grid


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int, int], patch: Patch) -> torch.Tensor:
    """tokens (B, N, C * pt * ph * pw) -> (B, C, T, H, W) (inverse of :func:`patchify`)."""
    gt, gh, gw = grid
    pt, ph, pw = patch
    return rearrange(
        tokens,
        "b (t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)",
        t=gt,
        h=gh,
        w=gw,
        pt=pt,
        ph=ph,
        pw=pw,
    )
