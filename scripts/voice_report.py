"""The voice model's report (issue 18): learning curves, the content-code probes of every
content variant measured, and the offline judges' scores, in one JSON + PNG.

    python scripts/voice_report.py --sovits runs/voice/sovits \\
        --content runs/voice/content runs/voice/content2 ... \\
        --eval bench/results/2026-12-03-voice-eval.json \\
        --out bench/results/2026-12-03-voice

Each ``--content`` run contributes its ``probes.json`` and the stage settings that made
it (``recipe.json``); ``--sovits`` its ``log.jsonl`` (training mel L1 and the held-out
validation mel L1 against steps); ``--eval`` the report of ``tinysora eval voice``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SETTINGS = (
    "refine_steps",
    "phone_ctc",
    "speaker_adversarial",
    "codec_target",
    "codec_speaker_adversarial",
)


def content_row(run: Path) -> dict:
    recipe = json.loads((run / "recipe.json").read_text())
    probes = json.loads((run / "probes.json").read_text())
    row = {"run": str(run), **{k: recipe.get(k) for k in SETTINGS}}
    row["warp"] = recipe["model"].get("warp", 0.0)
    keys = (
        "phone_accuracy",
        "speaker_accuracy_codes",
        "speaker_accuracy_mel",
        "chance",
        "perplexity",
        "codes_used",
    )
    return {**row, **{k: probes[k] for k in keys}}


def curves(log: Path) -> dict:
    train, val = [], []
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if "eval" in r:
            val.append((r["step"], r["eval"]["val_mel_l1"]))
        elif "mel_l1" in r:
            train.append((r["step"], r["mel_l1"], r["loss_d"]))
    # a run restarted from scratch appends to the same log: keep the last pass over each step
    return {
        "train": sorted({s: (s, m, d) for s, m, d in train}.values()),
        "val": sorted(dict(val).items()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sovits", type=Path, nargs="+", required=True, help="SoVITS run dirs")
    ap.add_argument("--content", type=Path, nargs="+", required=True, help="content run dirs")
    ap.add_argument("--eval", type=Path, help="tinysora eval voice --json report")
    ap.add_argument("--out", type=Path, required=True, help="path stem for .json and .png")
    args = ap.parse_args()
    report = {
        "content": [content_row(r) for r in args.content],
        "sovits": {str(r): curves(r / "log.jsonl") for r in args.sovits},
    }
    if args.eval:
        full = json.loads(args.eval.read_text())
        report["eval"] = {k: v for k, v in full.items() if k != "rows"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for run, c in report["sovits"].items():
        name = Path(run).name
        if c["train"]:
            steps, mel, _ = zip(*c["train"], strict=True)
            a.plot(steps, mel, lw=0.8, label=f"{name} train")
        if c["val"]:
            steps, val = zip(*c["val"], strict=True)
            a.plot(steps, val, "o-", label=f"{name} held-out")
    a.set(xlabel="step", ylabel="mel L1 (log-mel)", title="SoVITS generator")
    a.legend()
    rows = report["content"]
    for r in rows:
        b.scatter(r["speaker_accuracy_codes"], r["phone_accuracy"])
        b.annotate(
            Path(r["run"]).name, (r["speaker_accuracy_codes"], r["phone_accuracy"]), fontsize=8
        )
    b.axvline(rows[0]["chance"], color="gray", ls=":", label="speaker chance")
    b.set(
        xlabel="speaker accuracy from code histograms",
        ylabel="phone accuracy (CTC probe)",
        title="content codes (want: top left)",
        xlim=(0, 1),
    )
    b.legend()
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=110)
    print(f"wrote {args.out.with_suffix('.json')} and .png")


if __name__ == "__main__":
    main()
