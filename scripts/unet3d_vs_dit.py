"""UNet3D vs DiT at equal training FLOPs (issue 17): diffusers' ``UNet3DConditionModel``
(ModelScope's denoiser family) trained as a velocity predictor on our latents, with our
flow objective, text encoder, data and recipe, against our DiT run of the same budget
from the scaling study (``scripts/scaling_study.py``, its reported curves in
``bench/results/2026-12-02-scaling-study.json``).

    python scripts/unet3d_vs_dit.py train --flops 2e14 [--resume]    # runs/unet3d
    python scripts/unet3d_vs_dit.py evaluate --n 50                   # both models
    python scripts/unet3d_vs_dit.py report                            # bench/results/

The UNet gets the DiT's call (``UNet3DDenoiser.forward(x, t, text, text_mask)``), so
the same trainer, validation loss and pipeline run it; its FLOPs per sample are counted
with ``torch.utils.flop_counter`` (forward x 3 for forward + backward) and its steps set
to the same budget. ``evaluate`` measures adherence (single and two objects) and the
sampling time of a 64x64x17 clip for both; ``report`` writes the table + plot.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from scaling_study import (  # noqa: E402 - the study's recipe, budget rule and DiT run
    GROUPS,
    MILESTONES,
    RESULTS,
    SHARED_CACHE,
    latent_grid,
    run_curves,
    study_recipe,
)

from tinysora.train.recipe import DiTRecipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "unet3d"
STUDY = ROOT / "bench" / "results" / "2026-12-02-scaling-study.json"  # the DiT side
UNET_LR = 2e-4  # a UNet's usual AdamW rate (the DiT's 5e-4 is tuned for transformers)


@dataclass
class UNetConfig:
    """What the pipeline reads of a denoiser's config, plus the UNet's own sizes."""

    in_channels: int = 4
    channels: tuple[int, ...] = (64, 128, 192)
    layers_per_block: int = 1
    head_dim: int = 32
    text_dim: int = 384  # MiniLM's states
    patch: tuple[int, int, int] = (1, 2, 2)  # for the pipeline's token count / sizes only


class UNet3DDenoiser(nn.Module):
    """diffusers' UNet3DConditionModel as a velocity predictor with the DiT's call; flow
    time t in [0, 1] enters as the UNet's timestep t x 1000."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        from diffusers import UNet3DConditionModel

        self.config = config
        n = len(config.channels)
        self.unet = UNet3DConditionModel(
            in_channels=config.in_channels,
            out_channels=config.in_channels,
            block_out_channels=config.channels,
            layers_per_block=config.layers_per_block,
            down_block_types=("CrossAttnDownBlock3D",) * (n - 1) + ("DownBlock3D",),
            up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (n - 1),
            cross_attention_dim=config.text_dim,
            attention_head_dim=config.head_dim,
            norm_num_groups=32,
        )

    def forward(self, x, t, text, text_mask=None, given=None, clean=None):
        if given is not None:
            raise ValueError("the UNet3D baseline is trained without the conditioning tasks")
        t = t.expand(len(x)) if t.dim() == 0 else t
        return self.unet(x, t * 1000, encoder_hidden_states=text).sample


def load_unet(run: Path) -> UNet3DDenoiser:
    """A fresh UNet of the sizes a run recorded (``unet_config.json``)."""
    sizes = json.loads((run / "unet_config.json").read_text())
    sizes.pop("flops_per_sample")
    return UNet3DDenoiser(UNetConfig(**{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in sizes.items()}))  # fmt: skip


