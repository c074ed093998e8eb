"""Tests for the training loop (tinysora.train.trainer), the VAE recipe (tinysora.train.vae),
the ``train vae`` / ``vae roundtrip`` commands and the training data (tinysora.data)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tinysora.train.trainer as trainer_module
import tinysora.train.vae as train_vae_module
from tinysora.data.datasets import WorldBatches, WorldDataConfig
from tinysora.io.checkpoint import load_pretrained, load_tensors
from tinysora.train.trainer import TrainConfig, Trainer
from tinysora.train.vae import VAERecipe, train_vae
from tinysora.vae.model import VAEConfig, VideoVAE
from tinysora.worlds.shapes import render, sample_scene

MODULE = [sys.executable, "-m", "tinysora.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [*MODULE, *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, env=ENV)


# ----------------------------------------------------------------------------- toy problem

TRUE_W = torch.tensor([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0], [-1.0, 1.0]])


class Stop(Exception):
    """Stands in for a kill / crash inside the loop."""


def make_batch_fn(fail_at: int | None = None, exc: BaseException | None = None):
    def batch_fn(step: int):
        if step == fail_at:
            raise exc or Stop(f"stopped at {step}")
        g = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(16, 4, generator=g)
        return x, x @ TRUE_W + 0.1 * torch.randn(16, 2, generator=g)

    return batch_fn


def mse_loss(model: nn.Module, batch):
    x, y = batch
    loss = nn.functional.mse_loss(model(x), y)
    return loss, {"mse": loss.item()}


def toy_model(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(4, 2)


def toy_cfg(**overrides) -> TrainConfig:
    base = dict(
        steps=8,
        lr=0.05,
        warmup_steps=2,
        bf16=False,
        checkpoint_every=2,
        keep_checkpoints=2,
        log_every=1,
        seed=0,
    )
    return TrainConfig(**{**base, **overrides})


def run_straight(out: Path, **overrides) -> Trainer:
    t = Trainer(toy_model(), toy_cfg(**overrides), out, mse_loss, make_batch_fn())
    t.fit()
    return t


def assert_same_training_state(a: Trainer, b: Trainer, exact: bool = True) -> None:
    assert a.step == b.step
    for key, value in a.model.state_dict().items():
        other = b.model.state_dict()[key]
        if exact:
            assert torch.equal(value, other), key
        else:
            assert torch.allclose(value, other, atol=1e-4), key
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for idx in sa["state"]:
        assert sa["state"][idx].keys() == sb["state"][idx].keys()
        for name, value in sa["state"][idx].items():
            other = sb["state"][idx][name]
            if exact:
                assert torch.equal(value, other), (idx, name)
            else:
                assert torch.allclose(value, other, atol=1e-4), (idx, name)


@pytest.mark.parametrize("bf16", [False, True])
def test_resume_matches_uninterrupted_run(tmp_path, bf16):
    straight = run_straight(tmp_path / "a", bf16=bf16)
    assert straight.step == 8

    first = Trainer(toy_model(), toy_cfg(bf16=bf16), tmp_path / "b", mse_loss, make_batch_fn(4))
    with pytest.raises(Stop):
        first.fit()
    assert first.step == 4
    assert (tmp_path / "b/checkpoints/latest").read_text().strip() == "step_00000004"

    # a different init, to prove every weight comes from the checkpoint
    second = Trainer(
        toy_model(seed=99), toy_cfg(bf16=bf16), tmp_path / "b", mse_loss, make_batch_fn()
    )
    assert second.load_checkpoint()
    assert second.step == 4
    assert torch.equal(second.model.weight, first.model.weight)
    second.fit()
    assert second.step == 8
    assert_same_training_state(straight, second, exact=not bf16)


def test_load_checkpoint_without_checkpoint_returns_false(tmp_path):
    t = Trainer(toy_model(), toy_cfg(), tmp_path, mse_loss, make_batch_fn())
    assert t.load_checkpoint() is False
    assert t.step == 0


def test_checkpoint_directory_layout_and_log(tmp_path):
    run_straight(tmp_path)
    root = tmp_path / "checkpoints"
    names = sorted(p.name for p in root.iterdir())
    assert names == ["latest", "step_00000006", "step_00000008"]  # keep_checkpoints=2, no .tmp
    assert (root / "latest").read_text().strip() == "step_00000008"
    for name in ("step_00000006", "step_00000008"):
        files = sorted(p.name for p in (root / name).iterdir())
        assert files == ["model.safetensors", "optimizer.safetensors", "state.json"]
        state = json.loads((root / name / "state.json").read_text())
        assert state["step"] == int(name.split("_")[1])
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".") or "tmp" in p.name]

    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == list(range(1, 9))
    for r in records:
        assert math.isfinite(r["loss"]) and "lr" in r and "grad_norm" in r and "mse" in r


def test_keep_checkpoints_one(tmp_path):
    run_straight(tmp_path, keep_checkpoints=1, checkpoint_every=3)  # saves 3, 6 and 8 (final)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_00000008"]


def test_resume_after_crash(tmp_path):
    crash = RuntimeError("disk on fire")
    t = Trainer(toy_model(), toy_cfg(), tmp_path / "run", mse_loss, make_batch_fn(6, crash))
    with pytest.raises(RuntimeError, match="disk on fire"):
        t.fit()
    latest = (tmp_path / "run/checkpoints/latest").read_text().strip()
    assert latest == "step_00000006"  # steps 0..5 done, checkpoint_every=2

    resumed = Trainer(toy_model(), toy_cfg(), tmp_path / "run", mse_loss, make_batch_fn())
    assert resumed.load_checkpoint()
    assert resumed.step == 6
    resumed.fit()
    assert resumed.step == 8
    assert_same_training_state(run_straight(tmp_path / "straight"), resumed)


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    real_save = trainer_module.save_tensors

    def failing_save(tensors, path):
        if path.name == "optimizer.safetensors" and "00000004" in path.parent.name:
            raise OSError("no space left on device")
        real_save(tensors, path)

    monkeypatch.setattr(trainer_module, "save_tensors", failing_save)
    t = Trainer(toy_model(), toy_cfg(), tmp_path, mse_loss, make_batch_fn())
    with pytest.raises(OSError, match="no space"):
        t.fit()
    monkeypatch.undo()
    assert (tmp_path / "checkpoints/latest").read_text().strip() == "step_00000002"
    assert not (tmp_path / "checkpoints/step_00000004").exists()

    resumed = Trainer(toy_model(), toy_cfg(), tmp_path, mse_loss, make_batch_fn())
    assert resumed.load_checkpoint()
    assert resumed.step == 2
    resumed.fit()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_00000006", "step_00000008"]  # the partial one is gone
    assert_same_training_state(run_straight(tmp_path / "straight"), resumed)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_raises(tmp_path, bad):
    calls = 0

    def loss_fn(model, batch):
        nonlocal calls
        calls += 1
        loss, metrics = mse_loss(model, batch)
        return (loss * bad if calls == 4 else loss), metrics

    t = Trainer(toy_model(), toy_cfg(), tmp_path, loss_fn, make_batch_fn())
    with pytest.raises(FloatingPointError, match=r"steps 3\.\.3"):
        t.fit()
    # found when the step's loss is read (its log step), before any checkpoint holds it
    assert t.step == 4
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000002"


def test_ema_is_tracked_saved_and_loaded(tmp_path):
    seen: list[dict[str, torch.Tensor]] = []
    model = toy_model()
    inner = make_batch_fn()

    def batch_fn(step):  # records the live weights at the start of every step
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return inner(step)

    cfg = toy_cfg(steps=3, ema_decay=0.5, lr=0.1, warmup_steps=0, checkpoint_every=1)
    t = Trainer(model, cfg, tmp_path, mse_loss, batch_fn)
    t.fit()
    weights = [*seen, {k: v.detach().clone() for k, v in model.state_dict().items()}]
    ema = t.ema_state()
    for key in ema:
        expected = weights[0][key]
        for w in weights[1:]:
            expected = 0.5 * expected + 0.5 * w[key]
        assert torch.allclose(ema[key], expected, atol=1e-6), key
        assert not torch.allclose(ema[key], model.state_dict()[key], atol=1e-4), key

    ckpt = tmp_path / "checkpoints/step_00000003"
    saved = load_tensors(ckpt / "ema.safetensors")
    assert saved.keys() == ema.keys()
    for key in ema:
        assert torch.equal(saved[key], ema[key])

    other = Trainer(toy_model(seed=5), cfg, tmp_path, mse_loss, make_batch_fn())
    assert other.load_checkpoint()
    for key in ema:
        assert torch.equal(other.ema_state()[key], ema[key])
        assert torch.equal(other.model.state_dict()[key], model.state_dict()[key])


def test_without_ema_the_ema_state_is_the_live_model(tmp_path):
    t = run_straight(tmp_path, steps=2)
    assert not (tmp_path / "checkpoints/step_00000002/ema.safetensors").exists()
    state = t.ema_state()
    for key, value in t.model.state_dict().items():
        assert torch.equal(state[key], value)


# ----------------------------------------------------------------------------- train_vae

RECIPE = """\
val_clips = 1
stats_clips = 2

