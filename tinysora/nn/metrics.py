"""Pixel quality measures: PSNR and SSIM (torch, float). SSIM is also a VAE loss term.

Both take tensors in [0, 1] or uint8 arrays; video tensors are (..., 3, H, W) with
any leading dims (frames are scored one by one and averaged).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 7
SSIM_SIGMA = 1.5
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2  # for data in [0, 1]


def _as_unit(x) -> torch.Tensor:
    """uint8 (T, H, W, 3) arrays -> float (T, 3, H, W) in [0, 1]; tensors pass through."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x)).float().div(255.0)
        return x.movedim(-1, -3)
    return x.float()


def psnr(a, b) -> float:
    """PSNR in dB over the whole clip (mean squared error pooled over every pixel)."""
    a, b = _as_unit(a), _as_unit(b)
    mse = float(F.mse_loss(a, b))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(1.0 / mse))


def _gaussian_window(device) -> torch.Tensor:
    r = torch.arange(SSIM_WINDOW, dtype=torch.float32, device=device) - SSIM_WINDOW // 2
    g = torch.exp(-(r**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, k, k)


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of (N, C, H, W) images in [0, 1] (Gaussian 7x7 window, valid region)."""
    n, c, h, w = a.shape
    win = _gaussian_window(a.device).expand(c, 1, -1, -1)

    def blur(x):
        return F.conv2d(x, win, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return num / den


def ssim(a, b) -> float:
    """Mean SSIM over frames and channels."""
    a, b = _as_unit(a), _as_unit(b)
    a, b = a.reshape(-1, *a.shape[-3:]), b.reshape(-1, *b.shape[-3:])
    return float(ssim_map(a, b).mean())
