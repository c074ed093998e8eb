"""The Shapes World detector on real rendered clips after a real H.264 round trip."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tinysora.io.video import read_video, write_video
from tinysora.worlds.detect import compare_to_truth, detect
from tinysora.worlds.shapes import (
    BACKGROUNDS,
    COLORS,
    MOTIONS,
    SHAPES,
    layout,
    parse_caption,
    render_tracks,
    sample_scene,
    split_seed,
)

MIXTURE = [
    (h, w, t) for (h, w) in [(48, 96), (64, 112), (112, 64), (128, 128)] for t in (9, 17, 33)
]


def h264(frames: np.ndarray, tmp_path) -> np.ndarray:
    path = tmp_path / "clip.mp4"
    write_video(path, frames, fps=8)
    out, _ = read_video(path)
    return out


def accuracy(seeds, sizes, tmp_path) -> tuple[dict[str, float], int, list]:
    right = {"color": 0, "shape": 0, "motion": 0}
    total, extra, errors = 0, 0, []
    for k, seed in enumerate(seeds):
        h, w, t = sizes[k % len(sizes)]
        scene = sample_scene(seed)
        tracks = layout(scene, h, w, t)
        frames = h264(render_tracks(tracks, scene.background, h, w), tmp_path)
        result = compare_to_truth(detect(frames), tracks, h, w)
        extra += result["extra"]
        for row in result["objects"]:
            total += 1
            for a in right:
                right[a] += row[a]
            if not all(row[a] for a in right):
                errors.append((seed, (h, w, t), row))
    return {a: right[a] / total for a in right}, extra, errors


@pytest.mark.slow  # make test keeps the mixture sample; `make detector-accuracy` measures all
def test_accuracy_on_100_test_clips_64x64x17(tmp_path):
    seeds = [split_seed("test", 5000 + i) for i in range(100)]
    acc, extra, errors = accuracy(seeds, [(64, 64, 17)], tmp_path)
    assert min(acc.values()) >= 0.99, (acc, errors)
    assert extra == 0


def test_accuracy_on_mixture_sample(tmp_path):
    seeds = [split_seed("test", 9000 + i) for i in range(36)]
    acc, extra, errors = accuracy(seeds, MIXTURE, tmp_path)
    assert min(acc.values()) >= 0.97, (acc, errors)
    assert extra <= 1


@pytest.mark.parametrize("motion", MOTIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_and_motion(shape, motion, tmp_path):
    scene = parse_caption(f"a small pink {shape} {motion} on a gray background", seed=3)
    tracks = layout(scene, 64, 64, 17)
    det = detect(h264(render_tracks(tracks, "gray", 64, 64), tmp_path))
    assert det.background == "gray"
    assert [(o.color, o.shape, o.motion, o.size) for o in det.objects] == [
        ("pink", shape, motion, "small")
    ]


def test_track_follows_the_true_centre(tmp_path):
    scene = parse_caption("a large orange triangle moving right on a navy background", seed=5)
    (track,) = layout(scene, 64, 64, 17)
    (obj,) = detect(h264(render_tracks([track], "navy", 64, 64), tmp_path)).objects
    err = np.linalg.norm(obj.track - np.stack([track.cx, track.cy], 1), axis=1)
    assert err.max() < 1.0, err


@pytest.mark.parametrize("background", list(BACKGROUNDS))
def test_every_color_on_every_background(background):
    colors = list(COLORS)
    for first, second in zip(colors[::2], colors[1::2], strict=True):
        caption = f"a large {first} square standing still and a small {second} circle growing"
        scene = parse_caption(f"{caption} on a {background} background", seed=11)
        tracks = layout(scene, 64, 64, 9)
        det = detect(render_tracks(tracks, background, 64, 64))
        result = compare_to_truth(det, tracks, 64, 64)
        assert det.background == background
        assert result["extra"] == 0
        assert all(r["color"] and r["shape"] and r["motion"] for r in result["objects"]), result


def test_image_has_no_motion(tmp_path):
    scene = parse_caption("a large blue circle on a white background", seed=1)
    frames = render_tracks(layout(scene, 64, 64, 1), "white", 64, 64)
    (obj,) = detect(frames[0]).objects  # a single (H, W, 3) image is accepted
    assert (obj.color, obj.shape, obj.motion) == ("blue", "circle", None)


def test_blurred_clip_still_read(tmp_path):
    """Generated clips are soft: a Gaussian blur must not change the reading."""
    scene = parse_caption("a large red triangle bouncing on a white background", seed=2)
    frames = render_tracks(layout(scene, 64, 64, 17), "white", 64, 64)
    blurred = ndimage.gaussian_filter(frames.astype(np.float32), sigma=(0, 0.8, 0.8, 0))
    det = detect(np.clip(blurred + 0.5, 0, 255).astype(np.uint8))
    assert [(o.color, o.shape, o.motion) for o in det.objects] == [("red", "triangle", "bouncing")]


def test_empty_and_noise_clips_have_no_objects():
    rng = np.random.default_rng(0)
    flat = np.full((9, 64, 64, 3), BACKGROUNDS["navy"], dtype=np.uint8)
    assert detect(flat).objects == []
    noisy = np.clip(flat + rng.normal(0, 6, flat.shape), 0, 255).astype(np.uint8)
    assert detect(noisy).objects == []


def test_bad_input_shape():
    with pytest.raises(ValueError, match="RGB frames"):
        detect(np.zeros((4, 64, 64), dtype=np.uint8))
