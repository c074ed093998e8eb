"""Conditioning tasks: which latent tokens a training sample is *given* clean.

One model does text-to-video, image-to-video, extension, interpolation and editing
(as VDT / W.A.L.T do): given tokens enter at flow time 0 (not noised), carry no
loss, and the model generates the rest. Per sample, a task is drawn:

* ``t2v``: nothing given;
* ``first_frame``: latent frame 0 (= pixel frame 0, which the causal VAE encodes
  alone): image-to-video;
* ``first_k``: the first k latent frames, k ~ U{1 .. gt - 1}: extension;
* ``first_last``: the first and the last latent frame: interpolation / keyframes;
* ``regions``: a random box in (t, h, w) covering 10-50% of the tokens: the general
  case (spatial and temporal inpainting).

With probability ``drop_condition`` a conditioned sample's given tokens are withdrawn
(it becomes ``t2v``), which trains the condition-free branch of guidance; captions are
dropped independently (``FlowConfig.caption_dropout``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tinysora.config import Config, ConfigError

TASKS = ("t2v", "first_frame", "first_k", "first_last", "regions")


@dataclass
class TaskConfig(Config):
    """Task mixture (weights need not sum to 1); the default is text-to-video only."""

    t2v: float = 1.0
    first_frame: float = 0.0
    first_k: float = 0.0
    first_last: float = 0.0
    regions: float = 0.0
    drop_condition: float = 0.1

    def __post_init__(self) -> None:
        weights = [getattr(self, name) for name in TASKS]
        if min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(f"task weights must be >= 0 with a positive sum, got {weights}")

    @property
    def conditioned(self) -> bool:
        return any(getattr(self, name) > 0 for name in TASKS[1:])


def given_mask(task: str, grid: tuple[int, int, int], g: torch.Generator) -> torch.Tensor:
    """(gt, gh, gw) bool grid of the tokens given clean for ``task``."""
    gt, gh, gw = grid
    mask = torch.zeros(gt, gh, gw, dtype=torch.bool)
    if task == "t2v" or gt == 1 and task != "regions":
        return mask
    if task == "first_frame":
        mask[0] = True
    elif task == "first_k":
        k = 1 + int(torch.randint(gt - 1, (), generator=g))
        mask[:k] = True
    elif task == "first_last":
        mask[0] = mask[-1] = True
    elif task == "regions":
        fraction = 0.1 + 0.4 * float(torch.rand((), generator=g))
        side = fraction ** (1 / 3)  # same share of each axis
        lt, lh, lw = (max(1, round(side * n)) for n in grid)
        t0, h0, w0 = (
            int(torch.randint(n - ln + 1, (), generator=g))
            for n, ln in zip(grid, (lt, lh, lw), strict=True)
        )
        mask[t0 : t0 + lt, h0 : h0 + lh, w0 : w0 + lw] = True
    else:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    return mask


def sample_given(
    cfg: TaskConfig, grid: tuple[int, int, int], batch: int, g: torch.Generator
) -> tuple[torch.Tensor, list[str]]:
    """(B, N) bool token masks of the given tokens (raster order) and each sample's task."""
    weights = torch.tensor([getattr(cfg, name) for name in TASKS], dtype=torch.float64)
    picks = torch.multinomial(weights, batch, replacement=True, generator=g)
    tasks = [TASKS[int(i)] for i in picks]
    drop = torch.rand(batch, generator=g) < cfg.drop_condition
    tasks = ["t2v" if d else task for task, d in zip(tasks, drop.tolist(), strict=True)]
    masks = torch.stack([given_mask(task, grid, g).flatten() for task in tasks])
    return masks, tasks
