"""The GPT stage's report (issue 19): its learning curve (train and held-out next-code
loss and accuracy) and the scores of `tinysora eval voice --tts`, in one JSON + PNG.

    python scripts/tts_report.py --gpt runs/voice/gpt \\
        --eval bench/results/2026-12-03-tts-eval.json --out bench/results/2026-12-03-tts
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curves(log: Path) -> dict:
    train, val = {}, {}
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if "eval" in r:
            val[r["step"]] = (r["eval"]["val_loss"], r["eval"]["val_acc"])
        elif "loss" in r:
            train[r["step"]] = (r["loss"], r["acc"])
    return {"train": [(s, *v) for s, v in sorted(train.items())],
            "val": [(s, *v) for s, v in sorted(val.items())]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpt", type=Path, required=True, help="a voice-gpt run directory")
    ap.add_argument("--eval", type=Path, help="tinysora eval voice --tts --json report")
    ap.add_argument("--out", type=Path, required=True, help="path stem for .json and .png")
    args = ap.parse_args()
    report = {"gpt": curves(args.gpt / "log.jsonl"),
              "recipe": json.loads((args.gpt / "recipe.json").read_text())}  # fmt: skip
    if args.eval:
        report["eval"] = {k: v for k, v in json.loads(args.eval.read_text()).items()
                          if k != "rows"}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    steps, loss, acc = zip(*report["gpt"]["train"], strict=True)
    a.plot(steps, loss, lw=0.8, label="train")
    b.plot(steps, acc, lw=0.8, label="train")
    if report["gpt"]["val"]:
        steps, loss, acc = zip(*report["gpt"]["val"], strict=True)
        a.plot(steps, loss, "o-", label="held-out sentences")
        b.plot(steps, acc, "o-", label="held-out sentences")
    a.set(xlabel="step", ylabel="cross-entropy (nats)", title="GPT stage: next code", ylim=(0, 7))
    b.set(xlabel="step", ylabel="top-1 accuracy", title="GPT stage: next code")
    a.legend()
    b.legend()
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=110)
    print(f"wrote {args.out.with_suffix('.json')} and .png")


if __name__ == "__main__":
    main()
