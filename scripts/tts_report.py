"""The GPT stage's report (issue 19): its learning curve (train and held-out next-code
loss, accuracy and phoneme gain) and the scores of `tinysora eval voice --tts`, in one
JSON + PNG. Several runs chain (a run warm-started with ``--init`` from the one before
it continues its steps).

    python scripts/tts_report.py --gpt runs/voice/gpt runs/voice/gpt_ptr \\
        --eval bench/results/2026-12-03-tts-eval-pointer.json \\
        --out bench/results/2026-12-03-tts-pointer
    python scripts/tts_report.py --replot bench/results/2026-12-03-tts-pointer.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curves(log: Path, offset: int) -> dict:
    """Train (step, next-code loss, accuracy) and held-out (step, loss, accuracy, phoneme
    gain); a pointer run's next-code loss without its advance term."""
    train, val = {}, {}
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if "eval" in r:
            e = r["eval"]
            val[r["step"] + offset] = (e["val_loss"], e["val_acc"], e.get("phoneme_gain"))
        elif "loss" in r:
            train[r["step"] + offset] = (r.get("code_ce", r["loss"]), r["acc"])
    return {
        "train": [(s, *v) for s, v in sorted(train.items())],
        "val": [(s, *v) for s, v in sorted(val.items())],
    }


def plot(report: dict, path: Path) -> None:
    """The learning curves of ``report`` as a PNG: every point inside the axes (the loss
    on a log scale, from the first step's ~7 nats down to the last train batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, g) = plt.subplots(1, 3, figsize=(15, 4.2))
    runs = report["gpt"] if isinstance(report["gpt"], list) else [{"run": "gpt", **report["gpt"]}]
    for r in runs:
        name = Path(r["run"]).name
        steps, loss, acc = zip(*r["train"], strict=True)
        a.plot(steps, loss, lw=0.6, alpha=0.6, label=f"{name} train")
        b.plot(steps, acc, lw=0.6, alpha=0.6, label=f"{name} train")
        if r["val"]:
            val = [(*v, None)[:4] for v in r["val"]]  # reports before the gain had 3 columns
            steps, loss, acc, gain = zip(*val, strict=True)
            a.plot(steps, loss, "o-", ms=3, label=f"{name} held-out")
            b.plot(steps, acc, "o-", ms=3, label=f"{name} held-out")
            kept = [(s, x) for s, x in zip(steps, gain, strict=True) if x is not None]
            if kept:
                g.plot(*zip(*kept, strict=True), "o-", ms=3, label=name)
    a.set(xlabel="step", ylabel="cross-entropy (nats, log scale)", title="next-code loss")
    a.set_yscale("log")
    a.set_yticks([1.5, 2, 3, 4, 5, 7], labels=["1.5", "2", "3", "4", "5", "7"])
    a.minorticks_off()
    b.set(xlabel="step", ylabel="top-1 accuracy", title="next-code accuracy", ylim=(0, None))
    g.set(xlabel="step", ylabel="nats per code", title="phoneme gain (other text - true)")
    for ax in (a, b, g):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpt", type=Path, nargs="+", help="voice-gpt run directories, in order")
    ap.add_argument("--eval", type=Path, help="tinysora eval voice --tts --json report")
    ap.add_argument("--out", type=Path, help="path stem for .json and .png")
    ap.add_argument("--replot", type=Path, help="redraw the .png of a report .json")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(args.replot.read_text()), args.replot.with_suffix(".png"))
        return print(f"wrote {args.replot.with_suffix('.png')}")
    if not args.gpt or not args.out:
        ap.error("--gpt and --out are needed (or --replot REPORT.json)")
    runs, offset = [], 0
    for run in args.gpt:
        c = curves(run / "log.jsonl", offset)
        recipe = json.loads((run / "recipe.json").read_text())
        runs.append({"run": str(run), "first_step": offset, **c, "recipe": recipe})
        offset = c["train"][-1][0] if c["train"] else offset
    report = {"gpt": runs}
    if args.eval:
        report["eval"] = {k: v for k, v in json.loads(args.eval.read_text()).items() if k != "rows"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    plot(report, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and .png")


if __name__ == "__main__":
    main()