[model]
latent_channels = 4
channels = [8, 8, 16]
encoder_blocks = 1
decoder_blocks = 1

[train]
steps = 4
lr = 1e-3
warmup_steps = 1
ema_decay = 0.9
checkpoint_every = 2
eval_every = 2
log_every = 1

[data]
sizes = [[32, 32]]
frames = [1, 5]
frame_weights = [0.5, 0.5]
pixels_per_batch = 10240  # 2 clips of 32x32x5

[loss]
ssim_weight = 0.5
"""


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "vae_tiny.toml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def vae_run(recipe_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vae_run") / "run"
    path = train_vae(recipe_path, out)
    assert path == out / "vae"
    return out


def test_recipe_parses(recipe_path):
    recipe = VAERecipe.load(recipe_path)
    assert recipe.model.channels == (8, 8, 16)
    assert recipe.data.sizes == [(32, 32)]
    assert recipe.train.steps == 4


def test_train_vae_outputs(vae_run):
    cfg = json.loads((vae_run / "vae/config.json").read_text())
    assert cfg["scaling_factor"] != 1.0 and cfg["scaling_factor"] > 0
    assert cfg["shift_factor"] != 0.0 and math.isfinite(cfg["shift_factor"])
    assert sorted(p.name for p in (vae_run / "vae").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    assert (vae_run / "recipe.json").is_file()
    weights = load_tensors(vae_run / "vae/model.safetensors")
    assert all(v.dtype == torch.bfloat16 for v in weights.values())

    # the exported model is the EMA or the live weights of the last checkpoint (whichever
    # scored better on validation), cast to bf16
    last = vae_run / "checkpoints/step_00000004"
    candidates = [load_tensors(last / "ema.safetensors"), load_tensors(last / "model.safetensors")]
    assert any(
        c.keys() == weights.keys()
        and all(torch.equal(v.to(torch.bfloat16), weights[k]) for k, v in c.items())
        for c in candidates
    )

    records = [json.loads(line) for line in (vae_run / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all({"l1", "mse", "grad", "ssim", "kl"} <= r.keys() for r in train)
    assert [r["step"] for r in evals] == [2, 4]
    assert all(math.isfinite(r["eval"]["val_psnr"]) for r in evals)

    vae = load_pretrained(VideoVAE, vae_run / "vae")
    assert vae.config.latent_channels == 4 and not vae.training
    assert vae.config == VAEConfig.from_dict(cfg)


def test_train_vae_refuses_to_overwrite_a_run(vae_run, recipe_path):
    before = (vae_run / "log.jsonl").read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        train_vae(recipe_path, vae_run)
    assert (vae_run / "log.jsonl").read_text() == before


def test_train_vae_resume_of_a_finished_run_does_not_retrain(
    vae_run, recipe_path, tmp_path, capsys
):
    copy = tmp_path / "copy"
    shutil.copytree(vae_run, copy)
    log_before = (copy / "log.jsonl").read_text()
    weights_before = load_tensors(copy / "vae/model.safetensors")
    capsys.readouterr()
    train_vae(recipe_path, copy, resume=True)
    assert "resumed from step 4" in capsys.readouterr().out
    assert (copy / "log.jsonl").read_text() == log_before
    weights_after = load_tensors(copy / "vae/model.safetensors")
    for key, value in weights_before.items():
        assert torch.equal(value, weights_after[key]), key
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == [
        "latest",
        "step_00000002",
        "step_00000004",
    ]


class Boom(Exception):
    pass


@pytest.fixture(scope="module")
def crashed_vae_run(recipe_path, tmp_path_factory) -> Path:
    """The same recipe, killed at step 2 (after checkpoint 2), then resumed."""

    class CrashingBatches(WorldBatches):
        def __call__(self, step):
            if step == 2:
                raise Boom
            return super().__call__(step)

    out = tmp_path_factory.mktemp("vae_crash") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_vae_module, "WorldBatches", CrashingBatches)
        with pytest.raises(Boom):
            train_vae(recipe_path, out)
    assert (out / "checkpoints/latest").read_text().strip() == "step_00000002"
    assert not (out / "vae").exists()
    train_vae(recipe_path, out, resume=True)
    return out


def test_train_vae_resumes_after_a_crash(crashed_vae_run, vae_run):
    assert (crashed_vae_run / "vae/config.json").is_file()
    # up to the crash both runs are identical
    a = load_tensors(crashed_vae_run / "checkpoints/step_00000002/model.safetensors")
    b = load_tensors(vae_run / "checkpoints/step_00000002/model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [
        json.loads(x)["step"] for x in (crashed_vae_run / "log.jsonl").read_text().splitlines()
    ]
    assert steps[-1] == 4


def test_train_vae_resume_is_exact(crashed_vae_run, vae_run):
    a = load_tensors(crashed_vae_run / "checkpoints/step_00000004/model.safetensors")
    b = load_tensors(vae_run / "checkpoints/step_00000004/model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------- CLI


@pytest.mark.slow  # subprocess; train_vae itself is tested in process above
def test_cli_train_vae(recipe_path, tmp_path):
    result = cli("train", "vae", "--config", recipe_path, "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "saved" in result.stdout
    cfg = json.loads((tmp_path / "out/vae/config.json").read_text())
    assert cfg["scaling_factor"] != 1.0

    again = cli("train", "vae", "--config", recipe_path, "--out", tmp_path / "out", cwd=tmp_path)
    assert again.returncode == 2
    assert "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert "--resume" in again.stderr


@pytest.fixture(scope="module")
def clip_npy(tmp_path_factory) -> tuple[Path, np.ndarray]:
    frames = render(sample_scene(5), 32, 32, 5)
    path = tmp_path_factory.mktemp("clips") / "in.npy"
    np.save(path, frames)
    return path, frames


def test_cli_vae_roundtrip(vae_run, clip_npy, tmp_path):
    src, frames = clip_npy
    out = tmp_path / "out.npy"
    result = cli("vae", "roundtrip", src, "-o", out, "--model", vae_run / "vae", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    match = re.search(r"^PSNR (\d+\.\d+) dB over 5 frames of 32x32$", result.stdout, re.M)
    assert match, result.stdout
    recon = np.load(out)
    assert recon.shape == frames.shape and recon.dtype == np.uint8
    from tinysora.nn.metrics import psnr

    assert float(match.group(1)) == pytest.approx(psnr(recon, frames), abs=0.01)


def test_cli_vae_roundtrip_rejects_bad_size(vae_run, clip_npy, tmp_path):
    _, frames = clip_npy
    src = tmp_path / "odd.npy"
    np.save(src, np.ascontiguousarray(frames[:, :30, :30]))
    out = tmp_path / "out.npy"
    result = cli("vae", "roundtrip", src, "-o", out, "--model", vae_run / "vae", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tinysora: error:") and "30x30" in lines[0]
    assert not out.exists()


def test_cli_vae_roundtrip_missing_model(clip_npy, tmp_path):
    src, _ = clip_npy
    result = cli(
        "vae",
        "roundtrip",
        src,
        "-o",
        tmp_path / "o.npy",
        "--model",
        tmp_path / "none",
        cwd=tmp_path,
    )
    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- data

DATA = WorldDataConfig(
    sizes=[(32, 32), (32, 48), (48, 32)],
    frames=[1, 5, 9],
    frame_weights=[0.5, 0.25, 0.25],
    pixels_per_batch=2 * 5 * 32 * 32,
    max_batch=4,
)


def test_world_batches_are_deterministic():
    a = WorldBatches(DATA, "train")(3)
    assert torch.equal(a, WorldBatches(DATA, "train")(3))
    assert a.dtype == torch.float32
    assert not torch.equal(a, WorldBatches(DATA, "val")(3))  # same shape, other seeds
    assert WorldBatches(DATA, "val")(3).shape == a.shape


def expected_frame_mix(cfg: WorldDataConfig) -> dict[int, float]:
    """P(T) when (size, T) pairs that exceed the pixel budget are redrawn."""
    total = sum(cfg.frame_weights)
    mix: dict[int, float] = {}
    for h, w in cfg.sizes:
        for t, weight in zip(cfg.frames, cfg.frame_weights, strict=True):
            if t * h * w <= cfg.pixels_per_batch:
                mix[t] = mix.get(t, 0.0) + weight / total / len(cfg.sizes)
    norm = sum(mix.values())
    return {t: p / norm for t, p in mix.items()}


def test_world_batches_shapes_follow_the_mixture_and_budget():
    wb = WorldBatches(DATA, "train")
    n = 400
    shapes = [wb.shape_at(step) for step in range(n)]
    assert len(set(shapes)) > 3
    assert {(h, w) for _, h, w, _ in shapes} == set(DATA.sizes)
    frames = [t for *_, t in shapes]
    for t, p in expected_frame_mix(DATA).items():
        assert frames.count(t) / n == pytest.approx(p, abs=0.07), t
    for b, h, w, t in shapes:
        assert t * h * w <= DATA.pixels_per_batch
        assert b == max(1, min(DATA.max_batch, DATA.pixels_per_batch // (t * h * w)))
        assert b * t * h * w <= DATA.pixels_per_batch
    assert {b for b, *_ in shapes} >= {1, 2, 4}


def test_world_batches_max_batch_caps_images():
    cfg = WorldDataConfig(sizes=[(32, 32)], frames=[1], frame_weights=[1.0], max_batch=3)
    assert {WorldBatches(cfg).shape_at(s) for s in range(5)} == {(3, 32, 32, 1)}


def test_world_batches_tensors():
    wb = WorldBatches(DATA, "train")
    for step in range(6):
        b, h, w, t = wb.shape_at(step)
        x = wb(step)
        assert x.shape == (b, 3, t, h, w)
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
        assert float(x.std()) > 0.01  # not blank


def test_world_batches_bad_config():
    with pytest.raises(ValueError, match="same length"):
        WorldBatches(WorldDataConfig(frames=[1, 5], frame_weights=[1.0]))
    with pytest.raises(ValueError):
        WorldBatches(WorldDataConfig(sizes=[(30, 30)]))
    with pytest.raises(ValueError, match="split"):
        WorldBatches(WorldDataConfig(), "holdout")
    tiny_budget = WorldDataConfig(sizes=[(32, 32)], frames=[5], frame_weights=[1.0])
    tiny_budget.pixels_per_batch = 100  # smaller than any clip
    with pytest.raises(ValueError, match="pixels_per_batch"):
        WorldBatches(tiny_budget)(0)
