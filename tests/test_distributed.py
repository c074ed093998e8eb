"""torchrun: 2 real processes (gloo, CPU) x batch B/2 follow 1 process x batch B.

Every rank draws the step's whole batch and trains on its half; DDP averages the
halves' gradients, which is the whole batch's gradient up to float summation order. So
the two runs differ only by rounding: after 50 AdamW steps of the tiny preset (in fp32,
``bf16 = false``, so bf16 rounding of half batches does not blur the check) the weights
agree within TOLERANCE relative to each tensor's largest magnitude (measured on an AMD
EPYC: 5.4e-5) and the logged losses within 1e-4 (measured: equal to 6 decimals).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from safetensors.torch import load_file
from tiny import start_alongside, tiny_recipe

STEPS = 50
TOLERANCE = 5e-4


def test_two_processes_track_one_with_twice_the_batch(tmp_path):
    recipe = tiny_recipe(
        tmp_path,
        top="cache_clips = 16\nbatch_size = 4\nencode_batch = 4\nheight = 32\nwidth = 32\n"
        "frames = 9\n",
        steps=STEPS,
        log_every=10,
        train="ema_decay = 0.9\nbf16 = false\n",
    )
    text = recipe.read_text().replace(
        "[model]\nwidth = 32\ndepth = 1\nheads = 2\n", '[model]\npreset = "tiny"\n'
    )
    recipe.write_text(text.replace("checkpoint_every = 2", f"checkpoint_every = {STEPS}"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = ["-m", "tinysora", "train", "dit", "--config", str(recipe), "--out"]
    # the 1-process run goes alongside the torchrun one (3 one-thread processes)
    one = start_alongside([sys.executable, *train, str(tmp_path / "one")], tmp_path / "side.err")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    two = subprocess.run(
        [*torchrun, *train, str(tmp_path / "two")], env=env, capture_output=True, text=True
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert one.wait() == 0, (tmp_path / "side.err").read_text()[-2000:]

    final = f"checkpoints/step_{STEPS:08d}/model.safetensors"
    a, b = load_file(tmp_path / "one" / final), load_file(tmp_path / "two" / final)
    worst = max(float((a[k] - b[k]).abs().max()) / max(float(a[k].abs().max()), 1e-6) for k in a)
    assert worst < TOLERANCE, worst
    logs = [
        [json.loads(x) for x in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        for run in ("one", "two")
    ]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [10, 20, 30, 40, 50]
    for x, y in zip(*logs, strict=True):
        assert abs(x["loss"] - y["loss"]) < 1e-4, (x["loss"], y["loss"])
        # each of the 2 processes trained on half of every batch
        assert y["processes"] == 2 and "processes" not in x
        assert y["flops_per_step"] == x["flops_per_step"] / 2
    assert logs[0][-1]["loss"] < logs[0][0]["loss"]  # it trained
    # rank 0 alone wrote the checkpoints, the log and the model
    assert (tmp_path / "two" / "model" / "dit" / "model.safetensors").is_file()
