"""A folder of your own videos as training clips (``tinysora prepare`` reads it).

    folder = VideoFolder("my_clips/", FolderConfig(fps=8, frames=17, height=64, width=64))
    for clip in folder:                  # Clip(source, text, start, frames uint8 (T, H, W, 3))
        ...
    print(folder.summary())              # "12 clips from 9 files; skipped 3: 1 missing file, ..."

**Captions**, first found wins per file:

* ``captions.csv``: a header with ``path`` and ``text`` (Open-Sora's extra columns
  ``num_frames, height, width, fps`` may be there and are ignored: the file itself is
  measured); ``path`` is relative to the folder;
* ``captions.jsonl``: one ``{"path": ..., "text": ...}`` object per line;
* a sidecar ``NAME.txt`` next to ``NAME.mp4``.

**Media**: videos (mp4, webm, mov, mkv, avi, gif; any size, fps and length) and images
(png, jpg: 1-frame clips). A video is resampled to ``fps`` (each output frame takes
the source frame shown at its time), then cut into non-overlapping clips of
``frames`` = 1 + 4k frames (at most ``max_clips_per_video``; 0 = all). Each frame is
centre-cropped to the target aspect and resized to ``height x width``; with
``native_size`` the clip keeps its own size, centre-cropped down to multiples of 16
(sides over 512 are first scaled down) for Patch n' Pack.

**Bad input never stops a run.** A row naming a missing file, a ragged CSV row, an
empty caption, a file without a caption, a corrupt or unreadable file, a video
shorter than ``frames`` (skipped, not padded) or smaller than 32 px: each is skipped,
logged with its reason (logger ``tinysora.data``) and counted in :meth:`summary`. Only
a folder that cannot be used at all (missing, no captions anywhere, a captions file
that is not UTF-8 or has no ``path``/``text`` header) raises :class:`FolderError`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tinysora.config import Config, ConfigError
from tinysora.errors import UserError
from tinysora.io.frames import fit_image
from tinysora.io.video import read_video

log = logging.getLogger("tinysora.data")

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SIDE_MULTIPLE = 16  # VAE factor 8 x patch 2: what the DiT takes
MIN_SIDE, MAX_SIDE = 32, 512


class FolderError(UserError, ValueError):
    """A dataset folder that cannot be used at all (the message names the fix)."""


@dataclass
class FolderConfig(Config):
    fps: float = 8.0  # frames per second the clips are resampled to
    frames: int = 17  # frames per clip: 1 + 4k
    height: int = 64  # target size (multiples of 16 in 32..512), unless native_size
    width: int = 64
    native_size: bool = False  # keep each file's size (cropped to multiples of 16)
    max_clips_per_video: int = 0  # 0 = every non-overlapping clip

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ConfigError(f"fps must be > 0, got {self.fps}")
        if self.frames < 1 or (self.frames - 1) % 4:
            raise ConfigError(f"frames must be 1 + 4k (1, 5, 9, 17, ...), got {self.frames}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v % SIDE_MULTIPLE or not MIN_SIDE <= v <= MAX_SIDE:
                raise ConfigError(
                    f"{name} must be a multiple of {SIDE_MULTIPLE} in {MIN_SIDE}..{MAX_SIDE}, "
                    f"got {v}"
                )
        if self.max_clips_per_video < 0:
            raise ConfigError(f"max_clips_per_video must be >= 0, got {self.max_clips_per_video}")


@dataclass
class Entry:
    """A media file and its caption (``where``: the captions row it came from)."""

    path: Path
    text: str
    where: str


@dataclass
class Clip:
    source: Path
    text: str
    start: int  # first frame, counted at the target fps
    frames: np.ndarray  # uint8 (T, H, W, 3)


@dataclass
class Skipped:
    path: str
    reason: str


# ----------------------------------------------------------------------------- captions


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FolderError(f"'{path}' is not UTF-8 text; save it as UTF-8") from None


def _csv_entries(root: Path, path: Path, skipped: list[Skipped]) -> list[Entry]:
    rows = csv.reader(_read_text(path).splitlines())
    header = [h.strip() for h in next(rows, [])]
    if "path" not in header or "text" not in header:
        raise FolderError(f"'{path}' needs a header row with 'path' and 'text' columns")
    entries = []
    for number, row in enumerate(rows, start=2):
        where = f"{path.name}:{number}"
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) != len(header):
            skipped.append(Skipped(where, f"ragged row: {len(row)} cells, {len(header)} columns"))
            continue
        cells = dict(zip(header, row, strict=True))
        entries.append(Entry(root / cells["path"].strip(), cells["text"].strip(), where))
    return entries


def _jsonl_entries(root: Path, path: Path, skipped: list[Skipped]) -> list[Entry]:
    entries = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        where = f"{path.name}:{number}"
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            entries.append(Entry(root / str(item["path"]), str(item["text"]).strip(), where))
        except (json.JSONDecodeError, KeyError, TypeError):
            skipped.append(Skipped(where, 'not a {"path": ..., "text": ...} object'))
    return entries


def read_captions(root: Path) -> tuple[list[Entry], list[Skipped]]:
    """The folder's (file, caption) entries, and the rows / files skipped with a reason."""
    skipped: list[Skipped] = []
    entries: list[Entry] = []
    if (root / "captions.csv").is_file():
        entries += _csv_entries(root, root / "captions.csv", skipped)
    if (root / "captions.jsonl").is_file():
        entries += _jsonl_entries(root, root / "captions.jsonl", skipped)
    named = {e.path.resolve() for e in entries}
    media = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES
    )
    for path in media:
        if path.resolve() in named:
            continue
        sidecar = path.with_suffix(".txt")
        if sidecar.is_file():
            entries.append(Entry(path, _read_text(sidecar).strip(), sidecar.name))
        else:
            skipped.append(Skipped(str(path.relative_to(root)), "no caption"))
    if not entries and not any(s.reason != "no caption" for s in skipped):
        raise FolderError(
            f"no captions in '{root}': add captions.csv (path,text), captions.jsonl "
            '({"path", "text"} per line) or a NAME.txt beside each video'
        )
    kept = []
    for e in entries:
        if not e.text:
            skipped.append(Skipped(e.where, "empty caption"))
        elif not e.path.is_file():
            skipped.append(Skipped(e.where, f"missing file: {e.path.name}"))
        else:
            kept.append(e)
    return kept, skipped


