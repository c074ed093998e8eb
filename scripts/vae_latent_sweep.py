"""Choose the VAE's latent channel count by measurement: short runs of the main recipe with
latent_channels in {4, 8, 16}, same steps and data; prints validation PSNR of each.

    python scripts/vae_latent_sweep.py --steps 300 --out runs/vae_sweep
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tinysora.train.vae import VAERecipe, train_vae


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/vae_shapes.toml")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--channels", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--out", default="runs/vae_sweep")
    args = parser.parse_args()
    results = {}
    for c in args.channels:
        recipe = VAERecipe.load(args.config)
        recipe.model.latent_channels = c
        recipe.train.steps = args.steps
        recipe.train.warmup_steps = min(recipe.train.warmup_steps, args.steps // 5)
        recipe.train.eval_every = args.steps
        recipe.train.checkpoint_every = args.steps
        run = Path(args.out) / f"c{c}"
        recipe.save(run / "sweep_recipe.json")
        train_vae(run / "sweep_recipe.json", run, resume=True)
        lines = (run / "log.jsonl").read_text().splitlines()
        evals = [json.loads(line) for line in lines if '"eval"' in line]
        results[c] = evals[-1]["eval"]["val_psnr"]
        print(f"latent_channels={c}: val PSNR {results[c]:.2f} dB after {args.steps} steps")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
