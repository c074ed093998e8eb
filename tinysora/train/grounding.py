"""Grounding loss (TokenCompose's token loss, on the DiT's cross-attention): each
subject's words should put their attention mass on the video tokens where that subject
is. The Shapes World gives every object's mask in every frame for free.

For a caption made by ``worlds.captions.paraphrase`` ("[a] [size] color shape motion
and ... [on a X background]"), subject k's words are its clause's words but the article
(:func:`subject_words`); object k's tokens are the latent patch tokens its visible
coverage touches (:func:`object_tokens`: a latent frame is video frame 0 alone, then 4
frames each; a patch covers 8 x patch pixels a side). For a text token s of subject k,
the attention it receives from the video tokens (softmax over the text, per query) in
a grounded block and head is ``A[:, s]``; the loss is the mean over those of
``(1 - sum_{n in object k} A[n, s] / sum_n A[n, s]) ** 2``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from tinysora.config import Config
from tinysora.vae.model import SPACE_FACTOR, TIME_FACTOR
from tinysora.worlds.shapes import Scene, layout, track_coverage

MAX_SUBJECTS = 2  # the world's scenes hold one or two objects
TOUCH = 0.02  # a token belongs to an object where the object covers > 2% of it
ARTICLES = ("a", "an")


@dataclass
class GroundingConfig(Config):
    """``[grounding]`` of a DiT recipe: the weight of the grounding loss beside the
    velocity loss (0 = off) and the blocks whose cross-attention it shapes ([] = all)."""

    weight: float = 0.0
    blocks: list[int] = field(default_factory=list)


def subject_words(caption: str, n_objects: int) -> list[list[int]]:
    """Word indices (whitespace words) of each subject's attribute words in a paraphrase
    of a scene with ``n_objects`` objects; [] for each when the caption was dropped."""
    out: list[list[int]] = [[] for _ in range(n_objects)]
    k = 0
    for i, word in enumerate(caption.split()):
        if word == "on":  # " on a X background": the scene's, not a subject's
            break
        if word == "and":
            k += 1
        elif word not in ARTICLES:
            out[k].append(i)
    return out


@functools.lru_cache(maxsize=1 << 16)
def object_tokens(
    scene: Scene, frames: int, height: int, width: int, patch: tuple[int, int, int]
) -> np.ndarray:
    """(K, N) bool: the latent patch tokens (raster order t, h, w) each object touches
    (6 ms a scene, remembered: a run draws the same cached clips again)."""
    tracks = layout(scene, height, width, frames)
    starts = range(1, frames, TIME_FACTOR)  # video frames of latent frame j: frame 0 alone,
    groups = [[0]] + [list(range(s, min(s + TIME_FACTOR, frames))) for s in starts]  # then 4
    pt, ph, pw = patch
    side_h, side_w = SPACE_FACTOR * ph, SPACE_FACTOR * pw  # pixels of a token, a side
    gh, gw = height // side_h, width // side_w
    out = []
    for k, track in enumerate(tracks):
        seen = np.zeros((frames, height, width))
        for i in range(frames):
            cov = track_coverage(track, i, height, width)
            for later in tracks[k + 1 :]:  # later objects are drawn on top
                cov = cov * (1 - track_coverage(later, i, height, width))
            seen[i] = cov
        per_latent = np.stack([seen[g].mean(0) for g in groups])  # (t, H, W)
        t = len(per_latent) // pt
        tokens = per_latent[: t * pt].reshape(t, pt, gh, side_h, gw, side_w).mean((1, 3, 5))
        out.append(tokens.reshape(-1) > TOUCH)  # (t * gh * gw,)
    return np.stack(out)


def grounding_targets(
    scenes: list[Scene],
    captions: list[str],
    word_ids: torch.Tensor,
    frames: int,
    height: int,
    width: int,
    patch: tuple[int, int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """For a batch: (B, K, L) bool text tokens of subject k, and (B, K, N) bool video
    tokens of object k (K = MAX_SUBJECTS, unused rows all False). ``word_ids``: the text
    encoder's word index per token slot (``TextEncoder.word_ids``)."""
    b, length = word_ids.shape
    words = torch.zeros(b, MAX_SUBJECTS, length, dtype=torch.bool)
    places = None
    for i, (scene, caption) in enumerate(zip(scenes, captions, strict=True)):
        where = torch.from_numpy(object_tokens(scene, frames, height, width, tuple(patch)))
        if places is None:
            places = torch.zeros(b, MAX_SUBJECTS, where.shape[1], dtype=torch.bool)
        places[i, : len(where)] = where
        for k, indices in enumerate(subject_words(caption, len(scene.objects))):
            words[i, k] = torch.isin(word_ids[i], torch.tensor(indices, dtype=torch.long))
    return words, places


def grounding_loss(
    probs: list[torch.Tensor], words: torch.Tensor, places: torch.Tensor
) -> torch.Tensor:
    """probs: per grounded block (B, heads, N, L) cross-attention probabilities; words
    (B, K, L), places (B, K, N) bool. The mean of (1 - share inside the object)^2 over
    every subject word, head and block (0 when the batch has no subject word)."""
    a = torch.stack(probs).float()  # (blocks, B, h, N, L)
    inside = torch.einsum("ybhnl,bkn->ybhkl", a, places.to(a.dtype))
    total = a.sum(3)[:, :, :, None, :]  # (blocks, B, h, 1, L)
    share = inside / total.clamp_min(1e-12)
    w = words[None, :, None].to(a.dtype)  # (1, B, 1, K, L)
    count = w.sum() * a.shape[0] * a.shape[2]
    return ((1 - share) ** 2 * w).sum() / count.clamp_min(1.0)
