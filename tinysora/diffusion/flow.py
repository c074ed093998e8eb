"""Rectified flow, the training side: noising, timestep sampling with a shift, the loss.

Convention used everywhere in tinysora (samplers included):

* flow time ``t`` lives in ``[0, 1]``; ``t = 0`` is data, ``t = 1`` is pure noise;
* the noisy point is the straight line between them::

      x_t = (1 - t) * x0 + t * noise

* the model predicts the velocity of that line, constant along it::

      v = dx_t / dt = noise - x0

  so a prediction ``v`` at ``x_t`` gives back both ends:
  ``x0_hat = x_t - t * v`` and ``noise_hat = x_t + (1 - t) * v``.

``t`` may be one value per sample, shape ``(B,)``, or one per token, e.g. ``(B, N)``
for token sequences ``(B, N, D)``: tokens given *clean* as conditioning simply get
``t = 0`` (:func:`add_noise` then returns them unchanged) and are excluded from
:func:`flow_loss` with ``token_mask``.

Training timesteps are logit-normal (SD3): ``t = sigmoid(u)``, ``u ~ N(m, s^2)``,
which concentrates on the middle of the path where the velocity is hardest to
predict, mixed with a little uniform ``t`` so the ends (``t`` near 1, where sampling
starts) are visited too. Then the whole distribution is *shifted* towards noise by a
factor that grows with the number of latent tokens (:func:`timestep_shift`): more
tokens carry more redundant signal, so the same ``t`` destroys less information and
training (and sampling) must spend more time at high noise.

Noise is i.i.d. Gaussian by default. With ``shared_noise = l > 0`` (VideoFusion's
decomposed noise) it is ``sqrt(l) * base + sqrt(1 - l) * residual``: ``base`` one
(B, C, 1, h, w) draw shared by every latent frame of a clip, ``residual`` drawn per
frame (:func:`draw_noise`); still N(0, 1) per element, but correlated across time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from tinysora.config import Config, ConfigError

__all__ = [
    "FlowConfig",
    "add_noise",
    "apply_shift",
    "draw_noise",
    "drop_captions",
    "expand_t",
    "flow_loss",
    "given_times",
    "sample_timesteps",
    "timestep_shift",
    "velocity_target",
]


def draw_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    shared: float = 0.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Gaussian noise of ``shape`` (B, C, T, h, w); with ``shared > 0`` a share of it is
    one draw common to all T frames (VideoFusion). ``shared = 0`` draws exactly what
    ``torch.randn(shape, generator=generator)`` does."""
    noise = torch.randn(shape, generator=generator, dtype=torch.float32, device=device)
    if shared == 0.0:
        return noise
    base = torch.randn(
        (*shape[:2], 1, *shape[3:]), generator=generator, dtype=torch.float32, device=device
    )
    return math.sqrt(shared) * base + math.sqrt(1.0 - shared) * noise