# ----------------------------------------------------------------------------- frames


def resample(frames: np.ndarray, source_fps: float, fps: float) -> np.ndarray:
    """Frames shown at times 0, 1/fps, 2/fps, ... of a clip played at ``source_fps``."""
    duration = len(frames) / source_fps
    count = max(1, math.floor(duration * fps + 1e-6))
    index = np.floor(np.arange(count) * source_fps / fps + 1e-6).astype(int)
    return frames[np.minimum(index, len(frames) - 1)]


def native_side(v: int) -> int:
    return v - v % SIDE_MULTIPLE


def fit_native(frames: np.ndarray) -> np.ndarray | None:
    """Scale sides over MAX_SIDE down, then centre-crop to multiples of 16 (None: too small)."""
    h, w = frames.shape[1:3]
    scale = min(1.0, MAX_SIDE / max(h, w))
    h, w = round(h * scale), round(w * scale)
    if scale < 1:
        frames = np.stack(
            [np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in frames]
        )
    th, tw = native_side(h), native_side(w)
    if min(th, tw) < MIN_SIDE:
        return None
    top, left = (h - th) // 2, (w - tw) // 2
    return frames[:, top : top + th, left : left + tw]


# ----------------------------------------------------------------------------- the folder


@dataclass
class VideoFolder:
    """Iterate a folder's clips (see the module doc); skips are kept in ``skipped``."""

    root: Path
    config: FolderConfig = field(default_factory=FolderConfig)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not self.root.is_dir():
            raise FolderError(f"'{self.root}' is not a folder of videos")
        self.entries, self.skipped = read_captions(self.root)
        for s in self.skipped:
            log.warning("skipped %s: %s", s.path, s.reason)
        self.clips = self.files = 0

    def __iter__(self) -> Iterator[Clip]:
        for entry in self.entries:
            yield from self.clips_of(entry)

    def clips_of(self, entry: Entry) -> list[Clip]:
        """The clips of one entry; [] (and a recorded skip) if the file cannot be used."""
        try:
            clips = self._clips_of(entry)
        except UserError as e:  # corrupt, unreadable, not a video
            clips = []
            self._skip(entry, f"unreadable ({e})")
        self.files += bool(clips)
        self.clips += len(clips)
        return clips

    def _skip(self, entry: Entry, reason: str) -> None:
        self.skipped.append(Skipped(str(entry.path.relative_to(self.root)), reason))
        log.warning("skipped %s: %s", entry.path, reason)

    def _clips_of(self, entry: Entry) -> list[Clip]:
        cfg = self.config
        frames, source_fps = read_video(entry.path)
        image = entry.path.suffix.lower() in IMAGE_SUFFIXES
        frames = frames[:1] if image else resample(frames, source_fps, cfg.fps)
        length = 1 if image else cfg.frames
        if len(frames) < length:
            self._skip(entry, f"too short: {len(frames)} frames at {cfg.fps:g} fps < {length}")
            return []
        starts = list(range(0, len(frames) - length + 1, length))
        if cfg.max_clips_per_video:
            starts = starts[: cfg.max_clips_per_video]
        if cfg.native_size:
            fitted = fit_native(frames[: starts[-1] + length])
            if fitted is None:
                self._skip(entry, f"too small: {frames.shape[1]}x{frames.shape[2]} px")
                return []
        else:
            used = frames[: starts[-1] + length]
            fitted = np.stack([fit_image(f, cfg.height, cfg.width, warn=False) for f in used])
        return [Clip(entry.path, entry.text, s, fitted[s : s + length]) for s in starts]

    def summary(self) -> str:
        """One line: clips made, files used, and what was skipped, by reason."""
        return f"{self.clips} clips from {self.files} files{skip_summary(self.skipped)}"


def skip_summary(skipped: list[Skipped]) -> str:
    """'; skipped 3: 2 unreadable, 1 no caption' (most frequent first), or ''."""
    if not skipped:
        return ""
    reasons = Counter(s.reason.split(":")[0].split(" (")[0] for s in skipped)
    ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    return f"; skipped {len(skipped)}: " + ", ".join(f"{n} {r}" for r, n in ranked)
