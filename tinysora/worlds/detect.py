"""Analytic detector for Shapes World: clip -> objects (color, shape, motion, centre track).

It never sees a caption. It knows only the world's palette and geometry
(shared/WORLD.md), and works on rendered, blurred, H.264-compressed or generated
RGB clips:

1. **Background** = the per-channel median of the clip (objects cover well under
   half of it); its name is the nearest background color.
2. **Pixel labels.** Each pixel gets the nearest palette color (the measured
   background + the 8 object colors) if it is clearly nearer to it than to the
   runner-up (ratio test); blended edge pixels stay unlabeled.
3. **Objects = colors.** Two objects never share a color, so each object color
   with a solid *core* in enough frames is one object. The core drops pixels
   within 2 px of another color's pixels: the blend of an object's edge with the
   background can look like a third palette color (red over white blends to
   pink), but only in a thin ring hugging the object, which the core removes.
4. **Soft coverage** (alpha) of the object in each frame: the pixel's projection
   on the background -> object-color segment, in a 1-px dilation of the object's
   largest connected region. Area = sum of alpha; centroid = alpha-weighted mean.
5. **Shape** by analysis-by-synthesis: for each shape, the renderer draws the
   shape with the measured area and centroid, and the shape whose drawing best
   matches alpha (squared error) in the least-occluded frames wins.
6. **Motion** from the track: scale trend (growing / shrinking), a fall followed
   by a rise (bouncing), net displacement (moving left/right/up/down), else
   standing still. A single image has no motion (``None``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

from tinysora.worlds.shapes import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    SIZES,
    SQRT3,
    shape_coverage,
)

COLOR_NAMES = tuple(COLORS)
PALETTE = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float32)  # (8, 3)
LABEL_RATIO = 0.6  # nearest palette color must be < 0.6x as far as the runner-up
LABEL_MAX_DIST = 90.0  # ... and closer than this (RGB units)
RING_RADIUS = 2  # core = pixels further than this from any other color's pixels
MIN_CORE_PIXELS = 2  # a frame "shows" the object if its core has this many pixels
MIN_PRESENT_FRACTION = 0.4  # an object must show in this fraction of frames
SHAPE_FRAMES = 5  # frames used to decide the shape
GROW_RATIO = 1.5  # fitted end/start scale beyond this -> growing / shrinking
BOUNCE_FALL = 0.15  # bouncing: falls by > 0.15 H ...
BOUNCE_RISE = 0.06  # ... then rises again by > 0.06 H
MOVE_MIN = 0.2  # net displacement > 0.2 of the frame side counts as moving


@dataclass
class DetectedObject:
    color: str
    shape: str
    motion: str | None  # None for a single image
    size: str  # 'small' or 'large' (nearest size word, from the mid-clip scale)
    track: np.ndarray  # (T, 2) centre (x, y) of the bounding box; NaN where unseen
    area: np.ndarray  # (T,) soft area in pixels (0 where unseen)

    @property
    def description(self) -> str:
        motion = f" {self.motion}" if self.motion else ""
        return f"{self.size} {self.color} {self.shape}{motion}"


@dataclass
class Detection:
    background: str
    objects: list[DetectedObject]


def detect(frames: np.ndarray) -> Detection:
    """Read a clip (uint8 (T, H, W, 3) or (H, W, 3)) into its background and objects."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"detect() wants RGB frames (T, H, W, 3), got shape {frames.shape}")
    x = frames.astype(np.float32)
    bg = np.median(x.reshape(-1, 3), axis=0)  # (3,)
    bg_name = min(BACKGROUNDS, key=lambda n: float(np.sum((np.array(BACKGROUNDS[n]) - bg) ** 2)))
    labels = _label_pixels(x, bg)  # (T, H, W) in -1 (none), 0 (background), 1..8 (colors)
    objects = []
    for k, color in enumerate(COLOR_NAMES, start=1):
        obj = _detect_color(x, labels, k, color, bg)
        if obj is not None:
            objects.append(obj)
    objects.sort(key=lambda o: -float(o.area.mean()))
    return Detection(bg_name, objects)


