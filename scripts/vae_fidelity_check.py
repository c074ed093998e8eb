"""A quick look at a VAE run in progress against the bundled VAE (issue 30): test-split
PSNR and fidelity on 40 clips, and fidelity on 20 renders of a large bouncing square
(the fast motion the 4x time compression smears).

    OMP_NUM_THREADS=1 python scripts/vae_fidelity_check.py runs/vae_v2 [--weights ema]

Reads the run's latest checkpoint (``ema`` or ``model`` weights) with its recipe's
VAEConfig; the full measurement of a finished VAE is ``tinysora eval vae --model DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tinysora.eval.fidelity import clip_fidelity, fidelity_line, summarize
from tinysora.io.checkpoint import load_into, load_pretrained, load_tensors, resolve_model_dir
from tinysora.nn.metrics import psnr
from tinysora.train.trainer import latest_checkpoint
from tinysora.train.vae import VAERecipe
from tinysora.vae.model import VideoVAE, reconstruct
from tinysora.worlds.shapes import parse_caption, render, sample_scene, split_seed

BOUNCING = "a large cyan square bouncing on a black background"


def measure(vae: VideoVAE) -> tuple[float, dict, dict]:
    bouncing = [
        clip_fidelity(reconstruct(vae, render(parse_caption(BOUNCING, 100 + i), 64, 64, 17)))
        for i in range(20)
    ]
    scores, test = [], []
    for i in range(40):
        clip = render(sample_scene(split_seed("test", i)), 64, 64, 17)
        recon = reconstruct(vae, clip)
        scores.append(psnr(recon, clip))
        test.append(clip_fidelity(recon))
    return float(np.mean(scores)), summarize(test), summarize(bouncing)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a `tinysora train vae` run directory")
    ap.add_argument("--weights", choices=("ema", "model"), default="ema")
    args = ap.parse_args()
    found = latest_checkpoint(args.run / "checkpoints")
    if found is None:
        raise SystemExit(f"{args.run} has no checkpoint yet")
    folder, state = found
    vae = VideoVAE(VAERecipe.load(args.run / "recipe.json").model)
    load_into(vae, load_tensors(folder / f"{args.weights}.safetensors"), str(folder))
    runs = {
        "bundled VAE": load_pretrained(VideoVAE, resolve_model_dir(None, "vae")),
        f"{args.run} step {state['step']} ({args.weights})": vae.eval(),
    }
    for name, model in runs.items():
        score, test, bouncing = measure(model)
        print(f"{name}: test PSNR {score:.2f} dB")
        print(f"  test clips       {fidelity_line(test)}")
        print(f"  bouncing squares {fidelity_line(bouncing)}")


if __name__ == "__main__":
    main()
