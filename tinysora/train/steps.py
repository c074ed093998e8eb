"""What one DiT training step does, for each kind of recipe: the batch of a step and its loss.

* :func:`fixed_size_steps`: ``batch_size`` cached latents of one size per step
  (deterministic in the step), a caption per clip (a paraphrase of the canonical
  caption, see ``tinysora.worlds.captions``, dropped to "" with
  ``flow.caption_dropout``), flow times from ``sample_timesteps``, the velocity loss;
* :func:`packed_steps`: Patch n' Pack rows of clips of mixed sizes, each clip with its
  own flow time, noise and caption.

With conditioning tasks (``[tasks]``), the given tokens of a sample enter clean at
flow time 0 (``diffusion.flow.given_times``) and carry no loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tinysora.config import ConfigError
from tinysora.data.cache import CacheError, LatentCache
from tinysora.data.packing import Packed, pack, plan_row
from tinysora.diffusion.flow import (
    add_noise,
    draw_noise,
    drop_captions,
    flow_loss,
    given_times,
    sample_timesteps,
    velocity_target,
)
from tinysora.diffusion.tasks import sample_given
from tinysora.dit.flops import dit_flops_per_sample
from tinysora.dit.model import DiT
from tinysora.dit.patchify import grid_positions, grid_size, patchify
from tinysora.text.encoder import TextEncoder
from tinysora.train.grounding import grounding_loss, grounding_targets
from tinysora.train.latents import size_key
from tinysora.train.recipe import DiTRecipe
from tinysora.train.trainer import step_generator, step_rng
from tinysora.worlds.captions import paraphrase
from tinysora.worlds.shapes import sample_scene


@dataclass
class Steps:
    """What a recipe plugs into the Trainer: ``batch_fn(step)``, ``loss_fn(model, batch)
    -> (loss, metrics)``, ``flops_fn(batch)`` (model FLOPs of the step, for MFU),
    ``tokens_fn(batch)`` (video tokens of the step, for tokens/s) and the latent channels
    the cache holds (the DiT's ``in_channels``)."""

    batch_fn: Callable[[int], Any]
    loss_fn: Callable[[DiT, Any], tuple[torch.Tensor, dict[str, Any]]]
    flops_fn: Callable[[Any], float]
    tokens_fn: Callable[[Any], int]
    latent_channels: int


def fixed_size_steps(recipe: DiTRecipe, data: dict, encoder: TextEncoder) -> Steps:
    """Training steps on batches of equal clips (the fixed-size latent cache)."""
    latents, seeds = data["latents"], data["seeds"]  # (N, C, t, h, w), (N,)
    grid = grid_size(tuple(latents.shape[2:]), recipe.model.patch)
    tokens = grid[0] * grid[1] * grid[2]
    conditioned = recipe.tasks.conditioned

    def batch_fn(step: int):
        rng = step_rng(recipe.train.seed, step)
        idx = [int(rng.uniform() * len(latents)) for _ in range(recipe.batch_size)]
        scenes = [sample_scene(int(seeds[i])) for i in idx]
        captions = [paraphrase(scene, rng) for scene in scenes]
        g = step_generator(recipe.train.seed, step)
        captions = drop_captions(captions, recipe.flow.caption_dropout, g)
        x0 = latents[idx].float()
        t = sample_timesteps(len(idx), tokens, recipe.flow, g)
        noise = draw_noise(x0.shape, g, recipe.flow.shared_noise)
        text, mask = encoder(captions)
        given = sample_given(recipe.tasks, grid, len(idx), g)[0] if conditioned else None
        if not recipe.grounding.weight:
            return x0, noise, t, text, mask, given
        size = (recipe.frames, recipe.height, recipe.width, recipe.model.patch)
        targets = grounding_targets(scenes, captions, encoder.word_ids(captions), *size)
        return x0, noise, t, text, mask, given, *targets

    return Steps(batch_fn, *_equal_clip_loss(recipe, grid), latents.shape[1])


def cached_steps(recipe: DiTRecipe, cache: LatentCache) -> Steps:
    """Training steps on a prepared cache of your own clips (``tinysora prepare``): each
    clip's latents are drawn from its cached posterior (mean + std x noise), normalized with
    the VAE's factors; captions are the cached text states, dropped to the empty prompt's
    with ``flow.caption_dropout``."""
    shapes = cache.shapes()
    if len(shapes) != 1:
        raise CacheError(
            f"'{cache.root}' holds clips of {len(shapes)} sizes; training from a cache needs "
            "one size (prepare with --size HxW --frames N)"
        )
    (channels, *latent_size), b = shapes.pop(), recipe.batch_size
    grid = grid_size(tuple(latent_size), recipe.model.patch)
    tokens = grid[0] * grid[1] * grid[2]

    def batch_fn(step: int):
        rng = step_rng(recipe.train.seed, step)
        clips = [cache.clip(int(rng.uniform() * len(cache))) for _ in range(b)]
        g = step_generator(recipe.train.seed, step)
        mean, std = (torch.stack([c[k] for c in clips]).float() for k in ("mean", "std"))
        x0 = _posterior_sample(cache, mean, std, g)
        text, mask = _cached_captions(cache, clips, recipe.flow.caption_dropout, g)
        t = sample_timesteps(b, tokens, recipe.flow, g)
        noise = draw_noise(x0.shape, g, recipe.flow.shared_noise)
        given = sample_given(recipe.tasks, grid, b, g)[0] if recipe.tasks.conditioned else None
        return x0, noise, t, text, mask, given

    return Steps(batch_fn, *_equal_clip_loss(recipe, grid), channels)


def mixed_steps(own: Steps, world: Steps) -> Steps:
    """Batches of equal clips from two sources (e.g. a cache of your clips and the Shapes
    World), concatenated: ``own``'s clips first. Both must share clip size and loss."""

    def batch_fn(step: int):
        parts = zip(own.batch_fn(step), world.batch_fn(step), strict=True)
        return tuple(None if a is None else torch.cat([a, b]) for a, b in parts)

    return dataclasses.replace(own, batch_fn=batch_fn)


def _equal_clip_loss(recipe: DiTRecipe, grid: tuple[int, int, int]):
    """(loss_fn, flops_fn) of batches of equal clips ``(x0, noise, t, text, mask, given)``:
    the velocity loss; given tokens enter clean at t = 0 and carry no loss."""
    patch = recipe.model.patch
    positions = grid_positions(grid, recipe.model.time_span)
    text_len = recipe.pipeline.text_max_length

    grounded = recipe.grounding
    blocks = tuple(grounded.blocks or range(recipe.model.depth)) if grounded.weight else ()

    def loss_fn(m, batch):
        x0, noise, t, text, mask, given, *targets = batch
        if given is None and not blocks:
            pred = m(add_noise(x0, t, noise), t, text, mask)
            loss = flow_loss(
                patchify(pred.float(), patch)[0],
                patchify(velocity_target(x0, noise), patch)[0],
            )
            return loss, {}
        clean, eps = patchify(x0, patch)[0], patchify(noise, patch)[0]
        t_tok = t if given is None else given_times(t, given)  # (B,) or (B, N)
        x_in = add_noise(clean, t_tok, eps)
        out = m.forward_tokens(x_in, t_tok, positions, text, mask, grid=grid, cross_probs=blocks)
        pred, probs = out if blocks else (out, None)
        keep = None if given is None else ~given
        loss = flow_loss(pred.float(), velocity_target(clean, eps), keep)
        if not blocks:
            return loss, {}
        ground = grounding_loss(probs, *targets)
        return loss + grounded.weight * ground, {"grounding": ground.item()}

    def flops(batch) -> float:
        return len(batch[0]) * dit_flops_per_sample(recipe.model, grid, text_len)

    def tokens(batch) -> int:
        return len(batch[0]) * grid[0] * grid[1] * grid[2]

    return loss_fn, flops, tokens


def packed_steps(recipe: DiTRecipe, data: dict, encoder: TextEncoder) -> Steps:
    """Training steps on Patch n' Pack rows (the mixture latent cache)."""
    pk = recipe.packing
    latents = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith("latents/")}
    seeds = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith("seeds/")}

    def batch_fn(step: int) -> PackedBatch:
        rng = step_rng(recipe.train.seed, step)
        g = step_generator(recipe.train.seed, step)
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
        return _pack_clips(recipe, [x0 for x0, _ in clips], text, mask, rows, g)

    channels = next(iter(latents.values())).shape[1]
    return Steps(batch_fn, packed_batch_loss, PackedBatch.flops_of, PackedBatch.tokens_of, channels)


