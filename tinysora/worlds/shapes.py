"""Shapes World v1: the built-in procedural video world (contract: docs/WORLD.md).

A scene is a pure function of an integer seed::

    scene = sample_scene(2_000_123)            # test split
    clip = render(scene, height=64, width=64, frames=17)   # uint8 (T, H, W, 3)
    scene.caption  # 'a small red circle moving left on a black background'

How a scene becomes pixels:

* ``sample_scene(seed)`` draws the *discrete* scene (1 or 2 objects, each a size,
  color, shape and motion, plus a background) from the seed alone, so a seed has
  one caption whatever size it is rendered at. Training seeds never draw the
  held-out color-shape pairs.
* ``layout(scene, H, W, T)`` places the objects: each object's placement is a few
  numbers in [0, 1) drawn from ``(scene.seed, attempt)``, mapped to pixel positions
  that keep the object inside the frame for the whole clip. Attempt 0 is used
  unless the two objects overlap so much that one is < 60% visible in some frame;
  then attempt 1, 2, ... (so one seed looks the same at every size where attempt 0
  is legal).
* ``render`` supersamples every pixel 4x4 and box-filters (anti-aliasing), and
  composites objects in caption order over the flat background.

Coordinates are continuous pixels: pixel (row i, col j) covers [j, j+1] x [i, i+1].
Determinism: the random numbers come from a tiny SplitMix64 generator written here
(not numpy's, whose streams may change between versions) and rendering uses only
IEEE-exact float64 arithmetic (+, -, *, /, sqrt), so a seed gives byte-identical
clips on any machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tinysora.errors import UserError

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 20),
    "white": (240, 240, 240),
    "gray": (110, 110, 110),
    "navy": (20, 30, 80),
}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 70),
    "blue": (40, 90, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 135, 30),
    "cyan": (40, 200, 220),
    "pink": (245, 120, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 0.20, "large": 0.34}  # extent / min(H, W)
MOTIONS: tuple[str, ...] = (
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "bouncing",
    "standing still",
    "growing",
    "shrinking",
)
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("blue", "circle"), ("yellow", "square"), ("cyan", "triangle")}
)

TRAIN_SEEDS = range(0, 1_000_000)
VAL_SEEDS = range(1_000_000, 1_100_000)
TEST_SEED_START = 2_000_000

MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 32, 512, 8
SUPERSAMPLE = 4
MOVE_FRACTION = 0.5  # moving left/right/up/down: total displacement / frame side
SCALE_RANGE = (0.6, 1.4)  # growing: 0.6 -> 1.4, shrinking: 1.4 -> 0.6
BOUNCE_START_MAX = 1 / 3  # bouncing starts with centre y <= H/3
BOUNCE_FIRST_IMPACT = (0.25, 0.40)  # clip time of the first impact
BOUNCE_RESTITUTION = 0.8
BOUNCE_DRIFT = 0.1  # horizontal drift up to +-0.1 W
MIN_VISIBLE = 0.6  # every object at least 60% visible in every frame
MAX_LAYOUT_ATTEMPTS = 200
SQRT3 = float(np.sqrt(3.0))


class WorldError(UserError, ValueError):
    """Bad input to Shapes World (caption, size, seed); the message says what to fix."""


# --------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class ObjectSpec:
    color: str
    shape: str
    size: str
    motion: str

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape} {self.motion}"


@dataclass(frozen=True)
class Scene:
    """The discrete content of a clip; ``seed`` also drives object placement."""

    objects: tuple[ObjectSpec, ...]
    background: str
    seed: int

    @property
    def caption(self) -> str:
        return " and ".join(o.phrase for o in self.objects) + f" on a {self.background} background"


def split_of(seed: int) -> str:
    """'train', 'val', 'test', or 'unused' (1_100_000..1_999_999 belong to no split)."""
    if seed < 0:
        raise WorldError(f"seed must be >= 0, got {seed}")
    if seed in TRAIN_SEEDS:
        return "train"
    if seed in VAL_SEEDS:
        return "val"
    return "test" if seed >= TEST_SEED_START else "unused"


def split_seed(split: str, index: int) -> int:
    """The ``index``-th seed of a split (e.g. ``split_seed('test', 0) == 2_000_000``)."""
    starts = {"train": TRAIN_SEEDS.start, "val": VAL_SEEDS.start, "test": TEST_SEED_START}
    if split not in starts:
        raise WorldError(f"unknown split {split!r}; use one of {', '.join(starts)}")
    seed = starts[split] + index
    if index < 0 or split_of(seed) != split:
        raise WorldError(f"index {index} is outside the {split} split")
    return seed


def allowed_pairs(split: str) -> list[tuple[str, str]]:
    """Color-shape pairs a split may draw: training excludes the held-out pairs."""
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    if split == "train":
        pairs = [p for p in pairs if p not in HELD_OUT_PAIRS]
    return pairs


def sample_scene(seed: int) -> Scene:
    """The scene of ``seed`` (a pure function of the seed)."""
    split = split_of(seed)
    rng = SplitMix64(seed, 0)
    n_objects = 1 if rng.uniform() < 0.5 else 2
    background = rng.choice(list(BACKGROUNDS))
    objects: list[ObjectSpec] = []
    for _ in range(n_objects):
        used = {o.color for o in objects}
        pairs = [p for p in allowed_pairs(split) if p[0] not in used]
        color, shape = rng.choice(pairs)
        objects.append(ObjectSpec(color, shape, rng.choice(list(SIZES)), rng.choice(MOTIONS)))
    return Scene(tuple(objects), background, seed)


# --------------------------------------------------------------------------- captions

_MOTION_WORDS = {m.split()[0]: m for m in MOTIONS}  # 'moving' is resolved by the next word
_ARTICLES = {"a", "an", "the"}


def parse_caption(text: str, seed: int = 0) -> Scene:
    """Parse a caption in the canonical grammar; attributes left out are drawn from ``seed``.

    Accepted: ``[a] [size] color shape [motion] [and [a] [size] color shape [motion]]
    [on [a] background [background]]``. Unknown words raise :class:`WorldError`
    naming the word and the vocabulary.
    """
    words = re.findall(r"[a-z]+", text.lower())
    if not words:
        raise WorldError(
            "empty caption; e.g. 'a small red circle moving left on a black background'"
        )
    rng = SplitMix64(seed, 1)
    background = None
    if "on" in words:
        i = words.index("on")
        tail = [w for w in words[i + 1 :] if w not in _ARTICLES and w != "background"]
        if len(tail) != 1 or tail[0] not in BACKGROUNDS:
            raise WorldError(
                f"bad background {' '.join(words[i + 1 :])!r} in caption; "
                f"use 'on a <{'|'.join(BACKGROUNDS)}> background'"
            )
        background, words = tail[0], words[:i]
    groups: list[list[str]] = [[]]
    for w in words:
        if w == "and":
            groups.append([])
        else:
            groups[-1].append(w)
    if len(groups) > 2:
        raise WorldError("a Shapes World scene has at most 2 objects ('... and ...')")
    objects = [_parse_object(g, rng, text) for g in groups]
    if len(objects) == 2 and objects[0].color == objects[1].color:
        raise WorldError(f"two objects may not share a color ({objects[0].color}) in {text!r}")
    if background is None:
        background = rng.choice(list(BACKGROUNDS))
    return Scene(tuple(objects), background, seed)


def _parse_object(words: list[str], rng: SplitMix64, text: str) -> ObjectSpec:
    size = color = shape = motion = None
    i = 0
    while i < len(words):
        w = words[i]
        if w in _ARTICLES:
            pass
        elif w in SIZES and size is None:
            size = w
        elif w in COLORS and color is None:
            color = w
        elif w in SHAPES and shape is None:
            shape = w
        elif w in _MOTION_WORDS and motion is None:
            if w == "moving" or w == "standing":
                nxt = words[i + 1] if i + 1 < len(words) else ""
                motion = f"{w} {nxt}"
                if motion not in MOTIONS:
                    raise WorldError(
                        f"bad motion {motion!r} in {text!r}; use one of: {', '.join(MOTIONS)}"
                    )
                i += 1
            else:
                motion = _MOTION_WORDS[w]
        else:
            raise WorldError(
                f"unknown or repeated word {w!r} in caption {text!r}; sizes: {', '.join(SIZES)}; "
                f"colors: {', '.join(COLORS)}; shapes: {', '.join(SHAPES)}; "
                f"motions: {', '.join(MOTIONS)}; backgrounds: {', '.join(BACKGROUNDS)}"
            )
        i += 1
    if color is None or shape is None:
        missing = "a color" if color is None else "a shape"
        raise WorldError(f"each object needs a color and a shape; {missing} is missing in {text!r}")
    return ObjectSpec(color, shape, size or rng.choice(list(SIZES)), motion or rng.choice(MOTIONS))


# --------------------------------------------------------------------------- layout


@dataclass
class ObjectTrack:
    """Where an object is in every frame (pixels, continuous coordinates)."""

    spec: ObjectSpec
    cx: np.ndarray  # (T,) centre of the bounding box, x
    cy: np.ndarray  # (T,) centre of the bounding box, y
    scale: np.ndarray  # (T,) size multiplier (growing / shrinking)
    extent: float  # diameter / side at scale 1, pixels
    visible: np.ndarray  # (T,) fraction of the object not covered by later objects

    def box_size(self, i: int) -> tuple[float, float]:
        """(width, height) of the bounding box in frame ``i``."""
        side = self.extent * self.scale[i]
        return side, (side * SQRT3 / 2 if self.spec.shape == "triangle" else side)


def check_size(height: int, width: int, frames: int) -> None:
    """Raise :class:`WorldError` unless H, W are multiples of 8 in 32..512 and T >= 1."""
    for name, v in (("height", height), ("width", width)):
        legal = isinstance(v, (int, np.integer)) and not isinstance(v, bool)
        legal = legal and MIN_SIDE <= v <= MAX_SIDE
        if not legal or v % SIDE_MULTIPLE:
            raise WorldError(
                f"{name} {v} is not legal: use a multiple of {SIDE_MULTIPLE} "
                f"from {MIN_SIDE} to {MAX_SIDE}"
            )
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise WorldError(f"frames {frames} is not legal: use an integer >= 1 (1 = an image)")


def clip_times(frames: int) -> np.ndarray:
    """tau_i = i / (T - 1): the clip time of each frame (0 for a single image)."""
    if frames == 1:
        return np.zeros(1)
    return np.arange(frames, dtype=np.float64) / (frames - 1)


def _lerp(lo: float, hi: float, u: float) -> float:
    return lo + (hi - lo) * u


def _place(spec: ObjectSpec, h: int, w: int, taus: np.ndarray, rng: SplitMix64) -> tuple:
    """Centre track and scale of one object; the object stays inside the frame."""
    ux, uy, u_impact, u_drift = (rng.uniform() for _ in range(4))
    extent = SIZES[spec.size] * min(h, w)
    aspect = SQRT3 / 2 if spec.shape == "triangle" else 1.0
    if spec.motion == "growing":
        scale = SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * taus
    elif spec.motion == "shrinking":
        scale = SCALE_RANGE[1] - (SCALE_RANGE[1] - SCALE_RANGE[0]) * taus
    else:
        scale = np.ones_like(taus)
    max_scale = SCALE_RANGE[1] if spec.motion in ("growing", "shrinking") else 1.0
    hx, hy = extent * max_scale / 2, extent * aspect * max_scale / 2  # half box at largest
    dx, dy = MOVE_FRACTION * w, MOVE_FRACTION * h
    cx = np.full_like(taus, _lerp(hx, w - hx, ux))
    cy = np.full_like(taus, _lerp(hy, h - hy, uy))
    if spec.motion == "moving left":
        cx = _lerp(hx + dx, w - hx, ux) - dx * taus
    elif spec.motion == "moving right":
        cx = _lerp(hx, w - hx - dx, ux) + dx * taus
    elif spec.motion == "moving up":
        cy = _lerp(hy + dy, h - hy, uy) - dy * taus
    elif spec.motion == "moving down":
        cy = _lerp(hy, h - hy - dy, uy) + dy * taus
    elif spec.motion == "bouncing":
        drift = _lerp(-BOUNCE_DRIFT, BOUNCE_DRIFT, u_drift) * w
        cx = _lerp(hx + max(0.0, -drift), w - hx - max(0.0, drift), ux) + drift * taus
        y0 = _lerp(hy, h * BOUNCE_START_MAX, uy)
        t1 = _lerp(*BOUNCE_FIRST_IMPACT, u_impact)
        cy = bounce_track(y0, h - hy, t1, taus)
    return cx, cy, scale, extent


def bounce_track(y0: float, floor: float, first_impact: float, taus: np.ndarray) -> np.ndarray:
    """Centre y of a ball dropped at rest from ``y0`` hitting ``floor`` at ``first_impact``.

    Constant gravity g = 2 (floor - y0) / t1^2; each impact keeps BOUNCE_RESTITUTION of
    the speed. Returns y for every clip time in ``taus`` (y grows downwards).
    """
    g = 2 * (floor - y0) / first_impact**2
    ys = np.empty_like(taus)
    for i, tau in enumerate(taus):
        if tau <= first_impact:
            ys[i] = y0 + g * tau * tau / 2
            continue
        t_hit, speed = first_impact, g * first_impact * BOUNCE_RESTITUTION
        while tau > t_hit + 2 * speed / g:  # skip whole flights after impacts
            t_hit += 2 * speed / g
            speed *= BOUNCE_RESTITUTION
        dt = tau - t_hit
        ys[i] = floor - (speed * dt - g * dt * dt / 2)
    return ys


def layout(scene: Scene, height: int, width: int, frames: int) -> list[ObjectTrack]:
    """Place every object for an H x W x T clip (deterministic; see the module doc)."""
    check_size(height, width, frames)
    taus = clip_times(frames)
    for attempt in range(MAX_LAYOUT_ATTEMPTS):
        rng = SplitMix64(scene.seed, 2, attempt)
        tracks = []
        for spec in scene.objects:
            cx, cy, scale, extent = _place(spec, height, width, taus, rng)
            tracks.append(ObjectTrack(spec, cx, cy, scale, extent, np.ones(frames)))
        if len(tracks) == 1:
            return tracks
        _set_visibility(tracks, height, width)
        if all(t.visible.min() >= MIN_VISIBLE for t in tracks):
            return tracks
    raise WorldError(f"no legal layout for seed {scene.seed} at {height}x{width}x{frames}")


def _set_visibility(tracks: list[ObjectTrack], h: int, w: int) -> None:
    """visible[i] of each object = its coverage not hidden by objects drawn after it."""
    for i in range(len(tracks[0].cx)):
        covs = [track_coverage(t, i, h, w) for t in tracks]
        for k, (cov, track) in enumerate(zip(covs, tracks, strict=True)):
            hidden = np.zeros((h, w))
            for later in covs[k + 1 :]:
                hidden = hidden + later - hidden * later
            track.visible[i] = float((cov * (1 - hidden)).sum() / max(cov.sum(), 1e-9))


# --------------------------------------------------------------------------- rendering


def shape_coverage(
    shape: str, cx: float, cy: float, side: float, h: int, w: int, ss: int = SUPERSAMPLE
) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one shape on an (H, W) canvas (float64).

    ``side`` is the diameter (circle) or side (square, triangle); (cx, cy) is the
    centre of the bounding box. Each pixel averages ss x ss point samples.
    """
    bw = side
    bh = side * SQRT3 / 2 if shape == "triangle" else side
    cov = np.zeros((h, w))
    x0, x1 = max(0, int(np.floor(cx - bw / 2)) - 1), min(w, int(np.ceil(cx + bw / 2)) + 1)
    y0, y1 = max(0, int(np.floor(cy - bh / 2)) - 1), min(h, int(np.ceil(cy + bh / 2)) + 1)
    if x1 <= x0 or y1 <= y0:
        return cov
    offs = (np.arange(ss) + 0.5) / ss
    xs = (np.arange(x0, x1)[:, None] + offs[None, :]).reshape(-1)  # (nx * ss,)
    ys = (np.arange(y0, y1)[:, None] + offs[None, :]).reshape(-1)  # (ny * ss,)
    dx, dy = xs[None, :] - cx, ys[:, None] - cy  # broadcast to (ny*ss, nx*ss)
    if shape == "circle":
        inside = dx * dx + dy * dy <= (bw / 2) ** 2
    elif shape == "square":
        inside = (np.abs(dx) <= bw / 2) & (np.abs(dy) <= bh / 2)
    elif shape == "triangle":  # point up: half width at depth d below the apex is d / sqrt(3)
        depth = dy + bh / 2
        inside = (depth >= 0) & (dy <= bh / 2) & (SQRT3 * np.abs(dx) <= depth)
    else:
        raise WorldError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")
    ny, nx = y1 - y0, x1 - x0
    cov[y0:y1, x0:x1] = inside.reshape(ny, ss, nx, ss).mean(axis=(1, 3))
    return cov


