"""Choose the VAE's latent channel count by measurement: the main recipe (same schedule,
same data) trained with latent_channels in {4, 8, 16} and stopped after --stop-at steps;
prints the validation PSNR of each at that step.

    python scripts/vae_latent_sweep.py --stop-at 1500 --channels 4 16 --out runs/vae_sweep
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tinysora.train.vae import VAERecipe, train_vae


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/vae_shapes.toml")
    parser.add_argument("--stop-at", type=int, default=1500)
    parser.add_argument("--channels", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--out", default="runs/vae_sweep")
    args = parser.parse_args()
    results = {}
    for c in args.channels:
        recipe = VAERecipe.load(args.config)
        recipe.model.latent_channels = c
        run = Path(args.out) / f"c{c}"
        recipe.save(run / "sweep_recipe.json")
        train_vae(run / "sweep_recipe.json", run, resume=True, stop_at=args.stop_at)
        lines = (run / "log.jsonl").read_text().splitlines()
        evals = [json.loads(line) for line in lines if '"eval"' in line]
        results[c] = evals[-1]["eval"]["val_psnr"]
        print(f"latent_channels={c}: val PSNR {results[c]:.2f} dB at step {evals[-1]['step']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
