"""Conditioning tasks: image-to-video, extension, interpolation, loop, editing.

    tinysora eval tasks [--model DIR] [--n 50] [--tasks ...] [--frames 17]
                        [--long-frames 129] [--json OUT]

Every task uses the same scenes: the first ``n`` one-object test-split scenes whose
color-shape pair is not held out (``eval.adherence``'s ``single`` group). Scene k is
generated with noise seed k under its canonical caption; the conditioning inputs are
the world's own renders of the scene (``frames`` long, default 17 at 64x64). Clips
are read back with the caption-blind detector (``tinysora.worlds.detect``); a prompt
object is matched to the detected object of its color, and tracks are its detected
bounding-box centres (pixels).

* ``image_to_video``: ``image`` = rendered frame 0. PSNR of generated frame 0 against
  it [mean >= 30 dB], and adherence of the clip to the caption (``worlds.detect.judge``):
  motion [>= 85%], color, shape.
* ``extension``: ``video`` = the rendered clip, extended to ``long_frames`` (default
  129) ``frames`` at a time: each window is given the last 5 frames so far and adds
  ``frames`` - 5 new ones, so a *seam* is the first new frame of a window (frames
  17, 29, ..., 125 for 17 -> 129). The seam jump |c_s - c_{s-1}| of the object's
  centre must be <= the clip's own median per-frame step (over the steps that are
  not seams) + 1 px [every seam; a seam where the object is not seen on both sides
  fails]; reported with the largest excess over that bound. Frames are judged per
  segment between seams (each segment detected alone): a frame is *kept* when every
  prompt object is seen in it with its prompt color and shape [>= 95% of frames].
* ``interpolation``: ``first_image`` / ``last_image`` = rendered frames 0 and T-1.
  PSNR of generated frames 0 and T-1 against them [mean >= 30 dB each]; for objects
  moving left / right / up / down, whether the detected track is monotone along that
  direction (no step back by more than MONOTONE_TOL_PX) [reported].
* ``loop``: ``loop=True`` from the caption alone. Loop ratio = mean absolute
  difference (uint8 units) of the last frame to the first, over the median of the
  frame-to-frame differences [median ratio <= 1; reported with the fraction of clips
  whose ratio is <= 1].
* ``editing``: ``video`` = the rendered clip, ``strength`` 0.6, prompt = the caption
  of the same scene with another color and shape for its object (``edited_scene``).
  Color and shape follow the new prompt [both right >= 80%]; track correlation =
  Pearson correlation of the concatenated x and y centre tracks of the edited object
  (the new color's object, else the largest object found) and of the input video's
  object, over frames where both are seen [median >= 0.9; a clip with no object
  found, or too few frames, scores 0].

PSNR of identical images is reported as PSNR_CAP_DB (keeps the JSON finite).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from tinysora.errors import UserError
from tinysora.eval.adherence import ATTRIBUTES, group_prompts
from tinysora.eval.generation import load_pipe
from tinysora.eval.metrics import json_number, wilson, write_json
from tinysora.eval.task_measures import (
    CONTEXT_FRAMES,
    STRAIGHT,
    edited_scene,
    extension_seams,
    frame_psnr,
    is_monotone,
    loop_ratio,
    seam_check,
    segment_frames,
    track_correlation,
)
from tinysora.io.frames import to_uint8
from tinysora.pipeline import TextToVideoPipeline, legal_size
from tinysora.vae.model import SPACE_FACTOR, TIME_FACTOR
from tinysora.worlds.detect import DetectedObject, Detection, detect, judge
from tinysora.worlds.shapes import (
    Scene,
    render,
)

TASKS = ("image_to_video", "extension", "interpolation", "loop", "editing")
LONG_FRAMES = 129  # extension length: 17 rendered frames + 112 generated in 10 windows
EDIT_STRENGTH = 0.6
# what each task should reach: task -> metric -> (comparison, threshold)
TARGETS: dict[str, dict[str, tuple[str, float]]] = {
    "image_to_video": {"psnr_first_db": (">=", 30.0), "motion_rate": (">=", 0.85)},
    "extension": {"seam_ok_fraction": (">=", 1.0), "frames_kept_fraction": (">=", 0.95)},
    "interpolation": {"psnr_first_db": (">=", 30.0), "psnr_last_db": (">=", 30.0)},
    "loop": {"ratio_median": ("<=", 1.0)},
    "editing": {"color_shape_rate": (">=", 0.8), "track_correlation_median": (">=", 0.9)},
}


@dataclass(frozen=True)
class Setup:
    """Sizes and sampling of one evaluation run."""

    frames: int = 17  # clip length of every task but extension (and its window)
    height: int = 64
    width: int = 64
    long_frames: int = LONG_FRAMES  # extension: length of the extended clip
    steps: int | None = None  # sampling steps (None: the model's)


# --------------------------------------------------------------------------- judges


def judge_image_to_video(scene: Scene, image: np.ndarray, clip: np.ndarray) -> dict:
    """PSNR of frame 0 against the given image, and adherence of the clip to the caption."""
    return {"psnr_first_db": frame_psnr(clip[0], image), **judge(scene, detect(clip))}


def judge_extension(scene: Scene, clip: np.ndarray, seams: list[int]) -> dict:
    """Seam jumps of every prompt object (tracks from the whole clip) and kept frames."""
    by_color = {o.color: o for o in detect(clip).objects}
    objects = []
    for spec in scene.objects:
        obj = by_color.get(spec.color)
        track = obj.track if obj is not None else np.full((len(clip), 2), np.nan)
        check = seam_check(track, seams)
        objects.append(
            {
                "color": spec.color,
                "motion": spec.motion,
                "found": obj is not None,
                "allowed_px": json_number(check["allowed_px"]),
                "jumps_px": [json_number(v) for v in check["jumps_px"]],
                "excess_px": [json_number(v) for v in check["excess_px"]],
                "ok": check["ok"],
            }
        )
    detected, kept = segment_frames(scene, clip, seams)
    return {
        "frames": len(clip),
        "seams": seams,
        "objects": objects,
        "detected_frames": int(detected.sum()),
        "kept_frames": int(kept.sum()),
    }


def judge_interpolation(
    scene: Scene, first: np.ndarray, last: np.ndarray, clip: np.ndarray
) -> dict:
    """PSNR of the end frames against the keyframes; monotone tracks of straight motions."""
    by_color = {o.color: o for o in detect(clip).objects}
    straight = []
    for spec in scene.objects:
        if spec.motion in STRAIGHT:
            obj = by_color.get(spec.color)
            ok = obj is not None and is_monotone(obj.track, spec.motion)
            straight.append({"color": spec.color, "motion": spec.motion, "monotone": ok})
    return {
        "psnr_first_db": frame_psnr(clip[0], first),
        "psnr_last_db": frame_psnr(clip[-1], last),
        "straight": straight,
    }


def judge_loop(clip: np.ndarray) -> dict:
    ratio = loop_ratio(clip)
    return {"ratio": json_number(ratio), "ok": ratio <= 1}


def _edited_object(detection: Detection, color: str) -> DetectedObject | None:
    """The detected object of ``color``, else the largest one found (None if none)."""
    by_color = {o.color: o for o in detection.objects}
    if color in by_color:
        return by_color[color]
    return detection.objects[0] if detection.objects else None  # sorted by area


def judge_editing(scene: Scene, edited: Scene, source: np.ndarray, clip: np.ndarray) -> dict:
    """Whether the edited object has the new color and shape, and how well its track
    correlates with the original object's track in the ``source`` video."""
    new, old = edited.objects[0], scene.objects[0]
    out = detect(clip)
    found = {o.color: o for o in out.objects}.get(new.color)
    original = {o.color: o for o in detect(source).objects}.get(old.color)
    moved = _edited_object(out, new.color)
    corr = math.nan
    if original is not None and moved is not None:
        corr = track_correlation(original.track, moved.track)
    return {
        "color": found is not None,
        "shape": found is not None and found.shape == new.shape,
        "track_correlation": json_number(corr),
    }