def track_coverage(track: ObjectTrack, i: int, h: int, w: int) -> np.ndarray:
    """(H, W) coverage in [0, 1] of a placed object in frame ``i`` (before later objects
    cover it)."""
    side = track.extent * float(track.scale[i])
    return shape_coverage(track.spec.shape, float(track.cx[i]), float(track.cy[i]), side, h, w)


def render(scene: Scene, height: int = 64, width: int = 64, frames: int = 17) -> np.ndarray:
    """Render ``scene`` to uint8 RGB frames of shape (T, H, W, 3)."""
    return render_tracks(layout(scene, height, width, frames), scene.background, height, width)


def render_tracks(tracks: list[ObjectTrack], background: str, h: int, w: int) -> np.ndarray:
    """Composite placed objects (in order) over a flat background: (T, H, W, 3) uint8."""
    frames = len(tracks[0].cx) if tracks else 1
    bg = np.array(BACKGROUNDS[background], dtype=np.float64)
    out = np.empty((frames, h, w, 3), dtype=np.uint8)
    for i in range(frames):
        img = np.broadcast_to(bg, (h, w, 3)).copy()
        for track in tracks:
            cov = track_coverage(track, i, h, w)[..., None]  # (H, W, 1)
            color = np.array(COLORS[track.spec.color], dtype=np.float64)
            img = img * (1 - cov) + color * cov
        out[i] = np.floor(img + 0.5).astype(np.uint8)
    return out


# --------------------------------------------------------------------------- random numbers

_MASK64 = (1 << 64) - 1


class SplitMix64:
    """A tiny portable PRNG (SplitMix64) seeded by a tuple of non-negative ints."""

    def __init__(self, *key: int):
        state = 0x9E3779B97F4A7C15
        for k in key:
            state = self._mix((state ^ (int(k) & _MASK64)) + 0x632BE59BD9B4E019)
        self.state = state

    @staticmethod
    def _mix(z: int) -> int:
        z &= _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        return self._mix(self.state)

    def uniform(self) -> float:
        """A float in [0, 1) with 53 random bits."""
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def choice(self, items):
        return items[((self.next_u64() >> 11) * len(items)) >> 53]
