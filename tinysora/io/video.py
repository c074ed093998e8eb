"""Video reading and writing for tinysora (PyAV + Pillow + numpy).

Frames are always ``uint8`` numpy arrays of shape ``(T, H, W, 3)`` in RGB order.

Writing (:func:`write_video`) picks the format from the file suffix:

* ``.mp4`` / ``.mov`` / ``.mkv`` -- H.264 (libx264, ``yuv420p``, quality set by ``crf``).
  MP4/MOV files are written "fast start" (index at the front), which also lets
  :func:`read_video` recover the first frames of a truncated download.
* ``.gif`` -- animated GIF, looping forever, one shared 256-colour palette.
* ``.png`` -- a contact sheet: all frames side by side in a grid (see
  :func:`write_contact_sheet`). Reading it back gives the sheet as one frame.
* ``.npy`` -- the raw uint8 array, bit exact. The fps is not stored.

An H.264 file can carry a sound track: ``write_video(..., audio=samples,
audio_rate=16000)`` muxes mono float samples as AAC. The track is fitted to the clip:
padded with silence (or cut) to exactly ``frames / fps`` seconds, so both streams end
together (AAC's encoder delay aside, ~0.04 s). :func:`audio_info` reads a file's track.

Every writer is atomic: data goes to a hidden temporary file in the target folder
which is renamed over the target only once it is complete, so a crash never leaves
a half-written file behind. Missing parent folders are created.

Odd frame sizes and H.264
-------------------------
H.264 in ``yuv420p`` needs an even width and height. When a dimension is odd, the
writer adds ONE pixel column on the right and/or ONE pixel row at the bottom by
repeating the edge pixels, then encodes. Nothing else is stored, so reading the
file back returns the padded (even) size: a 31x45 (H x W) clip comes back as
32x46, and ``frames[:, :31, :45]`` is the original picture. GIF, PNG and NPY keep
the exact size.

Reading
-------
:func:`read_video` decodes anything FFmpeg inside PyAV can decode (H.264, VP8,
VP9, MPEG-4, MJPEG, GIF, PNG, FFV1, ... in mp4/mov/mkv/webm/avi/gif), plus ``.npy``
arrays and single images (``.png``/``.jpg``/``.jpeg``/``.bmp``, returned as one
frame at 8 fps). The returned fps is the rate measured from the decoded frame
timestamps, ``(n - 1) / (last - first)``; when the container's declared average
rate agrees with it within 2 %, the declared (exact) value is returned instead,
e.g. ``7.5`` rather than ``7.5012`` from millisecond timestamps. Files whose
timestamps are unusable fall back to the declared rate, then to 8.0.

A damaged or truncated file whose first frames decode returns those frames and
emits a :class:`RuntimeWarning`; if no frame decodes, :class:`VideoError` is
raised. All failures (missing, empty, corrupt, not a video, no video stream)
raise :class:`VideoError` with a one-line message that names the file.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np
from PIL import Image

from tinysora.errors import UserError
from tinysora.io.atomic import atomic_file, write_problem

__all__ = [
    "VideoError",
    "audio_info",
    "check_output_path",
    "read_video",
    "video_info",
    "write_contact_sheet",
    "write_gif",
    "write_video",
]

DEFAULT_FPS = 8.0
"""fps reported for inputs that carry no timing (``.npy``, still images)."""

_H264_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
_WRITE_SUFFIXES = (".gif", ".mkv", ".mov", ".mp4", ".npy", ".png")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_SHEET_GRAY = 128
_GIF_MAX_FPS = 50.0
_FPS_AGREEMENT = 0.02

# Errors that PyAV, numpy and Pillow raise for bad files or failed writes.
# (PyAV's error classes also derive from the matching builtins, e.g. ValueError.)
_IO_ERRORS = (
    av.error.FFmpegError,
    OSError,
    ValueError,
    EOFError,
    RuntimeError,
    Image.DecompressionBombError,
)


class VideoError(UserError):
    """One-line, user-facing error: names the file and the problem (and the fix if any)."""


def _error(action: str, path: str | os.PathLike[str], reason: str) -> VideoError:
    """Build a single-line VideoError such as ``cannot read video 'a.mp4': file is empty``."""
    message = f"cannot {action} video '{os.fspath(path)}': {reason}"
    return VideoError(" ".join(message.split()))


def _reason(exc: BaseException) -> str:
    """Short description of a library exception (FFmpeg/OS errors carry a clean strerror)."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


