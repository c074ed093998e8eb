"""Temporal-quality eval on real renders of Shapes World: the world's own clips score
near-perfect, and clips broken in time (jitter, shuffled frames, a vanished object)
score clearly worse."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from tiny import save_tiny_model

from tinysora.cli import main
from tinysora.eval.dynamics import (
    GROUPS,
    POST_SEEN_FRACTION,
    consistency,
    crossing_scenes,
    evaluate,
    evaluate_clip,
    evaluate_clips,
    ground_truth_items,
    group_scenes,
    has_crossing,
    permanence,
    smoothness,
)
from tinysora.eval.dynamics import label_pixels as labels_of
from tinysora.pipeline import TextToVideoPipeline
from tinysora.worlds.detect import DetectedObject, detect
from tinysora.worlds.shapes import COLORS, layout, render_tracks, sample_scene, split_seed

H, W, T = 64, 64, 17
# measured on 462 objects of the first 300 test scenes (64x64x17): residual median 0.014 px,
# max 0.20 px; area drift max 3.2%; color drift max 0.7 RGB
MAX_TRUTH_RESIDUAL_PX = 0.3
MAX_TRUTH_AREA_DRIFT = 0.04
MAX_TRUTH_COLOR_DRIFT = 1.0


def first_scenes(test, count: int) -> list:
    """The first ``count`` test-split scenes for which ``test(scene)`` holds."""
    out, i = [], 0
    while len(out) < count:
        scene = sample_scene(split_seed("test", i))
        i += 1
        if test(scene):
            out.append(scene)
    return out


def single(motion_prefix: str, count: int = 1) -> list:
    return first_scenes(
        lambda s: len(s.objects) == 1 and s.objects[0].motion.startswith(motion_prefix), count
    )


def only_object(scene, frames: np.ndarray) -> dict:
    return evaluate_clip(scene, frames)["objects"][0]


def true_track_object(track, motion: str) -> DetectedObject:
    """A 'detection' that is exactly the world's centre track (tests the fitted model)."""
    centre = np.stack([track.cx, track.cy], axis=1)  # (T, 2)
    area = np.full(len(track.cx), 100.0)
    return DetectedObject(track.spec.color, track.spec.shape, motion, track.spec.size, centre, area)


@pytest.fixture(scope="module")
def truth() -> dict:
    return evaluate_clips(ground_truth_items(20, H, W, T))


def test_ground_truth_renders_score_near_perfect(truth):
    objs = [o for row in truth["rows"] for o in row["objects"]]
    assert truth["found"] == truth["objects"] == len(objs) > 20
    residuals = [o["residual_px"] for o in objs if o["residual_px"] is not None]
    assert len(residuals) >= 0.8 * len(objs)
    assert truth["smoothness"]["residual_px_median"] < 0.05
    assert max(residuals) < MAX_TRUTH_RESIDUAL_PX
    assert truth["smoothness"]["smooth_fraction"] == 1.0
    moving = [o["r2"] for o in objs if o["r2"] is not None]
    assert len(moving) >= 10 and min(moving) > 0.999
    assert all(o["r2"] is None for o in objs if o["detected_motion"] == "standing still")
    assert max(o["area_drift"] for o in objs if o["area_drift"] is not None) < MAX_TRUTH_AREA_DRIFT
    assert max(o["color_drift"] for o in objs) < MAX_TRUTH_COLOR_DRIFT
    assert all(o["seen_fraction"] == 1.0 for o in objs)


