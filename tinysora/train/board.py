"""TensorBoard event files of a training run, written beside its ``log.jsonl``.

    tensorboard --logdir runs/

Every log record's numbers become scalars under ``train/`` (loss, lr, grad_norm,
s_per_step, tokens_per_s, mfu, ...) and ``eval/`` (a record's ``eval`` scores); sample
videos are animated GIFs in the images tab (what ``SummaryWriter.add_video`` writes, made
here with PIL so that no moviepy is needed).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


class Board:
    def __init__(self, directory: str | Path):
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only here

        self.writer = SummaryWriter(log_dir=str(directory))

    def record(self, record: dict) -> None:
        """One ``log.jsonl`` record: its numbers as scalars at its ``step``."""
        step = int(record["step"])
        for name, value in record.items():
            if name == "eval" and isinstance(value, dict):
                for k, v in value.items():
                    self.writer.add_scalar(f"eval/{k}", float(v), step)
            elif name != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"train/{name}", float(value), step)
        self.writer.flush()

    def video(self, name: str, frames: np.ndarray, step: int, fps: float = 8.0) -> None:
        """uint8 frames (T, H, W, 3) as an animated GIF under ``samples/NAME``."""
        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        t, h, w, c = frames.shape
        buf = io.BytesIO()
        images = [Image.fromarray(f) for f in frames]
        duration = max(20, round(1000 / fps))
        images[0].save(
            buf, format="GIF", save_all=True, append_images=images[1:], loop=0, duration=duration
        )
        image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=buf.getvalue())
        summary = Summary(value=[Summary.Value(tag=f"samples/{name}", image=image)])
        self.writer._get_file_writer().add_summary(summary, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