# --------------------------------------------------------------------------- validation


def _check_frames(frames: Any, path: str | os.PathLike[str]) -> np.ndarray:
    """Return frames as a contiguous uint8 (T, H, W, 3) array, or raise VideoError."""
    try:
        array = np.asarray(frames)
    except (ValueError, TypeError) as exc:
        raise _error("write", path, f"frames are not an array ({_reason(exc)})") from exc
    if array.dtype != np.uint8:
        raise _error(
            "write",
            path,
            f"frames must be uint8, got {array.dtype} "
            "(scale to 0..255 and convert with .astype(np.uint8))",
        )
    if array.ndim == 3 and array.shape[-1] == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise _error(
            "write", path, f"frames must have shape (T, H, W, 3) or (H, W, 3), got {array.shape}"
        )
    if 0 in array.shape:
        raise _error("write", path, f"frames array is empty (shape {array.shape})")
    return np.ascontiguousarray(array)


def _check_fps(fps: float, path: str | os.PathLike[str]) -> float:
    """Return fps as a float, or raise VideoError unless it is finite and in (0, 1000]."""
    try:
        value = float(fps)
    except (TypeError, ValueError) as exc:
        raise _error("write", path, f"fps must be a number, got {fps!r}") from exc
    if not (math.isfinite(value) and 0 < value <= 1000):
        raise _error("write", path, f"fps must be between 0 and 1000, got {fps!r}")
    return value


def _is_int_at_least(value: Any, minimum: int) -> bool:
    """True for a real int (not bool) that is >= minimum."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


# ------------------------------------------------------------------------------ writing


def _atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary file next to ``path``, then rename it onto ``path``.

    The temporary file is removed if anything fails; library errors become VideoError.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = write_problem(target) or f"cannot create folder '{target.parent}' ({_reason(exc)})"
        raise _error("write", path, reason) from exc
    if target.is_dir():
        raise _error("write", path, "a folder with that name already exists")

    try:
        with atomic_file(target) as tmp:
            write(tmp)
    except _IO_ERRORS as exc:
        raise _error("write", path, _reason(exc)) from exc
    return target


def fit_audio(audio: np.ndarray, rate: int, seconds: float) -> np.ndarray:
    """Mono float32 samples padded with silence, or cut, to ``seconds``."""
    n = round(seconds * rate)
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)[:n]
    return np.pad(audio, (0, n - len(audio)))


def _check_audio(audio: Any, rate: Any, path: str | os.PathLike[str]) -> np.ndarray:
    if not _is_int_at_least(rate, 8000) or rate > 96000:
        raise _error("write", path, f"audio_rate must be an integer 8000..96000 Hz, got {rate!r}")
    array = np.asarray(audio)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        raise _error(
            "write",
            path,
            "audio must be a non-empty 1-D float array (mono samples "
            f"in [-1, 1]), got {array.dtype} {array.shape}",
        )
    if not np.isfinite(array).all():
        raise _error("write", path, "audio holds NaN or infinite samples")
    return np.clip(array.astype(np.float32), -1.0, 1.0)


def _encode_h264(
    tmp: Path,
    frames: np.ndarray,
    fps: float,
    crf: int,
    container_format: str,
    audio: np.ndarray | None = None,
    audio_rate: int = 0,
):
    """Encode frames with libx264/yuv420p, padding odd sizes by edge replication; then
    the sound track, if any, fitted to the frames' duration."""
    _, height, width, _ = frames.shape
    pad_h, pad_w = height % 2, width % 2
    rate = Fraction(fps).limit_denominator(1001)
    options = {"movflags": "+faststart"} if container_format in ("mp4", "mov") else {}
    with av.open(str(tmp), mode="w", format=container_format, options=options) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width = width + pad_w
        stream.height = height + pad_h
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        time_base = 1 / rate
        stream.codec_context.time_base = time_base
        sound = None
        if audio is not None:  # every stream is added before the first packet
            sound = container.add_stream("aac", rate=audio_rate)
            sound.layout = "mono"
        for index, frame in enumerate(frames):
            if pad_h or pad_w:
                frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = index
            video_frame.time_base = time_base
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))  # flush delayed frames
        if sound is not None:
            track = fit_audio(audio, audio_rate, len(frames) / fps)[None]  # (1, samples)
            chunk = av.AudioFrame.from_ndarray(track, format="flt", layout="mono")
            chunk.sample_rate, chunk.pts = audio_rate, 0
            container.mux(sound.encode(chunk))  # PyAV cuts it into the encoder's frames
            container.mux(sound.encode(None))


