"""The latent cache of a DiT run: Shapes World clips rendered, encoded once, kept on disk.

``OUT/latents.safetensors`` holds VAE latents (posterior mean, normalized with the
VAE's shift / scaling factors, bf16) of training-split clips with their seeds, so
each step draws latents and captions without running the VAE:

* fixed size (:func:`build_latent_cache`): ``cache_clips`` clips of
  ``height x width x frames``; keys ``latents`` (N, C, t, h, w) and ``seeds`` (N,);
* Patch n' Pack (:func:`build_mixture_cache`): ``clips_per_size`` clips of every size
  of the mixture; keys ``latents/TxHxW`` and ``seeds/TxHxW``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from tinysora.device import autocast
from tinysora.io.checkpoint import load_pretrained, resolve_model_dir, save_tensors
from tinysora.io.frames import frames_to_tensor
from tinysora.train.recipe import DiTRecipe
from tinysora.vae.model import VideoVAE
from tinysora.worlds.shapes import render, sample_scene

CPU = torch.device("cpu")


def build_latent_cache(recipe: DiTRecipe, path: Path, device: torch.device = CPU) -> None:
    """Render + encode ``cache_clips`` training clips into ``path`` (safetensors)."""
    vae = load_pretrained(VideoVAE, resolve_model_dir(recipe.vae, "vae")).to(device)
    seeds = torch.arange(recipe.cache_clips, dtype=torch.int64)
    chunks = []
    with torch.no_grad(), autocast(device):
        for i in tqdm(range(0, len(seeds), recipe.encode_batch), desc="encoding latents"):
            batch = seeds[i : i + recipe.encode_batch]
            x = torch.stack(
                [
                    frames_to_tensor(
                        render(sample_scene(int(s)), recipe.height, recipe.width, recipe.frames)
                    )
                    for s in batch
                ]
            ).to(device)  # (B, 3, T, H, W)
            z = vae.normalize(vae.encode(x).mean.float())
            chunks.append(z.to(torch.bfloat16).cpu())
    save_tensors({"latents": torch.cat(chunks), "seeds": seeds}, path)


def size_key(frames: int, height: int, width: int) -> str:
    return f"{frames}x{height}x{width}"


def build_mixture_cache(recipe: DiTRecipe, path: Path, device: torch.device = CPU) -> None:
    """Render + encode ``clips_per_size`` training clips of every size of the mixture.

    Keys ``latents/TxHxW`` (K, C, t, h, w) bf16 and ``seeds/TxHxW`` (K,); clip k of
    size number j has training seed j x K + k, so no two clips share a scene.
    """
    vae = load_pretrained(VideoVAE, resolve_model_dir(recipe.vae, "vae")).to(device)
    k = recipe.packing.clips_per_size
    tensors = {}
    sizes = recipe.packing.mixture.sizes()
    with torch.no_grad(), autocast(device):
        for j, (frames, h, w) in enumerate(tqdm(sizes, desc="encoding latents", unit="size")):
            seeds = torch.arange(j * k, (j + 1) * k, dtype=torch.int64)
            chunks = []
            for i in range(0, k, recipe.encode_batch):
                x = torch.stack(
                    [
                        frames_to_tensor(render(sample_scene(int(s)), h, w, frames))
                        for s in seeds[i : i + recipe.encode_batch]
                    ]
                ).to(device)
                z = vae.normalize(vae.encode(x).mean.float())
                chunks.append(z.to(torch.bfloat16).cpu())
            tensors[f"latents/{size_key(frames, h, w)}"] = torch.cat(chunks)
            tensors[f"seeds/{size_key(frames, h, w)}"] = seeds
    save_tensors(tensors, path)
