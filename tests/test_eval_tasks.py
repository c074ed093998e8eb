"""Conditioning-task eval: every measure on Shapes World renders whose answer is
known (the world's own clips pass; clips broken at a seam, a loop point or an edit
fail), plus one `tinysora eval tasks` run on a tiny random-weight model."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from tiny import save_tiny_model

from tinysora.cli import main
from tinysora.errors import UserError
from tinysora.eval.task_measures import (
    PSNR_CAP_DB,
    edited_scene,
    extension_seams,
    is_monotone,
    loop_ratio,
    seam_check,
    segment_frames,
    track_correlation,
)
from tinysora.eval.tasks import (
    TARGETS,
    TASKS,
    Setup,
    check_setup,
    check_targets,
    extension_by_motion,
    judge_editing,
    judge_extension,
    judge_image_to_video,
    judge_interpolation,
    judge_loop,
    task_scenes,
)
from tinysora.worlds.shapes import (
    HELD_OUT_PAIRS,
    ObjectSpec,
    Scene,
    layout,
    render,
    render_tracks,
)

H, W, T = 64, 64, 17


def scene_with(motion: str) -> Scene:
    """The first task scene whose object has ``motion``."""
    return next(s for s in task_scenes(40) if s.objects[0].motion == motion)


def line_track(frames: int, step: float = 2.0) -> np.ndarray:
    """(T, 2): x = 10 + step t, y = 30 (moving right at ``step`` px per frame)."""
    t = np.arange(frames, dtype=np.float64)
    return np.stack([10 + step * t, np.full(frames, 30.0)], axis=1)


def test_ground_truth_renders_pass_image_interpolation_and_editing():
    scenes = task_scenes(8)
    assert len({s.seed for s in scenes}) == 8 and all(len(s.objects) == 1 for s in scenes)
    straight = 0
    for scene in scenes:
        truth = render(scene, H, W, T)
        i2v = judge_image_to_video(scene, truth[0], truth)
        assert i2v["psnr_first_db"] == PSNR_CAP_DB and i2v["all_right"], scene.caption
        interp = judge_interpolation(scene, truth[0], truth[-1], truth)
        assert interp["psnr_first_db"] == interp["psnr_last_db"] == PSNR_CAP_DB
        assert all(s["monotone"] for s in interp["straight"]), scene.caption
        straight += len(interp["straight"])
        edited = edited_scene(scene)
        good = judge_editing(scene, edited, truth, render(edited, H, W, T))
        assert good["color"] and good["shape"] and good["track_correlation"] > 0.99, scene.seed
        unchanged = judge_editing(scene, edited, truth, truth)  # the edit was ignored
        assert not unchanged["color"] and not unchanged["shape"]
    assert straight >= 3  # the monotone check really ran


def test_psnr_of_a_different_frame_is_finite_and_lower():
    scene = scene_with("moving left")
    truth = render(scene, H, W, T)
    psnr = judge_image_to_video(scene, truth[0], truth[::-1])["psnr_first_db"]
    assert 5 < psnr < 30


def test_extension_seams_follow_the_pipeline_windows():
    # 17 -> 129 frames, 17 at a time: each window keeps 17 - 5 context = 12 new frames
    assert extension_seams(17, 129, 17) == list(range(17, 129, 12))
    assert len(extension_seams(17, 129, 17)) == 10
    assert extension_seams(9, 17, 9) == [9, 13]
    with pytest.raises(UserError, match="longer than 5"):
        extension_seams(17, 129, 5)


@pytest.mark.parametrize("step", [0.0, 2.0])
def test_a_track_shifted_by_k_at_a_seam_jumps_exactly_k_more(step):
    track = line_track(41, step)
    k, seams = 3.0, [13, 21, 29]
    track[21:, 0] += k  # everything from seam 21 on moved k px right
    check = seam_check(track, seams)
    assert check["allowed_px"] == pytest.approx(step + 1.0)  # median step + 1 px
    assert check["jumps_px"][1] == pytest.approx(step + k)
    assert check["excess_px"][1] == pytest.approx(k - 1.0)
    assert check["ok"] == [True, False, True]
    unseen = track.copy()
    unseen[28] = np.nan  # the object is missing just before seam 29: not ok
    assert seam_check(unseen, seams)["ok"] == [True, False, False]


def test_rendered_long_clip_has_smooth_seams_and_a_moved_window_is_caught():
    scene = scene_with("moving right")
    frames, seams = 65, extension_seams(17, 65, 17)  # [17, 29, 41, 53]
    tracks = layout(scene, H, W, frames)
    clean = judge_extension(scene, render_tracks(tracks, scene.background, H, W), seams)
    assert clean["objects"][0]["ok"] == [True] * 4
    assert clean["kept_frames"] == clean["detected_frames"] == frames
    moved = copy.deepcopy(tracks)
    moved[0].cy[29:] += 4.0  # the window starting at frame 29 is drawn 4 px lower
    broken = judge_extension(scene, render_tracks(moved, scene.background, H, W), seams)
    obj = broken["objects"][0]
    assert obj["ok"] == [True, False, True, True]
    step = 0.5 * W / (frames - 1)  # the world's speed in px per frame
    assert obj["allowed_px"] == pytest.approx(step + 1.0, abs=0.05)
    assert obj["jumps_px"][1] == pytest.approx(math.hypot(step, 4.0), abs=0.1)


def test_extension_by_motion_counts_two_object_clips_under_both_motions():
    def obj(motion, ok):
        return {"motion": motion, "ok": ok}

    rows = [
        {"objects": [obj("moving down", [True, False])], "frames": 10, "kept_frames": 6},
        {"objects": [obj("standing still", [True, True])], "frames": 10, "kept_frames": 10},
        {
            "objects": [obj("moving down", [True, True]), obj("growing", [False, False])],
            "frames": 10,
            "kept_frames": 8,
        },
    ]
    by = extension_by_motion(rows)
    assert list(by) == ["growing", "moving down", "standing still"]
    assert by["moving down"] == {"clips": 2, "seam_ok_fraction": 0.75, "frames_kept_fraction": 0.7}
    assert by["growing"] == {"clips": 1, "seam_ok_fraction": 0.0, "frames_kept_fraction": 0.8}
    assert by["standing still"]["seam_ok_fraction"] == 1.0


def test_frames_are_kept_only_with_the_prompt_color_and_shape():
    scene = scene_with("standing still")
    spec = scene.objects[0]
    seams = [9, 13]
    clip = render(scene, H, W, T)
    detected, kept = segment_frames(scene, clip, seams)
    assert detected.all() and kept.all()
    other = next(s for s in ("circle", "square", "triangle") if s != spec.shape)
    reshaped = Scene((ObjectSpec(spec.color, other, spec.size, spec.motion),), scene.background, 0)
    mixed = np.concatenate([clip[:13], render(reshaped, H, W, T)[13:]])
    detected, kept = segment_frames(scene, mixed, seams)
    assert detected.all()
    assert kept[:13].all() and not kept[13:].any()
    gone = copy.deepcopy(layout(scene, H, W, T))
    gone[0].cx[9:13] = -1000.0  # off the canvas for the middle segment
    detected, kept = segment_frames(scene, render_tracks(gone, scene.background, H, W), seams)
    assert list(np.flatnonzero(~detected)) == [9, 10, 11, 12]
    assert (kept == detected).all()


def test_monotone_tracks():
    track = line_track(17)
    assert is_monotone(track, "moving right")
    assert not is_monotone(track, "moving left")
    back = track.copy()
    back[9:, 0] = back[8, 0] - (back[9:, 0] - back[8, 0])  # turns around halfway
    assert not is_monotone(back, "moving right")
    jitter = track.copy()
    jitter[5, 0] = jitter[4, 0] - 0.4  # a step back within the tolerance
    assert is_monotone(jitter, "moving right")
    holes = track.copy()
    holes[3:6] = np.nan  # unseen frames are skipped
    assert is_monotone(holes, "moving right")
    up = track[:, ::-1] * [1, -1]  # y decreasing: moving up
    assert is_monotone(up, "moving up") and not is_monotone(up, "moving down")
    with pytest.raises(ValueError, match="straight-line"):
        is_monotone(track, "bouncing")


def test_loop_ratio():
    forward = render(scene_with("moving right"), H, W, 9)
    assert loop_ratio(np.concatenate([forward, forward[-2::-1]])) == 0.0  # there and back
    assert loop_ratio(forward) > 3.0  # ends half a frame width apart
    assert judge_loop(forward) == {"ratio": pytest.approx(loop_ratio(forward)), "ok": False}
    still = render(scene_with("standing still"), H, W, 9)
    assert loop_ratio(still) == 0.0 and judge_loop(still)["ok"]
    ramp = np.stack([np.full((8, 8, 3), 10 + i, np.uint8) for i in range(9)])
    assert loop_ratio(ramp) == 8.0  # steps of 1, ends 8 apart
    jump = np.concatenate([still[:-1], still[-1:] // 2])
    assert loop_ratio(jump) == math.inf and judge_loop(jump) == {"ratio": None, "ok": False}


def test_track_correlation():
    a = line_track(17)
    a[:, 1] += np.sin(np.arange(17))  # some vertical motion
    assert track_correlation(a, a) == pytest.approx(1.0)
    assert track_correlation(a, a + 5.0) == pytest.approx(1.0)  # a common shift is kept
    flipped = a.copy()
    flipped[:, 0] = a[::-1, 0]  # x runs the other way
    assert track_correlation(a, flipped) < 0.5
    seen_once = np.full_like(a, np.nan)
    seen_once[0] = a[0]
    assert math.isnan(track_correlation(a, seen_once))


def test_edited_scene_changes_color_and_shape_only():
    for scene in task_scenes(30):
        edited = edited_scene(scene)
        old, new = scene.objects[0], edited.objects[0]
        assert new.color != old.color and new.shape != old.shape
        assert (new.color, new.shape) not in HELD_OUT_PAIRS
        assert (new.size, new.motion) == (old.size, old.motion)
        assert (edited.background, edited.seed) == (scene.background, scene.seed)
        assert edited == edited_scene(scene)
        assert edited.caption == f"{new.phrase} on a {scene.background} background"


def test_targets_and_bad_arguments():
    at = check_targets("image_to_video", {"psnr_first_db": 30.0, "motion_rate": 0.84})
    assert at["psnr_first_db"] == {"value": 30.0, "target": ">= 30", "met": True}
    assert not at["motion_rate"]["met"]
    loop = check_targets("loop", {"ratio_median": 1.0})
    assert loop["ratio_median"]["met"] and loop["ratio_median"]["target"] == "<= 1"
    assert not check_targets("loop", {"ratio_median": None})["ratio_median"]["met"]
    assert set(TARGETS) == set(TASKS)
    with pytest.raises(UserError, match="unknown task"):
        check_setup(Setup(), ["image_to_video", "teleport"], 2)
    with pytest.raises(UserError, match="--frames >= 9"):
        check_setup(Setup(frames=5), ["extension"], 2)
    check_setup(Setup(frames=5), ["image_to_video", "loop"], 2)  # fine without extension
    with pytest.raises(UserError, match="--long-frames"):
        check_setup(Setup(long_frames=17), TASKS, 2)
    with pytest.raises(UserError, match="1 \\+ 4k"):
        check_setup(Setup(frames=16), ["loop"], 2)


def test_cli_rejects_an_unknown_task(capsys):
    assert main(["eval", "tasks", "--tasks", "teleport"]) == 2
    assert "unknown task(s) teleport" in capsys.readouterr().err


def test_eval_tasks_on_a_tiny_random_model(tmp_path, one_thread, capsys):
    model = save_tiny_model(tmp_path / "model", width=32, depth=1)
    out = tmp_path / "tasks.json"
    argv = ["eval", "tasks", "--model", str(model), "--n", "2", "--frames", "9"]
    assert main([*argv, "--long-frames", "17", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert list(report) == ["setup", *TASKS]
    assert report["setup"]["long_frames"] == 17 and report["setup"]["frames"] == 9
    for task in TASKS:
        r = report[task]
        assert r["clips"] == 2 and len(r["rows"]) == 2
        assert set(r["targets"]) == set(TARGETS[task]) <= set(r["headline"])
        assert r["met"] == all(t["met"] for t in r["targets"].values())
        assert task in printed
    assert [row["seed"] for row in report["loop"]["rows"]] == [s.seed for s in task_scenes(2)]
    extension = report["extension"]["rows"][0]
    assert extension["frames"] == 17 and extension["seams"] == [9, 13]
    motions = {o["motion"] for r in report["extension"]["rows"] for o in r["objects"]}
    assert set(report["extension"]["by_motion"]) == motions
    assert "extension by motion" in printed
    psnr = report["image_to_video"]["headline"]["psnr_first_db"]
    assert psnr is not None and psnr < PSNR_CAP_DB