def _gif_palette(frames: np.ndarray) -> Image.Image:
    """One 256-colour palette image built from up to 16 evenly spaced frames."""
    picks = np.linspace(0, len(frames) - 1, min(len(frames), 16)).round().astype(int)
    sample = np.concatenate(list(frames[picks]), axis=0)
    return Image.fromarray(sample).quantize(
        colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )


def _encode_gif(tmp: Path, frames: np.ndarray, fps: float) -> None:
    """Encode an animated GIF with FFmpeg's gif encoder from Pillow-quantized pal8 frames.

    GIF delays are in 1/100 s; frame i starts at round(i * 100 / fps) so the total
    duration stays exact (at 8 fps the delays alternate 12/13 cs instead of all 12).
    """
    palette_image = _gif_palette(frames)
    rgb = np.asarray(palette_image.getpalette() or [], dtype=np.uint8)[: 256 * 3]
    argb = np.zeros((256, 4), dtype=np.uint8)
    argb[:, 0] = 255  # fully opaque
    argb[: len(rgb) // 3, 1:] = rgb.reshape(-1, 3)
    time_base = Fraction(1, 100)
    _, height, width, _ = frames.shape
    with av.open(str(tmp), mode="w", format="gif") as container:
        stream = container.add_stream("gif", rate=100)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "pal8"
        stream.codec_context.time_base = time_base
        for index, frame in enumerate(frames):
            indices = Image.fromarray(frame).quantize(
                palette=palette_image, dither=Image.Dither.NONE
            )
            video_frame = av.VideoFrame.from_ndarray((np.asarray(indices), argb), format="pal8")
            video_frame.pts = round(index * 100 / fps)
            video_frame.time_base = time_base
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))


def _save_npy(tmp: Path, frames: np.ndarray) -> None:
    with open(tmp, "wb") as handle:
        np.save(handle, frames, allow_pickle=False)


def _sheet_layout(count: int, columns: int | None) -> tuple[int, int]:
    """(rows, columns): one row for up to 8 frames, else about square."""
    if columns is None:
        columns = count if count <= 8 else math.ceil(math.sqrt(count))
    columns = min(columns, count)
    return math.ceil(count / columns), columns


def check_output_path(path: str | os.PathLike[str]) -> str:
    """The lower-case suffix of a path :func:`write_video` can write; VideoError otherwise,
    for the format or the place (call it before long work that ends in a write)."""
    suffix = Path(path).suffix.lower()
    if suffix not in _WRITE_SUFFIXES:
        shown = f"'{suffix}'" if suffix else "no extension"
        raise _error(
            "write", path, f"unsupported format ({shown}); use one of {', '.join(_WRITE_SUFFIXES)}"
        )
    if Path(path).is_dir():
        raise _error("write", path, "a folder with that name already exists")
    problem = write_problem(path)
    if problem is not None:
        raise _error("write", path, problem)
    return suffix


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    fps: float = 8,
    *,
    crf: int = 18,
    audio: np.ndarray | None = None,
    audio_rate: int | None = None,
) -> Path:
    """Write ``frames`` (uint8, (T, H, W, 3) or (H, W, 3)) to ``path``; return the path.

    The format follows the suffix (``.mp4``/``.mov``/``.mkv`` H.264, ``.gif``, ``.png``
    contact sheet, ``.npy``); see the module docstring, including the odd-size rule for
    H.264. ``crf`` (0..51, lower is better, 18 is visually lossless) only affects H.264.
    ``audio`` (mono float samples at ``audio_rate`` Hz) becomes an AAC track of the
    H.264 formats, padded with silence or cut to the clip's ``T / fps`` seconds.
    Raises VideoError for bad frames, bad fps/crf/audio, an unknown suffix or an
    unwritable path.
    """
    suffix = check_output_path(path)
    array = _check_frames(frames, path)
    rate = _check_fps(fps, path)
    if audio is not None:
        if suffix not in _H264_FORMATS:
            raise _error("write", path, "only .mp4 / .mov / .mkv carry a sound track")
        audio = _check_audio(audio, audio_rate, path)
    if suffix == ".gif":
        return write_gif(path, array, rate)
    if suffix == ".png":
        return write_contact_sheet(path, array)
    if suffix == ".npy":
        return _atomic_write(path, lambda tmp: _save_npy(tmp, array))
    if not _is_int_at_least(crf, 0) or crf > 51:
        raise _error("write", path, f"crf must be an integer from 0 to 51, got {crf!r}")
    container_format = _H264_FORMATS[suffix]
    return _atomic_write(
        path, lambda tmp: _encode_h264(tmp, array, rate, crf, container_format, audio, audio_rate)
    )


