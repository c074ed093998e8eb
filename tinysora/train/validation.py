"""The validation loss of a DiT run: one fixed number per model, comparable across runs.

``val_clips`` validation-split Shapes World clips at the recipe's size, encoded once with
the run's VAE (posterior mean, normalized), with their canonical captions; each clip is
scored at ``VAL_TIMES`` fixed flow times ``t_k = (k + 0.5) / VAL_TIMES`` with fixed noise
(seed 0). The score is the mean velocity loss over all of them: the same inputs for
every model, so runs of different presets and lengths line up on one curve (the scaling
study plots it against training FLOPs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tinysora.device import autocast
from tinysora.diffusion.flow import add_noise, draw_noise, flow_loss, velocity_target
from tinysora.dit.model import DiT
from tinysora.dit.patchify import patchify
from tinysora.io.checkpoint import load_pretrained, resolve_model_dir
from tinysora.io.frames import frames_to_tensor
from tinysora.text.encoder import TextEncoder
from tinysora.train.recipe import DiTRecipe
from tinysora.vae.model import VideoVAE
from tinysora.worlds.shapes import render, sample_scene, split_seed

VAL_TIMES = 4  # flow times per clip
VAL_BATCH = 16  # clips per forward pass


def val_loss_fn(recipe: DiTRecipe, device: torch.device) -> Callable[[DiT], dict[str, float]]:
    """``fn(model) -> {"val_loss": mean}`` on the recipe's ``val_clips`` (see the module doc)."""
    vae = load_pretrained(VideoVAE, resolve_model_dir(recipe.vae, "vae")).to(device)
    scenes = [sample_scene(split_seed("val", i)) for i in range(recipe.val_clips)]
    with torch.no_grad(), autocast(device):
        x0 = torch.cat(
            [
                vae.normalize(vae.encode(frames_to_tensor(clip)[None].to(device)).mean.float())
                for clip in (render(s, recipe.height, recipe.width, recipe.frames) for s in scenes)
            ]
        )  # (N, C, t, h, w)
    encoder = TextEncoder(
        max_length=recipe.pipeline.text_max_length,
        cache_size=0,
        subjects=recipe.pipeline.text_subjects,
    ).to(device)
    text, mask = encoder([s.caption for s in scenes])
    g = torch.Generator().manual_seed(0)
    shape = (VAL_TIMES * len(x0), *x0.shape[1:])  # shared_noise 0: as randn((T, *x0.shape))
    noise = draw_noise(shape, g, recipe.flow.shared_noise).view(VAL_TIMES, *x0.shape).to(device)
    times = (torch.arange(VAL_TIMES) + 0.5) / VAL_TIMES
    patch = recipe.model.patch

    @torch.no_grad()
    def fn(model: DiT) -> dict[str, float]:
        losses = []
        for k, t in enumerate(times.tolist()):
            for i in range(0, len(x0), VAL_BATCH):
                clean, eps = x0[i : i + VAL_BATCH], noise[k, i : i + VAL_BATCH]
                tt = torch.full((len(clean),), t, device=device)
                with autocast(device):
                    pred = model(
                        add_noise(clean, tt, eps),
                        tt,
                        text[i : i + VAL_BATCH],
                        mask[i : i + VAL_BATCH],
                    )
                target = velocity_target(clean, eps)
                loss = flow_loss(patchify(pred.float(), patch)[0], patchify(target, patch)[0])
                losses.append(float(loss) * len(clean))
        return {"val_loss": sum(losses) / (len(x0) * VAL_TIMES)}

    return fn
