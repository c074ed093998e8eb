"""`tinysora train dit`: train the text-to-video DiT on pre-encoded Shapes World latents.

Recipe sections: ``[model]`` (DiTConfig, or ``preset = "tiny"`` + overrides),
``[train]`` (TrainConfig), ``[flow]`` (FlowConfig), ``[pipeline]`` (sampling defaults
of the exported model), ``[packing]`` (Patch n' Pack on a mixture of sizes, see
:class:`PackingConfig`), ``[tasks]`` (conditioning tasks, see
``tinysora.diffusion.tasks``; combinable with packing) and top-level data settings
(``init_from``: start from a model directory's DiT weights). Steps (fixed size):

1. **Latent cache** (once per run dir): ``cache_clips`` training-split clips of
   ``height x width x frames`` are rendered, encoded with the VAE (posterior mean),
   normalized with the VAE's shift / scaling factors and stored in
   ``OUT/latents.safetensors`` with their seeds.
2. **Training**: each step takes ``batch_size`` cached latents (deterministic in the
   step), a caption per clip (a paraphrase of the canonical caption, see
   ``tinysora.worlds.captions``, dropped to "" with ``flow.caption_dropout``),
   flow times from ``sample_timesteps`` and the velocity loss.
3. **Export**: ``OUT/model/`` = ``vae/`` (copied) + ``dit/`` (EMA weights, bf16) +
   ``pipeline.json`` — a directory ``TextToVideoPipeline.from_pretrained`` loads.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from tinysora.bench.timing import matmul_peak
from tinysora.config import Config, ConfigError
from tinysora.data.datasets import frames_to_tensor
from tinysora.data.packing import Mixture, pack, plan_row
from tinysora.diffusion.flow import (
    FlowConfig,
    add_noise,
    drop_captions,
    flow_loss,
    sample_timesteps,
    velocity_target,
)
from tinysora.diffusion.tasks import TaskConfig, sample_given
from tinysora.dit.model import DiT, DiTConfig
from tinysora.dit.patchify import grid_positions, grid_size, patchify
from tinysora.io.checkpoint import (
    CheckpointError,
    load_into,
    load_tensors,
    save_pretrained,
    save_tensors,
)
from tinysora.pipeline import PipelineConfig
from tinysora.text.encoder import TextEncoder
from tinysora.train.trainer import TrainConfig, Trainer, check_run_dir
from tinysora.train.vae import load_vae
from tinysora.worlds.captions import paraphrase
from tinysora.worlds.shapes import SplitMix64, render, sample_scene


@dataclass
class PackingConfig(Config):
    """``[packing]``: Patch n' Pack training on clips of mixed sizes and lengths.

    The latent cache then holds ``clips_per_size`` clips of every size of ``mixture``;
    each step packs ``rows`` rows of ``token_budget`` tokens (sizes from
    ``tinysora.data.packing.plan_row``), each clip with its own flow time (shifted by
    its own token count), noise and caption. ``token_drop`` > 0 drops a random fraction
    (uniform in [0, token_drop]) of each video clip's tokens, as NaViT does; rows are
    planned before dropping, so dropping also lowers the packing efficiency.
    """

    enabled: bool = False
    token_budget: int = 1024
    rows: int = 3
    clips_per_size: int = 100
    token_drop: float = 0.0
    mixture: Mixture = field(default_factory=Mixture)


@dataclass
class DiTRecipe(Config):
    model: DiTConfig = field(default_factory=DiTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    vae: str = "weights/vae"  # VAE directory used to encode the training clips
    cache_clips: int = 20_000
    height: int = 64
    width: int = 64
    frames: int = 17
    batch_size: int = 32
    encode_batch: int = 16
    packing: PackingConfig = field(default_factory=PackingConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)  # tokens given clean per sample
    # a model directory (e.g. `tinysora export RUN -o DIR`) whose DiT weights the run
    # starts from (model and EMA; a fresh optimizer): fine-tuning and annealing stages
    init_from: str = ""


def build_latent_cache(recipe: DiTRecipe, path: Path) -> None:
    """Render + encode ``cache_clips`` training clips into ``path`` (safetensors)."""
    vae = load_vae(recipe.vae)
    seeds = torch.arange(recipe.cache_clips, dtype=torch.int64)
    chunks = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in tqdm(range(0, len(seeds), recipe.encode_batch), desc="encoding latents"):
            batch = seeds[i : i + recipe.encode_batch]
            x = torch.stack(
                [
                    frames_to_tensor(
                        render(sample_scene(int(s)), recipe.height, recipe.width, recipe.frames)
                    )
                    for s in batch
                ]
            )  # (B, 3, T, H, W)
            chunks.append(vae.normalize(vae.encode(x).mean.float()).to(torch.bfloat16))
    save_tensors({"latents": torch.cat(chunks), "seeds": seeds}, path)


def attention_flops(cfg: DiTConfig, grid: tuple[int, int, int], text_len: int) -> float:
    """Forward FLOPs of one block's attention scores and values for one clip.

    full: 4 N^2 D; factorized: 4 N (gh gw) D within frames + 4 N gt D within patch
    columns; plus cross-attention 4 N L D. N = gt gh gw tokens, D = width.
    """
    gt, gh, gw = grid
    n, d = gt * gh * gw, cfg.width
    if cfg.attention == "factorized":
        self_attn = 4 * n * (gh * gw) * d + 4 * n * gt * d
    else:
        self_attn = 4 * n * n * d
    return self_attn + 4 * n * text_len * d


def size_key(frames: int, height: int, width: int) -> str:
    return f"{frames}x{height}x{width}"


def build_mixture_cache(recipe: DiTRecipe, path: Path) -> None:
    """Render + encode ``clips_per_size`` training clips of every size of the mixture.

    Keys ``latents/TxHxW`` (K, C, t, h, w) bf16 and ``seeds/TxHxW`` (K,); clip k of
    size number j has training seed j x K + k, so no two clips share a scene.
    """
    vae = load_vae(recipe.vae)
    k = recipe.packing.clips_per_size
    tensors = {}
    sizes = recipe.packing.mixture.sizes()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for j, (frames, h, w) in enumerate(tqdm(sizes, desc="encoding latents", unit="size")):
            seeds = torch.arange(j * k, (j + 1) * k, dtype=torch.int64)
            chunks = []
            for i in range(0, k, recipe.encode_batch):
                x = torch.stack(
                    [
                        frames_to_tensor(render(sample_scene(int(s)), h, w, frames))
                        for s in seeds[i : i + recipe.encode_batch]
                    ]
                )
                z = vae.normalize(vae.encode(x).mean.float())
                chunks.append(z.to(torch.bfloat16))
            tensors[f"latents/{size_key(frames, h, w)}"] = torch.cat(chunks)
            tensors[f"seeds/{size_key(frames, h, w)}"] = seeds
    save_tensors(tensors, path)


def dit_flops_per_sample(cfg: DiTConfig, grid: tuple[int, int, int], text_len: int) -> float:
    """Forward+backward FLOPs of one clip with a (gt, gh, gw) token grid:
    3 x depth x (2 x matmul params per token x N + attention_flops).

    Matmul params per block: self-attn 4 D^2 (+4 D^2 if factorized), cross-attn q/out
    2 D^2 (k/v on text: 2 D^2 x text_len / N), MLP 2 r D^2; the per-sample modulation,
    patch embedding, output layer and timestep MLP are left out (~1% at XS/2).
    """
    n = grid[0] * grid[1] * grid[2]
    d, r = cfg.width, cfg.mlp_ratio
    n_self = 2 if cfg.attention == "factorized" else 1
    per_token = (4 * n_self + 2 + 2 * r) * d * d + 2 * d * d * text_len / n
    return 3 * cfg.depth * (2 * per_token * n + attention_flops(cfg, grid, text_len))


def measure_bf16_peak() -> float:
    """Measured bf16 matmul FLOP/s of this machine (the MFU ceiling, as `tinysora bench` has it)."""
    return matmul_peak(torch.bfloat16)["gflops"] * 1e9


def train_dit(config_path: str | Path, out: str | Path, resume: bool = False) -> Path:
    recipe = DiTRecipe.load(config_path)
    out = Path(out)
    check_run_dir(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    packing = recipe.packing.enabled
    cache = out / "latents.safetensors"
    if not cache.is_file():
        (build_mixture_cache if packing else build_latent_cache)(recipe, cache)
    encoder = TextEncoder(max_length=recipe.pipeline.text_max_length)
    steps = (packed_steps if packing else fixed_size_steps)(recipe, load_tensors(cache), encoder)
    batch_fn, loss_fn, flops_per_step, recipe.model.in_channels = steps
    recipe.save(out / "recipe.json")
    torch.manual_seed(recipe.train.seed)
    model = DiT(recipe.model)
    if recipe.init_from:
        load_into(model, load_tensors(_dit_weights(recipe.init_from)), recipe.init_from)
    if recipe.train.compile:
        model.compile_blocks()
    trainer = Trainer(
        model,
        recipe.train,
        out,
        loss_fn=loss_fn,
        batch_fn=batch_fn,
        flops_per_step=flops_per_step,
        peak_flops=measure_bf16_peak(),
    )
    if resume and trainer.load_checkpoint():
        print(f"resumed from step {trainer.step}")
    trainer.fit()
    return export_model(recipe, trainer.ema_state(), out / "model")


def _dit_weights(directory: str) -> Path:
    path = Path(directory) / "dit" / "model.safetensors"
    if not path.is_file():
        raise ConfigError(
            f"init_from = '{directory}' has no dit/model.safetensors; give a model directory "
            "(e.g. one written by `tinysora export RUN -o DIR`)"
        )
    return path


def fixed_size_steps(recipe: DiTRecipe, data: dict, encoder: TextEncoder):
    """(batch_fn, loss_fn, flops_per_step, latent channels) for batches of equal clips."""
    latents, seeds = data["latents"], data["seeds"]  # (N, C, t, h, w), (N,)
    patch = recipe.model.patch
    grid = grid_size(tuple(latents.shape[2:]), patch)
    tokens = grid[0] * grid[1] * grid[2]
    positions = grid_positions(grid, recipe.model.time_span)
    text_len = recipe.pipeline.text_max_length
    conditioned = recipe.tasks.conditioned

    def batch_fn(step: int):
        rng = SplitMix64(recipe.train.seed, step, 7)
        idx = [int(rng.uniform() * len(latents)) for _ in range(recipe.batch_size)]
        captions = [paraphrase(sample_scene(int(seeds[i])), rng) for i in idx]
        g = torch.Generator().manual_seed(recipe.train.seed * 1_000_003 + step)
        captions = drop_captions(captions, recipe.flow.caption_dropout, g)
        x0 = latents[idx].float()
        t = sample_timesteps(len(idx), tokens, recipe.flow, g)
        noise = torch.randn(x0.shape, generator=g)
        text, mask = encoder(captions)
        given = sample_given(recipe.tasks, grid, len(idx), g)[0] if conditioned else None
        return x0, noise, t, text, mask, given

    def loss_fn(m, batch):
        x0, noise, t, text, mask, given = batch
        if given is None:
            pred = m(add_noise(x0, t, noise), t, text, mask)
            loss = flow_loss(
                patchify(pred.float(), recipe.model.patch)[0],
                patchify(velocity_target(x0, noise), recipe.model.patch)[0],
            )
            return loss, {}
        # given tokens enter clean at t = 0 and carry no loss
        clean, eps = patchify(x0, patch)[0], patchify(noise, patch)[0]
        t_tok = torch.where(given, 0.0, t[:, None])  # (B, N)
        x_in = add_noise(clean, t_tok, eps)
        pred = m.forward_tokens(x_in, t_tok, positions, text, mask, grid=grid)
        return flow_loss(pred.float(), velocity_target(clean, eps), ~given), {}

    def flops(batch) -> float:
        return len(batch[0]) * dit_flops_per_sample(recipe.model, grid, text_len)

    return batch_fn, loss_fn, flops, latents.shape[1]


def packed_steps(recipe: DiTRecipe, data: dict, encoder: TextEncoder):
    """(batch_fn, loss_fn, flops_per_step, latent channels) for Patch n' Pack batches."""
    pk, patch = recipe.packing, recipe.model.patch
    latents = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith("latents/")}
    seeds = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith("seeds/")}
    text_len = recipe.pipeline.text_max_length

    def batch_fn(step: int):
        rng = SplitMix64(recipe.train.seed, step, 7)
        g = torch.Generator().manual_seed(recipe.train.seed * 1_000_003 + step)
        clips, rows = [], []  # clips: (x0 (1, C, t, h, w), seed); rows: clip indices
        for _ in range(pk.rows):
            rows.append([])
            for size in plan_row(pk.mixture, pk.token_budget, rng):
                key = size_key(*size)
                i = int(rng.uniform() * len(latents[key]))
                rows[-1].append(len(clips))
                clips.append((latents[key][i : i + 1].float(), int(seeds[key][i])))
        captions = [paraphrase(sample_scene(seed), rng) for _, seed in clips]
        text, mask = encoder(drop_captions(captions, recipe.flow.caption_dropout, g))
        grids = [grid_size(tuple(x0.shape[2:]), patch) for x0, _ in clips]
        counts = torch.tensor([gt * gh * gw for gt, gh, gw in grids])
        t = sample_timesteps(len(clips), counts, recipe.flow, g)
        noisy, targets, positions, times, given, kept = [], [], [], [], [], []
        for (x0, _), grid, ti in zip(clips, grids, t, strict=True):
            noise = torch.randn(x0.shape, generator=g)
            keep = _kept_tokens(grid, pk.token_drop, g)
            clean, eps = patchify(x0, patch)[0][0][keep], patchify(noise, patch)[0][0][keep]
            # conditioning tasks: given tokens enter clean at t = 0 and carry no loss
            given_i = (
                sample_given(recipe.tasks, grid, 1, g)[0][0][keep]
                if recipe.tasks.conditioned
                else torch.zeros(len(keep), dtype=torch.bool)
            )
            t_tok = torch.where(given_i, 0.0, ti)
            noisy.append(add_noise(clean, t_tok, eps))
            targets.append(velocity_target(clean, eps))
            positions.append(grid_positions(grid, recipe.model.time_span)[keep])
            times.append(t_tok)
            given.append(given_i)
            kept.append(len(keep))
        packed = pack(noisy, positions, list(text), list(mask), pk.token_budget, rows)
        share = [k / int(n) for k, n in zip(kept, counts, strict=True)]
        model_flops = sum(
            s * dit_flops_per_sample(recipe.model, grid, text_len)
            for s, grid in zip(share, grids, strict=True)
        )
        loss_mask = packed.valid & ~packed.scatter(given)
        return packed, packed.scatter(targets), packed.scatter(times), loss_mask, model_flops

    def loss_fn(m, batch):
        packed, target, t, loss_mask, _ = batch
        return packed_loss(m, packed, target, t, loss_mask), {"pack_efficiency": packed.efficiency}

    channels = next(iter(latents.values())).shape[1]
    return batch_fn, loss_fn, lambda batch: batch[4], channels