def cached_packed_steps(recipe: DiTRecipe, cache: LatentCache) -> Steps:
    """Patch n' Pack rows of your own clips of mixed sizes (``tinysora prepare --packing``):
    each row is filled with clips drawn at random while one fits (giving up after 8
    misses in a row); latents drawn from the cached posteriors, cached captions."""
    pk, patch = recipe.packing, recipe.model.patch
    tokens = [int(np.prod(grid_size(tuple(info["shape"][1:]), patch))) for *_, info in cache.items]
    fits = [i for i, n in enumerate(tokens) if n <= pk.token_budget]
    if not fits:
        raise CacheError(
            f"every clip of '{cache.root}' is longer than [packing] token_budget = "
            f"{pk.token_budget} tokens (shortest: {min(tokens)}); raise the budget"
        )
    if len(fits) < len(tokens):
        print(f"{len(tokens) - len(fits)} clips longer than token_budget are left out")

    def batch_fn(step: int) -> PackedBatch:
        rng = step_rng(recipe.train.seed, step)
        g = step_generator(recipe.train.seed, step)
        chosen, rows = [], []
        for _ in range(pk.rows):
            rows.append([])
            free, misses = pk.token_budget, 0
            while misses < 8:
                i = fits[int(rng.uniform() * len(fits))]
                if tokens[i] <= free:
                    rows[-1].append(len(chosen))
                    chosen.append(i)
                    free, misses = free - tokens[i], 0
                else:
                    misses += 1
        clips = [cache.clip(i) for i in chosen]
        x0 = [_posterior_sample(cache, c["mean"].float(), c["std"].float(), g)[None] for c in clips]
        text, mask = _cached_captions(cache, clips, recipe.flow.caption_dropout, g)
        return _pack_clips(recipe, x0, text, mask, rows, g)

    channels = next(iter(cache.shapes()))[0]
    return Steps(batch_fn, packed_batch_loss, PackedBatch.flops_of, PackedBatch.tokens_of, channels)


