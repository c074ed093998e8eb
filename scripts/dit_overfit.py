"""Prove the text-to-video training loop: overfit a tiny DiT on a handful of clips.

Encodes N training clips with a VAE, trains a tiny DiT on (caption, latent) pairs
only, then samples each caption from noise and reports how close the sample is to
its training latent (relative L2 error in normalized latent space) and, decoded,
whether the detector reads the right objects.

    python scripts/dit_overfit.py --vae weights/vae --clips 4 --steps 400
"""

from __future__ import annotations

import argparse

import torch

from tinysora.device import autocast
from tinysora.diffusion.flow import FlowConfig, add_noise, sample_timesteps, velocity_target
from tinysora.diffusion.samplers import cfg_denoiser, flow_times, sample_euler
from tinysora.dit.model import DiT, DiTConfig
from tinysora.io.checkpoint import load_pretrained
from tinysora.io.frames import frames_to_tensor, tensor_to_frames
from tinysora.text.encoder import TextEncoder
from tinysora.vae.model import VideoVAE
from tinysora.worlds.detect import detect
from tinysora.worlds.shapes import render, sample_scene


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vae", default="weights/vae")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.manual_seed(0)
    vae = load_pretrained(VideoVAE, args.vae)
    scenes = [sample_scene(s) for s in range(args.clips)]
    with torch.no_grad():
        x = torch.stack([frames_to_tensor(render(s, 64, 64, 17)) for s in scenes])
        z = vae.normalize(vae.encode(x).mean)  # (N, C, 5, 8, 8)
    encoder = TextEncoder()
    text, mask = encoder([s.caption for s in scenes])
    dit = DiT(DiTConfig(in_channels=z.shape[1], width=128, depth=4, heads=4))
    opt = torch.optim.AdamW(dit.parameters(), lr=args.lr)
    flow, g = FlowConfig(), torch.Generator().manual_seed(0)
    for step in range(args.steps):
        t = sample_timesteps(len(z), 80, flow, g)
        noise = torch.randn(z.shape, generator=g)
        with autocast():
            pred = dit(add_noise(z, t, noise), t, text, mask)
        loss = (pred.float() - velocity_target(z, noise)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.4f}")
    dit.eval()
    guided = cfg_denoiser(lambda x, t, **c: dit(x, t, **c), 1.0)
    with torch.no_grad():
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
        extra = {"cond": {"text": text, "text_mask": mask}}
        sample = sample_euler(guided, noise, flow_times(30), extra_args=extra)
        frames = vae.decode(vae.denormalize(sample), num_frames=17)
    for i, s in enumerate(scenes):
        rel = float((sample[i] - z[i]).norm() / z[i].norm())
        found = [o.description for o in detect(tensor_to_frames(frames[i])).objects]
        print(f"{s.caption!r}: latent rel. error {rel:.3f}; detector: {found}")


if __name__ == "__main__":
    main()
