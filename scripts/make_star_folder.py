"""Write a folder of five-pointed star clips, the way a user would bring their own videos.

    python scripts/make_star_folder.py --out data/stars [--files 60]

The bundled model has never seen a star (the Shapes World has circles, squares and
triangles). The stars are drawn with Pillow (not the world's renderer) in the world's
colors, backgrounds, sizes and motions (bouncing left out), into mp4 files of mixed
sizes (64..128 px squares), frame rates (8, 12, 24, 30 fps) and lengths (2.5-4 s), with
a ``captions.csv`` in the world's caption grammar ("a large red star moving left on a
black background"). Some (color, motion) pairs never appear (:data:`HELD_OUT`): the
star check asks for them. The folder also carries what real folders carry: a row naming
a missing file, a ragged row, an empty caption and one corrupt file.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tinysora.io.video import write_video
from tinysora.worlds.shapes import BACKGROUNDS, COLORS, SIZES

MOTIONS = ("moving left", "moving right", "moving up", "moving down", "growing", "shrinking",
           "standing still")  # fmt: skip
# (color, motion) pairs that no file shows: two per color, every motion twice
HELD_OUT = {
    (color, MOTIONS[(2 * i + k) % len(MOTIONS)]) for i, color in enumerate(COLORS) for k in range(2)
}
SUPERSAMPLE = 4


def star_points(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    """A five-pointed star, one point straight up; inner radius 0.45 x the outer."""
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else 0.45 * radius
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def star_clip(color, background, size, motion, side, frames) -> np.ndarray:
    """uint8 (T, side, side, 3): the star's motion spans the whole clip (tau = i / (T-1))."""
    out = np.empty((frames, side, side, 3), dtype=np.uint8)
    big = side * SUPERSAMPLE
    radius0 = SIZES[size] * side / 2 * SUPERSAMPLE * 1.3
    for i in range(frames):
        tau = i / max(1, frames - 1)
        cx = cy = big / 2
        scale = 1.0
        shift = 0.25 * big * (2 * tau - 1)  # from -1/4 to +1/4 of the side
        if motion == "moving left":
            cx -= shift
        elif motion == "moving right":
            cx += shift
        elif motion == "moving up":
            cy -= shift
        elif motion == "moving down":
            cy += shift
        elif motion == "growing":
            scale = 0.6 + 0.8 * tau
        elif motion == "shrinking":
            scale = 1.4 - 0.8 * tau
        image = Image.new("RGB", (big, big), BACKGROUNDS[background])
        ImageDraw.Draw(image).polygon(star_points(cx, cy, radius0 * scale), fill=COLORS[color])
        out[i] = np.asarray(image.resize((side, side), Image.BOX))
    return out


def caption(size: str, color: str, motion: str, background: str) -> str:
    return f"a {size} {color} star {motion} on a {background} background"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--files", type=int, default=60, help="video files (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = sorted((c, m) for c in COLORS for m in MOTIONS if (c, m) not in HELD_OUT)
    rows = ["path,text,num_frames,height,width,fps"]
    for i in range(args.files):
        color, motion = pairs[i % len(pairs)]
        size = rng.choice(sorted(SIZES))
        background = rng.choice([b for b in BACKGROUNDS if b != "black" or color != "blue"])
        side, fps = rng.choice([64, 80, 96, 128]), rng.choice([8, 12, 24, 30])
        frames = round(fps * rng.uniform(2.5, 4.0))
        name = f"star_{i:03d}.mp4"
        write_video(out / name, star_clip(color, background, size, motion, side, frames), fps=fps)
        text = caption(size, color, motion, background)
        rows.append(f"{name},{text},{frames},{side},{side},{fps}")
    (out / "broken.mp4").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    rows += [
        "broken.mp4,a large red star moving left on a white background,30,64,64,8",
        "lost.mp4,a small blue star growing on a gray background,30,64,64,8",
        "star_000.mp4,a ragged row",
        "star_001.mp4,,30,64,64,8",
    ]
    (out / "captions.csv").write_text("\n".join(rows) + "\n")
    print(f"wrote {args.files} star clips + 4 broken rows to {out.resolve()}")
    print("held-out (color, motion) pairs:", sorted(HELD_OUT))


if __name__ == "__main__":
    main()
