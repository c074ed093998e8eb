"""Prompt adherence: generate test-split prompts with fixed seeds, judge them with the detector.

    tinysora eval adherence [--model DIR] [--n 200] [--json OUT]

Groups (each ``n`` prompts from test-split scenes, in seed order):

* ``single``: one-object scenes, canonical captions;
* ``two``: two-object scenes, canonical captions;
* ``held_out``: one-object scenes whose color-shape pair never appears in training;
* ``paraphrased``: one-object scenes, prompt with size and background left out and
  synonyms (``tinysora.worlds.captions.paraphrase`` with every variant on).

A prompt object is matched to the detected object of its color; color is right if
one exists, shape / motion if that object's shape / motion match. A prompt is
*all right* when every object is right on all three and nothing else was drawn.
Rates come with 95% Wilson intervals.
"""

from __future__ import annotations

import argparse

from tinysora.errors import UserError
from tinysora.eval import fidelity
from tinysora.eval.fidelity import clip_fidelity, fidelity_line
from tinysora.eval.generation import generate_seeded, load_pipe
from tinysora.eval.metrics import wilson, write_json
from tinysora.worlds.captions import paraphrase
from tinysora.worlds.detect import detect, judge
from tinysora.worlds.shapes import HELD_OUT_PAIRS, Scene, SplitMix64, sample_scene, split_seed

GROUPS = ("single", "two", "held_out", "paraphrased")
ATTRIBUTES = ("color", "shape", "motion")


def group_prompts(group: str, n: int) -> list[tuple[Scene, str]]:
    """The first ``n`` (scene, prompt) pairs of a group, scanning test seeds in order."""
    out, i = [], 0
    while len(out) < n:
        scene = sample_scene(split_seed("test", i))
        i += 1
        objs = scene.objects
        held_out = len(objs) == 1 and (objs[0].color, objs[0].shape) in HELD_OUT_PAIRS
        plain_single = len(objs) == 1 and not held_out
        wanted = {"two": len(objs) == 2, "held_out": held_out, "single": plain_single}
        if wanted.get(group, False):
            out.append((scene, scene.caption))
        elif group == "paraphrased" and len(objs) == 1 and not held_out:
            text = paraphrase(scene, SplitMix64(scene.seed, 99), 1.0, 1.0, 0.5, 1.0)
            out.append((scene, text))
    return out


def evaluate(
    pipe,
    n: int,
    frames: int = 17,
    height: int = 64,
    width: int = 64,
    groups=GROUPS,
    batch: int = 25,
    steps: int | None = None,
) -> dict:
    report = {}
    for group in groups:
        prompts = group_prompts(group, n)
        texts = [text for _, text in prompts]
        videos = generate_seeded(pipe, texts, frames, height, width, steps, batch, desc=group)
        rows, fid = [], []
        for (scene, text), video in zip(prompts, videos, strict=True):
            detection = detect(video)
            result = judge(scene, detection, judge_motion=frames > 1)
            rows.append({"seed": scene.seed, "prompt": text, **result})
            if frames > 1:
                fid.append(clip_fidelity(video, detection))
        objs = [o for r in rows for o in r["objects"]]
        rates = {a: sum(o[a] for o in objs) / len(objs) for a in ATTRIBUTES}
        k = sum(r["all_right"] for r in rows)
        report[group] = {
            "prompts": len(rows),
            "all_right": k / len(rows),
            "all_right_ci95": wilson(k, len(rows)),
            "per_attribute": rates,
            "fidelity": fidelity.summarize(fid) if fid else None,
            "rows": rows,
        }
    return report


def run(args: argparse.Namespace) -> dict:
    unknown = sorted(set(args.groups) - set(GROUPS))
    if unknown:
        raise UserError(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")
    pipe = load_pipe(args)
    report = evaluate(
        pipe, args.n, args.frames, args.height, args.width, args.groups, steps=args.steps
    )
    for group, r in report.items():
        lo, hi = r["all_right_ci95"]
        attrs = ", ".join(f"{a} {v:.1%}" for a, v in r["per_attribute"].items())
        print(f"{group:12s} all right {r['all_right']:.1%} [{lo:.1%}, {hi:.1%}] ({attrs})")
        if r["fidelity"]:
            print(f"{'':12s} fidelity {fidelity_line(r['fidelity'])}")
    write_json(report, args.json)
    return report