# --------------------------------------------------------------------------- generation


def task_scenes(n: int) -> list[Scene]:
    """The first ``n`` one-object, not held-out test scenes (adherence's ``single``)."""
    return [scene for scene, _ in group_prompts("single", n)]


def _seeded(k: int) -> torch.Generator:
    return torch.Generator().manual_seed(k)


def _call(pipe: TextToVideoPipeline, prompt: str, k: int, setup: Setup, **kwargs) -> np.ndarray:
    video = pipe(
        prompt,
        num_frames=setup.frames,
        height=setup.height,
        width=setup.width,
        num_inference_steps=setup.steps,
        generator=_seeded(k),
        progress=False,
        **kwargs,
    )
    return to_uint8(video.frames)


def run_image_to_video(pipe, scene: Scene, k: int, setup: Setup) -> tuple[dict, np.ndarray, list]:
    """(row, generated clip, conditioning frames) of one scene; likewise for every task."""
    image = render(scene, setup.height, setup.width, setup.frames)[0]
    clip = _call(pipe, scene.caption, k, setup, image=image)
    return judge_image_to_video(scene, image, clip), clip, [image]


def run_extension(pipe, scene: Scene, k: int, setup: Setup) -> tuple[dict, np.ndarray, list]:
    video = render(scene, setup.height, setup.width, setup.frames)
    extend = setup.long_frames - setup.frames
    clip = _call(pipe, scene.caption, k, setup, video=video, extend=extend, window=setup.frames)
    seams = extension_seams(setup.frames, setup.long_frames, setup.frames)
    return judge_extension(scene, clip, seams), clip, list(video)


