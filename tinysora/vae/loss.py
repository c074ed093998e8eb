"""VAE training loss: L1 + SSIM + KL, all computed in fp32 (no downloaded weights)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tinysora.config import Config
from tinysora.eval.metrics import ssim_map
from tinysora.vae.model import Posterior


@dataclass
class VAELossConfig(Config):
    l1_weight: float = 1.0
    ssim_weight: float = 0.5
    kl_weight: float = 1e-6


def _frames01(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> (B*T, 3, H, W) in [0, 1]."""
    return x.transpose(1, 2).flatten(0, 1).add(1).mul(0.5)


def vae_loss(
    recon: torch.Tensor, target: torch.Tensor, posterior: Posterior, cfg: VAELossConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """recon, target: (B, 3, T, H, W) in [-1, 1]. Computed in fp32 even under autocast
    (SSIM's variances are differences of near-equal numbers; bf16 makes them negative)."""
    with torch.autocast("cpu", enabled=False):
        recon, target = recon.float(), target.float()
        l1 = (recon - target).abs().mean()
        ssim = ssim_map(_frames01(recon).clamp(0, 1), _frames01(target)).mean()
        kl = Posterior(posterior.mean.float(), posterior.logvar.float()).kl()
        loss = cfg.l1_weight * l1 + cfg.ssim_weight * (1 - ssim) + cfg.kl_weight * kl
    parts = {"l1": l1.item(), "ssim": ssim.item(), "kl": kl.item()}
    return loss, parts
