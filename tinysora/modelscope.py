"""ModelScope's call shape over tinysora's pipeline:

    from tinysora.modelscope import pipeline
    p = pipeline("text-to-video-synthesis", model=DIR_OR_NONE)
    path = p({"text": "a red circle moving left"}, output_video="out.mp4")["output_video"]

``model`` is a tinysora model directory, a diffusers-format one (ModelScope's
text-to-video-ms-1.7b in diffusers' layout), or None for the bundled tinysora model.
The input dict takes ``text`` and optionally the pipeline's options (``negative_prompt``,
``num_frames``, ``height``, ``width``, ``num_inference_steps``, ``guidance_scale``,
``seed``, ``fps``); the result is ``{"output_video": path}`` (a temporary .mp4 when no
``output_video`` is given, as ModelScope does).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from tinysora.errors import UserError
from tinysora.pipeline import TextToVideoPipeline, export_to_video

TASKS = ("text-to-video-synthesis",)
OPTIONS = (
    "negative_prompt",
    "num_frames",
    "height",
    "width",
    "num_inference_steps",
    "guidance_scale",
)


class ModelScopeError(UserError, ValueError):
    """An unsupported task, model or input (the message names what is supported)."""


class TextToVideoSynthesis:
    """The callable ``pipeline("text-to-video-synthesis", ...)`` returns."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __call__(self, inputs: dict, output_video: str | os.PathLike | None = None) -> dict:
        if not isinstance(inputs, dict) or not isinstance(inputs.get("text"), str):
            raise ModelScopeError("the input is a dict with a 'text' prompt: {'text': '...'}")
        unknown = set(inputs) - {"text", "seed", "fps", *OPTIONS}
        if unknown:
            known = ", ".join(("text", "seed", "fps", *OPTIONS))
            raise ModelScopeError(f"unknown input keys {sorted(unknown)}; known: {known}")
        options = {k: inputs[k] for k in OPTIONS if k in inputs}
        generator = torch.Generator().manual_seed(int(inputs.get("seed", 0)))
        video = self.pipe(inputs["text"], generator=generator, **options)
        if output_video is None:
            handle, output_video = tempfile.mkstemp(suffix=".mp4")
            os.close(handle)
        fps = inputs.get("fps", self.pipe.config.fps)
        return {"output_video": str(export_to_video(video.frames, Path(output_video), fps=fps))}


def pipeline(
    task: str,
    model: str | os.PathLike | None = None,
    device: str | None = None,
    allow_pickle: bool = False,
) -> TextToVideoSynthesis:
    """ModelScope's ``pipeline(task, model=...)`` for text-to-video."""
    if task not in TASKS:
        raise ModelScopeError(f"task '{task}' is not supported; supported: {', '.join(TASKS)}")
    if model is not None and not Path(model).is_dir():
        raise ModelScopeError(
            f"model '{model}' is not a directory; give a tinysora model directory, a "
            "diffusers-format one (model_index.json, e.g. text-to-video-ms-1.7b) or None "
            "for the bundled model"
        )
    pipe = TextToVideoPipeline.from_pretrained(model, allow_pickle=allow_pickle)
    if device:
        pipe.to(device)
    return TextToVideoSynthesis(pipe)
