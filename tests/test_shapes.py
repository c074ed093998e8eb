"""Tests for Shapes World v1 (tinysora/worlds/shapes.py) against the contract docs/WORLD.md.

Everything is checked to the number: held-out color-shape pairs, determinism (golden
hashes), splits, captions, geometry of every motion, and anti-aliased rendering.
Expected values are derived here independently (analytic formulas, an independent
bounce model, pixel-box geometry) rather than by calling the code under test again.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from tinysora.worlds.shapes import (
    BACKGROUNDS,
    COLORS,
    HELD_OUT_PAIRS,
    MOTIONS,
    SHAPES,
    SIZES,
    ObjectSpec,
    ObjectTrack,
    Scene,
    SplitMix64,
    WorldError,
    allowed_pairs,
    bounce_track,
    check_size,
    clip_times,
    layout,
    parse_caption,
    render,
    render_tracks,
    sample_scene,
    shape_coverage,
    split_of,
    split_seed,
)

# --------------------------------------------------------------------------- contract numbers
# Copied from WORLD.md, not imported, so a drifting constant in the code is caught.

CONTRACT_BACKGROUNDS = {
    "black": (15, 15, 20),
    "white": (240, 240, 240),
    "gray": (110, 110, 110),
    "navy": (20, 30, 80),
}
CONTRACT_COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 70),
    "blue": (40, 90, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 135, 30),
    "cyan": (40, 200, 220),
    "pink": (245, 120, 190),
}
CONTRACT_SHAPES = ("circle", "square", "triangle")
CONTRACT_SIZES = {"small": 0.20, "large": 0.34}
CONTRACT_MOTIONS = (
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "bouncing",
    "standing still",
    "growing",
    "shrinking",
)
CONTRACT_HELD_OUT = {
    ("red", "triangle"),
    ("blue", "circle"),
    ("yellow", "square"),
    ("cyan", "triangle"),
}

# Sizes the geometry tests run at: (H, W, T). All legal (multiples of 8 in 32..512).
GEOMETRY_SIZES = [(64, 64, 17), (48, 96, 9), (112, 64, 33), (32, 32, 5), (512, 32, 3), (64, 64, 1)]
# 300 seeds: 150 training seeds and 150 test seeds (the test split also draws held-out pairs).
GEOMETRY_SEEDS = list(range(150)) + list(range(2_000_000, 2_000_150))

EPS = 1e-9
SQRT3 = math.sqrt(3.0)

_COLOR_ALT = "|".join(CONTRACT_COLORS)
_SHAPE_ALT = "|".join(CONTRACT_SHAPES)
_MOTION_ALT = "|".join(CONTRACT_MOTIONS)
_BG_ALT = "|".join(CONTRACT_BACKGROUNDS)
_OBJ = rf"a (small|large) ({_COLOR_ALT}) ({_SHAPE_ALT}) ({_MOTION_ALT})"
CAPTION_RE = re.compile(rf"^{_OBJ}( and {_OBJ})? on a ({_BG_ALT}) background$")


def md5(clip: np.ndarray) -> str:
    return hashlib.md5(clip.tobytes()).hexdigest()


def box_h_over_w(shape: str) -> float:
    return SQRT3 / 2 if shape == "triangle" else 1.0


# --------------------------------------------------------------------------- constants


def test_constants_match_contract():
    assert BACKGROUNDS == CONTRACT_BACKGROUNDS
    assert COLORS == CONTRACT_COLORS
    assert tuple(SHAPES) == CONTRACT_SHAPES
    assert SIZES == CONTRACT_SIZES
    assert tuple(MOTIONS) == CONTRACT_MOTIONS
    assert set(HELD_OUT_PAIRS) == CONTRACT_HELD_OUT


# --------------------------------------------------------------------------- 1. held-out pairs


def _training_seeds_under_test() -> list[int]:
    # 0..99_999 densely, then a stride-89 sample (a prime, so no alignment with any
    # period in the sampler) up to and including the split's last seed 999_999.
    return [*range(100_000), *range(100_000, 1_000_000, 89), 999_999]


def test_training_split_never_draws_held_out_pairs():
    seeds = _training_seeds_under_test()
    assert len(seeds) >= 100_000
    pairs_seen: Counter = Counter()
    for seed in seeds:
        assert split_of(seed) == "train"
        scene = sample_scene(seed)
        for obj in scene.objects:
            pair = (obj.color, obj.shape)
            assert pair not in CONTRACT_HELD_OUT, f"training seed {seed} drew {pair}"
            pairs_seen[pair] += 1
        colors = [o.color for o in scene.objects]
        assert len(set(colors)) == len(colors), f"seed {seed}: objects share a color"
    all_pairs = {(c, s) for c in CONTRACT_COLORS for s in CONTRACT_SHAPES}
    # Not vacuous the other way round either: all 20 allowed pairs do occur in training,
    # each a healthy number of times (uniform would be ~ 1/20 of ~165k objects).
    assert set(pairs_seen) == all_pairs - CONTRACT_HELD_OUT
    assert len(pairs_seen) == 20
    assert min(pairs_seen.values()) > 4_000


def test_held_out_pairs_occur_in_test_split():
    seen: Counter = Counter()
    for seed in range(2_000_000, 2_020_000):
        for obj in sample_scene(seed).objects:
            seen[(obj.color, obj.shape)] += 1
    for pair in CONTRACT_HELD_OUT:
        assert seen[pair] > 200, f"held-out pair {pair} is (nearly) absent from the test split"
    assert set(seen) == {(c, s) for c in CONTRACT_COLORS for s in CONTRACT_SHAPES}


def test_allowed_pairs():
    all_pairs = {(c, s) for c in CONTRACT_COLORS for s in CONTRACT_SHAPES}
    train = allowed_pairs("train")
    assert len(train) == len(set(train)) == 20
    assert set(train) == all_pairs - CONTRACT_HELD_OUT
    for split in ("val", "test"):
        assert set(allowed_pairs(split)) == all_pairs


def test_held_out_pairs_are_renderable():
    for color, shape in sorted(CONTRACT_HELD_OUT):
        spec = ObjectSpec(color, shape, "large", "standing still")
        clip = render(Scene((spec,), "black", 2_000_000), 64, 64, 1)
        tracks = layout(Scene((spec,), "black", 2_000_000), 64, 64, 1)
        r, c = int(tracks[0].cy[0]), int(tracks[0].cx[0])
        assert tuple(clip[0, r, c]) == CONTRACT_COLORS[color]


# --------------------------------------------------------------------------- 2. determinism

# Golden md5 of render(sample_scene(seed), H, W, T).tobytes(), computed with the code as
# of the foundation commit. A change here means clips drift across machines or refactors.
GOLDEN = [
    (0, 64, 64, 17, "a small orange circle bouncing on a navy background",
     "b25e2b7c0c109b20a36c915f4b6ee578"),
    (2_000_000, 64, 64, 17,
     "a large pink triangle moving left and a small yellow triangle moving up "
     "on a white background",
     "a31e5d3f788fe3480271c7d6edcaba5b"),
    (1_000_003, 64, 64, 17, "a large blue square moving down on a black background",
     "1c62b702ae3832229ff8219b9a9ba66d"),
    (3, 64, 64, 17,
     "a large purple circle bouncing and a small orange circle growing on a navy background",
     "6fa0d2247dfb5500b33dd3a555506a72"),
    (8, 48, 96, 9,
     "a large pink circle moving down and a large purple triangle moving right "
     "on a white background",
     "7b32593688de2464baa9f5541c6c4c75"),
    (2_000_001, 112, 64, 33,
     "a large orange square moving down and a large cyan square standing still "
     "on a gray background",
     "f7db2375e0eb11dd7d5a320044d0cff0"),
]  # fmt: skip


@pytest.mark.parametrize(("seed", "h", "w", "t", "caption", "digest"), GOLDEN)
def test_golden_clips(seed, h, w, t, caption, digest):
    scene = sample_scene(seed)
    assert scene.caption == caption
    clip = render(scene, h, w, t)
    assert clip.dtype == np.uint8 and clip.shape == (t, h, w, 3)
    assert md5(clip) == digest


def test_render_twice_is_byte_identical():
    for seed in (0, 3, 8, 1_000_003, 2_000_000, 2_000_001):
        scene = sample_scene(seed)
        a = render(scene, 48, 96, 9)
        b = render(sample_scene(seed), 48, 96, 9)
        assert a.tobytes() == b.tobytes()


_SUBPROCESS_CODE = """
import hashlib, sys
from tinysora.worlds.shapes import render, sample_scene
for spec in sys.argv[1:]:
    seed, h, w, t = map(int, spec.split(","))
    scene = sample_scene(seed)
    clip = render(scene, h, w, t)
    print(seed, hashlib.md5(clip.tobytes()).hexdigest(), scene.caption)
