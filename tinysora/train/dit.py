"""`tinysora train dit`: train the text-to-video DiT on pre-encoded Shapes World latents.

A run (recipe: ``tinysora.train.recipe``):

1. **Latent cache** (once per run dir, ``tinysora.train.latents``): training-split
   clips rendered, encoded with the VAE and stored in ``OUT/latents.safetensors``.
2. **Training** (``tinysora.train.steps`` for what a step does, ``Trainer`` for the
   loop, checkpoints and resume); ``init_from`` starts from a model directory's DiT.
3. **Export**: ``OUT/model/`` = ``vae/`` (copied) + ``dit/`` (EMA weights, bf16) +
   ``pipeline.json`` — a directory ``TextToVideoPipeline.from_pretrained`` loads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tinysora.config import ConfigError
from tinysora.data.cache import LatentCache
from tinysora.dit.model import DiT
from tinysora.io.checkpoint import (
    CheckpointError,
    load_into,
    load_tensors,
    resolve_model_dir,
    save_pretrained,
)
from tinysora.perf import peak_flops
from tinysora.text.encoder import TextEncoder, default_encoder_path
from tinysora.train import distributed
from tinysora.train.latents import build_latent_cache, build_mixture_cache
from tinysora.train.recipe import DiTRecipe
from tinysora.train.steps import Steps, cached_steps, fixed_size_steps, packed_steps
from tinysora.train.trainer import Trainer, check_run_dir


def train_dit(
    config_path: str | Path,
    out: str | Path,
    resume: bool = False,
    data: str | Path | None = None,
    init: str | Path | None = None,
) -> Path:
    """Train a DiT recipe into run directory ``out``; ``data`` (a prepared cache) and
    ``init`` (a model directory) override the recipe's ``data`` and ``init_from``. Under
    torchrun each process trains on its share of every batch (``train.distributed``)."""
    recipe = DiTRecipe.load(config_path)
    recipe.data = str(data) if data else recipe.data
    recipe.init_from = str(init) if init else recipe.init_from
    out = Path(out)
    check_run_dir(out, resume)
    distributed.setup()
    if distributed.world() > 1 and recipe.packing.enabled:
        raise ConfigError("[packing] does not run under torchrun yet: train it in one process")
    out.mkdir(parents=True, exist_ok=True)
    latents = out / "latents.safetensors"
    if distributed.is_main() and not recipe.data and not latents.is_file():
        build = build_mixture_cache if recipe.packing.enabled else build_latent_cache
        build(recipe, latents)  # rank 0 writes the latent cache, the others wait for it
    distributed.barrier()
    steps = _cache_steps(recipe) if recipe.data else _world_steps(recipe, latents)
    recipe.model.in_channels = steps.latent_channels
    if distributed.is_main():
        recipe.save(out / "recipe.json")
    torch.manual_seed(recipe.train.seed)
    model = DiT(recipe.model)
    if recipe.init_from:
        load_into(model, load_tensors(_dit_weights(recipe.init_from)), recipe.init_from)
    if recipe.train.compile:
        model.compile_blocks()
    trainer = fit(model, recipe, steps, out, resume)
    if distributed.is_main():
        export_model(recipe, trainer.ema_state(), out / "model")
    distributed.barrier()
    distributed.shutdown()
    return out / "model"


def fit(model: DiT, recipe: DiTRecipe, steps: Steps, out: Path, resume: bool) -> Trainer:
    """Train ``model`` with ``steps`` in run directory ``out`` (from its last checkpoint if
    ``resume``); returns the finished trainer."""
    trainer = Trainer(
        model,
        recipe.train,
        out,
        loss_fn=steps.loss_fn,
        batch_fn=steps.batch_fn,
        flops_per_step=steps.flops_fn,
        peak_flops=recipe.train.peak_tflops * 1e12 or peak_flops(),
    )
    if resume and trainer.load_checkpoint():
        print(f"resumed from step {trainer.step}")
    trainer.fit()
    return trainer


def _world_steps(recipe: DiTRecipe, latents: Path) -> Steps:
    """Steps on the run's Shapes World latents (``train.latents``)."""
    packing = recipe.packing.enabled
    # no prompt cache: a step's text states depend on that step alone (exact resume)
    encoder = TextEncoder(max_length=recipe.pipeline.text_max_length, cache_size=0)
    return (packed_steps if packing else fixed_size_steps)(recipe, load_tensors(latents), encoder)


def _cache_steps(recipe: DiTRecipe) -> Steps:
    """Steps on a prepared cache, after checking it was made by this VAE and text encoder."""
    if recipe.packing.enabled:
        raise ConfigError("[packing] is not available with --data yet: train on one size")
    cache = LatentCache(recipe.data)
    vae_dir = resolve_model_dir(recipe.vae, "vae")
    cache.check(vae_dir, default_encoder_path(), recipe.pipeline.text_max_length)
    return cached_steps(recipe, cache)


def _dit_weights(directory: str) -> Path:
    path = Path(directory) / "dit" / "model.safetensors"
    if not path.is_file():
        raise ConfigError(
            f"init_from = '{directory}' has no dit/model.safetensors; give a model directory "
            "(e.g. one written by `tinysora export RUN -o DIR`)"
        )
    return path


def export_model(recipe: DiTRecipe, weights: dict[str, torch.Tensor], directory: Path) -> Path:
    """Write a pipeline directory: vae/ (copied), dit/ (``weights``, bf16), pipeline.json."""
    final = DiT(recipe.model)
    load_into(final, dict(weights), "trained weights")
    directory.mkdir(parents=True, exist_ok=True)
    save_pretrained(final, recipe.model, directory / "dit", dtype=torch.bfloat16)
    shutil.copytree(resolve_model_dir(recipe.vae, "vae"), directory / "vae", dirs_exist_ok=True)
    recipe.pipeline.with_shift_of(recipe.flow).save(directory / "pipeline.json")
    print(f"saved {directory}")
    return directory


def export_checkpoint(run: str | Path, directory: str | Path, step: int | None = None) -> Path:
    """Export a checkpoint of a (possibly still running) DiT run as a pipeline directory.

    Uses the run's ``recipe.json`` and the EMA weights (live weights if the run has no
    EMA) of checkpoint ``step`` (default: the latest).
    """
    run = Path(run)
    if not (run / "recipe.json").is_file():
        raise CheckpointError(f"'{run}' is not a DiT run directory (no recipe.json)")
    recipe = DiTRecipe.load(run / "recipe.json")
    root = run / "checkpoints"
    if step is None:
        if not (root / "latest").is_file():
            raise CheckpointError(f"'{run}' has no checkpoint yet")
        name = (root / "latest").read_text().strip()
    else:
        name = f"step_{step:08d}"
    path = root / name
    available = sorted(p.name for p in root.glob("step_*"))
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint '{name}' in '{root}'; available: {available}")
    weights = path / "ema.safetensors"
    if not weights.is_file():
        weights = path / "model.safetensors"
    return export_model(recipe, load_tensors(weights), Path(directory))