def write_gif(path: str | os.PathLike[str], frames: np.ndarray, fps: float) -> Path:
    """Write an animated, looping GIF (one shared 256-colour palette); return the path.

    Each frame lasts about 1000/fps ms (GIF stores 1/100 s steps); fps above 50 is
    refused because browsers slow such GIFs down.
    """
    array = _check_frames(frames, path)
    rate = _check_fps(fps, path)
    if rate > _GIF_MAX_FPS:
        raise _error(
            "write", path, f"GIF cannot play faster than {_GIF_MAX_FPS:g} fps (got {fps}); use .mp4"
        )
    return _atomic_write(path, lambda tmp: _encode_gif(tmp, array, rate))


def write_contact_sheet(
    path: str | os.PathLike[str], frames: np.ndarray, columns: int | None = None, pad: int = 2
) -> Path:
    """Write a PNG showing all frames in a grid, separated by ``pad`` gray pixels.

    Default layout: a single row for up to 8 frames, otherwise ceil(sqrt(T)) columns.
    The image is (rows*H + (rows-1)*pad) x (columns*W + (columns-1)*pad); unused cells
    are gray. The file is PNG data whatever the suffix.
    """
    array = _check_frames(frames, path)
    if columns is not None and not _is_int_at_least(columns, 1):
        raise _error("write", path, f"columns must be a positive integer, got {columns!r}")
    if not _is_int_at_least(pad, 0):
        raise _error("write", path, f"pad must be a non-negative integer, got {pad!r}")
    count, height, width, _ = array.shape
    rows, columns = _sheet_layout(count, columns)
    sheet = np.full(
        (rows * height + (rows - 1) * pad, columns * width + (columns - 1) * pad, 3),
        _SHEET_GRAY,
        dtype=np.uint8,
    )
    for index, frame in enumerate(array):
        top = (index // columns) * (height + pad)
        left = (index % columns) * (width + pad)
        sheet[top : top + height, left : left + width] = frame
    image = Image.fromarray(sheet)
    return _atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


# ------------------------------------------------------------------------------ reading


def _check_input_file(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a Path if it is a non-empty regular file, else raise VideoError."""
    source = Path(path)
    try:
        if not source.exists():
            raise _error("read", path, "file not found")
        if source.is_dir():
            raise _error("read", path, "this is a folder, not a video file")
        if source.stat().st_size == 0:
            raise _error("read", path, "file is empty")
    except OSError as exc:
        raise _error("read", path, _reason(exc)) from exc
    return source


def _as_video_array(array: np.ndarray, path: str | os.PathLike[str]) -> np.ndarray:
    """Validate a loaded .npy array as uint8 (T, H, W, 3) / (H, W, 3) video."""
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[-1] == 3:
        array = array[None]
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape:
        raise _error(
            "read",
            path,
            f"expected a uint8 array of shape (T, H, W, 3), got {array.dtype} {array.shape}",
        )
    return array


def _read_image(source: Path) -> np.ndarray:
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"))[None]


def _measured_fps(declared: Fraction | None, times: list[Fraction]) -> float:
    """Pick the fps from frame timestamps and the container's declared average rate."""
    nominal = float(declared) if declared is not None and declared > 0 else None
    if nominal is not None and not math.isfinite(nominal):
        nominal = None
    measured = None
    if len(times) >= 2 and max(times) > min(times):
        measured = float((len(times) - 1) / (max(times) - min(times)))
    if measured is None:
        return nominal if nominal is not None else DEFAULT_FPS
    if nominal is not None and abs(nominal - measured) <= _FPS_AGREEMENT * measured:
        return nominal
    return measured


def _decode_av(source: Path, path: str | os.PathLike[str]) -> tuple[np.ndarray, float]:
    """Decode the first video stream of a media file with PyAV."""
    try:
        container = av.open(str(source), mode="r")
    except _IO_ERRORS as exc:
        reason = f"not a video file, or the file is corrupt ({_reason(exc)})"
        raise _error("read", path, reason) from exc
    with container:
        if not container.streams.video:
            kinds = sorted({stream.type for stream in container.streams}) or ["nothing"]
            raise _error("read", path, f"no video stream (found: {', '.join(kinds)})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames: list[np.ndarray] = []
        times: list[Fraction] = []
        try:
            for frame in container.decode(video=0):
                array = frame.to_ndarray(format="rgb24")
                if frames and array.shape != frames[0].shape:
                    old, new = frames[0].shape, array.shape
                    raise _error(
                        "read",
                        path,
                        f"frame size changes mid-stream ({old[1]}x{old[0]} to {new[1]}x{new[0]})",
                    )
                frames.append(array)
                if frame.pts is not None and frame.time_base is not None:
                    times.append(frame.pts * frame.time_base)
        except _IO_ERRORS as exc:
            if not frames:
                raise _error("read", path, f"cannot decode any frame ({_reason(exc)})") from exc
            problem = f"decoding failed ({_reason(exc)})"
        else:
            problem = None
            if stream.frames and len(frames) < stream.frames:
                problem = f"the container lists {stream.frames} frames"
        if not frames:
            raise _error("read", path, "the video stream contains no decodable frames")
        if problem is not None:
            warnings.warn(
                f"video '{os.fspath(path)}' is damaged or truncated: returning the "
                f"{len(frames)} frame(s) that decoded; {problem}",
                RuntimeWarning,
                stacklevel=3,
            )
        fps = _measured_fps(stream.average_rate, times)
    return np.stack(frames), fps


def read_video(path: str | os.PathLike[str]) -> tuple[np.ndarray, float]:
    """Read a video (or .npy array, or single image) as uint8 RGB (T, H, W, 3) plus fps.

    See the module docstring for the fps rule and for truncated files (the frames that
    decode are returned with a RuntimeWarning). Raises VideoError with a one-line
    message for missing, empty, corrupt or non-video files.
    """
    source = _check_input_file(path)
    suffix = source.suffix.lower()
    try:
        if suffix == ".npy":
            return _as_video_array(np.load(source, allow_pickle=False), path), DEFAULT_FPS
        if suffix in _IMAGE_SUFFIXES:
            return _read_image(source), DEFAULT_FPS
        return _decode_av(source, path)
    except _IO_ERRORS as exc:
        raise _error("read", path, _reason(exc)) from exc


def video_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a file without decoding it: frames, height, width, fps, codec, pix_fmt.

    ``frames`` comes from the container (or a packet count), so for unusual files it
    may differ slightly from what :func:`read_video` decodes.
    """
    source = _check_input_file(path)
    suffix = source.suffix.lower()
    try:
        if suffix == ".npy":
            array = _as_video_array(np.load(source, mmap_mode="r", allow_pickle=False), path)
            frames, height, width, _ = array.shape
            return {
                "frames": frames,
                "height": height,
                "width": width,
                "fps": DEFAULT_FPS,
                "codec": "npy",
                "pix_fmt": "rgb24",
            }
        if suffix in _IMAGE_SUFFIXES:
            with Image.open(source) as image:
                return {
                    "frames": 1,
                    "height": image.height,
                    "width": image.width,
                    "fps": DEFAULT_FPS,
                    "codec": (image.format or "image").lower(),
                    "pix_fmt": image.mode,
                }
        with av.open(str(source), mode="r") as container:
            if not container.streams.video:
                raise _error("read", path, "no video stream")
            stream = container.streams.video[0]
            packets = 0
            times: list[Fraction] = []
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                packets += 1
                if packet.pts is not None and packet.time_base is not None:
                    times.append(packet.pts * packet.time_base)
            context = stream.codec_context
            return {
                "frames": stream.frames or packets,
                "height": context.height,
                "width": context.width,
                "fps": _measured_fps(stream.average_rate, times),
                "codec": context.name,
                "pix_fmt": context.pix_fmt,
            }
    except _IO_ERRORS as exc:
        raise _error("read", path, _reason(exc)) from exc


def audio_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A file's first sound track: codec, sample_rate, seconds (the container's duration
    of the track, else its decoded samples / rate); None when it has none."""
    source = _check_input_file(path)
    try:
        with av.open(str(source), mode="r") as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = sum(frame.samples for frame in container.decode(stream)) / rate
            return {"codec": stream.codec_context.name, "sample_rate": rate, "seconds": seconds}
    except _IO_ERRORS as exc:
        raise _error("read", path, _reason(exc)) from exc