"""


@pytest.mark.parametrize("hash_seed", ["0", "12345"])
def test_fresh_subprocess_gives_identical_clips(hash_seed):
    # A fresh interpreter (with a different str-hash seed, so set/dict-order dependence
    # would show) must reproduce the golden hashes and captions byte for byte.
    args = [f"{seed},{h},{w},{t}" for seed, h, w, t, _, _ in GOLDEN]
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS_CODE, *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=120,
    ).stdout.splitlines()
    assert len(out) == len(GOLDEN)
    for line, (seed, _, _, _, caption, digest) in zip(out, GOLDEN, strict=True):
        assert line == f"{seed} {digest} {caption}"


def test_caption_independent_of_render_size():
    for seed in [*range(50), *range(2_000_000, 2_000_050)]:
        caption = sample_scene(seed).caption
        for h, w, t in [(32, 32, 1), (48, 96, 9), (112, 64, 17)]:
            scene = sample_scene(seed)
            if seed % 10 == 0:
                render(scene, h, w, t)
            else:
                layout(scene, h, w, t)
            assert scene.caption == caption
        assert sample_scene(seed) == sample_scene(seed)


def test_splitmix64_golden_values():
    # Core generator equals the reference SplitMix64: state 0 -> first output 0xE220A8397B1DCDAF.
    rng = SplitMix64()
    rng.state = 0
    assert [rng.next_u64() for _ in range(3)] == [
        0xE220A8397B1DCDAF,
        0x6E789E6AA1B965F4,
        0x06C45D188009454F,
    ]
    # Keyed construction (as used by sample_scene / layout), pinned.
    rng = SplitMix64(0)
    assert [rng.next_u64() for _ in range(3)] == [
        9857899409763097596,
        6986283412570148080,
        10024227888995593318,
    ]
    rng = SplitMix64(2_000_000, 2, 0)
    assert [rng.next_u64() for _ in range(2)] == [6243605975086186331, 6779431878085890670]
    assert SplitMix64(2_000_000, 2, 0).uniform() == 0.3384665581165959
    # uniform() is in [0, 1) with 53 bits; choice() picks from the sequence.
    rng = SplitMix64(7)
    us = [rng.uniform() for _ in range(10_000)]
    assert all(0.0 <= u < 1.0 for u in us)
    assert all(u * 2**53 == int(u * 2**53) for u in us)
    assert abs(np.mean(us) - 0.5) < 0.01
    picks = Counter(SplitMix64(1, i).choice("abcd") for i in range(4_000))
    assert set(picks) == set("abcd") and min(picks.values()) > 900
    # Different keys give different streams; same key the same stream.
    assert SplitMix64(1, 2).next_u64() != SplitMix64(2, 1).next_u64()
    assert SplitMix64(5, 0).next_u64() == SplitMix64(5, 0).next_u64()


# --------------------------------------------------------------------------- 3. splits


@pytest.mark.parametrize(
    ("seed", "split"),
    [
        (0, "train"),
        (1, "train"),
        (999_999, "train"),
        (1_000_000, "val"),
        (1_050_000, "val"),
        (1_099_999, "val"),
        (1_100_000, "unused"),
        (1_999_999, "unused"),
        (2_000_000, "test"),
        (2_000_001, "test"),
        (10**12, "test"),
    ],
)
def test_split_of(seed, split):
    assert split_of(seed) == split


@pytest.mark.parametrize("seed", [-1, -1_000_000])
def test_negative_seed_is_an_error(seed):
    with pytest.raises(WorldError, match=str(seed)):
        split_of(seed)
    with pytest.raises(WorldError):
        sample_scene(seed)


def test_split_seed():
    assert split_seed("train", 0) == 0
    assert split_seed("train", 999_999) == 999_999
    assert split_seed("val", 0) == 1_000_000
    assert split_seed("val", 99_999) == 1_099_999
    assert split_seed("test", 0) == 2_000_000
    assert split_seed("test", 123) == 2_000_123
    for split, index in [("train", 1_000_000), ("val", 100_000), ("train", -1), ("test", -1)]:
        with pytest.raises(WorldError, match=str(index)):
            split_seed(split, index)
    with pytest.raises(WorldError, match="bogus"):
        split_seed("bogus", 0)


# --------------------------------------------------------------------------- 4. captions


def test_canonical_captions_and_distribution():
    n_objects: Counter = Counter()
    sizes: Counter = Counter()
    motions: Counter = Counter()
    backgrounds: Counter = Counter()
    seeds = [*range(6_000), *range(1_000_000, 1_002_000), *range(2_000_000, 2_006_000)]
    for seed in seeds:
        scene = sample_scene(seed)
        assert scene.seed == seed
        m = CAPTION_RE.match(scene.caption)
        assert m, f"seed {seed}: non-canonical caption {scene.caption!r}"
        assert m.group(5) is None or 1 <= len(scene.objects) == 2
        n_objects[len(scene.objects)] += 1
        backgrounds[scene.background] += 1
        assert scene.background == m.group(10)
        for i, obj in enumerate(scene.objects):
            g = 1 + 5 * i  # groups of object 1: 1..4, of object 2: 6..9 (5 = " and ...")
            assert (obj.size, obj.color, obj.shape, obj.motion) == m.group(g, g + 1, g + 2, g + 3)
            sizes[obj.size] += 1
            motions[obj.motion] += 1
        if len(scene.objects) == 2:
            assert scene.objects[0].color != scene.objects[1].color
    total = len(seeds)
    assert set(n_objects) == {1, 2}
    assert 0.47 < n_objects[1] / total < 0.53  # rough 50/50
    assert set(sizes) == set(CONTRACT_SIZES) and set(motions) == set(CONTRACT_MOTIONS)
    assert set(backgrounds) == set(CONTRACT_BACKGROUNDS)
    n_obj = sum(sizes.values())
    assert all(abs(c / n_obj - 1 / 8) < 0.02 for c in motions.values())
    assert all(abs(c / n_obj - 1 / 2) < 0.02 for c in sizes.values())
    assert all(abs(c / total - 1 / 4) < 0.02 for c in backgrounds.values())


def test_contract_example_captions_parse():
    for text in [
        "a small red circle moving left on a black background",
        "a large cyan square bouncing and a small pink triangle growing on a navy background",
    ]:
        scene = parse_caption(text, seed=17)
        assert scene.caption == text


def test_parse_caption_round_trips_sampled_scenes():
    for seed in [*range(500), *range(2_000_000, 2_000_500)]:
        scene = sample_scene(seed)
        for parse_seed in (seed, 0, 99):
            parsed = parse_caption(scene.caption, parse_seed)
            assert parsed.objects == scene.objects
            assert parsed.background == scene.background
            assert parsed.caption == scene.caption
            assert parsed.seed == parse_seed


def test_partial_caption_red_circle():
    fills = []
    for seed in range(200):
        scene = parse_caption("red circle", seed)
        assert scene == parse_caption("red circle", seed)  # deterministic
        assert scene.seed == seed
        assert len(scene.objects) == 1
        (obj,) = scene.objects
        assert (obj.color, obj.shape) == ("red", "circle")
        assert obj.size in CONTRACT_SIZES and obj.motion in CONTRACT_MOTIONS
        assert scene.background in CONTRACT_BACKGROUNDS
        assert CAPTION_RE.match(scene.caption)
        fills.append((obj.size, obj.motion, scene.background))
    # The missing parts come from the seed: different seeds fill differently.
    assert {f[0] for f in fills} == set(CONTRACT_SIZES)
    assert {f[1] for f in fills} == set(CONTRACT_MOTIONS)
    assert {f[2] for f in fills} == set(CONTRACT_BACKGROUNDS)


def test_partial_caption_with_size_and_motion():
    bgs = set()
    for seed in range(100):
        scene = parse_caption("a large blue square bouncing", seed)
        assert scene == parse_caption("a large blue square bouncing", seed)
        assert scene.objects == (ObjectSpec("blue", "square", "large", "bouncing"),)
        bgs.add(scene.background)
    assert bgs == set(CONTRACT_BACKGROUNDS)


def test_partial_caption_two_objects():
    text = "an orange triangle growing and a small pink circle on navy"
    sizes, motions = set(), set()
    for seed in range(200):
        scene = parse_caption(text, seed)
        assert scene == parse_caption(text, seed)
        assert scene.background == "navy"
        a, b = scene.objects
        assert (a.color, a.shape, a.motion) == ("orange", "triangle", "growing")
        assert a.size in CONTRACT_SIZES
        assert (b.color, b.shape, b.size) == ("pink", "circle", "small")
        assert b.motion in CONTRACT_MOTIONS
        assert CAPTION_RE.match(scene.caption)
        sizes.add(a.size)
        motions.add(b.motion)
    assert sizes == set(CONTRACT_SIZES) and motions == set(CONTRACT_MOTIONS)


@pytest.mark.parametrize(
    ("text", "must_name"),
    [
        ("a small red circle dancing on a black background", ["dancing"]),
        ("a small red zigzag moving left", ["zigzag"]),
        ("a small red moving left on a black background", ["shape"]),
        ("a large circle moving up", ["color"]),
        ("a red circle and a blue square and a green triangle", ["2 objects"]),
        ("a red circle moving left and a small red square", ["red", "color"]),
        ("a red circle on a purple background", ["purple", "background"]),
        ("a red circle on a background", ["background"]),
        ("a red circle moving sideways", ["moving sideways"]),
        ("a red circle moving", ["motion"]),
        ("", ["empty"]),
    ],
)
def test_parse_caption_errors(text, must_name):
    with pytest.raises(WorldError) as info:
        parse_caption(text, 0)
    msg = str(info.value)
    assert "\n" not in msg, "error messages must be one line"
    for word in must_name:
        assert word in msg, f"{msg!r} does not name {word!r}"


# --------------------------------------------------------------------------- 5. geometry


def _independent_visibility(tracks: list[ObjectTrack], i: int, h: int, w: int) -> list[float]:
    covs = []
    for t in tracks:
        side = t.extent * float(t.scale[i])
        covs.append(shape_coverage(t.spec.shape, float(t.cx[i]), float(t.cy[i]), side, h, w))
    vis = []
    for k, cov in enumerate(covs):
        hidden = np.zeros((h, w))
        for later in covs[k + 1 :]:
            hidden = hidden + later - hidden * later  # union of soft coverages
        vis.append(float((cov * (1 - hidden)).sum() / cov.sum()))
    return vis


def _bounce_model(y0: float, floor: float, t1: float, taus) -> np.ndarray:
    """Independent event-driven bounce: drop at rest from y0, restitution 0.8 at floor."""
    g = 2 * (floor - y0) / t1**2
    impacts = [t1]
    speeds = [0.8 * g * t1]  # upward speed just after each impact
    while impacts[-1] < 2.0 and speeds[-1] > 1e-12:
        impacts.append(impacts[-1] + 2 * speeds[-1] / g)
        speeds.append(0.8 * speeds[-1])
    out = []
    for tau in taus:
        if tau <= t1:
            out.append(y0 + 0.5 * g * tau * tau)
            continue
        k = max(j for j, tj in enumerate(impacts) if tj < tau)
        dt = tau - impacts[k]
        out.append(floor - speeds[k] * dt + 0.5 * g * dt * dt)
    return np.array(out)


def _check_track(track: ObjectTrack, h: int, w: int, t: int, where: str) -> None:
    spec = track.spec
    taus = np.arange(t) / (t - 1) if t > 1 else np.zeros(1)
    # Size: extent = 0.20 / 0.34 of min(H, W).
    assert track.extent == pytest.approx(CONTRACT_SIZES[spec.size] * min(h, w), abs=1e-12), where
    for arr in (track.cx, track.cy, track.scale, track.visible):
        assert np.shape(arr) == (t,), where
    # Bounding box inside the frame in every frame; triangle box height = side * sqrt(3)/2.
    for i in range(t):
        bw, bh = track.box_size(i)
        side = track.extent * track.scale[i]
        assert bw == pytest.approx(side, abs=1e-12), where
        assert bh == pytest.approx(side * box_h_over_w(spec.shape), abs=1e-12), where
        assert track.cx[i] - bw / 2 >= -EPS, f"{where} frame {i}: left edge outside"
        assert track.cx[i] + bw / 2 <= w + EPS, f"{where} frame {i}: right edge outside"
        assert track.cy[i] - bh / 2 >= -EPS, f"{where} frame {i}: top edge outside"
        assert track.cy[i] + bh / 2 <= h + EPS, f"{where} frame {i}: bottom edge outside"
    if t == 1:
        return  # motion is not observable in an image
    m = spec.motion
    cx, cy, scale = track.cx, track.cy, track.scale
    if m not in ("growing", "shrinking"):
        np.testing.assert_allclose(scale, 1.0, rtol=0, atol=1e-12, err_msg=where)
    if m in ("moving left", "moving right"):
        sign = -1 if m == "moving left" else 1
        np.testing.assert_allclose(cx, cx[0] + sign * 0.5 * w * taus, rtol=0, atol=EPS)
        assert cx[-1] - cx[0] == pytest.approx(sign * 0.5 * w, abs=EPS), where
        np.testing.assert_allclose(cy, cy[0], rtol=0, atol=EPS, err_msg=where)
    elif m in ("moving up", "moving down"):
        sign = -1 if m == "moving up" else 1  # y grows downwards
        np.testing.assert_allclose(cy, cy[0] + sign * 0.5 * h * taus, rtol=0, atol=EPS)
        assert cy[-1] - cy[0] == pytest.approx(sign * 0.5 * h, abs=EPS), where
        np.testing.assert_allclose(cx, cx[0], rtol=0, atol=EPS, err_msg=where)
    elif m in ("standing still", "growing", "shrinking"):
        np.testing.assert_allclose(cx, cx[0], rtol=0, atol=EPS, err_msg=where)
        np.testing.assert_allclose(cy, cy[0], rtol=0, atol=EPS, err_msg=where)
        if m == "growing":
            np.testing.assert_allclose(scale, 0.6 + 0.8 * taus, rtol=0, atol=1e-12)
            assert (scale[0], scale[-1]) == pytest.approx((0.6, 1.4), abs=1e-12)
        elif m == "shrinking":
            np.testing.assert_allclose(scale, 1.4 - 0.8 * taus, rtol=0, atol=1e-12)
            assert (scale[0], scale[-1]) == pytest.approx((1.4, 0.6), abs=1e-12)
    elif m == "bouncing":
        _check_bounce(track, h, w, t, taus, where)
    else:  # pragma: no cover
        raise AssertionError(f"unknown motion {m}")


def _check_bounce(track: ObjectTrack, h: int, w: int, t: int, taus, where: str) -> None:
    cx, cy = track.cx, track.cy
    _, bh = track.box_size(0)
    floor = h - bh / 2  # centre y when the bbox bottom touches the frame's bottom edge
    # Starts in the upper third.
    assert cy[0] <= h / 3 + EPS, f"{where}: bounce starts at y={cy[0]} > H/3"
    # Horizontal drift: constant velocity, |total| <= 0.1 W.
    np.testing.assert_allclose(cx, cx[0] + (cx[-1] - cx[0]) * taus, rtol=0, atol=EPS)
    assert abs(cx[-1] - cx[0]) <= 0.1 * w + EPS, where
    if t < 9:
        return  # frames too sparse to reconstruct the fall from the first samples
    # Before the first impact (tau < 0.25) y = y0 + g tau^2 / 2: at rest, so the first two
    # displacements are in ratio 1 : 4 (no linear term).
    d1, d2 = cy[1] - cy[0], cy[2] - cy[0]
    assert d1 > 0, f"{where}: does not fall"
    assert d2 == pytest.approx(4 * d1, rel=1e-9), f"{where}: not starting at rest"
    g = 2 * d1 / taus[1] ** 2
    t1 = math.sqrt(2 * (floor - cy[0]) / g)  # first impact: bbox bottom on the floor
    assert 0.25 - 1e-9 <= t1 <= 0.40 + 1e-9, f"{where}: first impact at tau={t1}"
    # Every sampled frame agrees with an independent bounce model (restitution 0.8).
    expected = _bounce_model(float(cy[0]), floor, t1, taus)
    np.testing.assert_allclose(cy, expected, rtol=0, atol=1e-6, err_msg=where)
    # At least one bounce shows: y goes down and later up in the sampled frames.
    dy = np.diff(cy)
    first_up = np.flatnonzero(dy < -1e-9)
    assert first_up.size and (dy[: first_up[0]] > 0).all(), f"{where}: no visible bounce"


@pytest.mark.slow  # make test checks every object kind (test_geometry_of_every_single_object_kind)
def test_geometry_of_sampled_scenes():
    motions_seen: Counter = Counter()
    two_object = 0
    for seed in GEOMETRY_SEEDS:
        scene = sample_scene(seed)
        two_object += len(scene.objects) == 2
        for h, w, t in GEOMETRY_SIZES:
            tracks = layout(scene, h, w, t)
            assert [tr.spec for tr in tracks] == list(scene.objects)
            for k, track in enumerate(tracks):
                where = f"seed {seed} {h}x{w}x{t} object {k} ({track.spec.phrase})"
                _check_track(track, h, w, t, where)
                motions_seen[track.spec.motion] += 1
                assert track.visible.min() >= 0.6 - 1e-12, f"{where}: visibility below 60%"
            if len(tracks) == 2:
                # Visibility recomputed from coverage: each >= 60% in every frame.
                for i in range(t):
                    vis = _independent_visibility(tracks, i, h, w)
                    assert min(vis) >= 0.6 - 1e-12, f"seed {seed} {h}x{w}x{t} frame {i}: {vis}"
                    np.testing.assert_allclose(vis, [tr.visible[i] for tr in tracks], atol=1e-9)
            else:
                np.testing.assert_array_equal(tracks[0].visible, 1.0)
    assert set(motions_seen) == set(CONTRACT_MOTIONS)
    assert two_object > 100


def test_geometry_of_every_single_object_kind():
    # Every (shape, size, motion) at every test size, several placements each.
    for shape in CONTRACT_SHAPES:
        for size in CONTRACT_SIZES:
            for motion in CONTRACT_MOTIONS:
                spec = ObjectSpec("green", shape, size, motion)
                for seed in (0, 1, 2, 3, 4, 999_999, 2_000_000, 2_000_777):
                    scene = Scene((spec,), "gray", seed)
                    for h, w, t in GEOMETRY_SIZES + [(32, 512, 9), (40, 32, 17)]:
                        (track,) = layout(scene, h, w, t)
                        _check_track(track, h, w, t, f"{spec.phrase} seed {seed} {h}x{w}x{t}")
                        np.testing.assert_array_equal(track.visible, 1.0)


def test_bounce_first_impact_on_dense_layout():
    # Single-object scenes place with attempt 0 whatever T is, so a huge T samples the
    # very same trajectory densely: find the first floor contact on the grid.
    t = 4_001
    taus = np.arange(t) / (t - 1)
    impacts = []
    for shape in CONTRACT_SHAPES:
        for size in CONTRACT_SIZES:
            for seed in range(12):
                spec = ObjectSpec("red", shape, size, "bouncing")
                (track,) = layout(Scene((spec,), "black", seed), 64, 96, t)
                (coarse,) = layout(Scene((spec,), "black", seed), 64, 96, 17)
                np.testing.assert_allclose(coarse.cy, track.cy[::250], rtol=0, atol=1e-9)
                bottom = track.cy + track.box_size(0)[1] / 2
                assert bottom.max() <= 64 + 1e-9
                # first local maximum of y = first impact (y grows downwards)
                k = int(np.flatnonzero(np.diff(bottom) < 0)[0])
                tau_hit = taus[k]
                assert 0.25 - 1 / (t - 1) <= tau_hit <= 0.40 + 1 / (t - 1), (seed, tau_hit)
                # bottom touches the floor there (within one grid step of motion)
                speed = (bottom[k] - bottom[k - 1]) * (t - 1)
                assert 64 - bottom[k] <= speed / (t - 1) + 1e-9
                # speed out / speed in ~ 0.8 (finite differences away from the kink)
                v_in = (bottom[k - 1] - bottom[k - 3]) / 2
                v_out = (bottom[k + 2] - bottom[k + 4]) / 2
                assert v_out / v_in == pytest.approx(0.8, rel=0.02)
                impacts.append(tau_hit)
    # The impact time is spread over the allowed window, not pinned to one value.
    assert max(impacts) - min(impacts) > 0.05


def test_bounce_track_physics():
    for y0, floor, t1 in [(10.0, 54.0, 0.25), (3.3, 60.1, 0.4), (20.0, 40.0, 0.3337)]:
        g = 2 * (floor - y0) / t1**2
        # At rest at tau = 0: derivative ~ 0 (only g tau / 2 remains).
        eps = 1e-7
        y = bounce_track(y0, floor, t1, np.array([0.0, eps]))
        assert y[0] == y0
        assert abs((y[1] - y[0]) / eps) < g * eps
        # Dense grid: first touch of the floor at t1, never below the floor.
        taus = np.linspace(0.0, 1.0, 200_001)
        ys = bounce_track(y0, floor, t1, taus)
        assert ys.max() <= floor + 1e-9
        assert ys.min() >= y0 - 1e-9
        first = taus[np.argmax(ys >= floor - 1e-6)]
        assert abs(first - t1) < 1e-5
        assert bounce_track(y0, floor, t1, np.array([t1]))[0] == pytest.approx(floor, abs=1e-9)
        # Restitution: speed just after / just before each impact = 0.8.
        h = 1e-7
        t_hit, v_before = t1, g * t1
        for _ in range(3):
            if t_hit + 1e-3 > 1.0:
                break
            yb, yh, ya = bounce_track(y0, floor, t1, np.array([t_hit - h, t_hit, t_hit + h]))
            assert yh == pytest.approx(floor, abs=1e-6)
            before = (yh - yb) / h
            after = (yh - ya) / h
            assert before == pytest.approx(v_before, rel=1e-4)
            assert after / before == pytest.approx(0.8, rel=1e-4)
            v_after = 0.8 * v_before
            # apex of the next hop: height v^2 / 2g = 0.64^n of the drop
            apex = bounce_track(y0, floor, t1, np.array([t_hit + v_after / g]))[0]
            assert floor - apex == pytest.approx(v_after**2 / (2 * g), rel=1e-9)
            t_hit += 2 * v_after / g
            v_before = v_after
        np.testing.assert_allclose(ys, _bounce_model(y0, floor, t1, taus), rtol=0, atol=1e-6)


def test_bounce_visible_for_every_t_at_least_9():
    # Worst cases over the whole allowed window of first impacts and start heights.
    for t in range(9, 40):
        taus = np.arange(t) / (t - 1)
        for t1 in np.linspace(0.25, 0.40, 31):
            for y0 in (5.0, 21.3):
                ys = bounce_track(y0, 60.0, float(t1), taus)
                dy = np.diff(ys)
                up = np.flatnonzero(dy < 0)
                assert up.size, (t, t1)
                assert (dy[: up[0]] > 0).all()


def test_clip_times():
    np.testing.assert_array_equal(clip_times(1), [0.0])
    np.testing.assert_array_equal(clip_times(2), [0.0, 1.0])
    np.testing.assert_allclose(clip_times(17), np.arange(17) / 16, rtol=0, atol=0)
    assert clip_times(9)[-1] == 1.0 and clip_times(33)[-1] == 1.0


def test_single_frame_layout():
    for seed in range(40):
        scene = sample_scene(seed)
        tracks = layout(scene, 64, 64, 1)
        assert all(tr.cx.shape == (1,) for tr in tracks)
        clip = render(scene, 64, 64, 1)
        assert clip.shape == (1, 64, 64, 3)


# --------------------------------------------------------------------------- 6. rendering


def test_render_dtype_and_shape():
    for seed in (0, 3, 8, 2_000_000):
        for h, w, t in GEOMETRY_SIZES:
            clip = render(sample_scene(seed), h, w, t)
            assert clip.dtype == np.uint8
            assert clip.shape == (t, h, w, 3)
            assert clip.flags.c_contiguous


def test_background_far_from_objects_is_exact():
    for seed in [*range(30), *range(2_000_000, 2_000_030)]:
        scene = sample_scene(seed)
        h, w, t = (48, 96, 9) if seed % 2 else (64, 64, 17)
        clip = render(scene, h, w, t)
        tracks = layout(scene, h, w, t)
        bg = np.array(CONTRACT_BACKGROUNDS[scene.background], dtype=np.uint8)
        rows = np.arange(h)[:, None]
        cols = np.arange(w)[None, :]
        for i in range(t):
            far = np.ones((h, w), dtype=bool)
            for tr in tracks:
                bw, bh = tr.box_size(i)
                # pixel [c, c+1] x [r, r+1] at least 1 px from the bounding box
                x0, x1 = tr.cx[i] - bw / 2 - 1, tr.cx[i] + bw / 2 + 1
                y0, y1 = tr.cy[i] - bh / 2 - 1, tr.cy[i] + bh / 2 + 1
                near = (cols + 1 > x0) & (cols < x1) & (rows + 1 > y0) & (rows < y1)
                far &= ~near
            assert far.sum() > 0.2 * h * w
            assert (clip[i][far] == bg).all(), f"seed {seed} frame {i}"


@pytest.mark.parametrize("shape", CONTRACT_SHAPES)
@pytest.mark.parametrize("color", ["red", "cyan", "yellow"])
def test_centre_pixel_is_exact_object_color(shape, color):
    for bg in CONTRACT_BACKGROUNDS:
        scene = Scene((ObjectSpec(color, shape, "large", "standing still"),), bg, 11)
        clip = render(scene, 64, 64, 3)
        (tr,) = layout(scene, 64, 64, 3)
        r, c = int(math.floor(tr.cy[0])), int(math.floor(tr.cx[0]))
        for i in range(3):
            assert tuple(int(v) for v in clip[i, r, c]) == CONTRACT_COLORS[color]
            # the clip is static
            assert clip[i].tobytes() == clip[0].tobytes()


def test_anti_aliasing_edges_are_intermediate():
    for shape in CONTRACT_SHAPES:
        scene = Scene((ObjectSpec("red", shape, "large", "standing still"),), "white", 5)
        img = render(scene, 64, 64, 1)[0].astype(np.int64)
        fg = np.array(CONTRACT_COLORS["red"])
        bg = np.array(CONTRACT_BACKGROUNDS["white"])
        is_fg = (img == fg).all(-1)
        is_bg = (img == bg).all(-1)
        mixed = ~is_fg & ~is_bg
        assert is_fg.sum() > 50 and is_bg.sum() > 50
        assert mixed.sum() >= 20, f"{shape}: edges are a staircase (only two colors)"
        # Mixed pixels are blends bg + a (fg - bg) with one alpha for all channels (up to
        # rounding to uint8), taken from the channel where fg and bg differ most.
        ref = int(np.argmax(np.abs(fg - bg)))
        alpha = (img[mixed][:, ref] - bg[ref]) / (fg[ref] - bg[ref])
        assert (alpha > 0).all() and (alpha < 1).all()
        blend = bg + alpha[:, None] * (fg - bg)
        assert np.abs(img[mixed] - blend).max() <= 1.0
        # Curved / slanted edges show several blend levels (supersampled, not one 50% step);
        # an axis-aligned square edge has one level per side, at most.
        levels = len(np.unique(np.round(alpha * 16)))
        assert levels >= (1 if shape == "square" else 5), f"{shape}: {levels} blend levels"


def test_shape_coverage_matches_analytic_area():
    side = 20.0
    areas = {
        "circle": math.pi * (side / 2) ** 2,
        "square": side * side,
        "triangle": SQRT3 / 4 * side * side,
    }
    rng = np.random.default_rng(0)
    for shape, area in areas.items():
        partial = 0
        for _ in range(10):
            cx, cy = 32 + rng.uniform(-1, 1), 32 + rng.uniform(-1, 1)
            cov = shape_coverage(shape, cx, cy, side, 64, 64)
            assert cov.dtype == np.float64 and cov.shape == (64, 64)
            assert cov.min() >= 0.0 and cov.max() <= 1.0
            assert cov.sum() == pytest.approx(area, rel=0.02), shape
            # partial-coverage pixels along the edge (anti-aliasing); a square's edges can
            # fall between sample columns (1/4 px grid), so it is checked over all centres
            partial += int(((cov > 0) & (cov < 1)).sum())
            if shape != "square":
                assert ((cov > 0) & (cov < 1)).sum() >= 10
            # nothing outside the bounding box
            bh = side * box_h_over_w(shape)
            ys, xs = np.nonzero(cov)
            assert xs.min() >= math.floor(cx - side / 2) and xs.max() < math.ceil(cx + side / 2)
            assert ys.min() >= math.floor(cy - bh / 2) and ys.max() < math.ceil(cy + bh / 2)
        assert partial >= 100, f"{shape}: no anti-aliased edge pixels"
    # Triangle is upright, point up: the top row is narrower than the bottom row.
    cov = shape_coverage("triangle", 32.0, 32.0, 20.0, 64, 64)
    ys = np.flatnonzero(cov.sum(1) > 0)
    assert cov[ys[0]].sum() < cov[ys[-1]].sum() / 5


def test_draw_order_second_object_wins():
    def square_track(color: str, cx: float, cy: float) -> ObjectTrack:
        spec = ObjectSpec(color, "square", "large", "standing still")
        one = np.ones(1)
        return ObjectTrack(spec, cx * one, cy * one, one.copy(), 20.0, one.copy())

    a, b = square_track("red", 30.0, 30.0), square_track("blue", 38.0, 38.0)
    img = render_tracks([a, b], "black", 64, 64)[0]
    assert tuple(img[34, 34]) == CONTRACT_COLORS["blue"]  # overlap: second wins
    assert tuple(img[22, 22]) == CONTRACT_COLORS["red"]
    assert tuple(img[45, 45]) == CONTRACT_COLORS["blue"]
    assert tuple(img[2, 60]) == CONTRACT_BACKGROUNDS["black"]
    img = render_tracks([b, a], "black", 64, 64)[0]
    assert tuple(img[34, 34]) == CONTRACT_COLORS["red"]


def test_draw_order_in_sampled_scenes():
    # Wherever object 2 fully covers a pixel, the pixel is exactly object 2's color;
    # where only object 1 fully covers it, exactly object 1's color.
    overlaps = 0
    for seed in [*range(200), *range(2_000_000, 2_000_200)]:
        scene = sample_scene(seed)
        if len(scene.objects) != 2:
            continue
        clip = render(scene, 64, 64, 9)
        tracks = layout(scene, 64, 64, 9)
        for i in range(9):
            c1, c2 = (
                shape_coverage(tr.spec.shape, tr.cx[i], tr.cy[i], tr.extent * tr.scale[i], 64, 64)
                for tr in tracks
            )
            col1 = CONTRACT_COLORS[tracks[0].spec.color]
            col2 = CONTRACT_COLORS[tracks[1].spec.color]
            assert (clip[i][c2 == 1] == col2).all()
            assert (clip[i][(c1 == 1) & (c2 == 0)] == col1).all()
            overlaps += int(((c1 == 1) & (c2 == 1)).sum())
    assert overlaps > 0  # some scenes really do overlap


_ALL_SIDES = list(range(32, 513, 8))


def test_legal_sizes_render_fast_subset():
    scene = sample_scene(2_000_000)  # two objects
    combos = {(h, 64) for h in _ALL_SIDES} | {(64, w) for w in _ALL_SIDES}
    combos |= {(32, 512), (512, 32), (512, 512), (32, 32), (64, 112), (112, 64), (48, 96)}
    for h, w in sorted(combos):
        clip = render(scene, h, w, 1)
        assert clip.shape == (1, h, w, 3) and clip.dtype == np.uint8


@pytest.mark.slow
def test_all_legal_sizes_render():
    scene = sample_scene(2_000_000)
    for h in _ALL_SIDES:
        for w in _ALL_SIDES:
            clip = render(scene, h, w, 1)
            assert clip.shape == (1, h, w, 3)


@pytest.mark.parametrize(
    ("size", "bad"),
    [
        ((24, 64, 17), "24"),
        ((64, 24, 17), "24"),
        ((520, 64, 17), "520"),
        ((64, 520, 17), "520"),
        ((60, 64, 17), "60"),
        ((64, 60, 17), "60"),
        ((0, 64, 17), "0"),
        ((64, 64, 0), "0"),
        ((64, 64, -3), "-3"),
        ((64.0, 64, 17), "64.0"),
        ((64, "64", 17), "64"),
        ((64, 64, 2.5), "2.5"),
        ((64, 64, None), "None"),
    ],
)
def test_check_size_rejects(size, bad):
    names = ("height", "width", "frames")
    legal = (64, 64, 17)
    culprit = next(
        n for n, v, ok in zip(names, size, legal, strict=True) if v != ok or type(v) is not int
    )
    for fn in (check_size, lambda h, w, t: layout(sample_scene(0), h, w, t), render_scene_size):
        with pytest.raises(WorldError) as info:
            fn(*size)
        msg = str(info.value)
        assert "\n" not in msg
        assert culprit in msg and bad in msg, msg


def render_scene_size(h, w, t):
    return render(sample_scene(0), h, w, t)


def test_check_size_accepts_all_legal():
    for h in _ALL_SIDES:
        for w in (32, 512, h):
            check_size(h, w, 1)
    check_size(64, 64, 10_000)
    check_size(np.int64(64), np.int32(96), np.int16(9))