def run_interpolation(pipe, scene: Scene, k: int, setup: Setup) -> tuple[dict, np.ndarray, list]:
    truth = render(scene, setup.height, setup.width, setup.frames)
    first, last = truth[0], truth[-1]
    clip = _call(pipe, scene.caption, k, setup, first_image=first, last_image=last)
    return judge_interpolation(scene, first, last, clip), clip, [first, last]


def run_loop(pipe, scene: Scene, k: int, setup: Setup) -> tuple[dict, np.ndarray, list]:
    clip = _call(pipe, scene.caption, k, setup, loop=True)
    return judge_loop(clip), clip, []


def run_editing(pipe, scene: Scene, k: int, setup: Setup) -> tuple[dict, np.ndarray, list]:
    source = render(scene, setup.height, setup.width, setup.frames)
    edited = edited_scene(scene)
    clip = _call(pipe, edited.caption, k, setup, video=source, strength=EDIT_STRENGTH)
    row = {"edit_prompt": edited.caption, **judge_editing(scene, edited, source, clip)}
    return row, clip, list(source)


RUNNERS: dict[str, Callable] = {
    "image_to_video": run_image_to_video,
    "extension": run_extension,
    "interpolation": run_interpolation,
    "loop": run_loop,
    "editing": run_editing,
}


# --------------------------------------------------------------------------- summaries


def _rate(flags: list[bool]) -> dict:
    k, n = sum(flags), len(flags)
    return {"rate": k / n if n else None, "count": n, "ci95": wilson(k, n)}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize_image_to_video(rows: list[dict]) -> dict:
    objs = [o for r in rows for o in r["objects"]]
    rates = {a: _rate([o[a] for o in objs]) for a in ATTRIBUTES}
    psnrs = [r["psnr_first_db"] for r in rows]
    return {
        "headline": {
            "psnr_first_db": _mean(psnrs),
            **{f"{a}_rate": rates[a]["rate"] for a in ATTRIBUTES},
            "all_right": _rate([r["all_right"] for r in rows])["rate"],
        },
        "psnr_first_db_min": min(psnrs),
        "rates": rates,
    }


