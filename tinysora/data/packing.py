"""Patch n' Pack: many latent clips of any size and length in fixed-size token sequences.

A clip (or image, T = 1) of a (gt, gh, gw) patch grid is gt x gh x gw tokens. Instead
of resizing, cropping or padding every clip to the longest, clips are packed whole
into rows of ``budget`` tokens (first-fit decreasing), each token keeping its own
(t, h, w) position and a *segment id* (its clip's index within the row; -1 = padding).
The DiT then masks attention to the block diagonal (``tinysora.nn.attention.segment_mask``)
and cross-attention to each clip's own caption tokens, so a packed clip is computed
exactly as if it were alone (tested). :func:`plan_row` chooses sizes so that rows are
nearly full: clips from the mixture while they fit, then small images as filler.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tinysora.config import Config
from tinysora.worlds.shapes import SplitMix64

PAD = -1  # segment id of padding tokens


def first_fit_decreasing(lengths: list[int], budget: int) -> list[list[int]]:
    """Rows of item indices: each item goes into the first row with room, longest first."""
    if any(n > budget for n in lengths):
        raise ValueError(f"an item of {max(lengths)} tokens does not fit a row of {budget}")
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(budget - lengths[i])
    return rows


@dataclass
class Packed:
    """Rows of packed tokens and where each item went.

    tokens (R, budget, P); positions (R, budget, 3); segments (R, budget) (PAD on
    padding); text (R, Lt, D), text_mask (R, Lt), text_segments (R, Lt) (PAD on
    padding); ``places[i] = (row, start, length)`` of item i's tokens.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor
    text_segments: torch.Tensor
    places: list[tuple[int, int, int]]

    @property
    def valid(self) -> torch.Tensor:
        """(R, budget) bool: real tokens (the loss mask before any conditioning)."""
        return self.segments != PAD

    @property
    def efficiency(self) -> float:
        """Real tokens / all tokens."""
        return float(self.valid.float().mean())

    def scatter(self, items: list[torch.Tensor]) -> torch.Tensor:
        """Per-item token tensors (N_i, ...) -> rows (R, budget, ...) laid out like the
        packed tokens (zeros on padding): e.g. the velocity targets."""
        out = items[0].new_zeros((*self.segments.shape, *items[0].shape[1:]))
        for item, (row, start, length) in zip(items, self.places, strict=True):
            out[row, start : start + length] = item
        return out

    def per_token(self, values: torch.Tensor) -> torch.Tensor:
        """Per-item values (I, ...) -> per-token (R, budget, ...) (zeros on padding)."""
        out = values.new_zeros((*self.segments.shape, *values.shape[1:]))
        for i, (row, start, length) in enumerate(self.places):
            out[row, start : start + length] = values[i]
        return out

    def unpack(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """(R, budget, ...) model output -> per-item (N_i, ...) tensors, in item order."""
        return [rows[row, start : start + length] for row, start, length in self.places]


def pack(
    tokens: list[torch.Tensor],
    positions: list[torch.Tensor],
    text: list[torch.Tensor],
    text_mask: list[torch.Tensor],
    budget: int,
    rows: list[list[int]] | None = None,
) -> Packed:
    """Pack items (tokens (N_i, P), positions (N_i, 3), caption states (L, D) with mask
    (L,)) into rows of ``budget`` tokens: ``rows`` = item indices of each row (e.g. as
    ``plan_row`` planned them), default first-fit-decreasing. Each row's captions are
    concatenated with only their real tokens kept; rows are padded to the longest."""
    if not (len(tokens) == len(positions) == len(text) == len(text_mask)):
        raise ValueError("tokens, positions, text and text_mask need one entry per item")
    if rows is None:
        rows = first_fit_decreasing([len(x) for x in tokens], budget)
    elif any(sum(len(tokens[i]) for i in row) > budget for row in rows):
        raise ValueError(f"a planned row holds more than {budget} tokens")
    p, d = tokens[0].shape[1], text[0].shape[1]
    captions = [[text[i][text_mask[i]] for i in row] for row in rows]
    lt = max(sum(len(c) for c in caps) for caps in captions)
    out = Packed(
        tokens=tokens[0].new_zeros(len(rows), budget, p),
        positions=torch.zeros(len(rows), budget, 3),
        segments=torch.full((len(rows), budget), PAD, dtype=torch.long),
        text=text[0].new_zeros(len(rows), lt, d),
        text_mask=torch.zeros(len(rows), lt, dtype=torch.bool),
        text_segments=torch.full((len(rows), lt), PAD, dtype=torch.long),
        places=[(0, 0, 0)] * len(tokens),
    )
    for r, row in enumerate(rows):
        start = text_start = 0
        for seg, i in enumerate(row):
            n, caption = len(tokens[i]), captions[r][seg]
            out.tokens[r, start : start + n] = tokens[i]
            out.positions[r, start : start + n] = positions[i]
            out.segments[r, start : start + n] = seg
            out.places[i] = (r, start, n)
            end = text_start + len(caption)
            out.text[r, text_start:end] = caption
            out.text_mask[r, text_start:end] = True
            out.text_segments[r, text_start:end] = seg
            start, text_start = start + n, end
    return out


# ------------------------------------------------------------------------ size choice


@dataclass
class Mixture(Config):
    """Clip sizes to train on: sides in ``sides`` (pixels, multiples of 16), aspect
    between 1:``max_aspect`` and ``max_aspect``:1, frames from ``frames`` with weights."""

    sides: tuple[int, ...] = (32, 48, 64, 80, 96, 112, 128)
    max_aspect: float = 2.0
    frames: tuple[int, ...] = (1, 9, 17, 33)
    frame_weights: tuple[float, ...] = (0.2, 0.3, 0.3, 0.2)
    pixels_per_token: int = 16 * 16  # VAE x8 then 2x2 patches
    frames_per_token: int = 4  # VAE x4 in time (frame 0 alone), patch 1 in time

    def sizes(self) -> list[tuple[int, int, int]]:
        """Every (frames, height, width) of the mixture."""
        return [(f, h, w) for f in self.frames for h, w in self.shapes()]

    def shapes(self) -> list[tuple[int, int]]:
        return [
            (h, w)
            for h in self.sides
            for w in self.sides
            if max(h, w) <= self.max_aspect * min(h, w)
        ]

    def tokens(self, frames: int, height: int, width: int) -> int:
        latent_t = 1 + (frames - 1) // self.frames_per_token
        return latent_t * (height * width // self.pixels_per_token)

    def draw(self, rng: SplitMix64) -> tuple[int, int, int]:
        """A random (frames, height, width) of the mixture."""
        shapes = self.shapes()
        h, w = shapes[int(rng.uniform() * len(shapes))]
        u, acc = rng.uniform() * sum(self.frame_weights), 0.0
        for frames, weight in zip(self.frames, self.frame_weights, strict=True):
            acc += weight
            if u < acc:
                return frames, h, w
        return self.frames[-1], h, w


def plan_row(mixture: Mixture, budget: int, rng: SplitMix64, tries: int = 8):
    """Sizes (frames, height, width) of the clips of one row of ``budget`` tokens.

    Draws from the mixture while a draw fits (giving up after ``tries`` misses in a
    row), then fills the rest with the largest images (T = 1) that fit; what is left
    is smaller than the smallest image and stays padding.
    """
    plan, free, misses = [], budget, 0
    while misses < tries:
        size = mixture.draw(rng)
        n = mixture.tokens(*size)
        if n <= free:
            plan.append(size)
            free -= n
            misses = 0
        else:
            misses += 1
    if 1 not in mixture.frames:
        return plan
    images = sorted(mixture.shapes(), key=lambda hw: -mixture.tokens(1, *hw))
    for h, w in images:
        while mixture.tokens(1, h, w) <= free:
            plan.append((1, h, w))
            free -= mixture.tokens(1, h, w)
    return plan


# ------------------------------------------------------------------ efficiency baselines


def packed_efficiency(lengths: list[int], budget: int, window: int = 64) -> float:
    """Real / total tokens when each window of consecutive items is packed (FFD)."""
    total = 0
    for i in range(0, len(lengths), window):
        total += budget * len(first_fit_decreasing(lengths[i : i + window], budget))
    return sum(lengths) / total


def padded_efficiency(lengths: list[int], batch: int) -> float:
    """Real / total tokens when consecutive batches are padded to their longest item."""
    total = sum(batch * max(lengths[i : i + batch]) for i in range(0, len(lengths), batch))
    return sum(lengths) / total


def bucketed_efficiency(sizes: list[tuple[int, int, int]], mixture: Mixture, batch: int) -> float:
    """Real / total tokens with aspect buckets: items are grouped by (frames, aspect
    ratio rounded to a power of 2^(1/2)); each full batch of a bucket is padded to its
    largest item (a bucket's last partial batch is padded to ``batch`` items)."""
    buckets: dict[tuple[int, int], list[int]] = {}
    for frames, h, w in sizes:
        aspect = round(2 * torch.log2(torch.tensor(h / w)).item())
        buckets.setdefault((frames, aspect), []).append(mixture.tokens(frames, h, w))
    real = total = 0
    for lengths in buckets.values():
        for i in range(0, len(lengths), batch):
            chunk = lengths[i : i + batch]
            real += sum(chunk)
            total += batch * max(chunk)
    return real / total
