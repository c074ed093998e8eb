"""`tinysora train vae`: train the causal video VAE on Shapes World and export it.

The recipe is one TOML file (``configs/vae_shapes.toml``) with the sections
``[model]`` (VAEConfig), ``[train]`` (TrainConfig), ``[data]`` (WorldDataConfig)
and ``[loss]`` (VAELossConfig). Output directory layout::

    OUT/log.jsonl           one line per logged window (loss, l1, ssim, kl, s/step)
    OUT/checkpoints/...     resumable training state (see tinysora.train.trainer)
    OUT/vae/                the trained model: config.json + model.safetensors (bf16),
                            with scaling_factor / shift_factor measured on training latents
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from tinysora.config import Config
from tinysora.data.datasets import WorldBatches, WorldDataConfig
from tinysora.device import autocast, resolve_device
from tinysora.io.checkpoint import load_into, load_tensors, save_pretrained
from tinysora.io.frames import frames_to_tensor
from tinysora.nn.metrics import psnr
from tinysora.train.trainer import TrainConfig, Trainer, check_run_dir, step_generator
from tinysora.vae.loss import VAELossConfig, vae_loss
from tinysora.vae.model import VAEConfig, VideoVAE, reconstruct
from tinysora.worlds.detect import detect, judge
from tinysora.worlds.shapes import render, sample_scene, split_seed


@dataclass
class VAERecipe(Config):
    model: VAEConfig = field(default_factory=VAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: WorldDataConfig = field(default_factory=WorldDataConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    init_from: str = ""  # optional VAE directory to start from (e.g. the bundled weights)
    val_clips: int = 16  # validation-split clips scored at every eval (64x64x17)
    stats_clips: int = 64  # training clips used to measure scaling / shift factors


def val_scores(vae: VideoVAE, n: int) -> dict[str, float]:
    """Mean PSNR of ``n`` validation clips (64x64x17) and the fraction whose reconstruction
    the detector reads back exactly as the scene (every color, shape, motion; no extras):
    the ceiling the VAE puts on a text-to-video model's prompt adherence."""
    scores, right = [], 0
    for i in range(n):
        scene = sample_scene(split_seed("val", i))
        clip = render(scene, 64, 64, 17)
        recon = reconstruct(vae, clip)
        scores.append(psnr(recon, clip))
        right += judge(scene, detect(recon))["all_right"]
    return {"val_psnr": sum(scores) / len(scores), "val_detect": right / n}


def measure_latent_stats(vae: VideoVAE, n: int) -> tuple[float, float]:
    """(shift, scale) so that (z - shift) * scale has mean 0 and std 1 on training clips."""
    zs = []
    device = next(vae.parameters()).device
    with torch.no_grad(), autocast(device):
        for i in range(n):
            clip = render(sample_scene(i * 9973 % 1_000_000), 64, 64, 17)
            x = frames_to_tensor(clip)[None].to(device)
            zs.append(vae.encode(x).mean.float().flatten())
    z = torch.cat(zs)
    return float(z.mean()), float(1.0 / z.std())


def train_vae(
    config_path: str | Path,
    out: str | Path,
    resume: bool = False,
    stop_at: int | None = None,
    device: str | None = None,
) -> Path:
    recipe = VAERecipe.load(config_path)
    out = Path(out)
    check_run_dir(out, resume)
    device = resolve_device(device)
    torch.manual_seed(recipe.train.seed)
    model = VideoVAE(recipe.model)
    if recipe.init_from:
        load_into(
            model, load_tensors(Path(recipe.init_from) / "model.safetensors"), recipe.init_from
        )
    model.to(device)
    clips = WorldBatches(recipe.data, "train")

    def batch_fn(step: int):
        return clips(step), step

    def loss_fn(m, batch):
        x, step = batch
        # posterior noise seeded by the step, so a resumed run repeats an uninterrupted one
        generator = step_generator(recipe.train.seed, step)
        recon, posterior = m(x, generator)
        return vae_loss(recon, x, posterior, recipe.loss)

    trainer = Trainer(
        model,
        recipe.train,
        out,
        loss_fn=loss_fn,
        batch_fn=batch_fn,
        eval_fn=lambda m: val_scores(m, recipe.val_clips),
    )
    if resume and trainer.load_checkpoint():
        print(f"resumed from step {trainer.step}")
    recipe.save(out / "recipe.json")
    trainer.fit(stop_at=stop_at)
    final = _better_of_ema_and_live(recipe, trainer)
    shift, scale = measure_latent_stats(final, recipe.stats_clips)
    final.config.shift_factor, final.config.scaling_factor = shift, scale
    path = save_pretrained(final, final.config, out / "vae", dtype=torch.bfloat16)
    print(f"saved {path} (shift_factor {shift:.4f}, scaling_factor {scale:.4f})")
    return path


def _better_of_ema_and_live(recipe: VAERecipe, trainer: Trainer) -> VideoVAE:
    """The EMA or the live weights, whichever reconstructs the validation clips better."""
    candidates = {"live": trainer.model.state_dict(), "ema": trainer.ema_state()}
    best, best_psnr = None, -1.0
    for name, state in candidates.items():
        vae = VideoVAE(recipe.model).to(trainer.device)
        load_into(vae, dict(state), f"{name} weights")
        scores = val_scores(vae.eval(), recipe.val_clips)
        score = scores["val_psnr"]
        detected = scores["val_detect"]
        print(f"{name} weights: validation PSNR {score:.2f} dB, detected {detected:.0%}")
        if score > best_psnr:
            best, best_psnr = vae, score
    return best
