"""Side by side with diffusers: our DiT against the nearest diffusers video transformers.

Same process, same threads, same batch, same latents, timesteps and text, fp32
weights under bf16 autocast, random weights, train mode (no dropout anywhere):

* ``full`` attention vs ``LTXVideoTransformer3DModel`` (3D RoPE, full space-time
  self-attention, cross-attention to text, adaLN). LTX takes patch tokens, so it gets
  exactly our patchified latents: ``in_channels = C * pt * ph * pw`` (32 for the
  default 8-channel latents and patch (1, 2, 2)), ``patch_size = patch_size_t = 1``,
  the same (t, h, w) token grid (5 x 4 x 4 = 80 tokens for a 64x64x17 clip).
* ``factorized`` attention vs ``LatteTransformer3DModel`` (spatial + temporal blocks,
  cross-attention in the spatial ones) with its text-to-video block options
  (``norm_type="ada_norm_single"``, tanh-GELU MLP like ours, attention bias, LayerNorm
  without gain) at our sizes; it patchifies each latent frame itself with
  ``patch_size = ph`` (same 80 tokens).

Width = heads x head dim, depth (``num_layers``), heads, MLP ratio 4, text length and
text width (``caption_channels``, projected to the model width, so
``cross_attention_dim = width``) are ours. Each pair is timed in turns
(:func:`~tinysora.bench.timing.measure_interleaved`), forward (no grad) and forward +
backward of the velocity MSE.

FLOPs: a FlopCounterMode pass counts each model's executed matmuls. The *model* FLOPs
used to correct the time ratio are the counted Linear / conv FLOPs plus the attention
FLOPs the architecture needs (3 x depth x :func:`tinysora.train.dit.attention_flops`,
the same number for both models of a pair). The corrected speedup is
``(their time / their model FLOPs) / (our time / our model FLOPs)``: the ratio of
achieved model FLOP/s, i.e. the time ratio at equal work.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch

from tinysora.bench.dit import (
    dit_inputs,
    flow_step_loss,
    fwd_bwd,
    latent_shape,
    token_grid,
)
from tinysora.bench.timing import count_flops, measure_interleaved
from tinysora.device import autocast, compute_dtype
from tinysora.diffusion.flow import add_noise, flow_loss, velocity_target
from tinysora.dit.flops import attention_flops
from tinysora.dit.model import DiT, DiTConfig
from tinysora.dit.patchify import patchify
from tinysora.errors import UserError

TIMESTEP_SCALE = 1000.0  # diffusers transformers take t in [0, 1000]

LTX_DIFFERENCES = [
    "text projection: two Linear layers (PixArt caption projection, + D^2 per text token) "
    "vs our one Linear + GELU",
    "timestep: one adaLN-single for the whole model (Linear D -> 6D once per sample + a "
    "learned 6 x D table per block) vs our Linear D -> 6D per block; both are per-sample "
    "costs (shared timestep), so FLOPs per token are equal; ours has depth x 6 D^2 more "
    "parameters (more AdamW work, not in these fwd/bwd timings)",
    "q/k norm: RMSNorm over all heads with a learned fp32 gain (under bf16 autocast torch "
    "falls back to its unfused kernel) vs our per-head LayerNorm without gain",
    "cross-attention input not normalized (ours: RMSNorm before cross-attention)",
    "attention kernel: F.scaled_dot_product_attention (CPU flash kernel) vs our explicit "
    "softmax(q k^T / sqrt(d)) v (two matmuls, fp32 softmax)",
    "RoPE: interleaved over the whole width, positions scaled to [-1, 1] vs ours per head, "
    "split over t / h / w, integer positions (same FLOPs order, elementwise)",
    "output: LayerNorm + learned shift/scale table vs our RMSNorm + Linear modulation",
    "MLP activation: GELU tanh approximation vs our exact (erf) GELU, which is ~3x faster "
    "fwd + bwd in bf16 on this CPU (same FLOPs count)",
]
LATTE_DIFFERENCES = [
    "block structure: each Latte layer is a spatial block (self-attn, cross-attn, MLP) then a "
    "temporal block (self-attn, MLP): two MLPs per layer vs one in our factorized block "
    "(spatial attn, temporal attn, cross-attn, MLP), + 16 D^2 FLOPs per token per layer; "
    "the model-FLOP correction removes it",
    "attention: both reshape to frames (spatial) and places (temporal), computing "
    "4 N (h w) D + 4 N t D (ours falls back to masks only for packed sequences)",
    "MLP activation: GELU tanh approximation vs our exact (erf) GELU (see the LTX pair)",
    "positions: fixed 2D sin-cos added after the patch embedding + 1D temporal sin-cos "
    "before the first temporal block vs our 3D RoPE on q/k",
    "patch embedding: Conv2d (kernel = stride = 2) per frame, same FLOPs as our Linear",
    "adaLN-single, LayerNorm without gain, no q/k norm, SDPA attention",
    "text mask: Latte's pipeline does not mask padding text tokens; here both models get the "
    "same mask (for Latte as an additive bias, repeated per frame)",
]


def require_diffusers():
    try:
        import diffusers
    except ImportError:
        raise UserError(
            "the bench compares against diffusers; install the extra: pip install -e '.[bench]'"
        ) from None
    return diffusers


def build_ltx(cfg: DiTConfig):
    """LTXVideoTransformer3DModel of our width / depth / heads, fed our patch tokens."""
    from diffusers import LTXVideoTransformer3DModel

    _check_mlp(cfg)
    patch_dim = cfg.in_channels * cfg.patch[0] * cfg.patch[1] * cfg.patch[2]
    return LTXVideoTransformer3DModel(
        in_channels=patch_dim,
        out_channels=patch_dim,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=cfg.heads,
        attention_head_dim=cfg.width // cfg.heads,
        cross_attention_dim=cfg.width,
        num_layers=cfg.depth,
        caption_channels=cfg.text_dim,
    )


def build_latte(cfg: DiTConfig, latent: tuple[int, ...]):
    """LatteTransformer3DModel of our sizes for latents (C, t, h, w) (square h = w)."""
    from diffusers import LatteTransformer3DModel

    _check_mlp(cfg)
    _, t, h, w = latent
    pt, ph, pw = cfg.patch
    if pt != 1 or ph != pw or h != w:
        raise ValueError(
            f"Latte needs patch (1, p, p) and square latents, got {cfg.patch} {latent}"
        )
    return LatteTransformer3DModel(
        num_attention_heads=cfg.heads,
        attention_head_dim=cfg.width // cfg.heads,
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        num_layers=cfg.depth,
        cross_attention_dim=cfg.width,
        attention_bias=True,
        sample_size=h,
        patch_size=ph,
        activation_fn="gelu-approximate",
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        caption_channels=cfg.text_dim,
        video_length=t,
    )


def _check_mlp(cfg: DiTConfig) -> None:
    if cfg.mlp_ratio != 4.0:
        raise ValueError(f"diffusers' FeedForward has MLP ratio 4; this DiT has {cfg.mlp_ratio}")


def ltx_loss(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Velocity MSE of LTX on our patch tokens of the noised latents (same loss as ours)."""
    x0, noise, t = inputs["x0"], inputs["noise"], inputs["t"]
    tokens, grid = patchify(add_noise(x0, t, noise), inputs["patch"])  # (B, N, C pt ph pw)
    pred = model(
        tokens,
        inputs["text"],
        t * TIMESTEP_SCALE,
        inputs["text_mask"].float(),
        num_frames=grid[0],
        height=grid[1],
        width=grid[2],
        return_dict=False,
    )[0]  # (B, N, C pt ph pw)
    return flow_loss(pred.float(), patchify(velocity_target(x0, noise), inputs["patch"])[0])


