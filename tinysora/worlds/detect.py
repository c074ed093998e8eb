"""Analytic detector for Shapes World: clip -> objects (color, shape, motion, centre track).

It never sees a caption. It knows only the world's palette and geometry
(docs/WORLD.md), and works on rendered, blurred, H.264-compressed or generated
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

:func:`judge` scores a detection against the scene a prompt asked for (the adherence
evals and the VAE's validation use it).
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
    Scene,
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
NEAR_RADIUS = 4  # objects closer than this (px) may hide or blend into each other
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
    present = [k for k in range(1, len(COLOR_NAMES) + 1) if _is_present(labels, k)]
    found = [_gather(x, labels, k, present, bg) for k in present]
    found = [e for e in found if e is not None]
    below = _below_others(found)
    objects = [_describe(e, is_below) for e, is_below in zip(found, below, strict=True)]
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


@dataclass
class _Evidence:
    """What the pixels say about one object color, frame by frame."""

    color: str
    regions: list[np.ndarray | None]  # (H, W) bool: the object's pixels (+1 px edge)
    alpha: np.ndarray  # (T, H, W) soft coverage inside ``regions`` (0 elsewhere)
    visible: np.ndarray  # (T, H, W) bool: not another object's pixels (or their edge)
    areas: np.ndarray  # (T,) sum of alpha
    centroids: np.ndarray  # (T, 2) alpha-weighted (x, y); NaN where unseen

    @property
    def seen(self) -> np.ndarray:
        return self.areas > 0


def _is_present(labels: np.ndarray, k: int) -> bool:
    """Color ``k`` has a solid core (not just an edge ring) in enough frames."""
    mask = labels == k
    core = mask & ~_dilate((labels >= 1) & ~mask, RING_RADIUS)
    shows = core.reshape(len(labels), -1).sum(1) >= MIN_CORE_PIXELS
    return bool(shows.mean() >= MIN_PRESENT_FRACTION)


def _gather(x, labels, k: int, present: list[int], bg) -> _Evidence | None:
    """Collect the evidence for object color ``k`` (one of the ``present`` colors).

    Alpha is measured against the color *under* each pixel: the background, or,
    within 2 px of another object, that object's color (so the edge of a shape
    lying on another shape is read correctly).
    """
    t, h, w, _ = x.shape
    mask = labels == k  # (T, H, W)
    others = np.isin(labels, [j for j in present if j != k])
    core = mask & ~_dilate(others, RING_RADIUS)
    target = np.median(x[core], axis=0) if core.any() else PALETTE[k - 1]  # measured color
    base = np.broadcast_to(bg, x.shape).copy()  # (T, H, W, 3) color under each pixel
    for j in present:
        if j != k and (labels == j).any():
            base[_dilate(labels == j, 2)] = np.median(x[labels == j], axis=0)
    axis = target - base
    alpha = ((x - base) * axis).sum(-1) / np.maximum((axis * axis).sum(-1), 1.0)
    alpha = np.clip(alpha, 0.0, 1.0)  # (T, H, W)
    areas, centroids, regions = np.zeros(t), np.full((t, 2), np.nan), []
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    for i in range(t):
        region = _main_region(mask[i], core[i])
        if region is not None:
            region = ndimage.binary_dilation(region, iterations=1) & ~others[i]
            alpha[i] *= region
            areas[i] = alpha[i].sum()
        else:
            alpha[i] = 0
        if areas[i] > 0:
            a = alpha[i]
            centroids[i] = (float((a * xx).sum() / areas[i]), float((a * yy).sum() / areas[i]))
        regions.append(region if areas[i] > 0 else None)
    if not (areas > 0).any():
        return None
    return _Evidence(COLOR_NAMES[k - 1], regions, alpha, ~_dilate(others, 1), areas, centroids)


def _near(a: _Evidence, b: _Evidence) -> np.ndarray:
    """(T,) bool: frames where the two objects come within NEAR_RADIUS px of each other."""
    out = np.zeros(len(a.areas), dtype=bool)
    for i, (ra, rb) in enumerate(zip(a.regions, b.regions, strict=True)):
        if ra is not None and rb is not None:
            out[i] = bool((ndimage.binary_dilation(ra, iterations=NEAR_RADIUS) & rb).any())
    return out


def _below_others(found: list[_Evidence]) -> list[bool]:
    """Which objects are (partly) hidden under another object.

    Where two objects touch, the one on top shows its whole shape, so some shape
    drawn at its area and centroid fits it well; the one below is cut, so no full
    shape fits. The worse-fitting one of each touching pair is below.
    """
    below = [False] * len(found)
    for p in range(len(found)):
        for q in range(p + 1, len(found)):
            touching = _near(found[p], found[q])
            if touching.any():
                err_p = _full_shape_error(found[p], touching)
                err_q = _full_shape_error(found[q], touching)
                below[p if err_p > err_q else q] = True
    return below


def _full_shape_error(e: _Evidence, frames: np.ndarray) -> float:
    """Best unrefined full-shape fit error of ``e`` over (up to SHAPE_FRAMES of) ``frames``."""
    idx = np.flatnonzero(frames & e.seen)
    idx = idx[np.argsort(-e.areas[idx])][:SHAPE_FRAMES]
    h, w = e.alpha.shape[1:]
    errors = [
        sum(_fit_template(shape, e, i, h, w, masked=False)[0] for i in idx) for shape in SHAPES
    ]
    return min(errors) / max(len(idx), 1)


def _describe(e: _Evidence, below: bool) -> DetectedObject:
    h, w = e.alpha.shape[1:]
    clean = e.seen.copy()
    for i, region in enumerate(e.regions):
        if region is not None:  # nothing else within NEAR_RADIUS px
            grown = ndimage.binary_dilation(region, iterations=NEAR_RADIUS)
            clean[i] = not (grown & ~e.visible[i]).any()
    shape, occlusion = _classify_shape(e, clean, below, h, w)
    track = e.centroids.copy()
    if shape == "triangle":  # bbox centre sits h/6 above the centroid
        track[:, 1] -= _side_from_area("triangle", e.areas) * SQRT3 / 2 / 6
    motion, mid_side = _classify_motion(track, e.areas, shape, h, w)
    mid_side *= occlusion
    size = min(SIZES, key=lambda s: abs(SIZES[s] * min(h, w) - mid_side))
    return DetectedObject(e.color, shape, motion, size, track, e.areas)


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


def _classify_shape(e: _Evidence, clean, below: bool, h, w) -> tuple[str, float]:
    """(best shape, occlusion correction = median fitted side / side from area).

    Uses the largest clean frames; an object that is below another in every frame
    is fitted on its visible pixels only, with centre and side free.
    """
    pool = np.flatnonzero(clean) if clean.any() else np.flatnonzero(e.seen)
    frames = pool[np.argsort(-e.areas[pool])][:SHAPE_FRAMES]
    masked = below and not clean.any()
    errors = dict.fromkeys(SHAPES, 0.0)
    sides: dict[str, list[float]] = {s: [] for s in SHAPES}
    for i in frames:
        for shape in SHAPES:
            err, side = _fit_template(shape, e, i, h, w, masked=masked)
            errors[shape] += err
            sides[shape].append(side)
    best = min(errors, key=errors.get)
    from_area = _side_from_area(best, e.areas[frames])
    return best, float(np.median(np.array(sides[best]) / from_area))


def _fit_template(shape, e: _Evidence, i: int, h, w, masked: bool) -> tuple[float, float]:
    """(squared error per unit area, side) of the best drawing of ``shape`` in frame ``i``.

    The drawing has the measured area and centroid; when the object is hidden in
    part (``masked``), centre and side are fitted on the visible pixels only.
    """
    area, alpha = e.areas[i], e.alpha[i]
    side = float(_side_from_area(shape, area))
    cx, cy = e.centroids[i]
    if shape == "triangle":
        cy -= side * SQRT3 / 2 / 6
    weight = e.visible[i] if masked else 1.0

    def error(p) -> float:
        template = shape_coverage(shape, p[0], p[1], max(p[2], 0.5), h, w, ss=4)
        return float((((template - alpha) * weight) ** 2).sum() / area)

    p0 = np.array([cx, cy, side])
    if not masked:
        return error(p0), side
    simplex = np.stack([p0, p0 + [1.0, 0, 0], p0 + [0, 1.0, 0], p0 + [0, 0, 0.15 * side]])
    options = {"xatol": 0.05, "fatol": 1e-4, "maxiter": 200, "initial_simplex": simplex}
    res = optimize.minimize(error, p0, method="Nelder-Mead", options=options)
    return float(res.fun), float(res.x[2])


def _classify_motion(track, areas, shape, h, w) -> tuple[str | None, float]:
    """(motion or None for an image, fitted side at mid-clip in pixels)."""
    t = len(areas)
    taus = np.arange(t) / max(t - 1, 1)
    sides = _side_from_area(shape, areas)
    use = np.flatnonzero(areas > 0)  # occlusion shrinks areas far less than growing does
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


def judge(scene: Scene, detection: Detection, judge_motion: bool = True) -> dict:
    """Per-object correctness of a generated clip against the prompt's scene."""
    by_color = {o.color: o for o in detection.objects}
    objects = []
    for spec in scene.objects:
        found = by_color.get(spec.color)
        objects.append(
            {
                "color": found is not None,
                "shape": found is not None and found.shape == spec.shape,
                "motion": found is not None and (not judge_motion or found.motion == spec.motion),
            }
        )
    extra = len(detection.objects) - sum(o["color"] for o in objects)
    all_right = extra == 0 and all(all(o.values()) for o in objects)
    return {"objects": objects, "extra": extra, "all_right": all_right}
