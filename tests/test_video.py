"""Tests for tinysora.io.video: real encode/decode with PyAV, no mocks."""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from tinysora.io.video import (
    VideoError,
    read_video,
    video_info,
    write_contact_sheet,
    write_gif,
    write_video,
)


def make_clip(frames: int = 17, height: int = 64, width: int = 64) -> np.ndarray:
    """Deterministic test clip: a soft gradient with a red square moving diagonally."""
    ys = np.linspace(0.0, 1.0, height)[:, None]
    xs = np.linspace(0.0, 1.0, width)[None, :]
    background = np.stack(
        [
            np.broadcast_to(40 + 160 * xs, (height, width)),
            np.broadcast_to(60 + 140 * ys, (height, width)),
            np.full((height, width), 110.0),
        ],
        axis=-1,
    )
    clip = np.empty((frames, height, width, 3), dtype=np.uint8)
    side = max(1, min(height, width) // 4)
    for t in range(frames):
        image = background.copy()
        top = (3 * t) % max(1, height - side)
        left = (5 * t) % max(1, width - side)
        image[top : top + side, left : left + side] = (220, 50, 40)
        clip[t] = np.round(image).astype(np.uint8)
    return clip


def flat_clip(frames: int, height: int, width: int) -> np.ndarray:
    """One flat colour per frame: tiny frames have no room for a smooth picture."""
    clip = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        clip[t] = (40 + 25 * t, 200 - 20 * t, 90 + 10 * t)
    return clip


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def encode_with_pyav(
    path: Path,
    clip: np.ndarray,
    codec: str,
    pix_fmt: str,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
) -> None:
    """Write a file the way another tool would, straight through PyAV."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=None if pts else 8)
        stream.width = clip.shape[2]
        stream.height = clip.shape[1]
        stream.pix_fmt = pix_fmt
        if time_base is not None:
            stream.codec_context.time_base = time_base
            stream.time_base = time_base
        for index, image in enumerate(clip):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index if pts is None else pts[index]
            if time_base is not None:
                frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def require_codec(name: str) -> None:
    if name not in av.codecs_available:
        pytest.skip(f"encoder {name!r} is not in this PyAV build")


def assert_one_line_error(excinfo: pytest.ExceptionInfo[VideoError], path: Path) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    assert path.name in message
    return message


# ----------------------------------------------------------------------------- H.264


def test_mp4_round_trip_is_h264_yuv420p(tmp_path: Path) -> None:
    clip = make_clip(17, 64, 64)
    path = write_video(tmp_path / "clip.mp4", clip)
    assert path == tmp_path / "clip.mp4"

    frames, fps = read_video(path)
    assert frames.shape == clip.shape
    assert frames.dtype == np.uint8
    assert fps == 8.0
    # Measured ~2.0 levels: mostly 4:2:0 chroma subsampling at the square's edges.
    assert mean_abs_error(frames, clip) < 3.0

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.frames == 17

    info = video_info(path)
    assert info == {
        "frames": 17,
        "height": 64,
        "width": 64,
        "fps": 8.0,
        "codec": "h264",
        "pix_fmt": "yuv420p",
    }


@pytest.mark.parametrize("suffix", [".mov", ".mkv"])
def test_mov_and_mkv_round_trip(tmp_path: Path, suffix: str) -> None:
    clip = make_clip(9, 32, 48)
    frames, fps = read_video(write_video(tmp_path / f"clip{suffix}", clip, fps=12))
    assert frames.shape == clip.shape
    assert fps == 12.0
    assert mean_abs_error(frames, clip) < 3.5
    assert video_info(tmp_path / f"clip{suffix}")["codec"] == "h264"


def test_lower_crf_gives_smaller_error(tmp_path: Path) -> None:
    clip = make_clip(5, 32, 32)
    good, _ = read_video(write_video(tmp_path / "good.mp4", clip, crf=10))
    bad, _ = read_video(write_video(tmp_path / "bad.mp4", clip, crf=40))
    assert mean_abs_error(good, clip) < mean_abs_error(bad, clip)


@pytest.mark.parametrize(("height", "width"), [(31, 45), (33, 47), (2, 3), (1, 1), (30, 45)])
def test_odd_sizes_are_padded_by_edge_replication(tmp_path: Path, height: int, width: int) -> None:
    # At 2x3 pixels a gradient changes by ~100 levels per pixel, which 4:2:0 chroma
    # cannot hold, so tiny sizes use flat frames.
    clip = make_clip(6, height, width) if min(height, width) > 8 else flat_clip(6, height, width)
    path = write_video(tmp_path / "odd.mp4", clip)
    frames, fps = read_video(path)

    even_h, even_w = height + height % 2, width + width % 2
    assert frames.shape == (6, even_h, even_w, 3)
    assert fps == 8.0
    # The original picture sits in the top-left corner.
    bound = 3.5
    assert mean_abs_error(frames[:, :height, :width], clip) < bound
    # The extra column/row repeats the edge pixels.
    if width % 2:
        assert mean_abs_error(frames[:, :height, width], clip[:, :, -1]) < bound
    if height % 2:
        assert mean_abs_error(frames[:, height, :width], clip[:, -1, :]) < bound


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_fractional_fps(tmp_path: Path, suffix: str) -> None:
    clip = make_clip(17, 32, 32)
    path = write_video(tmp_path / f"slow{suffix}", clip, fps=7.5)
    frames, fps = read_video(path)
    assert len(frames) == 17
    assert fps == 7.5


# ------------------------------------------------------------------ GIF, PNG, NPY


def test_gif_round_trip(tmp_path: Path) -> None:
    clip = make_clip(17, 40, 56)
    clip[6] = clip[5]  # identical neighbours must stay two frames
    path = write_video(tmp_path / "clip.gif", clip, fps=8)
    frames, fps = read_video(path)
    assert frames.shape == clip.shape
    assert fps == pytest.approx(8.0)
    # Measured ~1.8 levels with one shared 256-colour palette.
    assert mean_abs_error(frames, clip) < 4.0

    with Image.open(path) as image:
        assert image.n_frames == 17
        assert image.info.get("loop") == 0  # loops forever


def test_write_gif_directly_and_fps_limit(tmp_path: Path) -> None:
    clip = make_clip(4, 16, 16)
    frames, fps = read_video(write_gif(tmp_path / "a.gif", clip, fps=5))
    assert frames.shape == clip.shape
    assert fps == pytest.approx(5.0)
    with pytest.raises(VideoError, match="fps") as excinfo:
        write_gif(tmp_path / "fast.gif", clip, fps=60)
    assert_one_line_error(excinfo, tmp_path / "fast.gif")


def test_png_contact_sheet_default_layout(tmp_path: Path) -> None:
    clip = make_clip(5, 20, 30)
    path = write_video(tmp_path / "sheet.png", clip)
    with Image.open(path) as image:
        assert image.format == "PNG"
        sheet = np.asarray(image.convert("RGB"))
    assert sheet.shape == (20, 5 * 30 + 4 * 2, 3)  # one row, pad 2 between frames
    assert np.array_equal(sheet[:, :30], clip[0])
    assert np.array_equal(sheet[:, 32:62], clip[1])
    assert np.all(sheet[:, 30:32] == 128)

    frames, fps = read_video(path)
    assert frames.shape == (1, *sheet.shape)
    assert fps == 8.0


def test_contact_sheet_grid_layouts(tmp_path: Path) -> None:
    clip = make_clip(17, 10, 12)
    # 17 frames -> ceil(sqrt(17)) = 5 columns, 4 rows; empty cells stay gray.
    with Image.open(write_contact_sheet(tmp_path / "grid.png", clip)) as image:
        assert image.size == (5 * 12 + 4 * 2, 4 * 10 + 3 * 2)
        sheet = np.asarray(image.convert("RGB"))
    assert np.array_equal(sheet[12:22, 14:26], clip[6])
    assert np.all(sheet[-10:, -12:] == 128)

    with Image.open(write_contact_sheet(tmp_path / "c.png", clip[:6], columns=2, pad=0)) as image:
        assert image.size == (2 * 12, 3 * 10)


def test_npy_is_bit_exact(tmp_path: Path) -> None:
    clip = make_clip(7, 13, 9)
    frames, fps = read_video(write_video(tmp_path / "clip.npy", clip))
    assert frames.dtype == np.uint8
    assert np.array_equal(frames, clip)
    assert fps == 8.0
    assert video_info(tmp_path / "clip.npy")["frames"] == 7


def test_single_frame_input_and_image_files(tmp_path: Path) -> None:
    image = make_clip(1, 24, 30)[0]
    frames, _ = read_video(write_video(tmp_path / "one.npy", image))
    assert frames.shape == (1, 24, 30, 3)
    frames, _ = read_video(write_video(tmp_path / "one.mp4", image))
    assert frames.shape == (1, 24, 30, 3)

    Image.fromarray(image).save(tmp_path / "still.png")
    Image.fromarray(image).save(tmp_path / "still.jpg", quality=95)
    frames, fps = read_video(tmp_path / "still.png")
    assert np.array_equal(frames[0], image) and fps == 8.0
    frames, fps = read_video(tmp_path / "still.jpg")
    assert frames.shape == (1, 24, 30, 3) and fps == 8.0


def test_write_creates_folders_overwrites_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "clip.mp4"
    write_video(target, make_clip(3, 16, 16))
    first = target.read_bytes()
    write_video(target, make_clip(9, 16, 16))
    assert target.read_bytes() != first
    assert len(read_video(target)[0]) == 9
    assert [p.name for p in target.parent.iterdir()] == ["clip.mp4"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "clip.gif"
    write_video(target, make_clip(3, 16, 16))
    before = target.read_bytes()
    with pytest.raises(VideoError):
        write_video(target, make_clip(3, 16, 16), fps=500)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["clip.gif"]


# ----------------------------------------------------------- files from other encoders


@pytest.mark.parametrize(
    ("codec", "name", "pix_fmt", "height", "width", "bound"),
    [
        ("libvpx-vp9", "vp9.webm", "yuv420p", 31, 45, 4.0),
        ("libvpx", "vp8.webm", "yuv420p", 32, 48, 5.0),
        ("mpeg4", "mpeg4.avi", "yuv420p", 32, 48, 9.0),
        ("mpeg4", "mpeg4.mov", "yuv420p", 31, 45, 9.0),
        ("mjpeg", "mjpeg.avi", "yuvj420p", 31, 45, 5.0),
        ("png", "png.mov", "rgb24", 31, 45, 0.0),
        ("ffv1", "ffv1.mkv", "yuv444p", 31, 45, 1.0),
    ],
)
def test_reads_files_from_other_encoders(
    tmp_path: Path, codec: str, name: str, pix_fmt: str, height: int, width: int, bound: float
) -> None:
    require_codec(codec)
    clip = make_clip(12, height, width)
    path = tmp_path / name
    encode_with_pyav(path, clip, codec, pix_fmt)

    frames, fps = read_video(path)
    assert frames.shape == clip.shape  # these codecs keep odd sizes as they are
    assert frames.dtype == np.uint8
    assert fps == 8.0
    assert mean_abs_error(frames, clip) <= bound
    assert video_info(path)["frames"] == 12


@pytest.mark.parametrize(("codec", "name"), [("libx264", "vfr.mp4"), ("libvpx-vp9", "vfr.webm")])
def test_variable_frame_rate(tmp_path: Path, codec: str, name: str) -> None:
    require_codec(codec)
    clip = make_clip(12, 32, 48)
    pts = [0, 100, 150, 400, 420, 900, 1000, 1333, 1500, 1800, 2100, 2500]  # milliseconds
    path = tmp_path / name
    encode_with_pyav(path, clip, codec, "yuv420p", pts=pts, time_base=Fraction(1, 1000))

    frames, fps = read_video(path)
    assert frames.shape == clip.shape
    # 11 intervals over 2.5 s. (The containers declare other rates: 24 fps for the webm,
    # about 6 fps for the mp4, so timestamps must win.)
    assert fps == pytest.approx(11 / 2.5, rel=0.01)
    assert video_info(path)["fps"] == pytest.approx(11 / 2.5, rel=0.01)


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.mp4"
    with pytest.raises(VideoError) as excinfo:
        read_video(path)
    assert "not found" in assert_one_line_error(excinfo, path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.touch()
    with pytest.raises(VideoError) as excinfo:
        read_video(path)
    assert "file is empty" in assert_one_line_error(excinfo, path)


def test_folder_instead_of_file(tmp_path: Path) -> None:
    path = tmp_path / "folder.mp4"
    path.mkdir()
    with pytest.raises(VideoError) as excinfo:
        read_video(path)
    assert_one_line_error(excinfo, path)


@pytest.mark.parametrize("name", ["notes.mp4", "notes.gif", "notes.npy", "notes.png"])
def test_text_file_with_video_suffix(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("these are my notes, not a video\n" * 20)
    with pytest.raises(VideoError) as excinfo:
        read_video(path)
    assert_one_line_error(excinfo, path)
    with pytest.raises(VideoError):
        video_info(path)


def test_npy_with_wrong_dtype(tmp_path: Path) -> None:
    path = tmp_path / "floats.npy"
    np.save(path, np.zeros((2, 4, 4, 3), dtype=np.float32))
    with pytest.raises(VideoError, match="uint8") as excinfo:
        read_video(path)
    assert_one_line_error(excinfo, path)


def test_audio_only_file(tmp_path: Path) -> None:
    path = tmp_path / "sound.mkv"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(VideoError, match="no video stream") as excinfo:
        read_video(path)
    assert_one_line_error(excinfo, path)


def read_truncated(path: Path) -> tuple[np.ndarray | None, list[warnings.WarningMessage]]:
    """read_video that may only raise VideoError; returns (frames or None, warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            frames, _ = read_video(path)
        except VideoError as exc:
            assert "\n" not in str(exc) and path.name in str(exc)
            return None, list(caught)
    return frames, list(caught)


@pytest.mark.parametrize("keep", [0.05, 0.3, 0.5, 0.8, 0.95])
def test_truncated_mp4_gives_frames_or_video_error(tmp_path: Path, keep: float) -> None:
    good = write_video(tmp_path / "good.mp4", make_clip(17, 64, 64))
    data = good.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * keep)])
    frames, _ = read_truncated(path)
    if frames is not None:
        assert 1 <= len(frames) <= 17
        assert frames.shape[1:] == (64, 64, 3)


