"""Kill -9 a real training process at a random moment, resume it, get the same weights.

The run is a separate ``python -m tinysora.cli train dit`` process, killed with SIGKILL
while it trains (possibly in the middle of a checkpoint write), then continued with
``--resume``; its final weights must equal an uninterrupted run's bit for bit (same
machine, same process count, same threads).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import RECIPE
from tiny import start_alongside, tiny_recipe

STEPS, EVERY = 60, 5
# test_trainer's tiny VAE recipe, longer, with rarer checkpoints and no evaluations
VAE_RECIPE = (
    RECIPE.replace("steps = 4\n", f"steps = {STEPS}\n")
    .replace("checkpoint_every = 2\n", f"checkpoint_every = {EVERY}\nkeep_checkpoints = 3\n")
    .replace("eval_every = 2\n", "eval_every = 100000\n")
)


def dit_recipe(root):
    recipe = tiny_recipe(
        root,
        top="cache_clips = 12\nbatch_size = 4\nencode_batch = 4\n",
        steps=STEPS,
        log_every=5,
        train="ema_decay = 0.9\nkeep_checkpoints = 3\n",
    )
    text = recipe.read_text().replace("checkpoint_every = 2", f"checkpoint_every = {EVERY}")
    recipe.write_text(text)
    return recipe


# the VAE's in-process crash test runs in `make test`; its real kill -9 in `make test-slow`
@pytest.mark.parametrize("model", ["dit", pytest.param("vae", marks=pytest.mark.slow)])
def test_kill_9_and_resume_equals_an_uninterrupted_run(tmp_path, model):
    if model == "dit":
        recipe = dit_recipe(tmp_path)
    else:
        recipe = tmp_path / "vae.toml"
        recipe.write_text(VAE_RECIPE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tinysora.cli", "train", model, "--config", str(recipe), "--out"]
    # the uninterrupted run goes alongside the one that gets killed (one thread each)
    whole = start_alongside(cmd + [str(tmp_path / "whole")], tmp_path / "side.err")
    run = tmp_path / "killed"
    killed = subprocess.Popen(
        cmd + [str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    latest = run / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and killed.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= f"step_{2 * EVERY:08d}":
            break
        time.sleep(0.001)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    stopped_at = latest.read_text().strip()
    assert stopped_at < f"step_{STEPS:08d}", "the run ended before the kill"
    resumed = subprocess.run(cmd + [str(run), "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from step {int(stopped_at[5:])}" in resumed.stdout

    assert whole.wait() == 0, (tmp_path / "side.err").read_text()[-2000:]
    final = f"checkpoints/step_{STEPS:08d}"
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a, b = load_file(tmp_path / "whole" / final / name), load_file(run / final / name)
        assert a.keys() == b.keys()
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"{name}: {differ[:5]}"
    kept = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert len(kept) == 3 and kept[-1] == f"step_{STEPS:08d}"
