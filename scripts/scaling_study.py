"""Scaling study of the text-to-video DiT (issue 15), nanoGPT / Chinchilla style.

Every preset trains from scratch with the same recipe (``configs/dit_scaling.toml``) on
the same Shapes World clips, for the same training FLOP budget. Along the way each run
logs its fixed validation loss (``tinysora.train.validation``) and keeps a checkpoint at
every milestone; ``evaluate`` measures prompt adherence (single- and two-object prompts,
the ``tinysora eval adherence`` groups) of each milestone's EMA weights, and ``report``
plots both against training FLOPs and writes the JSON:

    python scripts/scaling_study.py train tiny --flops 3.5e14      # runs/scaling/tiny
    python scripts/scaling_study.py train XS/2 --flops 3.5e14 --resume
    python scripts/scaling_study.py train XS/2 --subjects            # per-subject text arm
    python scripts/scaling_study.py evaluate tiny --n 50
    python scripts/scaling_study.py report                         # bench/results/

Per preset the script sets: steps = budget / (FLOPs per step at 64x64x17, batch 32,
``tinysora.dit.flops``), warmup 5% of the steps, lr 5e-4 x 256 / width (the bundled XS/2
run's lr; wider models get less), EMA decay 1 - 10 / steps (a horizon of a tenth of the
run, so short runs are not judged on a stale average) and ``MILESTONES`` evenly spaced
checkpoints. A latent cache at ``runs/cache20k/latents.safetensors`` (the recipe's 20,000
clips, e.g. from an earlier run) is linked into each run instead of encoding it again.
Runs are ordinary ``tinysora train dit`` runs: ``--resume`` continues a killed one, and
``OMP_NUM_THREADS=1`` keeps a background run from fighting the foreground for the cores.
The report also draws the bundled XS/2 model's own learning curve (16,000 steps,
``bench/results/2026-11-22-adherence-dit-*.json``) as adherence points.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from tinysora.dit.flops import dit_flops_per_sample
from tinysora.dit.model import DiTConfig
from tinysora.dit.patchify import grid_size
from tinysora.train.recipe import DiTRecipe
from tinysora.vae.model import SPACE_FACTOR, latent_frames

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "dit_scaling.toml"
RUNS = ROOT / "runs" / "scaling"
SHARED_CACHE = ROOT / "runs" / "cache20k" / "latents.safetensors"
RESULTS = ROOT / "bench" / "results"
MILESTONES = 8
BASE_WIDTH, BASE_LR = 256, 5e-4
GROUPS = ("single", "two")
# the bundled model's stage-1 run (XS/2, the dit_shapes.toml recipe): step -> adherence JSON
BUNDLE_CURVE = {s: f"2026-11-22-adherence-dit-{s}.json" for s in (3000, 6000, 10000, 16000)}


def run_name(preset: str, subjects: bool = False) -> str:
    return preset.replace("/", "") + ("-subjects" if subjects else "")


def latent_grid(recipe: DiTRecipe) -> tuple[int, int, int]:
    """Token grid of one training clip (the VAE's compression, the recipe's patch)."""
    latent = (
        latent_frames(recipe.frames),
        recipe.height // SPACE_FACTOR,
        recipe.width // SPACE_FACTOR,
    )
    return grid_size(latent, recipe.model.patch)


def flops_per_step(recipe: DiTRecipe) -> float:
    grid = latent_grid(recipe)
    per_clip = dit_flops_per_sample(recipe.model, grid, recipe.pipeline.text_max_length)
    return per_clip * recipe.batch_size


def study_recipe(preset: str, budget: float, subjects: bool = False) -> DiTRecipe:
    """The base recipe with the preset and the schedule of a ``budget``-FLOP run
    (``subjects``: per-subject text states, ``[pipeline] text_subjects``)."""
    recipe = DiTRecipe.load(BASE)
    recipe.pipeline.text_subjects = subjects
    recipe.model = DiTConfig.from_dict({"preset": preset, "time_span": recipe.model.time_span})
    steps = math.ceil(budget / flops_per_step(recipe) / MILESTONES) * MILESTONES
    t = recipe.train
    t.steps = steps
    t.warmup_steps = max(1, steps // 20)
    t.lr = BASE_LR * BASE_WIDTH / recipe.model.width
    t.ema_decay = 1 - 10 / steps
    t.checkpoint_every = t.eval_every = steps // MILESTONES
    t.keep_checkpoints = MILESTONES
    return recipe


def cmd_train(args: argparse.Namespace) -> None:
    from tinysora.train.dit import train_dit

    out = RUNS / run_name(args.preset, args.subjects)
    out.mkdir(parents=True, exist_ok=True)
    recipe = study_recipe(args.preset, args.flops, args.subjects)
    config = out / "study_recipe.json"
    if args.resume and config.is_file():  # keep the schedule the run started with
        recipe = DiTRecipe.load(config)
    recipe.save(config)
    cache = out / "latents.safetensors"
    if SHARED_CACHE.is_file() and not cache.exists():
        os.link(SHARED_CACHE, cache)
    print(
        f"{args.preset}: {recipe.train.steps} steps of {flops_per_step(recipe):.3g} FLOPs, "
        f"lr {recipe.train.lr:.3g}, checkpoints every {recipe.train.checkpoint_every}"
    )
    train_dit(config, out, resume=args.resume, device=args.device)


def milestone_steps(run: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (run / "checkpoints").glob("step_*"))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from tinysora.eval.adherence import evaluate
    from tinysora.pipeline import TextToVideoPipeline
    from tinysora.train.dit import export_checkpoint

    run = RUNS / run_name(args.preset, args.subjects)
    path = run / "adherence.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    steps = milestone_steps(run)
    for step in steps[len(steps) - 1 :: -args.every][::-1]:  # the last, then every k-th back
        if str(step) in done and done[str(step)]["n"] >= args.n:
            continue
        model = export_checkpoint(run, run / "snapshots" / f"step_{step:08d}", step)
        pipe = TextToVideoPipeline.from_pretrained(model).to(args.device)
        start = time.perf_counter()
        report = evaluate(pipe, args.n, groups=GROUPS)
        done[str(step)] = {
            "n": args.n,
            "seconds": time.perf_counter() - start,
            **{
                g: {k: report[g][k] for k in ("all_right", "all_right_ci95", "per_attribute")}
                for g in GROUPS
            },
        }
        path.write_text(json.dumps(done, indent=1))
        print(
            f"{args.preset} step {step}: "
            + ", ".join(f"{g} {done[str(step)][g]['all_right']:.1%}" for g in GROUPS)
        )


def run_curves(run: Path) -> dict:
    """Validation loss and adherence of one study run against training FLOPs."""
    recipe = DiTRecipe.load(run / "study_recipe.json")
    per_step = flops_per_step(recipe)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    val = [(r["step"], r["eval"]["val_loss"]) for r in log if "eval" in r]
    train = [(r["step"], r["loss"]) for r in log if "loss" in r]
    seconds = sum(r["s_per_step"] for r in log if "s_per_step" in r) * recipe.train.log_every
    adherence = (
        json.loads((run / "adherence.json").read_text())
        if (run / "adherence.json").is_file()
        else {}
    )
    params = _parameters(recipe.model)
    return {
        "preset": _preset_of(recipe.model)
        + (" per-subject text" if recipe.pipeline.text_subjects else ""),
        "parameters": params,
        "flops_per_step": per_step,
        "steps": recipe.train.steps,
        "lr": recipe.train.lr,
        "train_seconds": seconds,
        "val_loss": [{"step": s, "flops": s * per_step, "val_loss": v} for s, v in val],
        "train_loss": [{"step": s, "flops": s * per_step, "loss": v} for s, v in train[::10]],
        "adherence": [
            {
                "step": int(s),
                "flops": int(s) * per_step,
                **{g: a[g]["all_right"] for g in GROUPS},
                "n": a["n"],
            }
            for s, a in sorted(adherence.items(), key=lambda kv: int(kv[0]))
        ],
    }


def _parameters(cfg: DiTConfig) -> int:
    from tinysora.dit.model import DiT

    return sum(p.numel() for p in DiT(cfg).parameters())


def _preset_of(cfg: DiTConfig) -> str:
    from tinysora.dit.model import PRESETS

    for name, make in PRESETS.items():
        p = make()
        if (p.width, p.depth, p.heads) == (cfg.width, cfg.depth, cfg.heads):
            return name
    return f"w{cfg.width}d{cfg.depth}"


def bundle_curve() -> dict:
    """The bundled XS/2 model's stage-1 learning curve (adherence JSONs of its run)."""
    recipe = DiTRecipe.load(ROOT / "configs" / "dit_shapes.toml")
    per_step = flops_per_step(recipe)
    points = []
    for step, name in BUNDLE_CURVE.items():
        path = RESULTS / name
        if path.is_file():
            d = json.loads(path.read_text())
            row = {g: d[g]["all_right"] for g in GROUPS if g in d}
            points.append(
                {"step": step, "flops": step * per_step, **row, "n": d["single"]["prompts"]}
            )
    return {
        "preset": "XS/2 (bundled run, 16k steps)",
        "flops_per_step": per_step,
        "adherence": points,
    }


