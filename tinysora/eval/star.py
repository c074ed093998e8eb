"""Star check: does a generated clip show a five-pointed star of the prompt's color and motion?

The Shapes World detector knows circles, squares and triangles only; a star needs its
own test. Shape: in each of 5 evenly spaced frames, the object's mask (pixels nearer
the prompt's color than the clip's background, largest connected region) is read as a
radius profile r(theta) around its centroid (36 angle bins, farthest pixel per bin);
a star's profile repeats every 72 degrees, so its strongest harmonic (k in 2..8) is
k = 5 and that harmonic is at least STAR_HARMONIC of the mean radius (a circle's
profile is flat, a square's has k = 4, a triangle's k = 3). A clip shows a star when
at least 3 of the 5 frames do. Color and motion come from the world's detector
(``worlds.detect``: the object of the prompt's color, its motion).

    python scripts/star_check.py --model weights --lora runs/stars/adapter --n 48
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tinysora.worlds.detect import detect
from tinysora.worlds.shapes import COLORS

BINS = 36
STAR_HARMONIC = 0.08
MIN_PIXELS = 12


def radius_profile(mask: np.ndarray) -> np.ndarray | None:
    """r(theta) of a mask's largest region around its centroid (BINS bins), or None."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    region = labels == 1 + int(np.argmax(sizes))
    if region.sum() < MIN_PIXELS:
        return None
    ys, xs = np.nonzero(region)
    cy, cx = ys.mean(), xs.mean()
    angles = np.arctan2(ys - cy, xs - cx)
    radii = np.hypot(ys - cy, xs - cx)
    bins = ((angles + np.pi) / (2 * np.pi) * BINS).astype(int) % BINS
    profile = np.zeros(BINS)
    np.maximum.at(profile, bins, radii)
    return profile


def frame_is_star(frame: np.ndarray, color: str, background: np.ndarray) -> bool:
    pixels = frame.astype(float)
    to_color = np.linalg.norm(pixels - np.array(COLORS[color], dtype=float), axis=-1)
    to_background = np.linalg.norm(pixels - background, axis=-1)
    profile = radius_profile(to_color < to_background)
    if profile is None or profile.mean() <= 0:
        return False
    harmonics = np.abs(np.fft.rfft(profile - profile.mean()))[: BINS // 2 + 1] / BINS * 2
    strongest = 2 + int(np.argmax(harmonics[2:9]))
    return strongest == 5 and harmonics[5] >= STAR_HARMONIC * profile.mean()


def is_star(clip: np.ndarray, color: str) -> bool:
    """True when at least 3 of 5 evenly spaced frames show a five-pointed star of ``color``."""
    background = np.median(clip.reshape(-1, 3), axis=0)
    picks = np.linspace(0, len(clip) - 1, 5).round().astype(int)
    return sum(frame_is_star(clip[i], color, background) for i in picks) >= 3


def judge_star(clip: np.ndarray, color: str, motion: str) -> dict:
    """Star shape, the prompt's color and its motion (``all_right`` when all three hold)."""
    found = {o.color: o for o in detect(clip).objects}
    obj = found.get(color)
    result = {
        "star": is_star(clip, color),
        "color": obj is not None,
        "motion": obj is not None and obj.motion == motion,
    }
    result["all_right"] = all(result.values())
    return result
