"""Star check of a model (optionally with a LoRA adapter): prompts for star clips whose
(color, motion) pair no training file showed, judged by ``tinysora.eval.star``.

    python scripts/star_check.py --model weights --lora runs/stars/adapter --n 48 \
        --json bench/results/DATE-star-check.json

Prompt k (seed k) takes held-out pair k mod 16 (``make_star_folder.HELD_OUT``), a size
and a background drawn from k. ``--seen`` asks for the pairs the folder did show.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
from pathlib import Path

import torch
from tqdm import tqdm

from tinysora.eval.metrics import wilson, write_json
from tinysora.eval.star import judge_star
from tinysora.io.frames import to_uint8
from tinysora.pipeline import TextToVideoPipeline
from tinysora.worlds.shapes import BACKGROUNDS, COLORS, SIZES

_spec = importlib.util.spec_from_file_location(
    "make_star_folder", Path(__file__).with_name("make_star_folder.py")
)
stars = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stars)


def prompts(n: int, seen: bool) -> list[tuple[str, str, str]]:
    """(prompt, color, motion) for seeds 0..n-1."""
    pairs = sorted(
        (c, m) for c in COLORS for m in stars.MOTIONS if ((c, m) in stars.HELD_OUT) != seen
    )
    out = []
    for k in range(n):
        rng = random.Random(10_000 + k)
        color, motion = pairs[k % len(pairs)]
        size = rng.choice(sorted(SIZES))
        background = rng.choice([b for b in BACKGROUNDS if b != "black" or color != "blue"])
        out.append((stars.caption(size, color, motion, background), color, motion))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory (default: the bundled one)")
    parser.add_argument("--lora", help="LoRA adapter directory")
    parser.add_argument("--n", type=int, default=48, help="prompts (default 48)")
    parser.add_argument("--seen", action="store_true", help="the folder's own pairs instead")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()
    pipe = TextToVideoPipeline.from_pretrained(args.model)
    if args.lora:
        pipe.load_lora(args.lora)
    rows = []
    for k, (prompt, color, motion) in enumerate(tqdm(prompts(args.n, args.seen), desc="star")):
        video = pipe(prompt, generator=torch.Generator().manual_seed(k), progress=False)
        clip = to_uint8(video.frames)
        rows.append({"seed": k, "prompt": prompt, **judge_star(clip, color, motion)})
    report = {"model": args.model, "lora": args.lora, "held_out_pairs": not args.seen}
    for key in ("star", "color", "motion", "all_right"):
        hits = sum(r[key] for r in rows)
        report[key] = hits / len(rows)
        report[f"{key}_ci95"] = wilson(hits, len(rows))
    report["rows"] = rows
    print(", ".join(f"{k} {report[k]:.1%}" for k in ("star", "color", "motion", "all_right")))
    write_json(report, args.json)


if __name__ == "__main__":
    main()