def cmd_report(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [
        run_curves(p.parent)
        for p in sorted(RUNS.glob("*/study_recipe.json"))
        if (p.parent / "log.jsonl").is_file()
    ]
    bundle = bundle_curve()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for r in runs:
        label = f"{r['preset']} ({r['parameters'] / 1e6:.1f}M)"
        xs = [p["flops"] for p in r["val_loss"]]
        axes[0].plot(xs, [p["val_loss"] for p in r["val_loss"]], "o-", label=label)
        for ax, g in zip(axes[1:], GROUPS, strict=True):
            pts = r["adherence"]
            ax.plot([p["flops"] for p in pts], [100 * p[g] for p in pts], "o-", label=label)
    for ax, g in zip(axes[1:], GROUPS, strict=True):
        pts = [p for p in bundle["adherence"] if g in p]
        ax.plot(
            [p["flops"] for p in pts], [100 * p[g] for p in pts], "k^--", label=bundle["preset"]
        )
        ax.set_ylabel(f"{g}-object prompts all right (%)")
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("validation loss (64 val clips, 4 flow times)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("tinysora DiT scaling on Shapes World, 64x64x17, batch 32")
    fig.tight_layout()
    stem = RESULTS / f"{time.strftime('%Y-%m-%d')}-scaling-study"
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    report = {
        "name": "scaling-study",
        "date": time.strftime("%Y-%m-%d"),
        "recipe": str(BASE.relative_to(ROOT)),
        "runs": runs,
        "bundle_run": bundle,
    }
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    for r in runs:
        last = r["val_loss"][-1] if r["val_loss"] else {}
        print(
            f"{r['preset']:5s} {r['parameters'] / 1e6:5.1f}M  steps {r['steps']}  "
            f"val loss {last.get('val_loss', float('nan')):.4f} at {last.get('flops', 0):.3g}"
        )
    print(stem.with_suffix(".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one preset for a FLOP budget")
    train.add_argument("preset")
    train.add_argument("--flops", type=float, default=3.5e14, help="training FLOP budget")
    train.add_argument("--resume", action="store_true")
    train.add_argument("--subjects", action="store_true", help="per-subject text states")
    train.add_argument("--device")
    ev = sub.add_parser("evaluate", help="adherence of each kept checkpoint of a run")
    ev.add_argument("preset")
    ev.add_argument("--n", type=int, default=50, help="prompts per group (default 50)")
    ev.add_argument("--every", type=int, default=2, help="every k-th milestone (default 2)")
    ev.add_argument("--subjects", action="store_true", help="the per-subject text run")
    ev.add_argument("--device")
    sub.add_parser("report", help="plot + JSON into bench/results")
    args = parser.parse_args()
    {"train": cmd_train, "evaluate": cmd_evaluate, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
