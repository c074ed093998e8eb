"""`tinysora eval all --html DIR`: every quality measurement on one static HTML page.

    tinysora eval all --html report/ [--model DIR] [--n 50] [--log runs/dit/log.jsonl]
                      [--long-frames 129]

Runs the adherence, dynamics, VAE and conditioning-task evaluations on one model
directory and writes ``DIR/index.html`` (tables, matplotlib plots, sample GIFs: prompt |
generation | ground-truth render | verdict; one strip per conditioning task: given
frames | generated frames), ``DIR/report.json`` (every number) and the images next to
them. The conditioning tasks run at the report's clip length when it is 1 + 4k >= 5
frames (extension needs >= 9). The page has no scripts and needs no server: open the file.
"""

from __future__ import annotations

import argparse
import html
import json
import time
from pathlib import Path

import numpy as np

from tinysora.eval import adherence, dynamics
from tinysora.eval import tasks as tasks_eval
from tinysora.eval import vae as vae_eval
from tinysora.eval.adherence import ATTRIBUTES
from tinysora.eval.generation import generate_seeded, load_pipe
from tinysora.eval.metrics import write_json
from tinysora.io.checkpoint import resolve_model_dir
from tinysora.io.video import write_contact_sheet, write_gif
from tinysora.vae.model import TIME_FACTOR
from tinysora.worlds.detect import detect, judge
from tinysora.worlds.shapes import render

SAMPLES_PER_GROUP = 4
GIF_FPS = 8.0
STRIP_FRAMES = 9  # frames shown in a conditioning-task strip (evenly spaced)


def run(args: argparse.Namespace) -> dict:
    out = Path(args.html)
    out.mkdir(parents=True, exist_ok=True)
    model = resolve_model_dir(args.model)
    pipe = load_pipe(args, model)
    size = (args.frames, args.height, args.width)
    t0 = time.perf_counter()
    report: dict = {"model": str(model.resolve()), "size": list(size), "n": args.n}
    report["sampling"] = {"sampler": pipe.config.sampler, "guidance": pipe.config.guidance_scale}
    report["adherence"] = adherence.evaluate(pipe, args.n, *size, steps=args.steps)
    report["dynamics"] = dynamics.evaluate(pipe, args.n, *size, steps=args.steps)
    report["vae"] = {
        "quality": vae_eval.quality(pipe.vae, args.n),
        "compression": vae_eval.compression(pipe.vae),
    }
    report["samples"] = write_samples(pipe, out, size, args.steps)
    setup = tasks_eval.Setup(*size, long_frames=args.long_frames, steps=args.steps)
    task_samples: dict = {}
    names = runnable_tasks(args.frames, args.long_frames)
    report["tasks"] = tasks_eval.evaluate(pipe, args.n, setup, names, task_samples)
    report["task_samples"] = write_task_strips(task_samples, out)
    report["seconds"] = time.perf_counter() - t0
    plots = {
        "adherence": plot_adherence(report["adherence"], out / "adherence.png"),
        "vae": plot_vae(report["vae"]["quality"], out / "vae.png"),
    }
    if args.log:
        plots["curve"] = plot_log(Path(args.log), out / "training.png")
    write_json(report, out / "report.json")
    write_json(report, args.json)
    (out / "index.html").write_text(render_html(report, plots))
    print(f"report: {(out / 'index.html').resolve()}")
    return report


def write_samples(pipe, out: Path, size: tuple[int, int, int], steps: int | None) -> list[dict]:
    """GIFs of the first prompts of each adherence group next to their ground truth."""
    frames, height, width = size
    rows = []
    for group in adherence.GROUPS:
        prompts = adherence.group_prompts(group, SAMPLES_PER_GROUP)
        videos = generate_seeded(pipe, [text for _, text in prompts], *size, steps)
        for k, ((scene, text), video) in enumerate(zip(prompts, videos, strict=True)):
            name = f"samples/{group}_{k}"
            (out / "samples").mkdir(exist_ok=True)
            write_gif(out / f"{name}_gen.gif", video, GIF_FPS)
            write_gif(out / f"{name}_truth.gif", render(scene, height, width, frames), GIF_FPS)
            verdict = judge(scene, detect(video), judge_motion=frames > 1)
            rows.append(
                {
                    "group": group,
                    "prompt": text,
                    "generated": f"{name}_gen.gif",
                    "truth": f"{name}_truth.gif",
                    "all_right": verdict["all_right"],
                    "verdict": describe_verdict(verdict),
                }
            )
    return rows


def runnable_tasks(frames: int, long_frames: int) -> list[str]:
    """The conditioning tasks that can run on clips of ``frames``: none unless 1 + 4k >= 5;
    extension needs windows longer than its context and a longer target."""
    if frames < 5 or (frames - 1) % TIME_FACTOR:
        return []
    long_ok = frames > tasks_eval.CONTEXT_FRAMES and long_frames > frames
    return [t for t in tasks_eval.TASKS if t != "extension" or long_ok]


