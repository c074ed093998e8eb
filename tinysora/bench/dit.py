"""DiT sections of the bench: the training step (tokens/s, FLOPs, MFU) and scaling with length.

Model FLOPs (what MFU divides by) are ``tinysora.train.dit.dit_flops_per_sample``::

    3 x depth x (2 x matmul params per token x N + attention_flops)

forward + backward (backward = 2 x forward); attention_flops is 4 N^2 D for ``full``,
4 N (gh gw) D + 4 N gt D for ``factorized`` (attention within frames, then within
patch columns), plus 4 N L D cross-attention; the patch embedding, output layer,
timestep MLP and the per-sample modulation are left out. A FlopCounterMode
pass over the real model (every matmul executed) is reported next to it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from tinysora.bench.timing import count_flops
from tinysora.device import autocast
from tinysora.diffusion.flow import add_noise, flow_loss, sample_timesteps, velocity_target
from tinysora.dit.flops import attention_flops, dit_flops_per_sample
from tinysora.dit.model import DiT, DiTConfig
from tinysora.dit.patchify import grid_size, patchify
from tinysora.perf import measure
from tinysora.train.recipe import DiTRecipe
from tinysora.train.trainer import Trainer
from tinysora.vae.model import SPACE_FACTOR, latent_frames

TEXT_TOKENS = 12  # real tokens per caption in the text mask (a Shapes World caption is ~12)


def latent_shape(cfg: DiTConfig, frames: int, height: int, width: int) -> tuple[int, ...]:
    """(C, t, h, w) VAE latents of a frames x height x width clip."""
    return (cfg.in_channels, latent_frames(frames), height // SPACE_FACTOR, width // SPACE_FACTOR)


def token_grid(cfg: DiTConfig, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(gt, gh, gw) patch grid of a clip; tokens = gt * gh * gw."""
    return grid_size(latent_shape(cfg, frames, height, width)[1:], cfg.patch)