def _posterior_sample(cache: LatentCache, mean, std, g: torch.Generator) -> torch.Tensor:
    """Latents drawn from cached posteriors, normalized with the cache's VAE factors."""
    shift, scale = cache.vae["shift_factor"], cache.vae["scaling_factor"]
    return (mean + std * torch.randn(mean.shape, generator=g) - shift) * scale


def _cached_captions(cache: LatentCache, clips, dropout: float, g: torch.Generator):
    """Cached caption states (B, L, D) and masks (B, L), each dropped to the empty
    prompt's with probability ``dropout``."""
    text = torch.stack([c["text"] for c in clips]).float()
    mask = torch.stack([c["mask"] for c in clips])
    drop = torch.rand(len(clips), generator=g) < dropout
    text[drop], mask[drop] = cache.empty_text.float(), cache.empty_mask
    return text, mask


def _pack_clips(recipe: DiTRecipe, clips, text, mask, rows, g: torch.Generator) -> PackedBatch:
    """Clips x0 (1, C, t, h, w) with caption states, planned into ``rows``: each clip gets
    its own flow time (shifted by its token count), noise, kept tokens and given tokens."""
    pk, patch = recipe.packing, recipe.model.patch
    grids = [grid_size(tuple(x0.shape[2:]), patch) for x0 in clips]
    counts = torch.tensor([gt * gh * gw for gt, gh, gw in grids])
    t = sample_timesteps(len(clips), counts, recipe.flow, g)
    noisy, targets, positions, times, given, kept = [], [], [], [], [], []
    for x0, grid, ti in zip(clips, grids, t, strict=True):
        noise = draw_noise(x0.shape, g, recipe.flow.shared_noise)
        keep = _kept_tokens(grid, pk.token_drop, g)
        clean, eps = patchify(x0, patch)[0][0][keep], patchify(noise, patch)[0][0][keep]
        # conditioning tasks: given tokens enter clean at t = 0 and carry no loss
        given_i = (
            sample_given(recipe.tasks, grid, 1, g)[0][0][keep]
            if recipe.tasks.conditioned
            else torch.zeros(len(keep), dtype=torch.bool)
        )
        t_tok = given_times(ti, given_i)
        noisy.append(add_noise(clean, t_tok, eps))
        targets.append(velocity_target(clean, eps))
        positions.append(grid_positions(grid, recipe.model.time_span)[keep])
        times.append(t_tok)
        given.append(given_i)
        kept.append(len(keep))
    packed = pack(noisy, positions, list(text), list(mask), pk.token_budget, rows)
    share = [k / int(n) for k, n in zip(kept, counts, strict=True)]
    text_len = recipe.pipeline.text_max_length
    model_flops = sum(
        s * dit_flops_per_sample(recipe.model, grid, text_len)
        for s, grid in zip(share, grids, strict=True)
    )
    loss_mask = packed.valid & ~packed.scatter(given)
    targets, times = packed.scatter(targets), packed.scatter(times)
    return PackedBatch(packed, targets, times, loss_mask, model_flops, sum(kept))


@dataclass
class PackedBatch:
    """A Patch n' Pack step: the packed rows, per-token velocity targets (R, budget, P),
    flow times (R, budget) and loss mask (R, budget), with the step's model FLOPs and
    video tokens."""

    packed: Packed
    target: torch.Tensor
    t: torch.Tensor
    loss_mask: torch.Tensor
    flops: float
    tokens: int

    def shard(self, rank: int, world: int) -> PackedBatch:
        """Rows ``rank::world`` (under torchrun each process trains on its own rows)."""
        rows = self.target.shape[0]
        if rows % world:
            raise ConfigError(f"[packing] rows = {rows} do not split over {world} processes")
        pick = slice(rank, None, world)
        p = self.packed
        packed = Packed(
            p.tokens[pick],
            p.positions[pick],
            p.segments[pick],
            p.text[pick],
            p.text_mask[pick],
            p.text_segments[pick],
            places=[],
        )
        share = 1 / world
        return PackedBatch(
            packed,
            self.target[pick],
            self.t[pick],
            self.loss_mask[pick],
            self.flops * share,
            int(self.tokens * share),
        )

    @staticmethod
    def flops_of(batch: PackedBatch) -> float:
        return batch.flops

    @staticmethod
    def tokens_of(batch: PackedBatch) -> int:
        return batch.tokens


def packed_batch_loss(m: DiT, batch: PackedBatch) -> tuple[torch.Tensor, dict[str, Any]]:
    efficiency = batch.packed.valid.float().mean()
    loss = packed_loss(m, batch.packed, batch.target, batch.t, batch.loss_mask)
    return loss, {"pack_efficiency": efficiency}


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