def test_truncated_mp4_keeps_decodable_prefix(tmp_path: Path) -> None:
    # Fast-start mp4 has its index first, so a cut-off file still decodes its beginning.
    good = write_video(tmp_path / "good.mp4", make_clip(40, 64, 64))
    data = good.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * 0.7)])
    frames, caught = read_truncated(path)
    assert frames is not None
    assert 1 <= len(frames) < 40
    assert any("truncated" in str(w.message) for w in caught)


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (np.zeros((2, 8, 8, 3), dtype=np.float32), "uint8"),
        (np.zeros((2, 8, 8, 4), dtype=np.uint8), "shape"),
        (np.zeros((8, 8), dtype=np.uint8), "shape"),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), "empty"),
        ([[1, 2], [3]], "array"),
    ],
)
def test_write_rejects_bad_frames(tmp_path: Path, frames: object, match: str) -> None:
    path = tmp_path / "bad.mp4"
    with pytest.raises(VideoError, match=match) as excinfo:
        write_video(path, frames)  # type: ignore[arg-type]
    assert_one_line_error(excinfo, path)
    assert not path.exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"fps": 0}, "fps"), ({"fps": float("nan")}, "fps"), ({"crf": 99}, "crf")],
)
def test_write_rejects_bad_settings(tmp_path: Path, kwargs: dict, match: str) -> None:
    path = tmp_path / "bad.mp4"
    with pytest.raises(VideoError, match=match) as excinfo:
        write_video(path, make_clip(2, 8, 8), **kwargs)
    assert_one_line_error(excinfo, path)