def strip(frames, count: int = STRIP_FRAMES) -> np.ndarray:
    """Up to ``count`` evenly spaced frames of a clip (or list of images)."""
    frames = np.asarray(frames)
    pick = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
    return frames[pick]


def write_task_strips(samples: dict, out: Path) -> list[dict]:
    """One PNG strip of the given frames and one of the generated clip per task."""
    rows = []
    (out / "tasks").mkdir(exist_ok=True)
    for task, s in samples.items():
        row = {"task": task, "prompt": s["prompt"], "input": None}
        if len(s["input"]):
            frames = strip(s["input"])
            write_contact_sheet(out / f"tasks/{task}_input.png", frames, columns=len(frames))
            row["input"] = f"tasks/{task}_input.png"
        frames = strip(s["output"])
        write_contact_sheet(out / f"tasks/{task}_output.png", frames, columns=len(frames))
        rows.append({**row, "output": f"tasks/{task}_output.png", "frames": len(s["output"])})
    return rows


def describe_verdict(verdict: dict) -> str:
    if verdict["all_right"]:
        return "all right"
    wrong = []
    for i, obj in enumerate(verdict["objects"]):
        missing = [a for a in adherence.ATTRIBUTES if not obj[a]]
        if missing:
            wrong.append(f"object {i + 1}: wrong {', '.join(missing)}")
    if verdict["extra"]:
        wrong.append(f"{verdict['extra']} extra object(s)")
    return "; ".join(wrong)


# ---------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bar_plot(path: Path, names, values, ylabel: str, title: str, **bar) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(names, values, **bar)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def plot_adherence(report: dict, path: Path) -> str:
    groups = list(report)
    rates = np.array([report[g]["all_right"] for g in groups])
    ci = np.array([report[g]["all_right_ci95"] for g in groups])  # (G, 2)
    errors = 100 * np.stack([rates - ci[:, 0], ci[:, 1] - rates])
    title = "Prompt adherence (95% Wilson intervals)"
    return _bar_plot(
        path, groups, 100 * rates, "all right (%)", title, yerr=errors, capsize=4, color="#4c72b0"
    )


def plot_vae(quality: dict, path: Path) -> str:
    names = list(quality)
    psnr = [quality[k]["psnr_mean"] for k in names]
    title = "VAE reconstruction on test clips"
    return _bar_plot(path, names, psnr, "PSNR (dB)", title, color="#55a868")


