"""`tinysora prepare` and training from its cache: real files, a real kill -9, a real resume."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import kill_note, kill_plan, kill_runs, kill_seed
from safetensors.torch import load_file
from tiny import save_tiny_vae, start_alongside, tiny_recipe

from tinysora.data.cache import CacheError, LatentCache, prepare
from tinysora.data.folder import FolderConfig
from tinysora.io.checkpoint import save_tensors
from tinysora.io.video import write_video
from tinysora.pipeline import TextToVideoPipeline
from tinysora.text.encoder import default_encoder_path
from tinysora.text.vocabulary import from_captions
from tinysora.train.dit import run_steps, train_dit
from tinysora.train.recipe import DiTRecipe
from tinysora.train.steps import cached_packed_steps
from tinysora.worlds.shapes import render, sample_scene

SIZE = FolderConfig(fps=8, frames=9, height=64, width=64)
# A random-time kill of `prepare` (28 files, a shard each) lands within this many seconds
# of its start (measured: 3.9 s in all, imports 2.5 s, then ~35 ms a file).
PREPARE_S = 5.0
PREPARE_TIMEOUT_S = 600


def make_folder(root, files: int):
    """``files`` Shapes World clips of 17 frames (one 9-frame clip each) + a missing row."""
    root.mkdir(parents=True)
    rows = ["path,text"]
    for i in range(files):
        scene = sample_scene(i)
        write_video(root / f"v{i:03d}.mp4", render(scene, 64, 64, 17), fps=8)
        rows.append(f"v{i:03d}.mp4,{scene.caption}")
    rows.append("gone.mp4,a missing file")
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    return save_tiny_vae(tmp_path_factory.mktemp("vae") / "vae")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "clips", 6)


def test_prepare_writes_shards_an_index_and_reads_back(data, vae, tmp_path, one_thread):
    report = prepare(data, tmp_path / "cache", SIZE, vae_dir=vae, shard_clips=4, progress=False)
    assert (report.clips, report.files, report.encoded) == (6, 6, 6)
    assert report.line().startswith("6 clips from 6 files (6 encoded in ")
    assert report.line().endswith("clips/s); skipped 1: 1 missing file")
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert index["complete"] and [len(s["clips"]) for s in index["shards"]] == [4, 2]
    assert index["vae"]["latent_channels"] == 4 and index["text_encoder"]["max_length"] == 32
    cache = LatentCache(tmp_path / "cache")
    assert len(cache) == 6 and cache.shapes() == {(4, 3, 8, 8)}
    clip = cache.clip(5)
    assert clip["mean"].dtype == torch.bfloat16 and (clip["std"] > 0).all()
    assert clip["text"].shape == (32, 384) and clip["mask"].sum() > 3
    # running it again on a finished cache encodes nothing
    again = prepare(data, tmp_path / "cache", SIZE, vae_dir=vae, shard_clips=4, progress=False)
    assert (again.clips, again.encoded) == (6, 0)


def test_prepare_resumes_after_kill_9_at_random_moments_to_the_same_cache(vae, tmp_path):
    """``prepare`` killed three times at moments drawn from a seeded RNG (inside a shard's
    write, or at a random time), each time run again: the cache equals an uninterrupted
    one's. ``TINYSORA_KILL_SEED=N`` draws the same moments again."""
    data = make_folder(tmp_path / "clips", 28)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "tinysora.cli",
        "prepare",
        str(data),
        "--frames",
        "9",
        "--vae",
        str(vae),
        "--shard-clips",
        "1",
        "--out",
    ]
    # the uninterrupted run goes alongside the one that gets killed (one thread each)
    whole_run = start_alongside(cmd + [str(tmp_path / "whole")], tmp_path / "side.err")
    seed = kill_seed()
    plan = kill_plan(random.Random(seed), 3, span_s=PREPARE_S)
    out = tmp_path / "killed"

    def writing() -> set[str]:  # shards (and the index) being written
        return {p.name for p in out.glob(".*.tmp")}

    try:
        log = tmp_path / "killed.log"
        outcomes = kill_runs(
            plan, lambda resume: cmd + [str(out)], env, log, writing, out, PREPARE_TIMEOUT_S
        )  # prepare continues by itself: the same command
        note = kill_note(plan, outcomes, seed)
        again = subprocess.run(
            cmd + [str(out)], env=env, capture_output=True, text=True, timeout=PREPARE_TIMEOUT_S
        )  # the same command continues
        assert again.returncode == 0, f"{again.stderr[-2000:]}\n{note}"
        side = (tmp_path / "side.err").read_text
        assert whole_run.wait(timeout=PREPARE_TIMEOUT_S) == 0, side()[-2000:]
    finally:
        whole_run.kill()
        whole_run.wait(timeout=60)
    assert "killed" in outcomes, f"prepare ended before every kill: {note}"
    whole = json.loads((tmp_path / "whole" / "index.json").read_text())
    resumed = json.loads((out / "index.json").read_text())
    assert resumed["complete"] and resumed["shards"] == whole["shards"], note
    assert resumed["skipped"] == whole["skipped"], note
    for shard in whole["shards"]:
        a = load_file(tmp_path / "whole" / shard["file"])
        b = load_file(out / shard["file"])
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), note


