"""Conditioning tasks: the given-token masks, the mixture, and training with them."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import tiny_recipe

from tinysora.config import ConfigError
from tinysora.diffusion.tasks import TASKS, TaskConfig, given_mask, sample_given
from tinysora.io.checkpoint import load_tensors
from tinysora.text.encoder import TextEncoder
from tinysora.train.dit import train_dit
from tinysora.train.recipe import DiTRecipe
from tinysora.train.steps import packed_steps

GRID = (5, 4, 4)


def test_given_masks_of_each_task():
    g = torch.Generator().manual_seed(0)
    assert not given_mask("t2v", GRID, g).any()
    first = given_mask("first_frame", GRID, g)
    assert first[0].all() and not first[1:].any()
    for _ in range(20):
        k = given_mask("first_k", GRID, g)
        n = int(k.flatten(1).all(1).sum())
        assert 1 <= n <= 4 and k[:n].all() and not k[n:].any()
    ends = given_mask("first_last", GRID, g)
    assert ends[0].all() and ends[-1].all() and not ends[1:-1].any()
    for _ in range(20):
        box = given_mask("regions", GRID, g)
        assert 0 < box.sum() < box.numel()
        idx = box.nonzero()
        lo, hi = idx.min(0).values, idx.max(0).values + 1
        assert box[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].all()  # one box
    assert not given_mask("first_frame", (1, 4, 4), g).any()  # an image: nothing to give
    with pytest.raises(ValueError, match="unknown task"):
        given_mask("zoom", GRID, g)


def test_task_mixture_and_condition_dropout():
    g = torch.Generator().manual_seed(1)
    cfg = TaskConfig(t2v=0.0, first_frame=1.0, drop_condition=0.25)
    masks, tasks = sample_given(cfg, GRID, 400, g)
    assert masks.shape == (400, 80)
    dropped = tasks.count("t2v") / 400
    assert 0.18 < dropped < 0.32 and set(tasks) == {"t2v", "first_frame"}
    assert all(
        m[:16].all() == (task == "first_frame") for m, task in zip(masks, tasks, strict=True)
    )
    assert not TaskConfig().conditioned and cfg.conditioned
    with pytest.raises(ConfigError, match="positive sum"):
        TaskConfig(t2v=0.0)
    assert set(TASKS) == {f for f in TaskConfig.__dataclass_fields__ if f != "drop_condition"}


def test_training_with_conditioning_tasks(tmp_path, one_thread):
    recipe = tiny_recipe(
        tmp_path,
        "[tasks]\nt2v = 1.0\nfirst_frame = 1.0\nfirst_k = 1.0\nfirst_last = 1.0\nregions = 1.0\n",
        top="cache_clips = 6\nbatch_size = 6\nencode_batch = 6\n",
    )
    train_dit(recipe, tmp_path / "run")
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(0 < r["loss"] < 10 for r in log)


def test_packed_training_with_conditioning_tasks(tmp_path, one_thread):
    recipe_path = tiny_recipe(
        tmp_path,
        "[tasks]\nt2v = 0.0\nfirst_frame = 1.0\ndrop_condition = 0.0\n"
        "[packing]\nenabled = true\ntoken_budget = 40\nrows = 2\nclips_per_size = 2\n"
        "[packing.mixture]\nsides = [32, 48]\nframes = [9]\nframe_weights = [1.0]\n",
        top="encode_batch = 2\n",
    )
    train_dit(recipe_path, tmp_path / "run")
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(0 < r["loss"] < 10 for r in log)
    # every clip is given its first latent frame: those tokens sit at t = 0 with no loss
    recipe = DiTRecipe.load(recipe_path)
    data = load_tensors(tmp_path / "run" / "latents.safetensors")
    batch_fn = packed_steps(recipe, data, TextEncoder(max_length=8)).batch_fn
    batch = batch_fn(0)
    packed, t, loss_mask = batch.packed, batch.t, batch.loss_mask
    given = packed.valid & ~loss_mask
    first_frame = packed.positions[..., 0] == 0
    assert torch.equal(given, packed.valid & first_frame)
    assert (t[given] == 0).all() and (t[loss_mask] > 0).all()


def test_a_run_starts_from_a_model_directory(tmp_path, one_thread):
    recipe = tiny_recipe(tmp_path, top="cache_clips = 4\nbatch_size = 2\nencode_batch = 4\n")
    first = train_dit(recipe, tmp_path / "run")
    text = recipe.read_text().replace("[train]\n", "[train]\nlr = 0.0\n")
    recipe.write_text(f'init_from = "{first}"\n' + text)
    second = train_dit(recipe, tmp_path / "run2")  # lr 0: the weights stay the initial ones
    a = load_tensors(first / "dit" / "model.safetensors")
    b = load_tensors(second / "dit" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    recipe.write_text(f'init_from = "{tmp_path}"\n' + text)
    with pytest.raises(ConfigError, match="no dit/model.safetensors"):
        train_dit(recipe, tmp_path / "run3")
