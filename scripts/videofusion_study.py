"""VideoFusion decomposed noise vs independent noise at equal compute (issue 17).

Two runs of the scaling study's recipe (``configs/dit_scaling.toml``, same clips, same
schedule rules, ``scripts/scaling_study.py``) that differ only in ``[flow] shared_noise``:
0 (i.i.d. noise per latent frame, the default) and ``--shared L`` (noise = sqrt(L) x a
base shared by all latent frames + sqrt(1 - L) x a per-frame residual, in training and in
sampling). Each is judged on its final EMA weights by prompt adherence (single and two
objects, ``tinysora eval adherence``'s groups) and motion quality (``tinysora eval
dynamics``: smoothness of the tracked paths, permanence through crossings):

    python scripts/videofusion_study.py train iid --flops 1e14      # runs/videofusion/iid
    python scripts/videofusion_study.py train shared --flops 1e14 --shared 0.5
    python scripts/videofusion_study.py evaluate --n 50
    python scripts/videofusion_study.py report                      # bench/results/

Validation losses are each run's own (its noise law), so the decision rests on the
generated clips, not on the loss.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from scaling_study import (  # noqa: E402 - the study's recipe, budget rule and curves
    GROUPS,
    RESULTS,
    SHARED_CACHE,
    milestone_steps,
    run_curves,
    study_recipe,
)

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "videofusion"
ARMS = ("iid", "shared")


def cmd_train(args: argparse.Namespace) -> None:
    from tinysora.train.dit import train_dit
    from tinysora.train.recipe import DiTRecipe

    out = RUNS / args.arm
    out.mkdir(parents=True, exist_ok=True)
    recipe = study_recipe(args.preset, args.flops)
    recipe.flow.shared_noise = args.shared if args.arm == "shared" else 0.0
    config = out / "study_recipe.json"
    if args.resume and config.is_file():  # keep the schedule the run started with
        recipe = DiTRecipe.load(config)
    recipe.save(config)
    cache = out / "latents.safetensors"
    if SHARED_CACHE.is_file() and not cache.exists():
        os.link(SHARED_CACHE, cache)
    print(f"{args.arm}: {args.preset}, {recipe.train.steps} steps, "
          f"shared_noise {recipe.flow.shared_noise}")  # fmt: skip
    train_dit(config, out, resume=args.resume, device=args.device)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from tinysora.eval import adherence, dynamics
    from tinysora.pipeline import TextToVideoPipeline
    from tinysora.train.dit import export_checkpoint

    for arm in ARMS:
        run = RUNS / arm
        path = run / "evaluation.json"
        if path.is_file() and json.loads(path.read_text())["n"] >= args.n:
            continue
        step = milestone_steps(run)[-1]
        model = export_checkpoint(run, run / "snapshots" / f"step_{step:08d}", step)
        pipe = TextToVideoPipeline.from_pretrained(model).to(args.device)
        start = time.perf_counter()
        adh = adherence.evaluate(pipe, args.n, groups=GROUPS)
        dyn = dynamics.evaluate(pipe, args.n)
        result = {
            "n": args.n,
            "step": step,
            "shared_noise": pipe.config.shared_noise,
            "seconds": time.perf_counter() - start,
            "adherence": {
                g: {k: adh[g][k] for k in ("all_right", "all_right_ci95", "per_attribute")}
                for g in GROUPS
            },
            "dynamics": {g: {k: v for k, v in r.items() if k != "rows"} for g, r in dyn.items()},
        }
        path.write_text(json.dumps(result, indent=1))
        print(arm, {g: result["adherence"][g]["all_right"] for g in GROUPS})
        for group, r in dyn.items():
            print("\n".join(dynamics.summary_lines(group, r)))


def _row(e: dict) -> dict:
    """The table's numbers of one arm."""
    d = e["dynamics"]
    return {
        "shared_noise": e["shared_noise"],
        **{f"{g}_all_right": e["adherence"][g]["all_right"] for g in GROUPS},
        **{f"single_{k}": v for k, v in e["adherence"]["single"]["per_attribute"].items()},
        "objects_found": d["all"]["found"] / d["all"]["objects"],
        "residual_px_median": d["all"]["smoothness"]["residual_px_median"],
        "residual_px_median_crossing": d["two_crossing"]["smoothness"]["residual_px_median"],
        "r2_median": d["all"]["smoothness"]["r2_median"],
        "smooth_fraction": d["all"]["smoothness"]["smooth_fraction"],
        "area_drift_mean": d["all"]["consistency"]["area_drift_mean"],
        "color_drift_mean": d["all"]["consistency"]["color_drift_mean"],
        "permanence": d["two_crossing"]["permanence"]["rate"],
        "permanence_ci95": d["two_crossing"]["permanence"]["rate_ci95"],
    }


def cmd_report(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {arm: run_curves(RUNS / arm) for arm in ARMS}
    evals = {arm: json.loads((RUNS / arm / "evaluation.json").read_text()) for arm in ARMS}
    table = {arm: _row(evals[arm]) for arm in ARMS}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for arm in ARMS:
        pts = curves[arm]["train_loss"]
        label = f"{arm} (shared_noise {table[arm]['shared_noise']:g})"
        ax.plot([p["flops"] for p in pts], [p["loss"] for p in pts], label=label)
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("training loss (each run's own noise law)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"VideoFusion noise vs i.i.d., {curves['iid']['preset']}, equal FLOPs")
    fig.tight_layout()
    stem = RESULTS / f"{time.strftime('%Y-%m-%d')}-videofusion"
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    stem.with_suffix(".json").write_text(
        json.dumps({"table": table, "evaluation": evals, "curves": curves}, indent=1)
    )
    for arm, row in table.items():
        print(arm, json.dumps(row))
    print(stem.with_suffix(".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one arm for a FLOP budget")
    train.add_argument("arm", choices=ARMS)
    train.add_argument("--preset", default="tiny")
    train.add_argument("--flops", type=float, default=1e14, help="training FLOP budget")
    train.add_argument("--shared", type=float, default=0.5, help="shared_noise of the arm")
    train.add_argument("--resume", action="store_true")
    train.add_argument("--device")
    ev = sub.add_parser("evaluate", help="adherence + dynamics of both arms' final weights")
    ev.add_argument("--n", type=int, default=50, help="prompts / scenes per group")
    ev.add_argument("--device")
    sub.add_parser("report", help="table + plot into bench/results")
    args = parser.parse_args()
    {"train": cmd_train, "evaluate": cmd_evaluate, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
