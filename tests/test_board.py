"""TensorBoard: a real training run writes event files beside log.jsonl that TensorBoard's
own reader loads: the log's scalars (loss, lr, grad norm, tokens/s, MFU) and sample videos."""

from __future__ import annotations

import json

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny import tiny_recipe

from tinysora.train.dit import train_dit


def test_training_writes_scalars_and_sample_videos(tmp_path, one_thread):
    recipe = tiny_recipe(
        tmp_path,
        top="cache_clips = 4\nbatch_size = 2\nencode_batch = 4\nheight = 32\nwidth = 32\n"
        'frames = 5\nsample_prompts = ["a red circle", "a blue square moving left"]\n',
        steps=4,
        log_every=2,
        train="sample_every = 2\n",
    )
    train_dit(recipe, tmp_path / "run")
    events = list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert len(events) == 1
    board = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0}).Reload()
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    for name in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
        scalars = board.Scalars(f"train/{name}")
        assert [s.step for s in scalars] == [r["step"] for r in log] == [2, 4]
        assert [s.value for s in scalars] == [float(np.float32(r[name])) for r in log]
    tags = board.Tags()["images"]
    assert len(tags) == 2 and all(t.startswith("samples/") for t in tags)
    for tag in tags:
        images = board.Images(tag)
        assert [i.step for i in images] == [2, 4]
        gif = images[0].encoded_image_string
        assert gif[:6] == b"GIF89a" and (images[0].height, images[0].width) == (32, 32)
