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

import torch
from safetensors.torch import load_file
from tiny import tiny_recipe

STEPS, EVERY = 60, 5


def test_kill_9_and_resume_equals_an_uninterrupted_run(tmp_path):
    recipe = tiny_recipe(
        tmp_path,
        top="cache_clips = 12\nbatch_size = 4\nencode_batch = 4\n",
        steps=STEPS,
        log_every=5,
        train="ema_decay = 0.9\nkeep_checkpoints = 3\n",
    )
    recipe.write_text(
        recipe.read_text().replace("checkpoint_every = 2", f"checkpoint_every = {EVERY}")
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tinysora.cli", "train", "dit", "--config", str(recipe), "--out"]
    subprocess.run(cmd + [str(tmp_path / "whole")], env=env, check=True, capture_output=True)

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

    final = f"checkpoints/step_{STEPS:08d}"
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a, b = load_file(tmp_path / "whole" / final / name), load_file(run / final / name)
        assert a.keys() == b.keys()
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"{name}: {differ[:5]}"
    kept = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert len(kept) == 3 and kept[-1] == f"step_{STEPS:08d}"
