"""Fidelity: does each rigid object keep its size and outline through a clip, and does
the frame stay clean around it? Caption-blind (the detector's objects), so it serves
any clip of world objects: the world's own renders (the reference), VAE round trips
and generations alike (``eval vae`` and ``eval adherence`` report it).

Per detected object, on its *clear* frames (seen, and not the more hidden one of a
touching pair: ``eval.dynamics.clear_frames``):

* ``area_cv``: coefficient of variation (std / mean) of its soft area A_t (the
  detector's alpha area). Only for rigid objects (detected motion not growing or
  shrinking, and a clip, not an image): a rigid object's area is constant, so any
  spread is smearing, ghosting or a change of shape.
* ``outline_iou``: its mask in each frame (pixels labelled with its color, the largest
  connected region), moved so its centroid sits on the canvas centre (whole pixels),
  against the *median* mask (pixels in at least half of those frames): the mean IoU.
  Rasterizing a moving shape at sub-pixel offsets keeps clean renders a little below 1.

Per clip:

* ``stray_fraction``: the share of pixels (all frames) that are neither background nor
  within NEAR_PX of a detected object's main region: ghost bands, smears, specks.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from tinysora.eval.dynamics import clear_frames, label_pixels
from tinysora.worlds.detect import COLOR_NAMES, DetectedObject, Detection, detect

NEAR_PX = 2  # a labelled pixel this close to an object belongs to it (blended edges)
MIN_FRAMES = 3  # fewer clear frames than this: the object's measures are NaN
NON_RIGID = ("growing", "shrinking")


def main_region(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> its largest 4-connected region (all False if empty)."""
    regions, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum_labels(mask, regions, index=np.arange(1, count + 1))
    return regions == 1 + int(np.argmax(sizes))


def _centred(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (2H, 2W) bool with the mask's centroid moved to the centre."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    canvas = np.zeros((2 * h, 2 * w), dtype=bool)
    dy, dx = h - int(round(ys.mean())), w - int(round(xs.mean()))
    canvas[ys + dy, xs + dx] = True
    return canvas


def outline_iou(masks: list[np.ndarray]) -> float:
    """Mean IoU of centroid-aligned masks with their median mask (NaN for < MIN_FRAMES)."""
    masks = [_centred(m) for m in masks if m.any()]
    if len(masks) < MIN_FRAMES:
        return math.nan
    stack = np.stack(masks)  # (N, 2H, 2W)
    median = stack.mean(0) >= 0.5
    inter = (stack & median).sum((1, 2))
    union = (stack | median).sum((1, 2))
    return float((inter / np.maximum(union, 1)).mean())


def object_fidelity(
    obj: DetectedObject, objects: list[DetectedObject], labels: np.ndarray
) -> dict[str, float | str | None]:
    """``area_cv`` and ``outline_iou`` of one detected object (NaN where not measurable)."""
    use = clear_frames(obj, objects, labels)
    rigid = obj.motion is not None and obj.motion not in NON_RIGID
    area = obj.area[use]
    cv = float(area.std() / area.mean()) if rigid and len(area) >= MIN_FRAMES else math.nan
    k = 1 + COLOR_NAMES.index(obj.color)
    masks = [main_region(labels[i] == k) for i in np.flatnonzero(use)]
    return {
        "color": obj.color,
        "motion": obj.motion,
        "area_cv": cv,
        "outline_iou": outline_iou(masks),
    }


def stray_fraction(detection: Detection, labels: np.ndarray) -> float:
    """Share of the clip's pixels that are neither background nor near an object."""
    near = np.zeros(labels.shape, dtype=bool)  # (T, H, W)
    for obj in detection.objects:
        k = 1 + COLOR_NAMES.index(obj.color)
        for i in range(len(labels)):
            near[i] |= main_region(labels[i] == k)
    near = ndimage.binary_dilation(near, np.ones((1, 3, 3), dtype=bool), iterations=NEAR_PX)
    return float(((labels != 0) & ~near).mean())


def clip_fidelity(frames: np.ndarray, detection: Detection | None = None) -> dict:
    """Fidelity of uint8 (T, H, W, 3) ``frames`` (``detection``: the detector's reading, if
    already made): ``{"stray_fraction", "objects": [per-object measures]}``."""
    detection = detect(frames) if detection is None else detection
    labels = label_pixels(frames)
    objects = [object_fidelity(o, detection.objects, labels) for o in detection.objects]
    return {"stray_fraction": stray_fraction(detection, labels), "objects": objects}


def _median(values: list[float]) -> float | None:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.median(kept)) if kept else None


def summarize(clips: list[dict]) -> dict:
    """Medians over clips of ``clip_fidelity``: area CV (all rigid objects, and bouncing
    ones alone: the fastest motion), outline IoU, and the mean stray fraction."""
    objs = [o for c in clips for o in c["objects"]]
    bouncing = [o["area_cv"] for o in objs if o["motion"] == "bouncing"]
    return {
        "clips": len(clips),
        "objects": len(objs),
        "area_cv_median": _median([o["area_cv"] for o in objs]),
        "area_cv_bouncing_median": _median(bouncing),
        "outline_iou_median": _median([o["outline_iou"] for o in objs]),
        "stray_fraction_mean": float(np.mean([c["stray_fraction"] for c in clips]))
        if clips
        else None,
    }


def fidelity_line(summary: dict) -> str:
    """One line of a ``summarize`` result for the eval commands' printouts."""

    def num(key: str, spec: str) -> str:
        value = summary[key]
        return "n/a" if value is None else format(value, spec)

    return (
        f"area CV {num('area_cv_median', '.3f')} (bouncing "
        f"{num('area_cv_bouncing_median', '.3f')}), outline IoU "
        f"{num('outline_iou_median', '.3f')}, stray pixels {num('stray_fraction_mean', '.2%')}"
    )
