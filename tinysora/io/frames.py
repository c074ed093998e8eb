"""Frames <-> tensors, and images / videos given to the pipeline as conditioning.

Frames are uint8 ``(T, H, W, 3)`` arrays; model pixels are float ``(3, T, H, W)`` in
[-1, 1] (:func:`frames_to_tensor` / :func:`tensor_to_frames`). A pipeline's
``output_type="np"`` gives float32 frames in [0, 1], as diffusers' pipelines do
(:func:`to_unit`); :func:`to_uint8` turns them back into the exact bytes.

Conditioning images are PIL images, (H, W, 3) arrays (uint8, or float in [0, 1]) or
paths (any format ``read_video`` reads); videos are (T, H, W, 3) arrays or paths. An input of
another size is centre-cropped to the target aspect ratio and resized (bilinear),
with a warning; a video of another length is cut or padded with its last frame, with
a warning.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from tinysora.errors import UserError
from tinysora.io.video import read_video


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (3, T, H, W) in [-1, 1]."""
    x = torch.tensor(np.asarray(frames), dtype=torch.float32)  # a copy: input may be read-only
    return x.permute(3, 0, 1, 2).div(127.5).sub(1.0)


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """float (3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3)."""
    x = x.detach().float().clamp(-1, 1).add(1).mul(127.5).round()
    return x.permute(1, 2, 3, 0).to(torch.uint8).cpu().numpy()


def to_unit(frames: np.ndarray) -> np.ndarray:
    """uint8 frames -> float32 in [0, 1] (``output_type="np"``): each byte / 255, so that
    :func:`to_uint8` gives the bytes back exactly."""
    return np.asarray(frames, dtype=np.uint8).astype(np.float32) / 255


def to_uint8(frames):
    """Frames in [0, 1] (float, ``output_type="np"``) -> uint8, as diffusers converts them
    (x 255, rounded; out-of-range values clipped); other arrays (uint8) pass as they are,
    and a list of clips gives a list. ``to_uint8(pipe(...).frames)`` are the bytes the
    CLI writes."""
    if isinstance(frames, list):
        return [to_uint8(f) for f in frames]
    array = np.asarray(frames)
    if not np.issubdtype(array.dtype, np.floating):
        return array
    return (np.clip(array, 0, 1) * 255).round().astype(np.uint8)


@dataclass
class VideoOutput:
    """What a pipeline call returns (diffusers' ``...PipelineOutput``): ``frames`` are
    float32 (T, H, W, 3) in [0, 1] for ``output_type="np"`` (a list of them for a list of
    prompts; :func:`to_uint8` for bytes), lists of PIL images for ``"pil"``, and latents
    (B, C, t, h, w) for ``"latent"``."""

    frames: np.ndarray | list | torch.Tensor


class ConditioningError(UserError, ValueError):
    """An image or video given as conditioning cannot be used (the message says why)."""


def load_image(image) -> np.ndarray:
    """PIL image / (H, W, 3) array (uint8, float in [0, 1]) / path -> uint8 (H, W, 3)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, (str, os.PathLike)):
        return read_video(image)[0][0]
    array = to_uint8(np.asarray(image))
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ConditioningError(
            f"an image must be (H, W, 3) uint8 or float in [0, 1], a PIL image or a path; got "
            f"{array.dtype} {array.shape}"
        )
    return array


def load_video(video) -> np.ndarray:
    """(T, H, W, 3) array (uint8, float in [0, 1]) / path -> uint8 (T, H, W, 3)."""
    if isinstance(video, (str, os.PathLike)):
        return read_video(video)[0]
    array = to_uint8(np.asarray(video))
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[3] != 3 or len(array) == 0:
        raise ConditioningError(
            f"a video must be (T, H, W, 3) uint8 or float in [0, 1] with T >= 1, or a path; "
            f"got {array.dtype} {array.shape}"
        )
    return array


def fit_image(image: np.ndarray, height: int, width: int, warn: bool = True) -> np.ndarray:
    """Centre-crop to the aspect of (height, width), then resize to it."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if warn:
        warnings.warn(
            f"conditioning image is {h}x{w}; centre-cropped and resized to {height}x{width}",
            stacklevel=3,
        )
    if h * width > w * height:  # too tall: crop rows
        keep = round(w * height / width)
        top = (h - keep) // 2
        image = image[top : top + keep]
    else:
        keep = round(h * width / height)
        left = (w - keep) // 2
        image = image[:, left : left + keep]
    resized = Image.fromarray(image).resize((width, height), Image.BILINEAR)
    return np.asarray(resized)


def fit_video(video: np.ndarray, frames: int, height: int, width: int) -> np.ndarray:
    """Fit every frame to (height, width) and the length to ``frames`` (cut, or pad with
    the last frame)."""
    t = len(video)
    if t != frames:
        warnings.warn(
            f"conditioning video has {t} frames; using {frames} (cut, or the last frame "
            "repeated): lengths are 1 + 4k",
            stacklevel=3,
        )
        video = (
            video[:frames]
            if t > frames
            else np.concatenate([video, np.repeat(video[-1:], frames - t, axis=0)])
        )
    if video.shape[1:3] != (height, width):
        fit_image(video[0], height, width)  # one warning for the clip
        video = np.stack([fit_image(f, height, width, warn=False) for f in video])
    return video