def latte_loss(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Velocity MSE of Latte on the noised latents (B, C, t, h, w), over our patch tokens."""
    x0, noise, t = inputs["x0"], inputs["noise"], inputs["t"]
    pred = model(
        add_noise(x0, t, noise),
        t * TIMESTEP_SCALE,
        inputs["text"],
        inputs["text_bias"],
        return_dict=False,
    )[0]  # (B, C, t, h, w)
    patch = inputs["patch"]
    return flow_loss(
        patchify(pred.float(), patch)[0], patchify(velocity_target(x0, noise), patch)[0]
    )


def _no_grad_forward(model, loss_fn, inputs) -> None:
    with torch.no_grad(), autocast():
        loss_fn(model, inputs)


def compare_pair(
    ours: DiT,
    theirs: torch.nn.Module,
    their_loss,
    inputs: dict[str, torch.Tensor],
    essential_attention: float,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """Time + count one pair on the same inputs; ratios are theirs / ours."""
    ours.train()
    theirs.train()
    models = {"ours": (ours, flow_step_loss), "diffusers": (theirs, their_loss)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        fwd = measure_interleaved(
            {k: (lambda m=m, f=f: _no_grad_forward(m, f, inputs)) for k, (m, f) in models.items()},
            warmup,
            repeats,
        )
        both = measure_interleaved(
            {k: (lambda m=m, f=f: fwd_bwd(m, f, inputs)) for k, (m, f) in models.items()},
            warmup,
            repeats,
        )
        counted = {
            k: count_flops(lambda m=m, f=f: fwd_bwd(m, f, inputs)) for k, (m, f) in models.items()
        }
    batch = inputs["x0"].shape[0]
    out: dict[str, Any] = {}
    for k, (m, _) in models.items():
        model_flops = counted[k]["linear"] + batch * essential_attention
        out[k] = {
            "class": type(m).__name__,
            "params": sum(p.numel() for p in m.parameters()),
            "forward": fwd[k],
            "forward_backward": both[k],
            "flops_fwd_bwd_executed": counted[k],
            "model_flops_fwd_bwd": model_flops,
            "model_gflops_achieved": model_flops / both[k]["median_s"] / 1e9,
        }
    o, d = out["ours"], out["diffusers"]
    flop_ratio = d["model_flops_fwd_bwd"] / o["model_flops_fwd_bwd"]
    out["model_flops_ratio"] = flop_ratio  # theirs / ours
    out["speedup_forward"] = d["forward"]["median_s"] / o["forward"]["median_s"]
    out["speedup_fwd_bwd"] = d["forward_backward"]["median_s"] / o["forward_backward"]["median_s"]
    out["speedup_forward_flop_corrected"] = out["speedup_forward"] / flop_ratio
    out["speedup_fwd_bwd_flop_corrected"] = out["speedup_fwd_bwd"] / flop_ratio
    return out


def side_by_side(
    cfg: DiTConfig,
    frames: int,
    height: int,
    width: int,
    text_len: int,
    batch: int,
    warmup: int = 2,
    repeats: int = 5,
) -> dict[str, Any]:
    """Both pairs at one clip size: ``full`` vs LTX, ``factorized`` vs Latte."""
    require_diffusers()
    latent = latent_shape(cfg, frames, height, width)
    grid = token_grid(cfg, frames, height, width)
    inputs = dit_inputs(cfg, batch, latent, text_len)
    inputs["patch"] = cfg.patch
    bias = (~inputs["text_mask"]).float() * -10000.0  # (B, L): 0 = attend, -1e4 = padding
    inputs["text_bias"] = bias.repeat_interleave(latent[1], dim=0)[:, None]  # (B t, 1, L)
    result: dict[str, Any] = {
        "clip": [frames, height, width],
        "latent_shape": list(latent),
        "token_grid": list(grid),
        "tokens_per_clip": grid[0] * grid[1] * grid[2],
        "batch": batch,
        "text_len": text_len,
        "dtype_policy": f"fp32 weights, computed in {compute_dtype()} (tinysora.device)",
        "threads": torch.get_num_threads(),
    }
    for attention, build, loss, notes in (
        ("full", lambda c: build_ltx(c), ltx_loss, LTX_DIFFERENCES),
        ("factorized", lambda c: build_latte(c, latent), latte_loss, LATTE_DIFFERENCES),
    ):
        mode_cfg = dataclasses.replace(cfg, attention=attention)
        torch.manual_seed(0)
        ours = DiT(mode_cfg)
        torch.manual_seed(0)
        theirs = build(mode_cfg)
        pair = compare_pair(
            ours,
            theirs,
            loss,
            inputs,
            3 * mode_cfg.depth * attention_flops(mode_cfg, grid, text_len),
            warmup,
            repeats,
        )
        pair["diffusers"]["config"] = {
            k: v for k, v in theirs.config.items() if not k.startswith("_")
        }
        pair["differences"] = notes
        key = "ltx" if attention == "full" else "latte"
        result[f"{attention}_vs_{key}"] = pair
    return result
