"""Temporal quality of videos: motion smoothness, consistency, object permanence.

    tinysora eval dynamics [--model DIR] [--n 100] [--json OUT] [--truth]

Clips are read with the caption-blind detector (``tinysora.worlds.detect``). Each
prompt object is matched to the detected object of its color (as in
``eval.adherence``); its centre track c_t = (x_t, y_t) (pixels, y grows downwards)
and soft area A_t are judged on its *clear* frames: seen, and not the more hidden one
of a touching pair (where one object covers part of another, the centroid and area
of the visible pixels are not the lower object's own). *Hidden fraction* of object a
by object b in frame t: the share of a's footprint (its detected shape drawn at its
centre with side from the size trend S_t below) whose pixels carry b's color. The
model of a motion is the *detected* motion: smoothness asks whether the object moves
cleanly, whatever it does (adherence judges what it does).

* **Smoothness.** A least-squares fit of the ideal trajectory in frame index t:
  x_t and y_t lines (constant velocity; also standing still, growing, shrinking), or
  for ``bouncing`` x_t a line and y_t a ball bouncing on a floor: one gravity g, one
  floor level F, y_t = F + g/2 (t - tau_s)(t - tau_s+1) between impact times tau_s <
  tau_s+1, and parabolas of the same g through (tau, F) with a free slope before the
  first impact and after the last. F, g and the slopes are linear; each impact time
  is fitted (nonlinear least squares) inside the gap before or after a local maximum
  of y in the lower half of its range (or cutting off an end frame), every combination
  tried. The world's bounces fit it exactly for T >= 9. Reported:
  ``residual_px = sqrt(mean_t |c_t - fit_t|^2)`` and
  ``r2 = 1 - sum_t |c_t - fit_t|^2 / sum_t |c_t - mean(c)|^2`` (both coordinates
  pooled; NaN when the object barely moves, RMS spread < MIN_SPREAD_PX, where r2 is
  noise over noise). Fewer than MIN_FRAMES clear frames, no more frames than the
  model has parameters, or an image give NaN.
* **Consistency.** ``area_drift = sqrt(mean_t ((A_t - S_t^2) / S_t^2)^2)`` where S_t is
  the least-squares fit of sqrt(A_t): a constant, or a line in t for growing /
  shrinking (the side grows linearly, so the area is a parabola).
  ``color_drift = sqrt(mean_t |m_t - median_t(m)|^2)`` in RGB units (0-255), m_t the
  mean color of the object's *core* in clear frame t: its footprint inset by
  CORE_INSET_PX (edges blend with what is beneath).
* **Permanence.** In a two-object prompt whose objects are both detected, the clip's
  own crossing: the frames where one hides part of the other (hidden fraction > 0),
  and the frames after the last of them. With at least POST_MIN_FRAMES of those, the
  objects are *kept* when each is seen in >= POST_SEEN_FRACTION of them; otherwise
  the clip has no crossing (None).

Groups: ``all`` = the first n test-split scenes; ``two_crossing`` = the first n
test-split two-object scenes whose world layout has a crossing (prompts likely to
produce one). ``--truth`` judges the world's own renders instead of generations: the
reference, which should score near-perfect.
"""

from __future__ import annotations

import argparse
import itertools
import math

import numpy as np
from scipy import optimize

from tinysora.eval.generation import generate_seeded, load_pipe
from tinysora.eval.metrics import json_number, wilson, write_json
from tinysora.worlds.detect import (
    COLOR_NAMES,
    LABEL_MAX_DIST,
    LABEL_RATIO,
    PALETTE,
    DetectedObject,
    Detection,
    detect,
)
from tinysora.worlds.shapes import (
    ObjectTrack,
    Scene,
    layout,
    render,
    sample_scene,
    shape_coverage,
    split_seed,
)

