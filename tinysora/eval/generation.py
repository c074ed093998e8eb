"""The clips an eval measures: the pipeline an eval command loads (``--model``,
``--lora``, ``--device``, sampling) and seeded generation of many prompts."""

from __future__ import annotations

import argparse

import numpy as np
import torch
from tqdm import tqdm

from tinysora.io.frames import to_uint8
from tinysora.pipeline import TextToVideoPipeline


def load_pipe(args: argparse.Namespace, model=None) -> TextToVideoPipeline:
    """The pipeline an eval command measures: ``--model`` (or ``model``), its ``--lora``
    adapter if given, the ``--guidance`` / ``--sampler`` overrides, on ``--device``."""
    allow_pickle = getattr(args, "allow_pickle", False)
    pipe = TextToVideoPipeline.from_pretrained(model or args.model, allow_pickle=allow_pickle)
    if getattr(args, "lora", None):
        pipe.load_lora(args.lora, args.lora_scale)
    pipe.to(getattr(args, "device", None))
    return pipe.set_sampling(args.guidance, args.sampler)


def generate_seeded(
    pipe: TextToVideoPipeline,
    prompts: list[str],
    frames: int = 17,
    height: int = 64,
    width: int = 64,
    steps: int | None = None,
    batch: int = 25,
    desc: str | None = None,
) -> list[np.ndarray]:
    """uint8 clips of ``prompts``, prompt i with noise seed i, ``batch`` prompts per
    pipeline call (a clip does not depend on the batching, up to bf16 rounding)."""
    clips: list[np.ndarray] = []
    starts = range(0, len(prompts), batch)
    for start in tqdm(starts, desc=desc, unit="batch", disable=desc is None):
        chunk = prompts[start : start + batch]
        clips += to_uint8(
            pipe(
                chunk,
                num_frames=frames,
                height=height,
                width=width,
                num_inference_steps=steps,
                generator=[torch.Generator().manual_seed(start + k) for k in range(len(chunk))],
                progress=False,
            ).frames
        )
    return clips