@pytest.mark.parametrize("name", ["clip.avi", "clip.txt", "clip"])
def test_write_unknown_suffix_lists_supported(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(VideoError) as excinfo:
        write_video(path, make_clip(2, 8, 8))
    message = assert_one_line_error(excinfo, path)
    for suffix in (".mp4", ".mov", ".mkv", ".gif", ".png", ".npy"):
        assert suffix in message


@pytest.mark.parametrize("suffix", [".mp4", ".gif", ".png", ".npy"])
def test_write_under_a_regular_file(tmp_path: Path, suffix: str) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    path = blocker / "sub" / f"clip{suffix}"
    with pytest.raises(VideoError) as excinfo:
        write_video(path, make_clip(2, 8, 8))
    message = assert_one_line_error(excinfo, path)
    assert "not a folder" in message


def test_write_onto_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "taken.mp4"
    path.mkdir()
    with pytest.raises(VideoError) as excinfo:
        write_video(path, make_clip(2, 8, 8))
    assert_one_line_error(excinfo, path)


def test_sound_track_is_fitted_to_the_clip(tmp_path):
    from tinysora.io.video import audio_info

    frames = np.zeros((9, 32, 32, 3), np.uint8)
    tone = (0.3 * np.sin(np.arange(16000 * 3) / 16000 * 2 * np.pi * 440)).astype(np.float32)
    for seconds in (0.5, 3.0):  # shorter than the clip: padded; longer: cut
        sound = tone[: int(seconds * 16000)]
        path = write_video(tmp_path / f"{seconds}.mp4", frames, 8, audio=sound, audio_rate=16000)
        info = audio_info(path)
        assert info["codec"] == "aac" and info["sample_rate"] == 16000
        assert abs(info["seconds"] - 9 / 8) < 0.01
        assert read_video(path)[0].shape == frames.shape
    assert audio_info(write_video(tmp_path / "quiet.mp4", frames, 8)) is None
    nan = np.full(10, np.nan, np.float32)
    for kwargs, message in ((dict(audio=tone, audio_rate=None), "audio_rate"),
                            (dict(audio=tone[:, None], audio_rate=16000), "1-D float"),
                            (dict(audio=nan, audio_rate=16000), "NaN")):  # fmt: skip
        with pytest.raises(VideoError, match=message):
            write_video(tmp_path / "bad.mp4", frames, 8, **kwargs)
    with pytest.raises(VideoError, match="sound track"):
        write_video(tmp_path / "a.gif", frames, 8, audio=tone, audio_rate=16000)