def test_train_dit_from_the_cache(data, vae, tmp_path, one_thread):
    prepare(data, tmp_path / "cache", SIZE, vae_dir=vae, progress=False)
    recipe = tiny_recipe(tmp_path, top="batch_size = 3\n", steps=2)
    model = train_dit(recipe, tmp_path / "run", data=tmp_path / "cache")
    pipe = TextToVideoPipeline.from_pretrained(model)
    frames = pipe("a red ball", num_frames=9, progress=False).frames
    assert frames.shape == (9, 64, 64, 3) and frames.dtype == np.float32
    # the model knows the words of the cache's captions, and only those (no world_mix)
    captions = LatentCache(tmp_path / "cache").captions
    assert len(captions) == 6 and pipe.config.vocabulary == from_captions(captions)
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["data"] == str(
        tmp_path / "cache"
    )
    # text states encoded whole-sentence do not serve a per-subject recipe
    with pytest.raises(CacheError, match="text_subjects is True: make them equal"):
        LatentCache(tmp_path / "cache").check(vae, default_encoder_path(), 32, subjects=True)


def test_a_cache_from_another_vae_is_refused(data, vae, tmp_path, one_thread):
    prepare(data, tmp_path / "cache", SIZE, vae_dir=vae, progress=False)
    other = save_tiny_vae(tmp_path / "other")
    weights = load_file(other / "model.safetensors")  # same config, other weights
    save_tensors({k: v + 0.01 for k, v in weights.items()}, other / "model.safetensors")
    recipe = tiny_recipe(tmp_path / "r", steps=1)
    text = recipe.read_text().replace(f'vae = "{tmp_path / "r" / "vae"}"', f'vae = "{other}"')
    recipe.write_text(text)
    with pytest.raises(CacheError, match=f"made with the VAE {vae} .* not {other}"):
        train_dit(recipe, tmp_path / "run", data=tmp_path / "cache")
    with pytest.raises(CacheError, match="made with the VAE"):
        prepare(data, tmp_path / "cache", SIZE, vae_dir=other, progress=False)
    with pytest.raises(CacheError, match="is not a prepared cache"):
        LatentCache(tmp_path)


def test_packed_training_from_a_packing_cache(vae, tmp_path, one_thread):
    root = tmp_path / "mixed"
    root.mkdir()
    rows = ["path,text"]
    for i, (h, w) in enumerate([(64, 64), (48, 80), (64, 64), (48, 80)]):
        scene = sample_scene(i)
        write_video(root / f"v{i}.mp4", render(scene, h, w, 9), fps=8)
        rows.append(f"v{i}.mp4,{scene.caption}")
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    native = FolderConfig(fps=8, frames=9, native_size=True)
    prepare(root, tmp_path / "cache", native, vae_dir=vae, progress=False)
    assert LatentCache(tmp_path / "cache").shapes() == {(4, 3, 8, 8), (4, 3, 6, 10)}
    # 48 and 45 tokens per clip: two clips fill most of a 96-token row
    extra = "[packing]\nenabled = true\ntoken_budget = 96\nrows = 2\n"
    recipe = tiny_recipe(tmp_path, steps=2, extra=extra)
    train_dit(recipe, tmp_path / "run", data=tmp_path / "cache")
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(0.9 <= r["pack_efficiency"] <= 1 and np.isfinite(r["loss"]) for r in log)
    steps = cached_packed_steps(DiTRecipe.load(recipe), LatentCache(tmp_path / "cache"))
    lengths = set()
    for step in range(6):
        batch = steps.batch_fn(step)
        assert batch.packed.tokens.shape[:2] == (2, 96)
        lengths |= {n for _, _, n in batch.packed.places}
    assert lengths == {48, 45}  # clips of both sizes, whole


def test_world_mix_fills_a_share_of_each_batch_with_world_clips(data, vae, tmp_path, one_thread):
    prepare(data, tmp_path / "cache", SIZE, vae_dir=vae, progress=False)
    top = "batch_size = 4\nworld_mix = 0.5\ncache_clips = 4\nencode_batch = 4\nframes = 9\n"
    recipe = tiny_recipe(tmp_path, top=top, steps=2)
    train_dit(recipe, tmp_path / "run", data=tmp_path / "cache")
    world = load_file(tmp_path / "run" / "latents.safetensors")["latents"].float()
    loaded = DiTRecipe.load(recipe)
    loaded.data = str(tmp_path / "cache")
    steps = run_steps(loaded, tmp_path / "run", torch.device("cpu"))
    for step in range(3):
        x0 = steps.batch_fn(step)[0]
        assert x0.shape == (4, 4, 3, 8, 8)
        from_world = [any(torch.equal(x, w) for w in world) for x in x0]
        assert from_world == [False, False, True, True]  # the cache's clips, then the world's
