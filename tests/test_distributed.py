"""torchrun: 2 real processes (gloo, CPU) x batch B/2 follow 1 process x batch B.

Every rank draws the step's whole batch and trains on its half; DDP averages the
halves' gradients, which is the whole batch's gradient up to float summation order. So
the runs differ only by rounding: after 30 AdamW steps of the tiny preset (in fp32,
``bf16 = false``, so bf16 rounding of half batches does not blur the check) the weights
agree within TOLERANCE relative to each tensor's largest magnitude (measured on an AMD
EPYC: DDP 5.4e-5) and the logged losses within 1e-4 (measured: equal to 6 decimals).

The same holds for FSDP2 (parameters, gradients and optimizer state sharded over the
two processes), tested with two torchrun launchers of one process each (``--nnodes 2``)
that meet over a c10d rendezvous on loopback, as two machines would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from tiny import tiny_recipe

from tinysora.pipeline import TextToVideoPipeline

STEPS = 30
HALF = STEPS // 2
TOLERANCE = 5e-4
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RUN_S = 600  # the longest one training run may take (measured: 10-25 s)


def write_recipe(root: Path, parallel: str = "ddp") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    recipe = tiny_recipe(
        root,
        top="cache_clips = 16\nbatch_size = 4\nencode_batch = 4\nheight = 32\nwidth = 32\n"
        "frames = 9\n",
        steps=STEPS,
        log_every=10,
        train=f'ema_decay = 0.9\nbf16 = false\nparallel = "{parallel}"\n',
    )
    text = recipe.read_text().replace(
        "[model]\nwidth = 32\ndepth = 1\nheads = 2\n", '[model]\npreset = "tiny"\n'
    )
    recipe.write_text(text.replace("checkpoint_every = 2", f"checkpoint_every = {STEPS}"))
    return recipe


def train_args(recipe: Path, out: Path) -> list[str]:
    return ["-m", "tinysora", "train", "dit", "--config", str(recipe), "--out", str(out)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The 1-process run with the whole batch (the same weights init for every recipe:
    the tiny VAE is saved from seed 0 each time)."""
    root = tmp_path_factory.mktemp("reference")
    recipe = write_recipe(root)
    run = subprocess.run(
        [sys.executable, *train_args(recipe, root / "one")],
        capture_output=True,
        text=True,
        timeout=RUN_S,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return root / "one"


def logs_of(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def standalone(recipe: Path, out: Path) -> None:
    """torchrun with 2 processes on this machine."""
    cmd = [*TORCHRUN, "--standalone", "--nproc_per_node", "2", *train_args(recipe, out)]
    run = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=RUN_S)
    assert run.returncode == 0, run.stderr[-3000:]


def worst_difference(one: Path, two: Path, name: str) -> float:
    """Largest difference of a checkpoint file's tensors, relative to each tensor's scale."""
    final = f"checkpoints/step_{STEPS:08d}/{name}"
    a, b = load_file(one / final), load_file(two / final)
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) / max(float(a[k].abs().max()), 1e-6) for k in a)


def assert_tracks(one: Path, two: Path) -> None:
    worst = worst_difference(one, two, "model.safetensors")
    assert worst < TOLERANCE, worst
    logs = logs_of(one), logs_of(two)
    assert (
        [r["step"] for r in logs[0]]
        == [r["step"] for r in logs[1]]
        == list(range(10, STEPS + 1, 10))
    )
    for x, y in zip(*logs, strict=True):
        assert abs(x["loss"] - y["loss"]) < 1e-4, (x["loss"], y["loss"])
        # each of the 2 processes trained on half of every batch
        assert y["processes"] == 2 and "processes" not in x
        assert y["flops_per_step"] == x["flops_per_step"] / 2
        assert y["tokens_per_s"] > 0
    assert logs[0][-1]["loss"] < logs[0][0]["loss"]  # it trained
    # rank 0 alone wrote the checkpoints, the log and the model
    assert (two / "model" / "dit" / "model.safetensors").is_file()


def test_two_processes_track_one_with_twice_the_batch(tmp_path, reference):
    recipe = write_recipe(tmp_path)
    standalone(recipe, tmp_path / "two")
    assert_tracks(reference, tmp_path / "two")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 25 s: DDP above keeps torchrun in `make test`
def test_fsdp_over_two_nodes_tracks_one_process_and_exports_one_model(tmp_path, reference):
    """Two torchrun launchers (--nnodes 2, one process each) meet over a c10d rendezvous
    on loopback, as two machines would, and train with FSDP2: the model, its gradients
    and the AdamW state sharded over the two processes."""
    recipe = write_recipe(tmp_path, parallel="fsdp")
    rdzv = ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}"]
    nodes = [
        subprocess.Popen(
            [
                *TORCHRUN,
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(node),
                "--rdzv_id",
                "tinysora-test",
                *rdzv,
                *train_args(recipe, tmp_path / "two"),
            ],  # fmt: skip
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / f"node{node}.err", "w"),  # noqa: SIM115
        )
        for node in (0, 1)
    ]
    try:
        for node, proc in enumerate(nodes):
            code = proc.wait(timeout=RUN_S)
            assert code == 0, (tmp_path / f"node{node}.err").read_text()[-3000:]
    finally:  # a node left waiting for its peer (or past the deadline) is stopped
        for proc in nodes:
            proc.kill()
            proc.wait(timeout=60)
    assert_tracks(reference, tmp_path / "two")
    # the checkpoint holds the whole model and EMA (gathered) in the one-process format;
    # the exported model directory loads and generates
    assert worst_difference(reference, tmp_path / "two", "ema.safetensors") < TOLERANCE
    pipe = TextToVideoPipeline.from_pretrained(tmp_path / "two" / "model")
    video = pipe("a red circle", num_frames=9, height=32, width=32, progress=False).frames
    assert video.shape == (9, 32, 32, 3) and video.dtype == np.float32


@pytest.mark.slow
def test_fsdp_resume_continues_exactly(tmp_path):
    """Every rank loads the whole checkpoint into its shards (model, EMA, AdamW state):
    resuming the step-HALF checkpoint ends on the same bits as the uninterrupted run."""
    recipe = write_recipe(tmp_path, parallel="fsdp")
    recipe.write_text(
        recipe.read_text().replace(f"checkpoint_every = {STEPS}", f"checkpoint_every = {HALF}")
    )
    standalone(recipe, tmp_path / "straight")
    again = tmp_path / "again"
    shutil.copytree(tmp_path / "straight", again)
    shutil.rmtree(again / "checkpoints" / f"step_{STEPS:08d}")
    shutil.rmtree(again / "model")
    (again / "checkpoints" / "latest").write_text(f"step_{HALF:08d}\n")
    cmd = [*TORCHRUN, "--standalone", "--nproc_per_node", "2", *train_args(recipe, again)]
    run = subprocess.run([*cmd, "--resume"], env=ENV, capture_output=True, text=True, timeout=RUN_S)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        assert worst_difference(tmp_path / "straight", again, name) == 0.0, name