def packed_loss(m: DiT, packed, target, t, loss_mask) -> torch.Tensor:
    """Velocity loss of packed rows: target (R, budget, P), per-token t (R, budget), loss
    over ``loss_mask`` (R, budget) only (real tokens that were not given)."""
    pred = m.forward_tokens(
        packed.tokens,
        t,
        packed.positions,
        packed.text,
        packed.text_mask,
        packed.segments,
        packed.text_segments,
    )
    return flow_loss(pred.float(), target, loss_mask)


def _kept_tokens(grid: tuple[int, int, int], max_drop: float, g: torch.Generator):
    """Indices of the tokens a clip keeps: all for images or max_drop 0, else a random
    subset missing a fraction ~ U(0, max_drop) (NaViT token dropping), in token order."""
    n = grid[0] * grid[1] * grid[2]
    if max_drop <= 0 or grid[0] == 1:
        return torch.arange(n)
    drop = int(n * max_drop * float(torch.rand((), generator=g)))
    return torch.randperm(n, generator=g)[: n - drop].sort().values


def export_model(recipe: DiTRecipe, weights: dict[str, torch.Tensor], directory: Path) -> Path:
    """Write a pipeline directory: vae/ (copied), dit/ (``weights``, bf16), pipeline.json."""
    final = DiT(recipe.model)
    load_into(final, dict(weights), "trained weights")
    directory.mkdir(parents=True, exist_ok=True)
    save_pretrained(final, recipe.model, directory / "dit", dtype=torch.bfloat16)
    shutil.copytree(recipe.vae, directory / "vae", dirs_exist_ok=True)
    recipe.pipeline.flow = recipe.flow
    recipe.pipeline.save(directory / "pipeline.json")
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