GROUPS = ("all", "two_crossing")
MIN_FRAMES = 3  # fewer clear frames than this: a measure is NaN
MIN_SPREAD_PX = 1.0  # r2 is NaN when the track's RMS spread is below this
SMOOTH_PX = 1.0  # an object moves "smoothly" when residual_px < this
IMPACT_RISE = 0.1  # consecutive impacts are separated by a rise of >= 0.1 x the y range
MAX_BOUNCE_CHOICES = 6  # bouncing fit: tries at most 2^6 impact placements
POST_MIN_FRAMES = 2  # a crossing needs this many frames after the last hiding
POST_SEEN_FRACTION = 0.75  # ... in which each object must be seen this often
CROSSING_MIN_HIDDEN = 0.05  # ground truth: one object hides >= 5% of the other
CROSSING_SCAN = 100  # crossing_scenes(n) looks at no more than 100 n test seeds
CORE_INSET_PX = 1.5  # color is read on the footprint inset by this
SIDE_PER_ROOT_AREA = {  # diameter / side of a shape of area 1
    "circle": 2 / math.sqrt(math.pi),
    "square": 1.0,
    "triangle": 2 / 3**0.25,
}


# --------------------------------------------------------------------------- pixels


def label_pixels(frames: np.ndarray) -> np.ndarray:
    """(T, H, W) int: 1 + index in COLOR_NAMES, 0 background, -1 unsure (blends).

    A pixel takes the nearest of the clip's median color and the 8 object colors if it
    is nearer than LABEL_MAX_DIST and than LABEL_RATIO x the runner-up distance.
    """
    x = frames.astype(np.float32)  # (T, H, W, 3)
    bg = np.median(x.reshape(-1, 3), axis=0)
    palette = np.concatenate([bg[None], PALETTE])  # (9, 3)
    dist = np.sqrt(((x[..., None, :] - palette) ** 2).sum(-1))  # (T, H, W, 9)
    nearest = dist.argmin(-1)
    d = np.sort(dist, axis=-1)
    sure = (d[..., 0] < LABEL_RATIO * d[..., 1]) & (d[..., 0] < LABEL_MAX_DIST)
    return np.where(sure, nearest, -1)


def _seen(obj: DetectedObject) -> np.ndarray:
    return ~np.isnan(obj.track[:, 0])  # (T,) bool


def _root_area_fit(obj: DetectedObject, use: np.ndarray, degree: int) -> np.ndarray:
    """S_t: least-squares polynomial (degree 0 or 1 in t) through sqrt(A_t) on ``use``."""
    t = np.arange(len(obj.area), dtype=np.float64)
    degree = min(degree, int(use.sum()) - 1)
    coef = np.polyfit(t[use], np.sqrt(obj.area[use]), max(degree, 0))
    return np.polyval(coef, t)  # (T,)


def footprints(obj: DetectedObject, h: int, w: int, grow: float = 0.0) -> list:
    """Per frame, the object's shape drawn at its centre (side from the trend S_t, a line,
    plus 2 x ``grow``) as an (H, W) bool mask (coverage >= 1/2); None where unseen."""
    seen = _seen(obj)
    if not seen.any():
        return [None] * len(seen)
    sides = _root_area_fit(obj, seen, degree=1) * SIDE_PER_ROOT_AREA[obj.shape] + 2 * grow
    out = []
    for i, (cx, cy) in enumerate(obj.track):
        cov = shape_coverage(obj.shape, cx, cy, max(sides[i], 0.5), h, w) if seen[i] else None
        out.append(None if cov is None else cov >= 0.5)
    return out


def hidden_fraction(obj: DetectedObject, other: DetectedObject, labels: np.ndarray):
    """(T,) share of ``obj``'s footprint whose pixels carry ``other``'s color (0 if unseen)."""
    k = 1 + COLOR_NAMES.index(other.color)
    out = np.zeros(len(labels))
    for i, region in enumerate(footprints(obj, *labels.shape[1:])):
        if region is not None and region.any():
            out[i] = float((labels[i][region] == k).mean())
    return out


def clear_frames(obj: DetectedObject, objects: list[DetectedObject], labels) -> np.ndarray:
    """(T,) bool: ``obj`` is seen and, with every other object, not the more hidden one."""
    use = _seen(obj)
    for other in objects:
        if other is not obj:
            use &= ~(hidden_fraction(obj, other, labels) > hidden_fraction(other, obj, labels))
    return use


# --------------------------------------------------------------------------- smoothness