def _label_pixels(x: np.ndarray, bg: np.ndarray) -> np.ndarray:
    palette = np.concatenate([bg[None], PALETTE])  # (9, 3)
    d = np.sqrt(((x[..., None, :] - palette) ** 2).sum(-1))  # (T, H, W, 9)
    order = np.argsort(d, axis=-1)
    d1 = np.take_along_axis(d, order[..., :1], -1)[..., 0]
    d2 = np.take_along_axis(d, order[..., 1:2], -1)[..., 0]
    ok = (d1 < LABEL_RATIO * d2) & (d1 < LABEL_MAX_DIST)
    return np.where(ok, order[..., 0], -1)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate each frame of a (T, H, W) mask by a square of side 2r + 1."""
    if radius <= 0:
        return mask
    return ndimage.maximum_filter(mask, size=(1, 2 * radius + 1, 2 * radius + 1))


def _detect_color(x, labels, k, color, bg) -> DetectedObject | None:
    t, h, w, _ = x.shape
    mask = labels == k  # (T, H, W)
    others = (labels >= 1) & ~mask
    core = mask & ~_dilate(others, RING_RADIUS)
    shows = core.reshape(t, -1).sum(1) >= MIN_CORE_PIXELS
    if shows.mean() < MIN_PRESENT_FRACTION:
        return None
    target = np.array(COLORS[color], dtype=np.float32)
    axis = target - bg
    alpha = np.clip(((x - bg) @ axis) / float(axis @ axis), 0.0, 1.0)  # (T, H, W)
    areas, centroids, regions = np.zeros(t), np.full((t, 2), np.nan), []
    visible = ~_dilate(others, 1)  # pixels not hidden by (or blended with) other objects
    near_other = np.zeros(t, dtype=bool)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    for i in range(t):
        region = _main_region(mask[i], core[i])
        if region is None:
            regions.append(None)
            continue
        region = ndimage.binary_dilation(region, iterations=1) & ~others[i]
        a = alpha[i] * region
        areas[i] = a.sum()
        if areas[i] > 0:
            centroids[i] = (float((a * xx).sum() / areas[i]), float((a * yy).sum() / areas[i]))
        regions.append(a)
        near_other[i] = bool((ndimage.binary_dilation(region, iterations=4) & others[i]).any())
    seen = areas > 0
    if not seen.any():
        return None
    clean = seen & ~near_other
    shape, occlusion = _classify_shape(regions, visible, areas, centroids, clean, h, w)
    track = centroids.copy()
    if shape == "triangle":  # bbox centre sits h/6 above the centroid
        track[:, 1] -= _side_from_area("triangle", areas) * SQRT3 / 2 / 6
    motion, mid_side = _classify_motion(track, areas, clean, shape, h, w)
    mid_side *= occlusion
    size = min(SIZES, key=lambda s: abs(SIZES[s] * min(h, w) - mid_side))
    return DetectedObject(color, shape, motion, size, track, areas)


def _main_region(mask: np.ndarray, core: np.ndarray) -> np.ndarray | None:
    """The connected region of ``mask`` holding the most core pixels (8-connectivity)."""
    if not core.any():
        return None
    lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
    counts = np.bincount(lab[core], minlength=n + 1)
    counts[0] = 0
    return lab == int(np.argmax(counts))


def _side_from_area(shape: str, area):
    """Diameter / side of a shape with the given area."""
    if shape == "circle":
        return np.sqrt(4 * np.asarray(area) / np.pi)
    if shape == "square":
        return np.sqrt(np.asarray(area))
    return np.sqrt(4 * np.asarray(area) / SQRT3)


def _classify_shape(regions, visible, areas, centroids, clean, h, w) -> tuple[str, float]:
    """(best shape, occlusion correction = median fitted side / side from area)."""
    seen = np.flatnonzero(areas > 0)
    pool = np.flatnonzero(clean) if clean.any() else seen
    frames = pool[np.argsort(-areas[pool])][:SHAPE_FRAMES]
    errors = dict.fromkeys(SHAPES, 0.0)
    sides: dict[str, list[float]] = {s: [] for s in SHAPES}
    for i in frames:
        for shape in SHAPES:
            err, side = _fit_template(
                shape, regions[i], visible[i], areas[i], centroids[i], h, w, refine=not clean[i]
            )
            errors[shape] += err
            sides[shape].append(side)
    best = min(errors, key=errors.get)
    from_area = _side_from_area(best, areas[frames])
    return best, float(np.median(np.array(sides[best]) / from_area))


def _fit_template(shape, alpha, visible, area, centroid, h, w, refine) -> tuple[float, float]:
    """Squared error (per unit area) of the best drawing of ``shape`` against ``alpha``.

    The drawing starts with the measured area and centroid; when part of the object
    is hidden (``refine``), centre and side are fitted on the visible pixels only.
    """
    side = float(_side_from_area(shape, area))
    cx, cy = centroid
    if shape == "triangle":
        cy -= side * SQRT3 / 2 / 6

    def error(p) -> float:
        template = shape_coverage(shape, p[0], p[1], max(p[2], 0.5), h, w, ss=4)
        return float((((template - alpha) * visible) ** 2).sum() / area)

    p0 = np.array([cx, cy, side])
    if not refine:
        return error(p0), side
    simplex = np.stack([p0, p0 + [1.0, 0, 0], p0 + [0, 1.0, 0], p0 + [0, 0, 0.15 * side]])
    options = {"xatol": 0.05, "fatol": 1e-4, "maxiter": 200, "initial_simplex": simplex}
    res = optimize.minimize(error, p0, method="Nelder-Mead", options=options)
    return float(res.fun), float(res.x[2])


def _classify_motion(track, areas, clean, shape, h, w) -> tuple[str | None, float]:
    """(motion or None for an image, fitted side at mid-clip in pixels)."""
    t = len(areas)
    taus = np.arange(t) / max(t - 1, 1)
    sides = _side_from_area(shape, areas)
    use = np.flatnonzero(clean if clean.sum() >= 2 else areas > 0)
    if len(use) >= 2 and np.ptp(taus[use]) > 0:
        slope, icpt = np.polyfit(taus[use], sides[use], 1)
    else:
        slope, icpt = 0.0, float(np.mean(sides[use]))
    mid_side = icpt + slope * 0.5
    if t == 1:
        return None, mid_side
    start, end = icpt, icpt + slope
    if end > GROW_RATIO * start:
        return "growing", mid_side
    if start > GROW_RATIO * end:
        return "shrinking", mid_side
    seen = ~np.isnan(track[:, 0])
    xs, ys = track[seen, 0], track[seen, 1]
    fall = ys.max() - ys[0]
    rise = (np.maximum.accumulate(ys) - ys).max()  # largest climb back after a low point
    if fall > BOUNCE_FALL * h and rise > BOUNCE_RISE * h:
        return "bouncing", mid_side
    dx, dy = (xs[-1] - xs[0]) / w, (ys[-1] - ys[0]) / h
    if max(abs(dx), abs(dy)) < MOVE_MIN:
        return "standing still", mid_side
    if abs(dx) >= abs(dy):
        return ("moving right" if dx > 0 else "moving left"), mid_side
    return ("moving down" if dy > 0 else "moving up"), mid_side


def compare_to_truth(detection: Detection, tracks: list, height: int, width: int) -> dict:
    """Judge a detection of a rendered clip against the world's ground-truth ``tracks``.

    Each true object is matched to the unused detected object whose centre track
    is nearest (mean distance, must be < 15% of min(H, W)); an unmatched true object
    counts as wrong on every attribute. Motion is not judged for images (T = 1).
    Returns ``{"objects": [{"color": bool, "shape": bool, "motion": bool, ...}],
    "extra": number of detected objects left unmatched}``.
    """
    used: set[int] = set()
    results = []
    for track in tracks:
        truth = np.stack([track.cx, track.cy], axis=1)  # (T, 2)
        best, best_dist = None, 0.15 * min(height, width)
        for j, obj in enumerate(detection.objects):
            dist = float(np.nanmean(np.linalg.norm(obj.track - truth, axis=1)))
            if j not in used and dist < best_dist:
                best, best_dist = j, dist
        spec = track.spec
        row = {"truth": spec.phrase, "found": None}
        if best is None:
            row.update(color=False, shape=False, motion=False, size=False)
        else:
            used.add(best)
            obj = detection.objects[best]
            row.update(
                found=obj.description,
                color=obj.color == spec.color,
                shape=obj.shape == spec.shape,
                motion=obj.motion is None or obj.motion == spec.motion,
                size=obj.size == spec.size,
            )
        results.append(row)
    return {"objects": results, "extra": len(detection.objects) - len(used)}