def plot_log(log: Path, path: Path) -> str:
    """Training loss vs step from a trainer's log.jsonl."""
    plt = _pyplot()
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.set_title(f"Learning curve ({log})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


# ----------------------------------------------------------------------------- html

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 980px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
img.clip { width: 128px; image-rendering: pixelated; }
img.strip { height: 64px; max-width: 640px; image-rendering: pixelated; }
.ok { color: #1a7f37; } .bad { color: #b42318; }
"""


def _table(header: list[str], rows: list[list]) -> str:
    def cell(v, tag):
        cls = ' class="l"' if isinstance(v, str) else ""
        text = f"{v:.3g}" if isinstance(v, float) else html.escape(str(v))
        return f"<{tag}{cls}>{text}</{tag}>"

    head = "".join(cell(h, "th") for h in header)
    body = "".join("<tr>" + "".join(cell(v, "td") for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _num(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


# eval.fidelity's medians (area CV of rigid objects, bouncing ones, outline IoU, stray pixels)
FIDELITY_COLUMNS = ["area CV", "area CV bouncing", "outline IoU", "stray pixels"]
VAE_COLUMNS = ["set", "clips", "PSNR (dB)", "min PSNR", "SSIM", "detected exactly"]
VAE_COLUMNS += [*FIDELITY_COLUMNS, "renders' area CV bouncing"]
ADHERENCE_COLUMNS = ["group", "prompts", "all right", "95% CI", *ATTRIBUTES, *FIDELITY_COLUMNS]


def _fidelity_cells(f: dict | None) -> list[str]:
    if f is None:
        return ["n/a"] * len(FIDELITY_COLUMNS)
    return [
        _num(f["area_cv_median"], ".3f"),
        _num(f["area_cv_bouncing_median"], ".3f"),
        _num(f["outline_iou_median"], ".3f"),
        _num(f["stray_fraction_mean"], ".2%"),
    ]


DYNAMICS_ROWS = [
    ("clips / objects found", lambda r: f"{r['clips']} / {r['found']} of {r['objects']}"),
    ("track residual, median (px)", lambda r: _num(r["smoothness"]["residual_px_median"], ".3f")),
    ("track fit R², median", lambda r: _num(r["smoothness"]["r2_median"], ".4f")),
    ("objects moving smoothly (< 1 px)", lambda r: _num(r["smoothness"]["smooth_fraction"], ".1%")),
    ("area drift, mean", lambda r: _num(r["consistency"]["area_drift_mean"], ".2%")),
    ("color drift, mean (RGB)", lambda r: _num(r["consistency"]["color_drift_mean"], ".2f")),
    ("frames an object is seen", lambda r: _num(r["consistency"]["seen_fraction_mean"], ".1%")),
    (
        "permanence after crossings",
        lambda r: f"{_num(r['permanence']['rate'], '.1%')} of {r['permanence']['crossings']}",
    ),
]


def render_html(report: dict, plots: dict[str, str]) -> str:
    adh = report["adherence"]
    adh_rows = [
        [
            g,
            r["prompts"],
            _pct(r["all_right"]),
            f"{_pct(r['all_right_ci95'][0])} – {_pct(r['all_right_ci95'][1])}",
        ]
        + [_pct(r["per_attribute"][a]) for a in adherence.ATTRIBUTES]
        + _fidelity_cells(r["fidelity"])
        for g, r in adh.items()
    ]
    dyn = report["dynamics"]
    dyn_rows = [[label] + [pick(dyn[g]) for g in dyn] for label, pick in DYNAMICS_ROWS]
    vq = report["vae"]["quality"]
    vae_rows = [
        [k, q["clips"], q["psnr_mean"], q["psnr_min"], q["ssim_mean"], _pct(q["detected_exactly"])]
        + _fidelity_cells(q.get("fidelity"))
        + _fidelity_cells(q.get("fidelity_reference"))[1:2]
        for k, q in vq.items()
    ]
    samples = "".join(
        f'<tr><td class="l">{html.escape(s["group"])}</td><td class="l">{html.escape(s["prompt"])}'
        f'</td><td><img class="clip" src="{s["generated"]}" alt="generated"></td>'
        f'<td><img class="clip" src="{s["truth"]}" alt="ground truth"></td>'
        f'<td class="l {"ok" if s["all_right"] else "bad"}">{html.escape(s["verdict"])}</td></tr>'
        for s in report["samples"]
    )
    images = "".join(f'<p><img src="{p}" alt="{k}"></p>' for k, p in plots.items())
    task_rows = [list(row) for row in tasks_eval.table_rows(report["tasks"])]
    task_strips = "".join(
        f'<tr><td class="l">{html.escape(s["task"])}</td><td class="l">{html.escape(s["prompt"])}'
        '</td><td class="l">given: '
        + (
            f'<br><img class="strip" src="{s["input"]}" alt="given frames">'
            if s["input"]
            else "the prompt only"
        )
        + f'<br>generated:<br><img class="strip" src="{s["output"]}" alt="generated frames">'
        "</td></tr>"
        for s in report["task_samples"]
    )
    if report["tasks"]:
        tasks_html = (
            _table(["task", "metric", "value", "target", "met"], task_rows)
            + '<table><tr><th class="l">task</th><th class="l">prompt</th>'
            + f'<th class="l">frames (up to {STRIP_FRAMES} shown)</th></tr>{task_strips}</table>'
        )
    else:
        tasks_html = "<p>Not measured: the tasks need clips of 1 + 4k >= 5 frames.</p>"
    frames, height, width = report["size"]
    ratio = report["vae"]["compression"]["ratio"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tinysora evaluation</title>
<style>{STYLE}</style></head><body>
<h1>tinysora evaluation</h1>
<p>Model <code>{html.escape(report["model"])}</code>; clips {frames} frames of {height}x{width};
{report["n"]} test-split prompts per group; judged by the caption-blind detector;
{report["seconds"]:.0f} s.</p>
<h2>Prompt adherence</h2>
{_table(ADHERENCE_COLUMNS, adh_rows)}
<h2>Dynamics</h2>
{_table(["measure", *dyn], dyn_rows)}
<h2>VAE reconstruction</h2>
{_table(VAE_COLUMNS, vae_rows)}
<p>Compression {ratio:.1f}x (pixels x 3 / latent elements).</p>
<h2>Conditioning tasks</h2>
<p>The first {report["n"]} one-object test scenes per task, conditioned on their ground-truth
renders (<code>tinysora eval tasks</code>; definitions in
<code>tinysora/eval/tasks.py</code>).</p>
{tasks_html}
<h2>Plots</h2>
{images}
<h2>Samples</h2>
<table><tr><th class="l">group</th><th class="l">prompt</th><th>generated</th>
<th>ground truth</th><th class="l">verdict</th></tr>{samples}</table>
</body></html>
"""
