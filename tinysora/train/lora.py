"""`tinysora train lora`: LoRA adapters on a trained DiT, from a cache of your own clips.

    tinysora prepare my_clips/ --out cache/mine
    tinysora train lora --init weights --data cache/mine --out runs/lora [--rank 8]
    tinysora generate "..." --lora runs/lora/adapter [--lora-scale 0.8]
    tinysora export runs/lora --merge-lora -o models/mine      # a full model directory

The base model (``--init``: its ``dit/``, ``vae/`` and ``pipeline.json``) stays frozen;
only the adapters train (``tinysora.dit.lora``), with the trainer of every other run
(checkpoints, ``--resume``, EMA, torchrun). The run writes ``RUN/adapter/`` in peft's
format (``adapter_config.json`` + ``adapter_model.safetensors``) from the EMA weights.
Training settings: :data:`LORA_TRAIN` unless ``--config RECIPE`` gives a DiT recipe
(its ``[model]`` is ignored: the architecture is the base model's).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tinysora.config import ConfigError
from tinysora.device import resolve_device
from tinysora.dit.lora import add_lora, merge_lora, save_lora
from tinysora.dit.model import DiT, DiTConfig
from tinysora.errors import UserError
from tinysora.io.atomic import atomic_write_text
from tinysora.io.checkpoint import (
    PIPELINE_NAME,
    CheckpointError,
    load_config,
    load_into,
    load_pretrained,
    load_tensors,
    resolve_model_dir,
    save_pretrained,
)
from tinysora.pipeline import PipelineConfig
from tinysora.text.vocabulary import ADAPTER_VOCABULARY
from tinysora.train import distributed
from tinysora.train.dit import fit, run_steps, training_vocabulary
from tinysora.train.recipe import DiTRecipe
from tinysora.train.trainer import TrainConfig, check_run_dir

LORA_TRAIN = TrainConfig(
    steps=600, lr=5e-4, warmup_steps=30, ema_decay=0.99, checkpoint_every=100, log_every=10
)
LORA_BATCH = 8


def lora_recipe(init: Path, data: str, config: str | Path | None) -> DiTRecipe:
    recipe = DiTRecipe.load(config) if config else DiTRecipe(train=LORA_TRAIN)
    if not config:
        recipe.batch_size = LORA_BATCH
    recipe.model = load_config(DiTConfig, init / "dit")
    recipe.pipeline = PipelineConfig.load(init / "pipeline.json")
    recipe.init_from, recipe.data, recipe.vae = str(init), str(data), str(init / "vae")
    return recipe


def train_lora(
    init: str | Path,
    data: str | Path,
    out: str | Path,
    rank: int = 8,
    config: str | Path | None = None,
    resume: bool = False,
    device: str | None = None,
) -> Path:
    """Train adapters of ``rank`` on the DiT of model directory ``init``; returns the
    adapter directory ``out/adapter``."""
    init, out = resolve_model_dir(init), Path(out)
    recipe = lora_recipe(init, str(data), config)
    recipe.pipeline.vocabulary = training_vocabulary(recipe)
    check_run_dir(out, resume)
    if recipe.train.parallel == "fsdp":
        raise ConfigError("LoRA trains small adapters on a frozen model: use parallel = 'ddp'")
    device = resolve_device(device)
    distributed.setup(device)
    out.mkdir(parents=True, exist_ok=True)
    steps = run_steps(recipe, out, device)  # the cache (+ world clips with world_mix)
    torch.manual_seed(recipe.train.seed)
    dit = load_pretrained(DiT, init / "dit").train().to(device)
    model = add_lora(dit, rank)
    if distributed.is_main():
        recipe.save(out / "recipe.json")
        (out / "lora.json").write_text(json.dumps({"init": str(init), "rank": rank}) + "\n")
    trainer = fit(dit, recipe, steps, out, resume)
    weights = trainer.ema_state()  # (gathered from every rank under FSDP)
    if distributed.is_main():
        load_into(dit, dict(weights), "EMA weights")
        save_lora(model, out / "adapter")
        vocabulary = json.dumps(recipe.pipeline.vocabulary, indent=1)
        atomic_write_text(out / "adapter" / ADAPTER_VOCABULARY, vocabulary + "\n")
        print(f"saved {out / 'adapter'}")
    distributed.barrier()
    distributed.shutdown()
    return out / "adapter"


def export_merged(run: str | Path, directory: str | Path, step: int | None = None) -> Path:
    """A full model directory: the run's base model with the adapters of checkpoint
    ``step`` (default: the latest; EMA weights) merged into its DiT."""
    run = Path(run)
    if not (run / "lora.json").is_file():
        raise UserError(f"'{run}' is not a LoRA run (no lora.json); --merge-lora needs one")
    meta = json.loads((run / "lora.json").read_text())
    init = Path(meta["init"])
    root = run / "checkpoints"
    name = f"step_{step:08d}" if step else (root / "latest").read_text().strip()
    weights = root / name / "ema.safetensors"
    if not weights.is_file():
        weights = root / name / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"no checkpoint '{name}' in '{root}'")
    dit = load_pretrained(DiT, init / "dit")
    add_lora(dit, meta["rank"])
    load_into(dit, load_tensors(weights), str(weights))
    merged = merge_lora(dit)
    directory = Path(directory)
    save_pretrained(merged, merged.config, directory / "dit", dtype=torch.bfloat16)
    shutil.copytree(init / "vae", directory / "vae", dirs_exist_ok=True)
    # the base's sampling defaults, with the adapter's training words (recipe.json)
    DiTRecipe.load(run / "recipe.json").pipeline.save(directory / PIPELINE_NAME)
    return directory
