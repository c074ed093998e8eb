"""Small building blocks shared by the models: norms, modulation, MLP, timestep embedding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMS norm over the last dimension, optional learned gain; computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return y * self.weight if self.weight is not None else y


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation; shift/scale broadcast over tokens: (B, 1, D) or per token (B, N, D)."""
    return x * (1 + scale) + shift


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # exact (erf) GELU: in bf16 on this CPU 3x faster fwd+bwd than the tanh form
        return self.fc2(F.gelu(self.fc1(x)))


class TimestepEmbedder(nn.Module):
    """Flow time t in [0, 1] (any shape) -> (..., dim): sinusoidal features of 1000 t + MLP."""

    def __init__(self, dim: int, freq_dim: int = 256, max_period: float = 10_000.0):
        super().__init__()
        self.freq_dim, self.max_period = freq_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=t.device) / half)
        angles = 1000.0 * t.float()[..., None] * freqs  # (..., half)
        features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (..., freq_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))