def summarize_extension(rows: list[dict]) -> dict:
    objs = [o for r in rows for o in r["objects"]]
    ok = [flag for o in objs for flag in o["ok"]]
    excess = [e for o in objs for e in o["excess_px"] if e is not None]
    frames = sum(r["frames"] for r in rows)
    return {
        "headline": {
            "seam_ok_fraction": _rate(ok)["rate"],
            "max_excess_px": max(0.0, max(excess)) if excess else None,
            "frames_kept_fraction": sum(r["kept_frames"] for r in rows) / frames,
            "frames_detected_fraction": sum(r["detected_frames"] for r in rows) / frames,
        },
        "seams": _rate(ok),
        "seams_measured": len(excess),
        "by_motion": extension_by_motion(rows),
    }


def extension_by_motion(rows: list[dict]) -> dict:
    """Seams ok and frames kept per prompt motion (a two-object clip counts under both
    motions): where extension fails, e.g. a motion that cannot go on for 8 clips'
    length inside the frame."""
    out = {}
    for motion in sorted({o["motion"] for r in rows for o in r["objects"]}):
        mine = [r for r in rows if any(o["motion"] == motion for o in r["objects"])]
        flags = [f for r in mine for o in r["objects"] if o["motion"] == motion for f in o["ok"]]
        out[motion] = {
            "clips": len(mine),
            "seam_ok_fraction": _rate(flags)["rate"],
            "frames_kept_fraction": sum(r["kept_frames"] for r in mine)
            / sum(r["frames"] for r in mine),
        }
    return out


def summarize_interpolation(rows: list[dict]) -> dict:
    straight = [s["monotone"] for r in rows for s in r["straight"]]
    return {
        "headline": {
            "psnr_first_db": _mean(r["psnr_first_db"] for r in rows),
            "psnr_last_db": _mean(r["psnr_last_db"] for r in rows),
            "monotone_fraction": _rate(straight)["rate"],
        },
        "monotone": _rate(straight),
    }


def summarize_loop(rows: list[dict]) -> dict:
    ratios = [math.inf if r["ratio"] is None else r["ratio"] for r in rows]
    return {
        "headline": {
            "ratio_median": json_number(float(np.median(ratios))),
            "loop_ok_fraction": _rate([r["ok"] for r in rows])["rate"],
        },
        "loop_ok": _rate([r["ok"] for r in rows]),
    }


def summarize_editing(rows: list[dict]) -> dict:
    both = [r["color"] and r["shape"] for r in rows]
    corrs = [0.0 if r["track_correlation"] is None else r["track_correlation"] for r in rows]
    return {
        "headline": {
            "color_shape_rate": _rate(both)["rate"],
            "color_rate": _rate([r["color"] for r in rows])["rate"],
            "shape_rate": _rate([r["shape"] for r in rows])["rate"],
            "track_correlation_median": float(np.median(corrs)),
        },
        "color_shape": _rate(both),
        "strength": EDIT_STRENGTH,
    }


SUMMARIES: dict[str, Callable[[list[dict]], dict]] = {
    "image_to_video": summarize_image_to_video,
    "extension": summarize_extension,
    "interpolation": summarize_interpolation,
    "loop": summarize_loop,
    "editing": summarize_editing,
}


def check_targets(task: str, headline: dict) -> dict:
    """``{metric: {"value", "target" (e.g. ">= 30"), "met"}}`` against TARGETS."""
    out = {}
    for metric, (op, threshold) in TARGETS[task].items():
        value = headline[metric]
        met = value is not None and (value >= threshold if op == ">=" else value <= threshold)
        out[metric] = {"value": value, "target": f"{op} {threshold:g}", "met": bool(met)}
    return out


# --------------------------------------------------------------------------- command


