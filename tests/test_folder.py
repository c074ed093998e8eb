"""A folder of your own videos: captions in three forms, resampling, cutting, bad files.

Every file here is real: H.264 / GIF / PNG written with PyAV and Pillow, plus a corrupt
and an empty file, read back through ``tinysora.io.video``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tinysora.config import ConfigError
from tinysora.data.folder import FolderConfig, FolderError, VideoFolder, resample
from tinysora.io.video import write_video


def ramp(frames: int, height: int, width: int) -> np.ndarray:
    """Frame i is a flat gray of level 4 i (its index survives H.264)."""
    levels = (4 * np.arange(frames)).clip(0, 255).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (frames, height, width, 3)).copy()


@pytest.fixture
def folder(tmp_path):
    write_video(tmp_path / "a.mp4", ramp(60, 96, 128), fps=24)  # 2.5 s -> 20 frames at 8 fps
    write_video(tmp_path / "b.gif", ramp(80, 64, 64), fps=10)  # 8 s -> 64 frames: 3 clips
    Image.fromarray(ramp(1, 48, 80)[0]).save(tmp_path / "img.png")
    write_video(tmp_path / "short.mp4", ramp(9, 64, 64), fps=8)
    write_video(tmp_path / "side.mov", ramp(17, 64, 64), fps=8)
    (tmp_path / "side.txt").write_text("a gray fade, from a sidecar\n")
    write_video(tmp_path / "nocap.mp4", ramp(17, 64, 64), fps=8)
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "captions.csv").write_text(
        "path,text,num_frames,height,width,fps\n"
        "a.mp4,a gray fade,60,96,128,24\n"
        "b.gif,a slow gray fade,80,64,64,10\n"
        "img.png,a gray picture,1,48,80,0\n"
        "short.mp4,too short,9,64,64,8\n"
        "corrupt.mp4,a broken file,17,64,64,8\n"
        "empty.mp4,an empty file,17,64,64,8\n"
        "missing.mp4,not there,17,64,64,8\n"
        "a.mp4,a ragged row\n"
        "b.gif,,80,64,64,10\n"
    )
    return tmp_path


def test_folder_clips_and_skips(folder):
    data = VideoFolder(folder, FolderConfig(fps=8, frames=17, height=64, width=64))
    clips = list(data)
    by_file = {}
    for clip in clips:
        by_file.setdefault(clip.source.name, []).append(clip)
        assert clip.frames.dtype == np.uint8 and clip.frames.shape[1:] == (64, 64, 3)
    assert {k: len(v) for k, v in by_file.items()} == {
        "a.mp4": 1,
        "b.gif": 3,
        "img.png": 1,
        "side.mov": 1,
    }
    assert [c.start for c in by_file["b.gif"]] == [0, 17, 34]
    assert by_file["img.png"][0].frames.shape == (1, 64, 64, 3)
    assert by_file["side.mov"][0].text == "a gray fade, from a sidecar"
    # 24 -> 8 fps keeps every third source frame: gray level 4 * 3k in frame k
    levels = by_file["a.mp4"][0].frames[:, 32, 32, 0].astype(int)
    assert np.abs(levels - 12 * np.arange(17)).max() <= 3, levels
    reasons = sorted((s.path, s.reason.split(" (")[0]) for s in data.skipped)
    assert reasons == [
        ("captions.csv:10", "empty caption"),
        ("captions.csv:8", "missing file: missing.mp4"),
        ("captions.csv:9", "ragged row: 2 cells, 6 columns"),
        ("corrupt.mp4", "unreadable"),
        ("empty.mp4", "unreadable"),
        ("nocap.mp4", "no caption"),
        ("short.mp4", "too short: 9 frames at 8 fps < 17"),
    ]
    assert data.summary() == (
        "6 clips from 4 files; skipped 7: 2 unreadable, 1 empty caption, 1 missing file, "
        "1 no caption, 1 ragged row, 1 too short"
    )


def test_native_size_and_clip_limit(folder):
    cfg = FolderConfig(fps=8, frames=5, native_size=True, max_clips_per_video=2)
    clips = [c for c in VideoFolder(folder, cfg) if c.source.name in ("a.mp4", "img.png")]
    assert [(c.source.name, c.frames.shape) for c in clips] == [
        ("a.mp4", (5, 96, 128, 3)),
        ("a.mp4", (5, 96, 128, 3)),
        ("img.png", (1, 48, 80, 3)),  # cropped to multiples of 16
    ]


def test_jsonl_captions_and_bad_lines(tmp_path):
    write_video(tmp_path / "v.mp4", ramp(17, 64, 64), fps=8)
    lines = [json.dumps({"path": "v.mp4", "text": "a fade"}), "{not json", '{"path": "v.mp4"}']
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    data = VideoFolder(tmp_path)
    assert [c.text for c in data] == ["a fade"]
    assert [s.path for s in data.skipped] == ["captions.jsonl:2", "captions.jsonl:3"]


def test_resample_picks_the_frame_shown_at_each_time():
    frames = np.arange(30)[:, None, None, None].astype(np.uint8)  # 30 frames at 30 fps: 1 s
    assert resample(frames, 30, 10)[:, 0, 0, 0].tolist() == list(range(0, 30, 3))
    assert resample(frames, 30, 60)[:, 0, 0, 0].tolist() == [i // 2 for i in range(60)]
    assert len(resample(frames[:1], 8, 8)) == 1


def test_unusable_folders_are_one_line_errors(tmp_path):
    with pytest.raises(FolderError, match="is not a folder"):
        VideoFolder(tmp_path / "nope")
    write_video(tmp_path / "v.mp4", ramp(17, 64, 64), fps=8)
    with pytest.raises(FolderError, match="no captions in .*captions.csv"):
        VideoFolder(tmp_path)
    (tmp_path / "captions.csv").write_text("file,caption\nv.mp4,x\n")
    with pytest.raises(FolderError, match="'path' and 'text' columns"):
        VideoFolder(tmp_path)
    (tmp_path / "captions.csv").write_bytes("path,text\nv.mp4,caf\xe9\n".encode("latin-1"))
    with pytest.raises(FolderError, match="not UTF-8"):
        VideoFolder(tmp_path)
    with pytest.raises(ConfigError, match="1 \\+ 4k"):
        FolderConfig(frames=16)
    with pytest.raises(ConfigError, match="multiple of 16"):
        FolderConfig(height=60)
