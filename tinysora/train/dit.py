"""`tinysora train dit`: train the text-to-video DiT on pre-encoded Shapes World latents.

A run (recipe: ``tinysora.train.recipe``):

1. **Latent cache** (once per run dir, ``tinysora.train.latents``): training-split
   clips rendered, encoded with the VAE and stored in ``OUT/latents.safetensors``.
2. **Training** (``tinysora.train.steps`` for what a step does, ``Trainer`` for the
   loop, checkpoints and resume); ``init_from`` starts from a model directory's DiT.
3. **Export**: ``OUT/model/`` = ``vae/`` (copied) + ``dit/`` (EMA weights, bf16) +
   ``pipeline.json`` — a directory ``TextToVideoPipeline.from_pretrained`` loads. Its
   ``vocabulary`` (the words of the training captions, :func:`training_vocabulary`) is
   fixed in the run's ``recipe.json`` when training starts.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import torch

from tinysora.config import ConfigError
from tinysora.data.cache import LatentCache
from tinysora.device import resolve_device
from tinysora.dit.model import DiT
from tinysora.io.checkpoint import (
    PIPELINE_NAME,
    CheckpointError,
    load_into,
    load_pretrained,
    load_tensors,
    resolve_model_dir,
    save_pretrained,
)
from tinysora.io.frames import to_uint8
from tinysora.perf import peak_flops
from tinysora.pipeline import PipelineConfig, TextToVideoPipeline
from tinysora.text.encoder import TextEncoder, default_encoder_path
from tinysora.text.vocabulary import Vocabulary, from_captions, merge
from tinysora.train import distributed
from tinysora.train.latents import build_latent_cache, build_mixture_cache
from tinysora.train.recipe import DiTRecipe
from tinysora.train.steps import (
    Steps,
    cached_packed_steps,
    cached_steps,
    fixed_size_steps,
    mixed_steps,
    packed_steps,
)
from tinysora.train.trainer import Trainer, check_run_dir
from tinysora.train.validation import val_loss_fn
from tinysora.vae.model import VideoVAE
from tinysora.worlds import captions


def train_dit(
    config_path: str | Path,
    out: str | Path,
    resume: bool = False,
    data: str | Path | None = None,
    init: str | Path | None = None,
    device: str | None = None,
) -> Path:
    """Train a DiT recipe into run directory ``out``; ``data`` (a prepared cache) and
    ``init`` (a model directory) override the recipe's ``data`` and ``init_from``. Under
    torchrun each process trains on its share of every batch (``train.distributed``)."""
    recipe = DiTRecipe.load(config_path)
    recipe.data = str(data) if data else recipe.data
    recipe.init_from = str(init) if init else recipe.init_from
    out = Path(out)
    check_run_dir(out, resume)
    device = resolve_device(device)
    distributed.setup(device)
    out.mkdir(parents=True, exist_ok=True)
    steps = run_steps(recipe, out, device)
    recipe.model.in_channels = steps.latent_channels
    recipe.pipeline.vocabulary = training_vocabulary(recipe)
    if distributed.is_main():
        recipe.save(out / "recipe.json")
    torch.manual_seed(recipe.train.seed)
    model = DiT(recipe.model)
    if recipe.init_from:
        state = load_tensors(_dit_weights(recipe.init_from))
        # a text refiner new to this stage keeps its fresh (identity) weights
        new = {k: v for k, v in model.state_dict().items() if k.startswith("refiner.")}
        load_into(model, {**new, **state}, recipe.init_from)
    model.to(device)
    if recipe.train.compile:
        if recipe.train.parallel == "fsdp" and distributed.world() > 1:
            raise ConfigError("[train] compile does not combine with parallel = 'fsdp' yet")
        model.compile_blocks()
    evaluate = val_loss_fn(recipe, device) if recipe.val_clips else None
    trainer = fit(model, recipe, steps, out, resume, evaluate)
    weights = trainer.ema_state()  # (gathered from every rank under FSDP)
    if distributed.is_main():
        export_model(recipe, weights, out / "model")
    distributed.barrier()
    distributed.shutdown()
    return out / "model"


def fit(
    model: DiT, recipe: DiTRecipe, steps: Steps, out: Path, resume: bool, eval_fn=None
) -> Trainer:
    """Train ``model`` with ``steps`` in run directory ``out`` (from its last checkpoint if
    ``resume``; ``eval_fn(model)`` every ``eval_every`` steps); returns the finished trainer."""
    device = next(model.parameters()).device
    trainer = Trainer(
        model,
        recipe.train,
        out,
        loss_fn=steps.loss_fn,
        batch_fn=steps.batch_fn,
        eval_fn=eval_fn,
        flops_per_step=steps.flops_fn,
        tokens_per_step=steps.tokens_fn,
        peak_flops=recipe.train.peak_tflops * 1e12 or peak_flops(device),
        sample_fn=sampler(recipe, device) if recipe.sample_prompts else None,
    )
    if resume and trainer.load_checkpoint():
        print(f"resumed from step {trainer.step}")
    trainer.fit()
    return trainer


def sampler(recipe: DiTRecipe, device: torch.device):
    """``sample_fn(model)`` for TensorBoard: the recipe's ``sample_prompts`` generated by
    the model in training (seed 0, the run's VAE and sampling defaults)."""
    parts = {}

    def sample_fn(model: DiT) -> dict[str, np.ndarray]:
        if not parts:  # the VAE and text encoder load on the first sampling step
            parts["vae"] = load_pretrained(VideoVAE, resolve_model_dir(recipe.vae, "vae"))
            parts["vae"].to(device)
            encoder = TextEncoder(
                max_length=recipe.pipeline.text_max_length, subjects=recipe.pipeline.text_subjects
            )
            parts["encoder"] = encoder.to(device)
        pipe = TextToVideoPipeline(parts["vae"], model, parts["encoder"], recipe.pipeline)
        videos = {}
        for i, prompt in enumerate(recipe.sample_prompts):
            frames = pipe(
                prompt,
                num_frames=recipe.frames,
                height=recipe.height,
                width=recipe.width,
                generator=torch.Generator().manual_seed(0),
                progress=False,
            ).frames
            videos[f"{i}_{prompt[:48]}"] = to_uint8(frames)
        return videos

    return sample_fn


def run_steps(recipe: DiTRecipe, out: Path, device: torch.device) -> Steps:
    """The steps of a run: on the recipe's ``data`` (a prepared cache) or the Shapes
    World (its latents encoded once into ``out/latents.safetensors``). With ``data`` and
    ``world_mix`` > 0 each batch also takes that share of Shapes World clips, so a
    fine-tune (or LoRA) on your clips keeps what the model could do (prior preservation)."""
    mix = bool(recipe.data) and recipe.world_mix > 0
    n_world = round(recipe.batch_size * recipe.world_mix)
    check_grounding(recipe)
    if mix and recipe.packing.enabled:
        raise ConfigError("world_mix does not combine with [packing] yet; set world_mix = 0")
    if mix and not 0 < n_world < recipe.batch_size:
        raise ConfigError(
            f"world_mix = {recipe.world_mix} of batch_size {recipe.batch_size} leaves no clips "
            "of one kind; use a value that gives both at least one clip"
        )
    latents = out / "latents.safetensors"
    if (mix or not recipe.data) and distributed.is_main() and not latents.is_file():
        build = build_mixture_cache if recipe.packing.enabled else build_latent_cache
        build(recipe, latents, device)  # rank 0 writes the latent cache, the others wait
    distributed.barrier()
    if not recipe.data:
        return _world_steps(recipe, load_tensors(latents), device)
    if not mix:
        return _cache_steps(recipe)
    world = load_tensors(latents)
    shapes, world_shape = LatentCache(recipe.data).shapes(), tuple(world["latents"].shape[1:])
    if shapes != {world_shape}:
        raise ConfigError(
            f"world_mix needs the cache's clips and the recipe's world clips at one size: "
            f"cache latents {sorted(shapes)}, world {world_shape} (set height / width / frames)"
        )
    world_recipe = dataclasses.replace(
        recipe,
        batch_size=n_world,
        train=dataclasses.replace(recipe.train, seed=recipe.train.seed + 1),  # its own draws
    )
    own_recipe = dataclasses.replace(recipe, batch_size=recipe.batch_size - n_world)
    return mixed_steps(_cache_steps(own_recipe), _world_steps(world_recipe, world, device))


def check_grounding(recipe: DiTRecipe) -> None:
    """One line for a [grounding] the run cannot honour."""
    g = recipe.grounding
    if g.weight < 0:
        raise ConfigError(f"[grounding] weight must be >= 0, got {g.weight}")
    if not g.weight:
        return
    if recipe.data or recipe.packing.enabled:
        raise ConfigError("[grounding] needs Shapes World clips of one size: no data or [packing]")
    bad = [i for i in g.blocks if not 0 <= i < recipe.model.depth]
    if bad:
        last = recipe.model.depth - 1
        raise ConfigError(f"[grounding] blocks {bad}: the DiT has blocks 0..{last}")


def _world_steps(recipe: DiTRecipe, latents: dict, device: torch.device) -> Steps:
    """Steps on the run's Shapes World latents (``train.latents``, loaded)."""
    packing = recipe.packing.enabled
    # no prompt cache: a step's text states depend on that step alone (exact resume)
    encoder = TextEncoder(
        max_length=recipe.pipeline.text_max_length,
        cache_size=0,
        subjects=recipe.pipeline.text_subjects,
    )
    encoder.to(device)
    return (packed_steps if packing else fixed_size_steps)(recipe, latents, encoder)


def _cache_steps(recipe: DiTRecipe) -> Steps:
    """Steps on a prepared cache, after checking it was made by this VAE and text encoder."""
    cache = LatentCache(recipe.data)
    vae_dir = resolve_model_dir(recipe.vae, "vae")
    cache.check(
        vae_dir,
        default_encoder_path(),
        recipe.pipeline.text_max_length,
        recipe.pipeline.text_subjects,
    )
    return (cached_packed_steps if recipe.packing.enabled else cached_steps)(recipe, cache)


def training_vocabulary(recipe: DiTRecipe) -> Vocabulary:
    """The words of the captions ``recipe`` trains on (``text.vocabulary``): those of its
    cache, the Shapes World's (without a cache, or mixed in), and the ones the model it
    starts from already knew."""
    parts = [recipe.pipeline.vocabulary]
    if recipe.init_from:
        init = resolve_model_dir(recipe.init_from) / PIPELINE_NAME
        parts += [PipelineConfig.load(init).vocabulary] if init.is_file() else []
    if recipe.data:
        parts.append(from_captions(LatentCache(recipe.data).captions))
    if not recipe.data or recipe.world_mix > 0:
        parts.append(captions.vocabulary())
    return merge(*parts)


def _dit_weights(directory: str) -> Path:
    """The DiT weights of model directory (or bundled model name) ``directory``."""
    path = resolve_model_dir(directory) / "dit" / "model.safetensors"
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
    recipe.pipeline.with_shift_of(recipe.flow).save(directory / PIPELINE_NAME)
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
