"""The README's first picture: real generations of the bundled model, frame by frame,
and the narrated demo clip (what `make demo` makes).

    OMP_NUM_THREADS=2 python scripts/demo_strip.py --out docs

writes ``docs/demo_strip.png`` (one row per prompt: every other frame of a 17-frame,
64x64 clip, enlarged 2x, under its prompt) and ``docs/demo_narrated.mp4``. The prompts
and seeds are fixed, so a re-run on the same kind of CPU makes the same pictures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from tinysora import TextToVideoPipeline
from tinysora.cli import main as main_cli
from tinysora.io.frames import to_uint8

ROWS = (  # (prompt, seed)
    ("a large red circle bouncing on a navy background", 0),
    ("a small yellow triangle moving right on a black background", 1),
    ("a large green square moving up on a white background", 2),
    ("a small cyan circle moving left and a large pink square bouncing", 3),
)
NARRATION = (
    "a large red circle bouncing on a navy background",
    0,
    "A large red circle bounces on a navy background.",
)
SCALE, EVERY, LABEL_H, PAD = 2, 2, 18, 4


def strip(pipe: TextToVideoPipeline) -> Image.Image:
    rows = []
    for prompt, seed in ROWS:
        out = pipe(prompt, generator=torch.Generator().manual_seed(seed), progress=False)
        frames = to_uint8(out.frames)[::EVERY]  # (T', H, W, 3)
        t, h, w, _ = frames.shape
        row = Image.new("RGB", (t * (w * SCALE + PAD) - PAD, LABEL_H + h * SCALE), "white")
        ImageDraw.Draw(row).text((2, 3), f'"{prompt}"  (seed {seed})', fill="black")
        for i, frame in enumerate(frames):
            big = Image.fromarray(frame).resize((w * SCALE, h * SCALE), Image.NEAREST)
            row.paste(big, (i * (w * SCALE + PAD), LABEL_H))
        rows.append(row)
    sheet = Image.new("RGB", (rows[0].width, sum(r.height + PAD for r in rows) - PAD), "white")
    top = 0
    for row in rows:
        sheet.paste(row, (0, top))
        top += row.height + PAD
    return sheet


def narrated(path: Path) -> None:
    """`make demo`'s clip: the CLI's own narration (speech first, the clip fitted to it)."""
    prompt, seed, text = NARRATION
    main_cli(["generate", prompt, "--seed", str(seed), "--narrate", text, "-o", str(path)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs"))
    args = ap.parse_args()
    pipe = TextToVideoPipeline.from_pretrained()
    strip(pipe).save(args.out / "demo_strip.png")
    narrated(args.out / "demo_narrated.mp4")


if __name__ == "__main__":
    main()
