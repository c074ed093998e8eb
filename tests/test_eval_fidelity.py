"""The fidelity measures (eval/fidelity.py) on clips whose answer is known: the world's
own renders are near perfect, and a smear, a ghost or a lost half of the object moves
the number that should move."""

from __future__ import annotations

import numpy as np
import pytest

from tinysora.eval.fidelity import clip_fidelity, fidelity_line, main_region, summarize
from tinysora.io.checkpoint import load_pretrained, resolve_model_dir
from tinysora.vae.model import VideoVAE, reconstruct
from tinysora.worlds.shapes import BACKGROUNDS, parse_caption, render

BOUNCING = "a large cyan square bouncing on a black background"
RIGHT = "a large red circle moving right on a white background"


def clip_of(caption: str, seed: int = 0) -> np.ndarray:
    return render(parse_caption(caption, seed), 64, 64, 17)


@pytest.mark.parametrize(
    "caption",
    [
        BOUNCING,
        RIGHT,
        "a small yellow triangle moving up on a navy background",
        "a small green circle moving left and a large blue square bouncing on a gray background",
    ],
)
def test_renders_are_the_reference(caption):
    f = clip_fidelity(clip_of(caption))
    assert f["stray_fraction"] == 0.0
    assert len(f["objects"]) == caption.count(" and ") + 1
    for obj in f["objects"]:
        assert obj["area_cv"] < 0.03, obj
        assert obj["outline_iou"] > 0.85, obj


def test_growing_objects_have_no_area_cv():
    f = clip_fidelity(clip_of("a large pink square growing on a black background"))
    (obj,) = f["objects"]
    assert obj["motion"] == "growing" and np.isnan(obj["area_cv"])


def test_specks_away_from_the_object_are_stray():
    """Pixels of the object's colour scattered over the background (as a smear or a
    ghost leaves them) count; the object itself and its blended rim do not."""
    clip = clip_of(RIGHT)
    specks = clip.copy()
    rng = np.random.default_rng(0)
    red = clip[8][np.abs(clip[8].astype(int) - 255).sum(-1) > 200][0]  # an object pixel
    for i in range(len(specks)):
        ys, xs = rng.integers(52, 64, 20), rng.integers(0, 64, 20)  # the bottom rows
        specks[i, ys, xs] = red
    clean, speckled = clip_fidelity(clip), clip_fidelity(specks)
    assert clean["stray_fraction"] == 0.0
    assert 0.002 < speckled["stray_fraction"] <= 20 / 64**2


def test_losing_half_the_object_in_some_frames_raises_area_cv_and_lowers_iou():
    clip = clip_of(RIGHT)
    cut = clip.copy()
    white = np.array(BACKGROUNDS["white"], dtype=np.uint8)
    for i in range(0, 17, 3):  # every third frame loses its lower half
        red = (np.abs(cut[i].astype(int) - white).sum(-1) > 60).nonzero()
        rows = red[0]
        middle = (rows.min() + rows.max()) // 2
        cut[i, middle:][np.abs(cut[i, middle:].astype(int) - white).sum(-1) > 0] = white
    (before,), (after,) = clip_fidelity(clip)["objects"], clip_fidelity(cut)["objects"]
    assert after["area_cv"] > 5 * before["area_cv"] and after["area_cv"] > 0.1
    assert after["outline_iou"] < before["outline_iou"] - 0.05


def test_main_region_keeps_the_largest_piece():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:3, 0:3] = True
    mask[6, 6] = True
    assert main_region(mask).sum() == 9 and not main_region(mask)[6, 6]
    assert not main_region(np.zeros((4, 4), dtype=bool)).any()


def test_the_bundled_vae_smears_a_bouncing_square():
    """What issue 30 measured: a round trip through the 4x time compression makes a
    fast object's area wobble far more than the render's."""
    vae = load_pretrained(VideoVAE, resolve_model_dir(None, "vae"))
    clips = [clip_of(BOUNCING, seed) for seed in range(4)]
    clean = summarize([clip_fidelity(c) for c in clips])
    trip = summarize([clip_fidelity(reconstruct(vae, c)) for c in clips])
    assert trip["area_cv_bouncing_median"] > 3 * clean["area_cv_bouncing_median"]
    assert trip["outline_iou_median"] < clean["outline_iou_median"]
    assert "bouncing" in fidelity_line(trip) and "stray pixels" in fidelity_line(trip)
