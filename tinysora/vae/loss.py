"""VAE training loss: L1 + MSE (optionally edge- and motion-weighted) + gradient L1
[+ temporal-difference L1] [+ SSIM] + KL, in fp32; no downloaded weights. Measured on
2-image overfits: SSIM in the loss slowed the escape from the "background only" plateau,
the gradient term sharpened edges."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tinysora.config import Config
from tinysora.nn.metrics import ssim_map
from tinysora.vae.model import Posterior


@dataclass
class VAELossConfig(Config):
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    gradient_weight: float = 1.0  # L1 between spatial finite differences (edges)
    ssim_weight: float = 0.0
    kl_weight: float = 1e-6
    edge_weight: float = 0.0  # extra L1/MSE weight on pixels within 1 px of a target edge
    edge_threshold: float = 0.05  # edge = a neighbour differs by more than this ([-1, 1] units)
    # fast motion through the 4x time compression: extra L1/MSE weight on pixels within
    # 1 px of where the target changes from one frame to the next (an object's old and
    # new place), and L1 between the frame-to-frame differences of recon and target
    motion_weight: float = 0.0
    temporal_weight: float = 0.0


def edge_band(target: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, 3, T, H, W) -> (B, 1, T, H, W) float mask: 1 within 1 px of a spatial edge.

    An edge pixel has a horizontal or vertical neighbour differing by more than
    ``threshold`` in some channel; the band is that set dilated by a 3x3 max-pool.
    In Shapes World the band covers small objects whole, so their shapes weigh as
    much as the flat background that dominates a plain per-pixel mean.
    """
    b, _, t, h, w = target.shape
    edge = torch.zeros(b, t, h, w, dtype=torch.bool, device=target.device)
    dx = target.diff(dim=-1).abs().amax(1) > threshold  # (B, T, H, W-1)
    dy = target.diff(dim=-2).abs().amax(1) > threshold  # (B, T, H-1, W)
    edge[..., :, 1:] |= dx
    edge[..., :, :-1] |= dx
    edge[..., 1:, :] |= dy
    edge[..., :-1, :] |= dy
    band = F.max_pool2d(edge.flatten(0, 1)[:, None].float(), 3, stride=1, padding=1)
    return band.view(b, t, 1, h, w).transpose(1, 2)


def motion_band(target: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, 3, T, H, W) -> (B, 1, T, H, W) float mask: 1 within 1 px of a pixel that
    differs by more than ``threshold`` (some channel) from the same pixel in the frame
    before or after: where a moving object was and went. All 0 for a still clip or T=1."""
    b, _, t, h, w = target.shape
    moved = torch.zeros(b, t, h, w, dtype=torch.bool, device=target.device)
    change = target.diff(dim=2).abs().amax(1) > threshold  # (B, T-1, H, W)
    moved[:, 1:] |= change
    moved[:, :-1] |= change
    band = F.max_pool2d(moved.flatten(0, 1)[:, None].float(), 3, stride=1, padding=1)
    return band.view(b, t, 1, h, w).transpose(1, 2)


def _frames01(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> (B*T, 3, H, W) in [0, 1]."""
    return x.transpose(1, 2).flatten(0, 1).add(1).mul(0.5)


def vae_loss(
    recon: torch.Tensor, target: torch.Tensor, posterior: Posterior, cfg: VAELossConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """recon, target: (B, 3, T, H, W) in [-1, 1]. Computed in fp32 even under autocast
    (SSIM's variances are differences of near-equal numbers; bf16 makes them negative)."""
    with torch.autocast(recon.device.type, enabled=False):
        recon, target = recon.float(), target.float()
        diff = recon - target
        if cfg.edge_weight or cfg.motion_weight:
            weight = 1.0
            if cfg.edge_weight:
                weight = weight + cfg.edge_weight * edge_band(target, cfg.edge_threshold)
            if cfg.motion_weight:
                weight = weight + cfg.motion_weight * motion_band(target, cfg.edge_threshold)
            l1 = (diff.abs() * weight).mean()
            mse = (diff.pow(2) * weight).mean()
        else:
            l1, mse = diff.abs().mean(), diff.pow(2).mean()
        grad = (diff.diff(dim=-1).abs().mean() + diff.diff(dim=-2).abs().mean()) / 2
        kl = Posterior(posterior.mean.float(), posterior.logvar.float()).kl()
        loss = cfg.l1_weight * l1 + cfg.mse_weight * mse + cfg.gradient_weight * grad
        loss = loss + cfg.kl_weight * kl
        parts = {"l1": l1.item(), "mse": mse.item(), "grad": grad.item(), "kl": kl.item()}
        if cfg.temporal_weight:  # frame-to-frame changes, recon vs target (0 for images)
            temporal = diff.diff(dim=2).abs().mean() if diff.shape[2] > 1 else diff.new_zeros(())
            loss = loss + cfg.temporal_weight * temporal
            parts["temporal"] = temporal.item()
        if cfg.ssim_weight:
            ssim = ssim_map(_frames01(recon).clamp(0, 1), _frames01(target)).mean()
            loss = loss + cfg.ssim_weight * (1 - ssim)
            parts["ssim"] = ssim.item()
    return loss, parts