def check_setup(setup: Setup, tasks, n: int) -> None:
    """Raise UserError for arguments the tasks cannot take (before loading a model)."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    if n < 1:
        raise UserError(f"--n must be >= 1, got {n}")
    if setup.frames < 5 or (setup.frames - 1) % TIME_FACTOR:
        raise UserError(f"--frames must be 1 + {TIME_FACTOR}k and >= 5, got {setup.frames}")
    if "extension" in tasks:
        if setup.frames <= CONTEXT_FRAMES:
            raise UserError(
                f"extension windows are --frames long and must exceed the {CONTEXT_FRAMES} "
                f"context frames: use --frames >= {CONTEXT_FRAMES + TIME_FACTOR}"
            )
        if setup.long_frames <= setup.frames:
            raise UserError(
                f"--long-frames ({setup.long_frames}) must exceed --frames ({setup.frames})"
            )


def _check_size(pipe: TextToVideoPipeline, setup: Setup) -> None:
    multiple = SPACE_FACTOR * pipe.dit.config.patch[1]
    size = (setup.frames, setup.height, setup.width)
    if legal_size(*size, multiple) != size:
        raise UserError(
            f"--height and --width must be multiples of {multiple} in 32..512 for this model, "
            f"got {setup.height}x{setup.width}"
        )


def evaluate(
    pipe: TextToVideoPipeline,
    n: int,
    setup: Setup | None = None,
    tasks=TASKS,
    samples: dict | None = None,
) -> dict:
    """Run ``tasks`` on ``n`` scenes each; per task ``{"clips", "headline", "targets",
    "met", ..., "rows"}``. With ``samples`` (a dict), the first scene's conditioning frames
    and generated clip of each task are stored in it (``{task: {"prompt", "input",
    "output"}}``)."""
    setup = setup or Setup()
    check_setup(setup, tasks, n)
    _check_size(pipe, setup)
    scenes = task_scenes(n)
    report = {}
    for task in tasks:
        rows = []
        for k, scene in enumerate(tqdm(scenes, desc=task, unit="clip")):
            row, clip, given = RUNNERS[task](pipe, scene, k, setup)
            rows.append({"seed": scene.seed, "prompt": scene.caption, **row})
            if samples is not None and k == 0:
                prompt = row.get("edit_prompt", scene.caption)
                samples[task] = {"prompt": prompt, "input": given, "output": clip}
        summary = SUMMARIES[task](rows)
        targets = check_targets(task, summary["headline"])
        met = all(t["met"] for t in targets.values())
        report[task] = {"clips": len(rows), **summary, "targets": targets, "met": met}
        report[task]["rows"] = rows
    return report


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if abs(value) > 1.5 else f"{value:.3f}"


def table_rows(report: dict) -> list[tuple[str, str, str, str, str]]:
    """(task, metric, value, target, met) for every headline number of a report."""
    out = []
    for task, r in report.items():
        for metric, value in r["headline"].items():
            target = r["targets"].get(metric)
            met = "-" if target is None else ("yes" if target["met"] else "NO")
            out.append((task, metric, _fmt(value), target["target"] if target else "-", met))
    return out


def run(args: argparse.Namespace) -> dict:
    """`tinysora eval tasks`: evaluate, print a table, save the JSON."""
    setup = Setup(args.frames, args.height, args.width, args.long_frames, args.steps)
    check_setup(setup, args.tasks, args.n)
    pipe = load_pipe(args)
    report = evaluate(pipe, args.n, setup, args.tasks)
    print(f"{'task':16s}{'metric':26s}{'value':>9s}  {'target':10s}met")
    for task, metric, value, target, met in table_rows(report):
        print(f"{task:16s}{metric:26s}{value:>9s}  {target:10s}{met}")
    if "extension" in report:
        print("extension by motion: seams ok / frames kept (clips)")
        for motion, m in report["extension"]["by_motion"].items():
            seams, kept = _fmt(m["seam_ok_fraction"]), _fmt(m["frames_kept_fraction"])
            print(f"  {motion:16s}{seams:>7s} / {kept} ({m['clips']})")
    print(
        f"({args.n} scenes per task, {setup.frames} frames of {setup.height}x{setup.width}; "
        f"extension to {setup.long_frames} frames, {setup.frames} at a time)"
    )
    write_json({"setup": asdict(setup), **report}, args.json)
    return report