@dataclass
class FlowConfig(Config):
    """How training picks flow times, and how often the caption is dropped.

    ``t = shift(sigmoid(N(logit_mean, logit_std^2)))`` with probability
    ``1 - uniform_fraction``, ``t = shift(U(0, 1))`` otherwise; ``shift`` is
    :func:`timestep_shift` of the sample's token count. ``caption_dropout`` is the
    probability of training on the empty prompt (for classifier-free guidance).
    """

    logit_mean: float = 0.0
    logit_std: float = 1.0
    uniform_fraction: float = 0.1
    shift_base_tokens: int = 80
    base_shift: float = 1.0
    max_shift: float = 4.0
    caption_dropout: float = 0.1
    shared_noise: float = 0.0  # VideoFusion: the share of noise common to all frames

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.shared_noise < 1.0, "shared_noise must be in [0, 1)"),
            (self.logit_std > 0, "logit_std must be > 0"),
            (0.0 <= self.uniform_fraction <= 1.0, "uniform_fraction must be in [0, 1]"),
            (self.shift_base_tokens > 0, "shift_base_tokens must be > 0"),
            (self.base_shift > 0, "base_shift must be > 0"),
            (self.max_shift >= 1.0, "max_shift must be >= 1"),
            (0.0 <= self.caption_dropout <= 1.0, "caption_dropout must be in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"FlowConfig: {message}")


# ----------------------------------------------------------------------------- shift


class ShiftSettings(Protocol):
    """What :func:`timestep_shift` reads: a training ``FlowConfig`` or the sampling
    ``PipelineConfig`` (a model samples with the shift it trained with)."""

    shift_base_tokens: int
    base_shift: float
    max_shift: float


def timestep_shift(num_tokens: int, cfg: ShiftSettings) -> float:
    """The time shift for a sample of ``num_tokens`` latent tokens.

    ``shift = clamp(base_shift * sqrt(num_tokens / shift_base_tokens), 1, max_shift)``

    (SD3's resolution shift: at ``shift_base_tokens`` tokens and ``base_shift = 1``
    there is no shift; 4x the tokens doubles it.)
    """
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be > 0, got {num_tokens}")
    shift = cfg.base_shift * math.sqrt(num_tokens / cfg.shift_base_tokens)
    return float(min(max(shift, 1.0), cfg.max_shift))


def apply_shift(t: torch.Tensor | float, shift: torch.Tensor | float) -> torch.Tensor | float:
    """Warp flow times towards noise: ``t' = shift * t / (1 + (shift - 1) * t)``.

    For ``shift >= 1`` the map is monotone increasing on ``[0, 1]``, fixes 0 and 1,
    and ``t' >= t``; ``shift = 1`` is the identity. In signal-to-noise terms it
    divides ``alpha / sigma = (1 - t) / t`` by ``shift``. ``shift`` may be a tensor
    that broadcasts against ``t`` (one shift per sample).
    """
    return shift * t / (1 + (shift - 1) * t)


# ----------------------------------------------------------------------------- noising


def expand_t(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """``t`` with trailing singleton dims appended so it broadcasts against ``x``.

    ``t`` of shape ``(B,)`` against ``x`` of shape ``(B, N, D)`` becomes ``(B, 1, 1)``;
    ``(B, N)`` becomes ``(B, N, 1)``; a Python float or 0-d tensor becomes
    ``(1, 1, 1)``. ``t``'s shape must be a prefix of ``x``'s (up to broadcasting).
    The result is in ``x``'s dtype and on its device.
    """
    t = torch.as_tensor(t, dtype=x.dtype if x.is_floating_point() else None, device=x.device)
    if t.ndim > x.ndim:
        raise ValueError(f"t has shape {tuple(t.shape)}, more dims than x {tuple(x.shape)}")
    return t.reshape(*t.shape, *([1] * (x.ndim - t.ndim)))  # (*t.shape, 1, ..., 1)


def add_noise(x0: torch.Tensor, t: torch.Tensor | float, noise: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) * x0 + t * noise`` (``t`` per sample, per token, or scalar)."""
    t = expand_t(t, x0)
    return (1 - t) * x0 + t * noise


def given_times(t: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """Per-token flow times when some tokens are given clean (conditioning tasks): 0 where
    ``given``, the sample's time elsewhere. t (B,) with given (B, N), or t of given's
    shape (or a scalar). The one place this rule lives: sampling (``DiT.forward``) and
    both training paths use it, and :func:`add_noise` at t = 0 returns x0 unchanged."""
    return torch.where(given, 0.0, t[:, None] if t.ndim == 1 and given.ndim == 2 else t)


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target ``v = d x_t / dt = noise - x0``."""
    return noise - x0


def flow_loss(
    pred_v: torch.Tensor, target_v: torch.Tensor, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Masked mean squared error between velocities ``(B, N, D)``.

    ``e[b, n] = mean_d (pred_v - target_v)[b, n, d]^2``, then, with ``m = token_mask``
    (``(B, N)`` bool, True = the token is generated and trained on; clean
    conditioning tokens and padding are False)::

        loss = (1 / B) * sum_b ( sum_n m[b, n] e[b, n] / max(1, sum_n m[b, n]) )

    A row without a single True token contributes 0 (not NaN) and still counts in
    ``B``. Without a mask every token counts. Computed in float32.
    """
    if pred_v.shape != target_v.shape:
        raise ValueError(f"pred_v {tuple(pred_v.shape)} != target_v {tuple(target_v.shape)}")
    if pred_v.ndim < 2:
        raise ValueError(f"expected (B, N, D) tensors, got {tuple(pred_v.shape)}")
    diff = pred_v.float() - target_v.float()
    err = diff.pow(2).flatten(2).mean(-1) if diff.ndim > 2 else diff.pow(2)  # (B, N)
    if token_mask is None:
        return err.mean()
    if token_mask.shape != err.shape:
        raise ValueError(
            f"token_mask {tuple(token_mask.shape)} must be (B, N) = {tuple(err.shape)}"
        )
    m = token_mask.to(err.dtype)  # (B, N)
    per_row = (err * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B,)
    return per_row.mean()


# ----------------------------------------------------------------------------- sampling t


def sample_timesteps(
    batch: int,
    num_tokens: int | torch.Tensor,
    cfg: FlowConfig,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training flow times ``(B,)`` in the open interval ``(0, 1)``.

    ``u ~ N(logit_mean, logit_std^2)``, ``t = sigmoid(u)``; with probability
    ``uniform_fraction`` each ``t`` is replaced by ``U(0, 1)``; then
    ``t <- apply_shift(t, timestep_shift(num_tokens))``, and finally clamped to
    ``[1e-5, 1 - 1e-5]``. ``num_tokens`` is one count for the batch or a ``(B,)``
    tensor (packed batches of clips of different sizes). All randomness comes from
    ``generator`` (on its device; ``device`` overrides when no generator is given).
    """
    if device is None:
        device = generator.device if generator is not None else "cpu"
    kw = {"generator": generator, "device": device}
    logit = torch.randn(batch, **kw) * cfg.logit_std + cfg.logit_mean  # (B,)
    uniform = torch.rand(batch, **kw)  # (B,)
    use_uniform = torch.rand(batch, **kw) < cfg.uniform_fraction  # (B,)
    t = torch.where(use_uniform, uniform, torch.sigmoid(logit))  # (B,)
    if isinstance(num_tokens, torch.Tensor):
        n = num_tokens.to(device=device, dtype=t.dtype).reshape(batch)  # (B,)
        if (n <= 0).any():
            raise ValueError("num_tokens must be > 0")
        shift = (cfg.base_shift * (n / cfg.shift_base_tokens).sqrt()).clamp(1.0, cfg.max_shift)
    else:
        shift = timestep_shift(int(num_tokens), cfg)
    eps = 1e-5
    return apply_shift(t, shift).clamp(eps, 1.0 - eps)


def drop_captions(
    prompts: list[str], p: float, generator: torch.Generator | None = None
) -> list[str]:
    """Each prompt independently replaced by ``""`` with probability ``p``.

    Trains the unconditional branch used by classifier-free guidance. One
    ``torch.rand`` draw per prompt from ``generator``, so a seeded generator gives
    the same choice every time.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"caption dropout p must be in [0, 1], got {p}")
    if not prompts:
        return []
    device = generator.device if generator is not None else "cpu"
    drop = torch.rand(len(prompts), generator=generator, device=device) < p  # (len(prompts),)
    return ["" if d else s for s, d in zip(prompts, drop.tolist(), strict=True)]
