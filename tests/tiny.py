"""Tiny real models saved as real files, shared by the tests (not a fixture module)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch

from tinysora.dit.model import DiT, DiTConfig
from tinysora.io.checkpoint import save_pretrained
from tinysora.pipeline import PipelineConfig
from tinysora.vae.model import VAEConfig, VideoVAE

TINY_VAE = VAEConfig(latent_channels=4, channels=(8, 8, 16), encoder_blocks=1, decoder_blocks=1)

# a DiT recipe on the tiny VAE (fields filled in by tiny_recipe)
TINY_RECIPE = (
    'vae = "{vae}"\n'
    "[model]\nwidth = 32\ndepth = 1\nheads = 2\n"
    "[train]\nsteps = {steps}\nwarmup_steps = 1\ncheckpoint_every = 2\nlog_every = {log}\n"
    "peak_tflops = 1.0\n{train}"  # a given peak: tests never time the machine's matmuls
    "[pipeline]\nnum_inference_steps = 2\n"
)


def save_tiny_vae(directory: Path) -> Path:
    """A random-weight 4-channel VAE (x4 time, x8 space) in ``directory``."""
    torch.manual_seed(0)
    save_pretrained(VideoVAE(TINY_VAE), TINY_VAE, directory)
    return directory


def tiny_recipe(
    root: Path, extra: str = "", top: str = "", steps: int = 2, log_every: int = 1, train: str = ""
) -> Path:
    """Write ``root/recipe.toml`` for a tiny VAE saved in ``root/vae``: ``top`` keys, the
    TINY_RECIPE sections (``train`` lines added to [train]), then ``extra`` sections."""
    save_tiny_vae(root / "vae")
    path = root / "recipe.toml"
    body = TINY_RECIPE.format(vae=root / "vae", steps=steps, log=log_every, train=train)
    path.write_text(top + body + extra)
    return path


def save_tiny_model(
    root: Path, width: int = 64, depth: int = 2, steps: int = 2, guidance: float = 2.0
) -> Path:
    """A pipeline directory (vae/, dit/, pipeline.json) of random weights. The DiT's
    weights are drawn N(0, 0.02): a fresh DiT predicts exactly zero."""
    save_tiny_vae(root / "vae")
    cfg = DiTConfig(in_channels=4, width=width, depth=depth, heads=2)
    dit = DiT(cfg)
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.02)
    save_pretrained(dit, cfg, root / "dit")
    PipelineConfig(num_inference_steps=steps, guidance_scale=guidance).save(root / "pipeline.json")
    return root


def start_alongside(cmd: list[str], err: Path) -> subprocess.Popen:
    """Start a reference run beside the one a test drives: one torch thread, stdout
    dropped, stderr into the file ``err`` (a pipe nobody reads could fill and block it)."""
    with open(err, "w") as stderr:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
