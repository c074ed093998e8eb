"""The ``data`` section of the bench: your own videos and many processes.

* ``prepare``: ``tinysora prepare`` clips/s on a folder of mp4 files of mixed sizes, fps
  and lengths (Shapes World renders written as a user's files would be), and its peak
  memory for a folder of N and of 4 N files, each in a fresh process;
* ``training``: DiT training tokens/s from a prepared cache vs the Shapes World path
  (the same model, batch and clip size; each a short real ``train dit`` run, the rate of
  its last log windows), and the peak memory of training from a cache of N and 4 N
  clips in fresh processes (the cache is memory-mapped: it must not grow);
* ``ddp``: seconds per step of 2 torchrun processes (gloo, one thread each, half the
  batch each) vs 1 process with both threads, same recipe and global batch. On a
  2-core machine this is about correctness, not speed.

Peak memory is the child's peak RSS (``RUSAGE_CHILDREN`` read by a fresh wrapper
process around each run, so no earlier run's peak leaks in).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tinysora.data.cache import prepare
from tinysora.data.folder import FolderConfig
from tinysora.io.video import write_video
from tinysora.train.dit import train_dit
from tinysora.train.recipe import DiTRecipe
from tinysora.worlds.shapes import render, sample_scene

PEAK_RSS = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)
SIZES = ((64, 64), (72, 96), (96, 64), (48, 80))  # files of several shapes ...
RATES = (8.0, 12.0, 24.0)  # ... frame rates ...
SECONDS = (2.5, 4.0, 6.0)  # ... and lengths


def write_folder(root: Path, clips: int) -> Path:
    """``clips`` mp4 files (Shapes World renders of mixed size / fps / length) with a
    ``captions.csv``, as a user would bring them."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(clips):
        scene = sample_scene(i)
        h, w = SIZES[i % len(SIZES)]
        fps, seconds = RATES[i % len(RATES)], SECONDS[i % len(SECONDS)]
        frames = render(scene, h, w, int(fps * seconds))
        name = f"clip_{i:04d}.mp4"
        write_video(root / name, frames, fps=fps)
        rows.append({"path": name, "text": scene.caption})
    with open(root / "captions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "text"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def peak_rss_mb(cmd: list[str], threads: int = 2) -> float:
    """Peak RSS (MB) of ``cmd`` run in a fresh wrapper process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *cmd], env=env, capture_output=True, text=True
    )
    code, kib = out.stdout.strip().splitlines()[-1].split()
    if code != "0":
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")
    return int(kib) / 1024


def prepare_section(work: Path, clips: int, vae: str) -> dict[str, Any]:
    """clips/s of ``prepare`` in process; its peak memory for N and 4 N files."""
    folder = write_folder(work / "folder", clips)
    t0 = time.perf_counter()
    config = FolderConfig()
    report = prepare(folder, work / "cache", config, vae or None, progress=False, device="cpu")
    seconds = time.perf_counter() - t0  # with loading the VAE and the text encoder
    tinysora = [sys.executable, "-m", "tinysora", "prepare"]
    memory = {}
    for n in (clips, 4 * clips):
        big = write_folder(work / f"folder_{n}", n) if n != clips else folder
        cmd = [*tinysora, str(big), "--out", str(work / f"cache_{n}"), "--device", "cpu"]
        cmd += ["--vae", vae] if vae else []
        memory[str(n)] = peak_rss_mb(cmd)
    return {
        "caches": {n: work / f"cache_{n}" for n in (clips, 4 * clips)},
        "files": clips,
        "clips": report.clips,
        "seconds_with_loading": seconds,
        "clips_per_s": report.encoded / report.seconds,  # decode + resample + encode + write
        "peak_rss_mb_by_files": memory,
        "rss_growth_4x_files": memory[str(4 * clips)] / memory[str(clips)],
    }


def _rate(run: Path, key: str, windows: int = 2) -> float:
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    tail = [r[key] for r in log if key in r][-windows:]
    return sum(tail) / len(tail)


def training_section(work: Path, base: str, cache: Path, steps: int, batch: int) -> dict:
    """tokens/s from the cache vs from the Shapes World; memory vs cache size."""
    recipe = _short_recipe(work, base, steps, batch)
    t = {}
    for name, data in (("world", None), ("cache", cache)):
        run = work / f"train_{name}"
        train_dit(recipe, run, data=data, device="cpu")
        t[name] = _rate(run, "tokens_per_s")
    return {
        "steps": steps,
        "batch": batch,
        "tokens_per_s_world": t["world"],
        "tokens_per_s_cache": t["cache"],
        "cache_vs_world": t["cache"] / t["world"],
    }


def training_memory(work: Path, base: str, caches: dict[int, Path], steps: int, batch: int):
    """Peak RSS of training from caches of different sizes, each in a fresh process."""
    recipe = _short_recipe(work, base, steps, batch)
    memory = {}
    for n, cache in caches.items():
        cmd = [sys.executable, "-m", "tinysora", "train", "dit", "--config", str(recipe)]
        cmd += ["--data", str(cache), "--out", str(work / f"mem_{n}"), "--device", "cpu"]
        memory[str(n)] = peak_rss_mb(cmd)
    small, large = sorted(caches)
    return {
        "peak_rss_mb_by_cache_of_files": memory,
        "rss_growth": memory[str(large)] / memory[str(small)],
    }


def ddp_section(work: Path, base: str, steps: int, batch: int) -> dict[str, Any]:
    """2 torchrun processes x 1 thread vs 1 process x 2 threads, same global batch."""
    recipe = _short_recipe(work, base, steps, batch)
    train = ["-m", "tinysora", "train", "dit", "--config", str(recipe), "--device", "cpu"]
    one = work / "ddp_one"
    env2 = {**os.environ, "OMP_NUM_THREADS": "2"}
    subprocess.run(
        [sys.executable, *train, "--out", str(one)], env=env2, check=True, capture_output=True
    )
    two = work / "ddp_two"
    env1 = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    subprocess.run(
        [*torchrun, *train, "--out", str(two)], env=env1, check=True, capture_output=True
    )
    s1, s2 = _rate(one, "s_per_step"), _rate(two, "s_per_step")
    return {
        "steps": steps,
        "global_batch": batch,
        "s_per_step_1_process_2_threads": s1,
        "s_per_step_2_processes_1_thread": s2,
        "speedup_2_vs_1": s1 / s2,
    }


def _short_recipe(work: Path, base: str, steps: int, batch: int) -> Path:
    """The bench's DiT recipe ``base`` as a short run: ``steps`` steps of ``batch`` clips,
    no compile (its minutes would swamp the run), a small world latent cache."""
    path = work / "short.json"
    if path.is_file():
        return path
    recipe = DiTRecipe.load(base)
    recipe.batch_size, recipe.cache_clips = batch, max(2 * batch, 32)
    tr = recipe.train
    tr.steps, tr.warmup_steps, tr.log_every = steps, 1, max(1, steps // 4)
    tr.checkpoint_every, tr.eval_every, tr.compile, tr.tensorboard = steps, 10**9, False, False
    path = path.with_suffix(".json")
    recipe.save(path)
    return path


def section(work: Path, base: str, files: int, steps: int, batch: int) -> dict[str, Any]:
    """Every measurement of this module (see the module doc)."""
    prep = prepare_section(work, files, DiTRecipe.load(base).vae)
    caches = prep.pop("caches")
    training = training_section(work, base, work / "cache", steps, batch)
    training["memory"] = training_memory(work, base, caches, steps, batch)
    return {"prepare": prep, "training": training, "ddp": ddp_section(work, base, steps, batch)}
