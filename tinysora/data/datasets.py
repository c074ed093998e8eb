"""Training data: Shapes World clips, rendered on the fly, deterministic per step.

``WorldBatches(cfg, split)(step)`` returns the batch of a step: the clip size
(H, W, T) is drawn from the configured mixture, the batch size follows a pixel
budget (so a step of 9-frame 32x32 clips costs about what a step of 33-frame
64x64 clips does), and the seeds are drawn from the split. The same step always
gives the same batch, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from tinysora.config import Config
from tinysora.io.frames import frames_to_tensor
from tinysora.worlds.shapes import (
    TEST_SEED_START,
    TRAIN_SEEDS,
    VAL_SEEDS,
    SplitMix64,
    check_size,
    render,
    sample_scene,
)


@dataclass
class WorldDataConfig(Config):
    # (height, width) choices, each a multiple of 8 in 32..512
    sizes: list[tuple[int, int]] = field(
        default_factory=lambda: [(64, 64), (48, 96), (96, 48), (64, 112), (112, 64), (32, 32)]
    )
    frames: list[int] = field(default_factory=lambda: [1, 9, 17, 33])
    frame_weights: list[float] = field(default_factory=lambda: [0.2, 0.2, 0.4, 0.2])
    pixels_per_batch: int = 4 * 17 * 64 * 64  # batch size = max(1, budget // (T*H*W))
    max_batch: int = 32
    seed: int = 0


def split_range(split: str) -> tuple[int, int]:
    if split == "train":
        return TRAIN_SEEDS.start, TRAIN_SEEDS.stop
    if split == "val":
        return VAL_SEEDS.start, VAL_SEEDS.stop
    if split == "test":
        return TEST_SEED_START, TEST_SEED_START + 1_000_000
    raise ValueError(f"unknown split {split!r}")


class WorldBatches:
    """Callable ``step -> (B, 3, T, H, W)`` float batch in [-1, 1] from one world split."""

    def __init__(self, cfg: WorldDataConfig, split: str = "train"):
        for h, w in cfg.sizes:
            check_size(h, w, 1)
        if len(cfg.frames) != len(cfg.frame_weights):
            raise ValueError("data.frames and data.frame_weights must have the same length")
        self.cfg, self.split = cfg, split
        self.lo, self.hi = split_range(split)
        total = sum(cfg.frame_weights)
        self.cum = np.cumsum(cfg.frame_weights) / total

    def shape_at(self, step: int) -> tuple[int, int, int, int]:
        """(batch, H, W, T) of a step; (size, length) pairs over the pixel budget are redrawn."""
        rng = SplitMix64(self.cfg.seed, step, 0)
        for _ in range(100):
            h, w = rng.choice(self.cfg.sizes)
            t = self.cfg.frames[int(np.searchsorted(self.cum, rng.uniform(), side="right"))]
            if t * h * w <= self.cfg.pixels_per_batch:
                break
        else:
            raise ValueError("data.pixels_per_batch is too small for every size and length")
        b = max(1, min(self.cfg.max_batch, self.cfg.pixels_per_batch // (t * h * w)))
        return b, h, w, t

    def __call__(self, step: int) -> torch.Tensor:
        b, h, w, t = self.shape_at(step)
        rng = SplitMix64(self.cfg.seed, step, 1)
        seeds = [self.lo + int(rng.uniform() * (self.hi - self.lo)) for _ in range(b)]
        clips = [frames_to_tensor(render(sample_scene(s), h, w, t)) for s in seeds]
        return torch.stack(clips)  # (B, 3, T, H, W)