def test_a_jittered_frame_raises_the_residual():
    scene = single("moving")[0]
    tracks = layout(scene, H, W, T)
    clean = only_object(scene, render_tracks(tracks, scene.background, H, W))
    jittered = copy.deepcopy(tracks)
    jittered[0].cx[T // 2] += 6.0  # one frame 6 px off the line: RMS 6 sqrt(16) / 17 = 1.4
    bad = only_object(scene, render_tracks(jittered, scene.background, H, W))
    assert clean["residual_px"] < MAX_TRUTH_RESIDUAL_PX
    assert bad["residual_px"] > 1.2
    assert bad["r2"] < clean["r2"]


@pytest.mark.parametrize("motion", ["moving", "bouncing"])
def test_shuffled_frames_score_far_worse(motion):
    scene = single(motion)[0]
    frames = render_tracks(layout(scene, H, W, T), scene.background, H, W)
    shuffled = frames[np.random.default_rng(0).permutation(T)]
    assert only_object(scene, frames)["residual_px"] < MAX_TRUTH_RESIDUAL_PX
    assert only_object(scene, shuffled)["residual_px"] > 2.0


def test_area_and_color_drift_catch_a_bad_frame():
    scene = single("moving")[0]
    tracks = layout(scene, H, W, T)
    grown = copy.deepcopy(tracks)
    grown[0].scale[T // 2] *= 1.2  # one frame 44% larger in area
    assert only_object(scene, render_tracks(grown, scene.background, H, W))["area_drift"] > 0.08
    frames = render_tracks(tracks, scene.background, H, W)
    solid = (frames[T // 2] == COLORS[scene.objects[0].color]).all(-1)
    frames[T // 2][solid] = np.clip(frames[T // 2][solid].astype(int) + 12, 0, 255)
    # one frame 12 sqrt(3) = 20.8 RGB off: RMS over 17 frames 5.0
    assert only_object(scene, frames)["color_drift"] > 4.0


@pytest.mark.parametrize("frames", [9, 17, 33])
def test_bouncing_world_tracks_fit_the_bouncing_ball_model_exactly(frames):
    scenes = first_scenes(lambda s: any(o.motion == "bouncing" for o in s.objects), 8)
    for scene in scenes:
        for track in layout(scene, H, W, frames):
            if track.spec.motion == "bouncing":
                fit = smoothness(true_track_object(track, "bouncing"))
                # exact up to the least-squares solver's rounding (it differs by CPU)
                assert fit["residual_px"] < 1e-4, scene.seed
                assert fit["r2"] > 1 - 1e-6
                line = smoothness(true_track_object(track, "moving down"))
                assert line["residual_px"] > 1.0  # a line does not describe a bounce


def test_bouncing_renders_fit_well_and_a_zigzag_does_not():
    rng = np.random.default_rng(1)
    for scene in single("bouncing", 4):
        track = layout(scene, H, W, T)[0]
        row = only_object(scene, render_tracks([track], scene.background, H, W))
        assert row["detected_motion"] == "bouncing"
        assert row["residual_px"] < MAX_TRUTH_RESIDUAL_PX and row["r2"] > 0.999
        zigzag = copy.deepcopy(track)
        zigzag.cy = zigzag.cy[rng.permutation(T)]
        assert smoothness(true_track_object(zigzag, "bouncing"))["residual_px"] > 2.0


def blank_after(track, frame: int):
    """A copy of ``track`` moved off the canvas after ``frame`` (the object vanishes)."""
    gone = copy.deepcopy(track)
    gone.cx[frame + 1 :] = -1000.0
    return gone


def test_permanence_of_crossing_scenes_and_of_a_vanished_object():
    scenes = crossing_scenes(6, H, W, T)
    assert len(scenes) == 6
    late = None
    for scene in scenes:
        tracks = layout(scene, H, W, T)
        assert has_crossing(tracks)
        frames = render_tracks(tracks, scene.background, H, W)
        result = permanence(scene, detect(frames), labels_of(frames))
        assert result is not None and result["kept"], scene.seed
        assert result["seen_fraction"] == [1.0, 1.0]
        last_hidden = int(np.flatnonzero(tracks[0].visible < 1)[-1])
        if late is None and 7 <= last_hidden <= T - 4:  # still detected in >= 40% of frames
            late = scene, tracks, last_hidden
    assert late is not None
    scene, tracks, last_hidden = late
    for k in range(2):  # the one below vanishes after the crossing, then the one on top
        broken = list(tracks)
        broken[k] = blank_after(tracks[k], last_hidden)
        frames = render_tracks(broken, scene.background, H, W)
        result = permanence(scene, detect(frames), labels_of(frames))
        assert result is not None and not result["kept"], (scene.seed, k)
        assert result["seen_fraction"][k] < POST_SEEN_FRACTION


def test_no_crossing_gives_none():
    one = single("moving")[0]
    frames = render_tracks(layout(one, H, W, T), one.background, H, W)
    assert permanence(one, detect(frames), labels_of(frames)) is None
    apart = first_scenes(
        lambda s: len(s.objects) == 2 and (layout(s, H, W, T)[0].visible == 1).all(), 1
    )[0]
    frames = render_tracks(layout(apart, H, W, T), apart.background, H, W)
    assert not has_crossing(layout(apart, H, W, T))
    assert permanence(apart, detect(frames), labels_of(frames)) is None


def test_too_few_frames_give_nan_not_a_crash():
    scene = single("moving")[0]
    track = layout(scene, H, W, T)[0]
    obj = true_track_object(track, "moving right")
    obj.track[2:] = np.nan  # seen in 2 frames only
    obj.area[2:] = 0.0
    fit = smoothness(obj)
    assert math.isnan(fit["residual_px"]) and math.isnan(fit["r2"]) and fit["frames"] == 2
    frames = render_tracks([track], scene.background, H, W)
    drift = consistency(obj, frames)
    assert math.isnan(drift["area_drift"]) and math.isnan(drift["color_drift"])
    five = layout(single("bouncing")[0], H, W, 5)[0]  # a 5-frame bounce: more parameters
    assert math.isnan(smoothness(true_track_object(five, "bouncing"))["residual_px"])


def test_images_are_judged_without_dynamics():
    report = evaluate_clips(ground_truth_items(6, H, W, 1))
    objs = [o for row in report["rows"] for o in row["objects"]]
    assert report["found"] == len(objs) > 6
    assert all(o["detected_motion"] is None and o["residual_px"] is None for o in objs)
    assert all(o["area_drift"] is None and o["color_drift"] is None for o in objs)
    assert all(row["permanence"] is None for row in report["rows"])
    assert report["smoothness"]["residual_px_median"] is None
    assert report["permanence"]["crossings"] == 0 and report["permanence"]["rate"] is None
    assert crossing_scenes(3, H, W, 1) == []


def test_groups():
    assert [s.seed for s in group_scenes("all", 3)] == [split_seed("test", i) for i in range(3)]
    assert all(len(s.objects) == 2 for s in group_scenes("two_crossing", 3))
    with pytest.raises(ValueError, match="unknown group"):
        group_scenes("nope", 3)


def test_run_on_ground_truth_prints_and_writes_strict_json(tmp_path, capsys):
    out = tmp_path / "dyn.json"
    assert main(["eval", "dynamics", "--truth", "--n", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report) == list(GROUPS)
    assert report["two_crossing"]["permanence"]["crossings"] == 3
    assert report["two_crossing"]["permanence"]["rate"] == 1.0
    printed = capsys.readouterr().out
    assert "smoothness: residual" in printed and "permanence 100.0%" in printed

    def no_nan(name: str):
        raise AssertionError(f"{name} in the JSON report")

    saved = json.loads(out.read_text(), parse_constant=no_nan)
    assert saved["all"]["clips"] == 3 and len(saved["all"]["rows"]) == 3


def test_run_on_generations_of_a_tiny_random_model(tmp_path, one_thread):
    pipe = TextToVideoPipeline.from_pretrained(save_tiny_model(tmp_path))
    report = evaluate(pipe, 2, frames=9)
    for group in GROUPS:
        assert report[group]["clips"] == 2
        assert [r["seed"] for r in report[group]["rows"]] == [
            s.seed for s in group_scenes(group, 2, H, W, 9)
        ]
