"""Do the text encoder's token states bind attributes to their own subject?

For two-object Shapes World captions ("a small red circle moving left and a large blue
square bouncing on a ..."), take the state of each object's shape word and motion word
and fit a linear probe (logistic regression, 75% / 25% split) that reads a color from it:
the object's *own* color, and the *other* object's color. A state that binds its
subject reads its own color well and the other one at chance (1 in 7: two objects never
share a color). Cross-attention can only find "the circle that is red" if it does.

    python scripts/text_binding_probe.py            # whole-sentence and per-subject states
    python scripts/text_binding_probe.py --json bench/results/DATE-text-binding.json
"""

from __future__ import annotations

import argparse
import json

import torch

from tinysora.text.encoder import TextEncoder, split_subjects
from tinysora.worlds.shapes import COLORS, MOTIONS, SHAPES, sample_scene, split_seed

COLOR_NAMES = list(COLORS)
MOTION_WORDS = {m: m.split()[-1] for m in MOTIONS}  # "moving left" -> "left", "bouncing" ...


def two_object_scenes(n: int) -> list:
    scenes, i = [], 0
    while len(scenes) < n:
        scene = sample_scene(split_seed("train", i))
        i += 1
        if len(scene.objects) == 2:
            scenes.append(scene)
    return scenes


def word_states(encoder: TextEncoder, scenes: list) -> dict[str, list]:
    """{"shape" | "motion": [(state, own color index, other color index)]}."""
    captions = [s.caption for s in scenes]
    states, _ = encoder(captions)
    vocab = {i: w for w, i in encoder.tokenizer._tokenizer.get_vocab().items()}
    out: dict[str, list] = {"shape": [], "motion": []}
    for n, scene in enumerate(scenes):
        parts = split_subjects(captions[n]) if encoder.subjects else [captions[n]]
        ids = [i for p in parts for i in encoder.tokenizer([p])["input_ids"][0]]
        words = [vocab[int(i)] for i in ids[: encoder.max_length]]
        colors = [COLOR_NAMES.index(o.color) for o in scene.objects]
        for kind, wanted in (("shape", set(SHAPES)), ("motion", set(MOTION_WORDS.values()))):
            where = [j for j, w in enumerate(words) if w in wanted]
            if len(where) != 2:  # e.g. a word split into pieces: skip the caption
                continue
            for k in range(2):
                out[kind].append((states[n, where[k]], colors[k], colors[1 - k]))
    return out


def probe_accuracy(rows: list, which: int, steps: int = 500) -> float:
    """Held-out accuracy of a linear probe reading color ``which`` (1 own, 2 other)."""
    x = torch.stack([r[0] for r in rows])
    y = torch.tensor([r[which] for r in rows])
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    n = int(0.75 * len(x))
    torch.manual_seed(0)
    w = torch.zeros(x.shape[1], len(COLORS), requires_grad=True)
    b = torch.zeros(len(COLORS), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[:n] @ w + b, y[:n]) + 1e-3 * w.square().sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(((x[n:] @ w + b).argmax(1) == y[n:]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="two-object captions (2000)")
    parser.add_argument("--json", help="write the accuracies here")
    args = parser.parse_args()
    scenes = two_object_scenes(args.n)
    report = {}
    for mode, subjects in (("whole sentence", False), ("per subject", True)):
        rows = word_states(TextEncoder(cache_size=0, subjects=subjects), scenes)
        report[mode] = {
            kind: {
                "own_color": probe_accuracy(r, 1),
                "other_color": probe_accuracy(r, 2),
                "words": len(r),
            }
            for kind, r in rows.items()
        }
        for kind, acc in report[mode].items():
            print(
                f"{mode:15s} {kind:6s} word: own color {acc['own_color']:.1%}, "
                f"other object's color {acc['other_color']:.1%}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"name": "text-binding-probe", "captions": args.n, **report}, f, indent=1)


if __name__ == "__main__":
    main()
