"""The measures of ``tinysora eval tasks`` (see ``eval.tasks`` for what each task
judges): frame PSNR, extension seams and segments, straight-line monotonicity, loop
ratio, track correlation, and the edited scene of the editing task."""

from __future__ import annotations

import math

import numpy as np

from tinysora.errors import UserError
from tinysora.nn.metrics import psnr
from tinysora.pipeline import CONTEXT_LATENTS
from tinysora.vae.model import TIME_FACTOR
from tinysora.worlds.detect import detect
from tinysora.worlds.shapes import COLORS, HELD_OUT_PAIRS, SHAPES, ObjectSpec, Scene, SplitMix64

SEAM_SLACK_PX = 1.0  # a seam may jump this much more than the clip's median step
MONOTONE_TOL_PX = 0.5  # a straight-line track may step back this much (detector noise)
PSNR_CAP_DB = 100.0
EDIT_STREAM = 7  # SplitMix64 stream of the edit's new color and shape
CONTEXT_FRAMES = 1 + TIME_FACTOR * (CONTEXT_LATENTS - 1)  # frames an extension window gets
STRAIGHT: dict[str, tuple[float, float]] = {  # unit direction (x, y) of a straight motion
    "moving left": (-1.0, 0.0),
    "moving right": (1.0, 0.0),
    "moving up": (0.0, -1.0),
    "moving down": (0.0, 1.0),
}


def frame_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 images, capped at PSNR_CAP_DB (identical images)."""
    return min(psnr(a, b), PSNR_CAP_DB)


def extension_seams(start: int, total: int, window: int) -> list[int]:
    """First frames of each new window when a ``start``-frame clip is extended to ``total``
    frames ``window`` frames at a time (the pipeline's ``video`` + ``extend`` + ``window``):
    each window re-generates the last CONTEXT_FRAMES frames and keeps the rest."""
    if window <= CONTEXT_FRAMES:
        raise UserError(f"an extension window must be longer than {CONTEXT_FRAMES} frames")
    return list(range(start, total, window - CONTEXT_FRAMES))


def steps_px(track: np.ndarray) -> np.ndarray:
    """(T-1,) distance (px) between consecutive centres of a (T, 2) track; NaN where unseen."""
    return np.linalg.norm(np.diff(track, axis=0), axis=1)


def seam_check(track: np.ndarray, seams: list[int], slack: float = SEAM_SLACK_PX) -> dict:
    """Seam jumps of a (T, 2) centre track against the bound: median non-seam step + slack.

    Returns ``{"allowed_px", "jumps_px", "excess_px", "ok"}`` (lists per seam; NaN where
    the object is not seen on both sides of a seam, which is not ok).
    """
    steps = steps_px(track)  # steps[t] = |c_{t+1} - c_t|
    into = np.array(seams, dtype=int) - 1  # the step into seam frame s is steps[s - 1]
    inner = np.delete(steps, into)
    inner = inner[~np.isnan(inner)]
    allowed = float(np.median(inner)) + slack if len(inner) else math.nan
    jumps = steps[into]
    excess = jumps - allowed
    ok = [bool(e <= 0) for e in excess]  # NaN compares False
    return {"allowed_px": allowed, "jumps_px": jumps, "excess_px": excess, "ok": ok}


def segment_frames(scene: Scene, clip: np.ndarray, seams: list[int]) -> tuple:
    """(detected, kept): (T,) bools per frame. Each segment between seams is detected
    alone; *detected*: every prompt object's color is seen in the frame; *kept*: also
    with the prompt's shape (decided per segment)."""
    bounds = [0, *seams, len(clip)]
    detected = np.ones(len(clip), dtype=bool)
    kept = np.ones(len(clip), dtype=bool)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        by_color = {o.color: o for o in detect(clip[a:b]).objects}
        for spec in scene.objects:
            obj = by_color.get(spec.color)
            seen = np.zeros(b - a, bool) if obj is None else ~np.isnan(obj.track[:, 0])
            detected[a:b] &= seen
            kept[a:b] &= seen & (obj is not None and obj.shape == spec.shape)
    return detected, kept


def is_monotone(track: np.ndarray, motion: str, tol: float = MONOTONE_TOL_PX) -> bool:
    """Whether a (T, 2) track never steps back along a straight ``motion`` by > ``tol`` px
    (frames where it is unseen are skipped; fewer than 2 seen frames is not monotone)."""
    if motion not in STRAIGHT:
        raise ValueError(f"{motion!r} is not a straight-line motion ({', '.join(STRAIGHT)})")
    seen = ~np.isnan(track[:, 0])
    along = track[seen] @ np.array(STRAIGHT[motion])  # (seen,) position along the motion
    return len(along) >= 2 and bool((np.diff(along) >= -tol).all())


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images (0-255 units)."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def loop_ratio(clip: np.ndarray) -> float:
    """Last-to-first frame difference over the median frame-to-frame difference (0 for
    a still clip that loops, inf for a still clip whose ends differ)."""
    if len(clip) < 2:
        raise ValueError("a loop needs at least 2 frames")
    steps = [mean_abs_diff(clip[t + 1], clip[t]) for t in range(len(clip) - 1)]
    median, end = float(np.median(steps)), mean_abs_diff(clip[-1], clip[0])
    if median == 0:
        return 0.0 if end == 0 else math.inf
    return end / median


def track_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two (T, 2) centre tracks, x then y concatenated, over the
    frames where both are seen (NaN for fewer than 2 such frames or a constant track)."""
    both = ~np.isnan(a[:, 0]) & ~np.isnan(b[:, 0])
    if both.sum() < 2:
        return math.nan
    u = np.concatenate([a[both, 0], a[both, 1]])
    v = np.concatenate([b[both, 0], b[both, 1]])
    if u.std() == 0 or v.std() == 0:
        return math.nan
    return float(np.corrcoef(u, v)[0, 1])


def edited_scene(scene: Scene) -> Scene:
    """``scene`` with its first object in another color and another shape (drawn from the
    seed; never a held-out pair or another object's color). Size, motion, background and
    seed are kept, so the world places the edited object where the original was."""
    first, rest = scene.objects[0], scene.objects[1:]
    used = {o.color for o in rest}
    pairs = [
        (c, s)
        for c in COLORS
        for s in SHAPES
        if c != first.color and s != first.shape and c not in used
        if (c, s) not in HELD_OUT_PAIRS
    ]
    color, shape = SplitMix64(scene.seed, EDIT_STREAM).choice(pairs)
    new = ObjectSpec(color, shape, first.size, first.motion)
    return Scene((new, *rest), scene.background, scene.seed)