def unet_flops_per_sample(model: UNet3DDenoiser, recipe: DiTRecipe) -> float:
    """Forward FLOPs of one clip x 3 (forward + backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    c, (t, h, w) = model.config.in_channels, latent_grid(recipe)
    x = torch.zeros(1, c, t, 2 * h, 2 * w)  # the grid is in patches of 2 x 2
    text = torch.zeros(1, recipe.pipeline.text_max_length, model.config.text_dim)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.full((1,), 0.5), text)
    return 3.0 * counter.get_total_flops()


def unet_recipe(budget: float, per_sample: float) -> DiTRecipe:
    recipe = study_recipe("XS/2", budget)  # the same data, schedule rules and batch
    steps = math.ceil(budget / (per_sample * recipe.batch_size) / MILESTONES) * MILESTONES
    tr = recipe.train
    tr.steps, tr.warmup_steps, tr.lr = steps, max(1, steps // 20), UNET_LR
    tr.ema_decay = 1 - 10 / steps
    tr.checkpoint_every = tr.eval_every = steps // MILESTONES
    tr.compile = False  # diffusers' blocks: not the DiT's compile_blocks
    return recipe


def cmd_train(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    from tinysora.device import resolve_device
    from tinysora.train.dit import fit, run_steps
    from tinysora.train.validation import val_loss_fn

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    cache = out / "latents.safetensors"
    if SHARED_CACHE.is_file() and not cache.exists():
        os.link(SHARED_CACHE, cache)
    probe = study_recipe("XS/2", args.flops)  # the data side of the recipe
    steps = run_steps(probe, out, device)
    torch.manual_seed(0)
    model = UNet3DDenoiser(UNetConfig(in_channels=steps.latent_channels))
    per_sample = unet_flops_per_sample(model, probe)
    recipe = unet_recipe(args.flops, per_sample)
    config = out / "study_recipe.json"
    if args.resume and config.is_file():  # keep the schedule the run started with
        recipe = DiTRecipe.load(config)
    recipe.save(config)
    (out / "unet_config.json").write_text(
        json.dumps({**dataclasses.asdict(model.config), "flops_per_sample": per_sample})
    )
    steps = dataclasses.replace(steps, flops_fn=lambda batch: len(batch[0]) * per_sample)
    params = sum(p.numel() for p in model.parameters())
    print(f"UNet3D {params / 1e6:.1f}M, {per_sample:.3g} FLOPs/clip, {recipe.train.steps} steps")
    model.to(device)
    evaluate = val_loss_fn(recipe, device) if recipe.val_clips else None
    trainer = fit(model, recipe, steps, out, args.resume, evaluate)
    save_file(trainer.ema_state(), out / "ema.safetensors")


def _pipeline(denoiser, recipe: DiTRecipe, device):
    from tinysora.io.checkpoint import load_pretrained, resolve_model_dir
    from tinysora.pipeline import TextToVideoPipeline
    from tinysora.text.encoder import TextEncoder
    from tinysora.vae.model import VideoVAE

    vae = load_pretrained(VideoVAE, resolve_model_dir(recipe.vae, "vae"))
    encoder = TextEncoder(max_length=recipe.pipeline.text_max_length)
    config = recipe.pipeline.with_shift_of(recipe.flow)
    return TextToVideoPipeline(vae, denoiser.eval(), encoder, config).to(device)


def sampling_seconds(pipe, repeats: int = 3) -> float:
    """Median wall time of one 64x64x17 clip at the model's default steps."""
    times = []
    for k in range(repeats + 1):
        start = time.perf_counter()
        pipe("a red circle moving left", generator=torch.Generator().manual_seed(k), progress=False)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[repeats // 2]  # the first is warm-up


def study_dit() -> dict:
    """The scaling study's XS/2 run (curves + adherence at its milestones), as reported."""
    study = json.loads(STUDY.read_text())
    return next(r for r in study["runs"] if r["preset"] == "XS/2")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """UNet: adherence of its final EMA weights. Both: sampling time at the recipe's
    steps (the DiT's is an XS/2 of the study's recipe: time does not depend on weights;
    its adherence is the study's, measured the same way)."""
    from safetensors.torch import load_file

    from tinysora.dit.model import DiT
    from tinysora.eval.adherence import evaluate

    out = Path(args.out)
    recipe = DiTRecipe.load(out / "study_recipe.json")
    unet = load_unet(out)
    unet.load_state_dict(load_file(out / "ema.safetensors"))
    unet_pipe = _pipeline(unet, recipe, args.device)
    report = evaluate(unet_pipe, args.n, groups=GROUPS)
    dit_recipe = study_recipe("XS/2", 2e14)
    dit_recipe.model.in_channels = unet.config.in_channels
    torch.manual_seed(0)
    dit_pipe = _pipeline(DiT(dit_recipe.model), dit_recipe, args.device)
    dit = study_dit()["adherence"][-1]
    results = {
        "DiT XS/2": {
            "n": dit["n"],
            "sample_s": sampling_seconds(dit_pipe),
            **{g: dit[g] for g in GROUPS},
        },
        "UNet3D": {
            "n": args.n,
            "sample_s": sampling_seconds(unet_pipe),
            **{g: report[g]["all_right"] for g in GROUPS},
        },
    }
    for name, row in results.items():
        print(name, row)
    (out / "evaluation.json").write_text(json.dumps(results, indent=1))


def cmd_report(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    dit = study_dit()
    unet = run_curves(out)  # its FLOPs and size are the UNet's, not the recipe's DiT's
    per_sample = json.loads((out / "unet_config.json").read_text())["flops_per_sample"]
    per_step = per_sample * DiTRecipe.load(out / "study_recipe.json").batch_size
    unet["preset"], unet["flops_per_step"] = "UNet3D", per_step
    unet["parameters"] = sum(p.numel() for p in load_unet(out).parameters())
    for point in unet["val_loss"] + unet["train_loss"] + unet["adherence"]:
        point["flops"] = point["step"] * per_step
    evaluation = json.loads((out / "evaluation.json").read_text())
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in (dit, unet):
        label = f"{r['preset']} ({r['parameters'] / 1e6:.1f}M)"
        ax.plot([p["flops"] for p in r["val_loss"]], [p["val_loss"] for p in r["val_loss"]],
                "o-", label=label)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("UNet3D vs DiT on Shapes World, equal training FLOPs")
    fig.tight_layout()
    stem = RESULTS / f"{time.strftime('%Y-%m-%d')}-unet3d-vs-dit"
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    table = {
        name: {
            "parameters": r["parameters"],
            "flops_per_step": r["flops_per_step"],
            "steps": r["steps"],
            "final_val_loss": r["val_loss"][-1]["val_loss"],
            **evaluation[key],
        }
        for name, r, key in (("DiT XS/2", dit, "DiT XS/2"), ("UNet3D", unet, "UNet3D"))
    }
    stem.with_suffix(".json").write_text(json.dumps({"table": table, "dit": dit, "unet": unet}))
    for name, row in table.items():
        print(name, {k: v for k, v in row.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(OUT), help=f"the UNet's run ({OUT})")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the UNet3D for a FLOP budget")
    train.add_argument("--flops", type=float, default=2e14)
    train.add_argument("--resume", action="store_true")
    train.add_argument("--device")
    ev = sub.add_parser("evaluate", help="adherence + sampling time of both models")
    ev.add_argument("--n", type=int, default=50)
    ev.add_argument("--device")
    sub.add_parser("report", help="table + plot into bench/results")
    args = parser.parse_args()
    {"train": cmd_train, "evaluate": cmd_evaluate, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
