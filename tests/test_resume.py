"""Kill -9 a real training process at random moments, resume it, get the same weights.

The run is a separate ``python -m tinysora.cli train`` process, killed with SIGKILL
several times, each time at a moment drawn from a seeded RNG: inside a checkpoint write
(once its temporary folder appears, plus a random few milliseconds) or at a random time
after the start (loading, data preparation, a step, a save, the export). Each time it
is continued with ``--resume``; the final weights, EMA and optimizer state must equal an
uninterrupted run's bit for bit (same machine, same process count, same threads). A
failure names the seed; ``TINYSORA_KILL_SEED=N`` draws the same moments again.
"""

from __future__ import annotations

import functools
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import kill_note, kill_plan, kill_runs, kill_seed
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
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RUN_S = 600  # the longest one attempt may take (measured: 10-20 s beside another run)
# A random-time kill lands within this many seconds of the attempt's start (measured on
# the 2-core machine beside the uninterrupted run: the DiT recipe's imports take ~4.6 s,
# its data ~5.5 s, its 60 steps with 12 checkpoints ~4 s, the export ~2.5 s); a
# mid-save kill lands this many seconds into a checkpoint write (one takes 20-50 ms).
ATTEMPT_S, SAVE_JITTER_S = 16.0, 0.02


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


def saving(checkpoints: Path) -> set[str]:
    """The checkpoint writes in progress: their temporary folders."""
    return {p.name for p in checkpoints.glob(".step_*.tmp")}


def run_killed_and_whole(tmp_path: Path, model: str, kills: int):
    """A run killed ``kills`` times at random moments and resumed, and an uninterrupted
    one alongside; (its final directory, the whole run's, a note naming the seed)."""
    if model == "dit":
        recipe = dit_recipe(tmp_path)
    else:
        recipe = tmp_path / "vae.toml"
        recipe.write_text(VAE_RECIPE)
    cmd = [sys.executable, "-m", "tinysora.cli", "train", model, "--config", str(recipe), "--out"]
    # the uninterrupted run goes alongside the one that gets killed (one thread each)
    whole = start_alongside(cmd + [str(tmp_path / "whole")], tmp_path / "side.err")
    seed = kill_seed()
    plan = kill_plan(random.Random(seed), kills, ATTEMPT_S, SAVE_JITTER_S)
    run, log = tmp_path / "killed", tmp_path / "killed.log"
    try:

        def args_for(resume: bool) -> list[str]:
            return cmd + [str(run)] + (["--resume"] if resume else [])

        writing = functools.partial(saving, run / "checkpoints")
        outcomes = kill_runs(plan, args_for, ENV, log, writing, run, RUN_S)
        note = kill_note(plan, outcomes, seed)
        latest = run / "checkpoints" / "latest"
        stopped_at = latest.read_text().strip() if latest.is_file() else None
        resumed = subprocess.run(
            cmd + [str(run), "--resume"], env=ENV, capture_output=True, text=True, timeout=RUN_S
        )
        assert resumed.returncode == 0, f"{resumed.stderr[-2000:]}\n{note}"
        if stopped_at is not None:
            assert f"resumed from step {int(stopped_at[5:])}" in resumed.stdout, note
        assert whole.wait(timeout=RUN_S) == 0, (tmp_path / "side.err").read_text()[-2000:]
    finally:
        whole.kill()
        whole.wait(timeout=60)
    assert "killed" in outcomes, f"every attempt ended before its kill: {note}"
    return run, tmp_path / "whole", note


def assert_same_final_checkpoint(run: Path, whole: Path, note: str) -> None:
    final = f"checkpoints/step_{STEPS:08d}"
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a, b = load_file(whole / final / name), load_file(run / final / name)
        assert a.keys() == b.keys(), note
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"{name}: {differ[:5]}; {note}"
    kept = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert len(kept) == 3 and kept[-1] == f"step_{STEPS:08d}", f"{kept}; {note}"
    assert not saving(run / "checkpoints"), f"a half-written checkpoint is left; {note}"


# `make test`: the DiT killed twice; `make test-slow`: more kills, and the VAE's run
@pytest.mark.parametrize(
    ("model", "kills"),
    [
        ("dit", 2),
        pytest.param("dit", 5, marks=pytest.mark.slow),
        pytest.param("vae", 3, marks=pytest.mark.slow),
    ],
)
def test_kill_9_at_random_moments_and_resume_equals_an_uninterrupted_run(tmp_path, model, kills):
    run, whole, note = run_killed_and_whole(tmp_path, model, kills)
    assert_same_final_checkpoint(run, whole, note)