def dit_inputs(
    cfg: DiTConfig, batch: int, shape: tuple[int, ...], text_len: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random inputs of the DiT's training shapes (timings do not depend on the values)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, text_len, dtype=torch.bool)  # (B, L)
    mask[:, : min(TEXT_TOKENS, text_len)] = True
    return {
        "x0": torch.randn(batch, *shape, generator=g),  # (B, C, t, h, w)
        "noise": torch.randn(batch, *shape, generator=g),
        "t": torch.rand(batch, generator=g),  # (B,)
        "text": torch.randn(batch, text_len, cfg.text_dim, generator=g),  # (B, L, Dt)
        "text_mask": mask,
    }


def flow_step_loss(model: DiT, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss of ``train_dit``: DiT on the noised latents, velocity MSE over patch tokens."""
    x0, noise, t = inputs["x0"], inputs["noise"], inputs["t"]
    pred = model(add_noise(x0, t, noise), t, inputs["text"], inputs["text_mask"])
    patch = model.config.patch
    return flow_loss(
        patchify(pred.float(), patch)[0], patchify(velocity_target(x0, noise), patch)[0]
    )


def fwd_bwd(model: torch.nn.Module, loss_fn, inputs) -> None:
    """One forward + backward in bf16 autocast (gradients cleared first, as a step does)."""
    model.zero_grad(set_to_none=True)
    with autocast():
        loss = loss_fn(model, inputs)
    loss.backward()


def trainer_step(trainer: Trainer, loss_fn, inputs) -> None:
    """One optimizer step as ``Trainer.fit`` runs it: zero grads, ``loss_fn(model, inputs)``
    under bf16 autocast (if the recipe trains in bf16), backward, grad clipping, AdamW,
    EMA update (when the recipe has one), ``loss.item()``."""
    cfg = trainer.cfg
    trainer.optimizer.zero_grad(set_to_none=True)
    with autocast("cpu", cfg.bf16):
        loss = loss_fn(trainer.model, inputs)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainer.params, cfg.grad_clip)
    trainer.optimizer.step()
    if trainer.ema is not None:
        trainer._update_ema()
    loss.item()


def train_step(
    recipe: DiTRecipe,
    peak_gflops: float,
    batch: int | None = None,
    warmup: int = 2,
    repeats: int = 5,
    out_dir: str = ".",
) -> dict[str, Any]:
    """Time the DiT training step of ``recipe`` (default batch: the recipe's).

    The step is ``Trainer.fit``'s: zero grads, loss under bf16 autocast, backward, grad
    clipping, AdamW, EMA update (when the recipe has one), ``loss.item()``. Batches are
    random tensors of the training shapes: caption sampling and text encoding (done by
    ``train_dit``'s ``batch_fn``, cached per caption) are not in the step.
    """
    cfg, tcfg = recipe.model, recipe.train
    batch = batch or recipe.batch_size
    torch.manual_seed(tcfg.seed)
    model = DiT(cfg).train()
    shape = latent_shape(cfg, recipe.frames, recipe.height, recipe.width)
    grid = token_grid(cfg, recipe.frames, recipe.height, recipe.width)
    tokens = _prod(grid)
    text_len = recipe.pipeline.text_max_length
    inputs = dit_inputs(cfg, batch, shape, text_len)
    g = torch.Generator().manual_seed(1)
    inputs["t"] = sample_timesteps(batch, tokens, recipe.flow, g)
    threads = torch.get_num_threads()
    trainer = Trainer(model, tcfg, out_dir, loss_fn=None, batch_fn=None)  # its AdamW and EMA
    torch.set_num_threads(threads)  # a recipe's `threads` must not change the rest of the bench

    def forward() -> None:
        with autocast():
            flow_step_loss(model, inputs)

    def step() -> None:
        trainer_step(trainer, flow_step_loss, inputs)

    counted = count_flops(lambda: fwd_bwd(model, flow_step_loss, inputs))  # eager ops
    if tcfg.compile:  # as train_dit does; the warmup calls pay for the compile
        model.compile_blocks()
    t_fwd = measure(forward, warmup, repeats)
    t_fwd_bwd = measure(lambda: fwd_bwd(model, flow_step_loss, inputs), warmup, repeats)
    t_step = measure(step, warmup, repeats)
    flops_sample = dit_flops_per_sample(cfg, grid, text_len)
    step_s = t_step["median_s"]
    step_flops = batch * flops_sample
    return {
        "config": cfg.to_dict(),
        "params": sum(p.numel() for p in model.parameters()),
        "batch": batch,
        "clip": [recipe.frames, recipe.height, recipe.width],
        "latent_shape": list(shape),
        "tokens_per_clip": tokens,
        "text_len": text_len,
        "ema": trainer.ema is not None,
        "compiled": tcfg.compile,
        "forward_with_grad": t_fwd,
        "forward_backward": t_fwd_bwd,
        "step": t_step,
        "optimizer_ema_s": max(0.0, step_s - t_fwd_bwd["median_s"]),
        "tokens_per_s": batch * tokens / step_s,
        "flops_formula": " ".join(dit_flops_per_sample.__doc__.split()),
        "flops_per_sample": flops_sample,
        "flops_per_step": step_flops,
        "flops_per_step_counted": counted["total"],
        "formula_over_counted": step_flops / counted["total"],
        "achieved_gflops": step_flops / step_s / 1e9,
        "mfu": step_flops / step_s / (peak_gflops * 1e9),
        "mfu_fwd_bwd_only": step_flops / t_fwd_bwd["median_s"] / (peak_gflops * 1e9),
    }


def scaling(
    cfg: DiTConfig,
    frames_list: tuple[int, ...],
    height: int,
    width: int,
    text_len: int,
    batch: int,
    warmup: int = 1,
    repeats: int = 3,
) -> dict[str, Any]:
    """DiT forward + backward (bf16 autocast) vs clip length, ``full`` and ``factorized``.

    Fixed batch (clips per step), so the step time shows how the cost of one clip grows
    with its length; tokens = latent frames x (H / 16) x (W / 16).
    """
    rows = []
    for attention in ("full", "factorized"):
        mode_cfg = dataclasses.replace(cfg, attention=attention)
        torch.manual_seed(0)
        model = DiT(mode_cfg).train()
        for frames in frames_list:
            grid = token_grid(mode_cfg, frames, height, width)
            tokens = _prod(grid)
            inputs = dit_inputs(
                mode_cfg, batch, latent_shape(mode_cfg, frames, height, width), text_len
            )
            t = measure(lambda m=model, x=inputs: fwd_bwd(m, flow_step_loss, x), warmup, repeats)
            executed = batch * dit_flops_per_sample(mode_cfg, grid, text_len)
            rows.append(
                {
                    "attention": attention,
                    "frames": frames,
                    "tokens_per_clip": tokens,
                    "fwd_bwd": t,
                    "s_per_clip": t["median_s"] / batch,
                    "us_per_token": t["median_s"] / (batch * tokens) * 1e6,
                    "flops_per_step": executed,
                    "attention_flops_share": _attention_share(mode_cfg, grid, text_len),
                    "achieved_gflops": executed / t["median_s"] / 1e9,
                }
            )
    for attention in ("full", "factorized"):
        mine = [r for r in rows if r["attention"] == attention]
        for r in mine:
            r["time_vs_shortest"] = r["fwd_bwd"]["median_s"] / mine[0]["fwd_bwd"]["median_s"]
    return {
        "clip_size": [height, width],
        "batch": batch,
        "batch_policy": "fixed clips per step",
        "text_len": text_len,
        "rows": rows,
        "factorized_over_full": {str(f): _ratio(rows, f) for f in frames_list},
        "growth_exponent": {
            a: _exponent([r for r in rows if r["attention"] == a]) for a in ("full", "factorized")
        },
    }


def _attention_share(cfg: DiTConfig, grid: tuple[int, int, int], text_len: int) -> float:
    """Fraction of the model FLOPs that are attention scores / values (self + cross)."""
    attn = 3 * cfg.depth * attention_flops(cfg, grid, text_len)
    return attn / dit_flops_per_sample(cfg, grid, text_len)


def _ratio(rows: list[dict], frames: int) -> float:
    by = {r["attention"]: r["fwd_bwd"]["median_s"] for r in rows if r["frames"] == frames}
    return by["factorized"] / by["full"]


def _exponent(rows: list[dict]) -> float | None:
    """Slope of log(step time) vs log(tokens) between the two longest clips (1 = linear)."""
    if len(rows) < 2:
        return None
    a, b = rows[-2], rows[-1]
    return math.log(b["fwd_bwd"]["median_s"] / a["fwd_bwd"]["median_s"]) / math.log(
        b["tokens_per_clip"] / a["tokens_per_clip"]
    )


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out