def _line_fit(t: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.polyval(np.polyfit(t, v, 1), t)


def impacts(y: np.ndarray) -> list[int]:
    """Interior samples nearest a floor impact in a bouncing y track (y grows downwards).

    Candidates are local maxima of y (lowest on screen) in the lower half of its range;
    two candidates with no rise of IMPACT_RISE x range between them are one impact (the
    lower point).
    """
    span = float(np.ptp(y))
    kept: list[int] = []
    for k in range(1, len(y) - 1):
        if not (y[k - 1] < y[k] >= y[k + 1] and y[k] >= y.min() + span / 2):
            continue
        if kept and y[kept[-1] : k + 1].min() > min(y[kept[-1]], y[k]) - IMPACT_RISE * span:
            if y[k] > y[kept[-1]]:
                kept[-1] = k
            continue
        kept.append(k)
    return kept


def _floor_design(t: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """(n, 4) design of a ball bouncing on a floor, columns (F, g, c_first, c_last).

    With impact times tau_1 < ... < tau_m: y = F + g/2 (t - tau_s)(t - tau_s+1) between
    impacts, y = F + (t - tau_1)(g/2 (t - tau_1) + c_first) before the first and
    y = F + (t - tau_m)(g/2 (t - tau_m) + c_last) after the last.
    """
    m = len(taus)
    s = np.searchsorted(taus, t, side="right")  # (n,) flight: 0 .. m
    lo, hi = taus[np.clip(s - 1, 0, m - 1)], taus[np.clip(s, 0, m - 1)]
    first, last = s == 0, s == m
    curve = np.where(first, (t - hi) ** 2, np.where(last, (t - lo) ** 2, (t - lo) * (t - hi)))
    zero = np.zeros_like(t)
    cols = [np.ones_like(t), curve / 2, np.where(first, t - hi, zero), np.where(last, t - lo, zero)]
    return np.stack(cols, axis=1)


def _floor_fit(t: np.ndarray, y: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Least-squares (F, g, c_first, c_last) for given impact times; the fitted y (n,)."""
    design = _floor_design(t, np.sort(taus))
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return design @ coef


def _bounce_fit(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int]:
    """(fitted y, number of parameters) of the bouncing-ball model (module doc).

    Each impact lies in the gap just before or just after its impact sample; an end
    sample lower on screen than its neighbour and in the lower half of the range may be
    cut off by an impact in the gap between them (an impact between the last two frames
    leaves no interior maximum). Every combination (the first 2^MAX_BOUNCE_CHOICES) is
    fitted -- impact times by bounded nonlinear least squares inside their gaps, F, g and
    the c's linearly for each -- and the best wins. No impact: one parabola.
    """
    n = len(y)
    low = y.min() + float(np.ptp(y)) / 2
    ends = [(k, j) for k, j in ((0, 1), (n - 1, n - 2)) if n >= 3 and y[j] < y[k] >= low]
    options = [[(k, k + 1), (k - 1, k)] for k in impacts(y)]
    options += [[None, (min(k, j), max(k, j))] for k, j in ends]
    best, best_fit, n_params = math.inf, y, 3
    for combo in itertools.islice(itertools.product(*options), 2**MAX_BOUNCE_CHOICES):
        gaps = np.array(sorted({g for g in combo if g is not None}), dtype=int).reshape(-1, 2)
        if len(gaps) == 0:
            fit, k = np.polyval(np.polyfit(t, y, 2), t), 3
        else:
            lo, hi = t[gaps[:, 0]], t[gaps[:, 1]]
            res = optimize.least_squares(
                lambda taus: _floor_fit(t, y, taus) - y, (lo + hi) / 2, bounds=(lo, hi)
            )
            fit, k = _floor_fit(t, y, res.x), 4 + len(gaps)
        err = float(((y - fit) ** 2).sum())
        if err < best:
            best, best_fit, n_params = err, fit, k
    return best_fit, n_params


def smoothness(
    obj: DetectedObject, motion: str | None = None, use: np.ndarray | None = None
) -> dict:
    """Fit the ideal trajectory to the centre track; see the module doc for the formulas.

    ``motion`` picks the model (default: the detected motion; None for an image);
    ``use`` the frames to fit (default: every frame where the object is seen).
    Returns ``{"residual_px", "r2", "frames"}`` (NaN where not measurable).
    """
    motion = obj.motion if motion is None else motion
    use = _seen(obj) if use is None else use & _seen(obj)
    n = int(use.sum())
    if motion is None or n < MIN_FRAMES:
        return {"residual_px": math.nan, "r2": math.nan, "frames": n}
    t = np.flatnonzero(use).astype(np.float64)
    x, y = obj.track[use, 0], obj.track[use, 1]
    fit_y, n_params = _bounce_fit(t, y) if motion == "bouncing" else (_line_fit(t, y), 2)
    if n <= n_params:
        return {"residual_px": math.nan, "r2": math.nan, "frames": n}
    sq_res = (x - _line_fit(t, x)) ** 2 + (y - fit_y) ** 2  # (n,)
    sq_tot = (x - x.mean()) ** 2 + (y - y.mean()) ** 2
    spread = math.sqrt(float(sq_tot.mean()))
    r2 = 1 - float(sq_res.sum() / sq_tot.sum()) if spread >= MIN_SPREAD_PX else math.nan
    return {"residual_px": math.sqrt(float(sq_res.mean())), "r2": r2, "frames": n}


# --------------------------------------------------------------------------- consistency


def area_drift(obj: DetectedObject, motion: str | None = None, use=None) -> float:
    """sqrt(mean_t ((A_t - S_t^2) / S_t^2)^2) on ``use`` frames (S_t: see the module doc)."""
    motion = obj.motion if motion is None else motion
    use = _seen(obj) if use is None else use & _seen(obj)
    if motion is None or use.sum() < MIN_FRAMES:
        return math.nan
    degree = 1 if motion in ("growing", "shrinking") else 0
    model = np.maximum(_root_area_fit(obj, use, degree)[use], 1.0) ** 2  # >= 1 px^2
    return math.sqrt(float((((obj.area[use] - model) / model) ** 2).mean()))


def core_colors(obj: DetectedObject, frames: np.ndarray, use=None) -> np.ndarray:
    """(T, 3) mean RGB of the object's core per ``use`` frame (default: seen); NaN elsewhere.

    Core = its footprint inset by CORE_INSET_PX (edges blend with what is beneath).
    """
    use = _seen(obj) if use is None else use & _seen(obj)
    out = np.full((len(frames), 3), np.nan)
    cores = footprints(obj, *frames.shape[1:3], grow=-CORE_INSET_PX)
    for i in np.flatnonzero(use):
        if cores[i].any():
            out[i] = frames[i][cores[i]].mean(axis=0)
    return out


def color_drift(obj: DetectedObject, frames: np.ndarray, use=None) -> float:
    """sqrt(mean_t |m_t - median_t(m)|^2) in RGB units over ``use`` frames with a core."""
    means = core_colors(obj, frames, use)
    means = means[~np.isnan(means[:, 0])]
    if len(means) < MIN_FRAMES:
        return math.nan
    dev = means - np.median(means, axis=0)
    return math.sqrt(float((dev**2).sum(axis=1).mean()))


def consistency(
    obj: DetectedObject, frames: np.ndarray, motion: str | None = None, use=None
) -> dict:
    """``{"area_drift": fraction, "color_drift": RGB units}`` (NaN where not measurable)."""
    return {
        "area_drift": area_drift(obj, motion, use),
        "color_drift": color_drift(obj, frames, use),
    }


# --------------------------------------------------------------------------- permanence


def permanence(scene: Scene, detection: Detection, labels: np.ndarray) -> dict | None:
    """Whether both objects of a two-object prompt are still there after their crossing.

    Crossing frames: one object hides part of the other (``hidden_fraction`` > 0);
    post frames: every frame after the last of them. None unless the prompt has two
    objects, both are detected, they cross, and POST_MIN_FRAMES or more frames follow.
    ``labels`` = ``label_pixels(frames)``. Returns ``{"kept": bool, "crossing": [first,
    last] frame, "post_frames": n, "seen_fraction": [first object, second object]}``.
    """
    if len(scene.objects) != 2:
        return None
    by_color = {o.color: o for o in detection.objects}
    a, b = (by_color.get(spec.color) for spec in scene.objects)
    if a is None or b is None:
        return None
    hiding = np.maximum(hidden_fraction(a, b, labels), hidden_fraction(b, a, labels))
    cross = np.flatnonzero(hiding > 0)
    post = len(hiding) - 1 - int(cross[-1]) if len(cross) else 0
    if post < POST_MIN_FRAMES:
        return None
    fractions = [float(_seen(o)[-post:].mean()) for o in (a, b)]
    return {
        "kept": min(fractions) >= POST_SEEN_FRACTION,
        "crossing": [int(cross[0]), int(cross[-1])],
        "post_frames": post,
        "seen_fraction": fractions,
    }


def has_crossing(tracks: list[ObjectTrack]) -> bool:
    """Ground truth: two objects, the second hides >= CROSSING_MIN_HIDDEN of the first in
    some frame, and POST_MIN_FRAMES or more frames follow the last frame of any hiding."""
    if len(tracks) != 2:
        return False
    hidden = 1 - tracks[0].visible  # (T,)
    if hidden.max() < CROSSING_MIN_HIDDEN:
        return False
    return len(hidden) - 1 - int(np.flatnonzero(hidden > 0)[-1]) >= POST_MIN_FRAMES


# --------------------------------------------------------------------------- clips


def evaluate_clip(scene: Scene, frames: np.ndarray) -> dict:
    """Detect ``frames`` (uint8 (T, H, W, 3)) and measure every prompt object of ``scene``."""
    detection = detect(frames)
    labels = label_pixels(frames)
    by_color = {o.color: o for o in detection.objects}
    rows = []
    for spec in scene.objects:
        obj = by_color.get(spec.color)
        row: dict = {"color": spec.color, "motion": spec.motion, "found": obj is not None}
        if obj is not None:
            use = clear_frames(obj, detection.objects, labels)
            smooth = smoothness(obj, use=use)
            row.update(
                detected_motion=obj.motion,
                residual_px=json_number(smooth["residual_px"]),
                r2=json_number(smooth["r2"]),
                frames=smooth["frames"],
                **{k: json_number(v) for k, v in consistency(obj, frames, use=use).items()},
                seen_fraction=float(_seen(obj).mean()),
            )
        rows.append(row)
    return {
        "seed": scene.seed,
        "prompt": scene.caption,
        "objects": rows,
        "permanence": permanence(scene, detection, labels),
    }


def _values(rows: list[dict], key: str) -> np.ndarray:
    return np.array([r[key] for r in rows if r.get(key) is not None], dtype=np.float64)


def _stat(fn, values: np.ndarray) -> float | None:
    return float(fn(values)) if len(values) else None


def summarize(clips: list[dict]) -> dict:
    """Aggregate per-clip results (``evaluate_clip``) into the report's numbers."""
    objs = [o for c in clips for o in c["objects"]]
    found = [o for o in objs if o["found"]]
    res = _values(found, "residual_px")
    by_motion = {}
    for motion in sorted({o["detected_motion"] for o in found if o["detected_motion"]}):
        vals = _values([o for o in found if o["detected_motion"] == motion], "residual_px")
        by_motion[motion] = _stat(np.median, vals)
    perm = [c["permanence"] for c in clips if c["permanence"] is not None]
    kept = sum(p["kept"] for p in perm)
    return {
        "clips": len(clips),
        "objects": len(objs),
        "found": len(found),
        "smoothness": {
            "objects": len(res),
            "residual_px_mean": _stat(np.mean, res),
            "residual_px_median": _stat(np.median, res),
            "r2_median": _stat(np.median, _values(found, "r2")),
            "smooth_fraction": _stat(lambda v: (v < SMOOTH_PX).mean(), res),
            "residual_px_median_by_motion": by_motion,
        },
        "consistency": {
            "area_drift_mean": _stat(np.mean, _values(found, "area_drift")),
            "color_drift_mean": _stat(np.mean, _values(found, "color_drift")),
            "seen_fraction_mean": _stat(np.mean, _values(found, "seen_fraction")),
        },
        "permanence": {
            "crossings": len(perm),
            "kept": kept,
            "rate": kept / len(perm) if perm else None,
            "rate_ci95": wilson(kept, len(perm)),
        },
    }


def evaluate_clips(items: list[tuple[Scene, np.ndarray]]) -> dict:
    """Judge (scene, uint8 (T, H, W, 3) frames) pairs: the summary plus per-clip ``rows``."""
    clips = [evaluate_clip(scene, frames) for scene, frames in items]
    return {**summarize(clips), "rows": clips}


# --------------------------------------------------------------------------- scenes


def crossing_scenes(n: int, height: int = 64, width: int = 64, frames: int = 17) -> list[Scene]:
    """The first ``n`` test-split two-object scenes whose layout has a crossing (fewer if
    the first CROSSING_SCAN x n test seeds hold fewer, e.g. for very short clips)."""
    out = []
    for i in range(CROSSING_SCAN * n):
        scene = sample_scene(split_seed("test", i))
        if len(scene.objects) == 2 and has_crossing(layout(scene, height, width, frames)):
            out.append(scene)
            if len(out) == n:
                break
    return out


def group_scenes(group: str, n: int, height: int = 64, width: int = 64, frames: int = 17):
    """The scenes of a group (``all`` or ``two_crossing``), in test-seed order."""
    if group == "all":
        return [sample_scene(split_seed("test", i)) for i in range(n)]
    if group == "two_crossing":
        return crossing_scenes(n, height, width, frames)
    raise ValueError(f"unknown group {group!r}; use one of {', '.join(GROUPS)}")


def ground_truth_items(
    n: int, height: int = 64, width: int = 64, frames: int = 17, kind: str = "all"
) -> list[tuple[Scene, np.ndarray]]:
    """(scene, world render) pairs of a group: the reference that should score near-perfect."""
    scenes = group_scenes(kind, n, height, width, frames)
    return [(s, render(s, height, width, frames)) for s in scenes]


def generate_items(
    pipe,
    scenes: list[Scene],
    frames: int = 17,
    height: int = 64,
    width: int = 64,
    steps: int | None = None,
    batch: int = 25,
) -> list[tuple[Scene, np.ndarray]]:
    """(scene, generated clip) pairs: the canonical caption of scene k, noise seed k."""
    clips = generate_seeded(pipe, [s.caption for s in scenes], frames, height, width, steps, batch)
    return list(zip(scenes, clips, strict=True))


# --------------------------------------------------------------------------- command


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def summary_lines(group: str, r: dict) -> list[str]:
    """Two lines of text for a group's report."""
    s, c, p = r["smoothness"], r["consistency"], r["permanence"]
    lo, hi = p["rate_ci95"]
    return [
        f"{group:12s} smoothness: residual {_fmt(s['residual_px_median'], '.3f')} px median "
        f"({_fmt(s['residual_px_mean'], '.3f')} mean), R2 {_fmt(s['r2_median'], '.4f')} median, "
        f"{_fmt(s['smooth_fraction'], '.1%')} of {s['objects']} objects < {SMOOTH_PX:g} px",
        f"{'':12s} consistency: area drift {_fmt(c['area_drift_mean'], '.2%')}, color drift "
        f"{_fmt(c['color_drift_mean'], '.2f')} RGB, seen in {_fmt(c['seen_fraction_mean'], '.1%')}"
        f" of frames; permanence {_fmt(p['rate'], '.1%')} [{lo:.1%}, {hi:.1%}] of "
        f"{p['crossings']} crossings",
    ]


def evaluate(
    pipe, n: int, frames: int = 17, height: int = 64, width: int = 64, steps: int | None = None
) -> dict:
    """Both groups of ``n`` scenes, generated by ``pipe`` (None: the world's own renders)."""
    report = {}
    for group in GROUPS:
        if pipe is None:
            items = ground_truth_items(n, height, width, frames, kind=group)
        else:
            scenes = group_scenes(group, n, height, width, frames)
            items = generate_items(pipe, scenes, frames, height, width, steps=steps)
        report[group] = evaluate_clips(items)
    return report


def run(args: argparse.Namespace) -> dict:
    """`tinysora eval dynamics`: evaluate, print two lines per group, save the JSON."""
    pipe = None
    if not args.truth:
        pipe = load_pipe(args)
    report = evaluate(pipe, args.n, args.frames, args.height, args.width, args.steps)
    for group, r in report.items():
        print("\n".join(summary_lines(group, r)))
    write_json(report, args.json)
    return report
