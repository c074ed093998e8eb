"""`tinysora bench`: throughput, MFU and a side by side with diffusers, as one JSON report.

    tinysora bench                      # full: bench/results/<date>-full.json (minutes)
    tinysora bench --quick --json OUT   # reduced version of every measurement (< 3 min)

Sections (each a dict in the report; a progress line per section on stderr):

* ``machine``: CPU model and ISA flags, threads, torch / python / diffusers versions,
  git commit, load average at the start and end (a busy machine shows up here);
* ``matmul_peak``: measured fp32 and bf16 matmul GFLOP/s (square sizes, best median)
  -- the ceiling -- and the bf16 GFLOP/s of the training step's own GEMM shapes;
* ``train_step``: the DiT training step of the recipe (default
  ``configs/dit_shapes.toml``): tokens/s, model FLOPs per step (formula stated in the
  report, checked against a FlopCounterMode count) and MFU vs the peak of the dtype the
  machine computes in (bf16 where the CPU has it, else fp32: ``tinysora.device``);
* ``diffusers``: our ``full`` DiT vs ``LTXVideoTransformer3DModel`` and our
  ``factorized`` DiT vs ``LatteTransformer3DModel`` at equal width, depth, heads,
  tokens and text (see :mod:`tinysora.bench.compare`), forward and forward + backward;
* ``scaling``: DiT forward + backward time vs frames (64x64), both attention modes;
* ``packing`` (Patch n' Pack, see :mod:`tinysora.bench.packing`): ``kernels`` = our
  masked attention vs SDPA with the mask vs flex_attention vs a per-clip loop over one
  packed row; ``training`` = useful (non-padding) training tokens/s of packed rows vs
  the same clips in padded batches;
* ``sampling`` (in process), ``end_to_end`` (a fresh ``tinysora generate`` process)
  and ``sampler_overhead`` (our Euler loop vs diffusers' scheduler loop);
* ``vae``: encode / decode frames/s and peak memory vs T;
* ``data`` (see :mod:`tinysora.bench.data`): ``prepare`` clips/s and peak memory vs the
  folder's size, training tokens/s from a prepared cache vs the Shapes World path and
  its memory vs the cache's size, DDP 2 processes vs 1.

Top-level keys (always present): ``bf16_peak_gflops``, ``compute_dtype``,
``train_mfu`` (fraction of the compute dtype's peak), ``train_tokens_per_s``,
``dit_fwd_bwd_speedup_vs_diffusers`` (their time / ours for ``full`` vs LTX, forward +
backward, corrected to equal model FLOPs; the raw time ratio is ``..._raw``),
``sample_s_per_step``, ``demo_end_to_end_s``,
``packed_vs_padded_tokens_per_s`` (packed useful tokens/s / padded).

Every timing is the median of several runs after warm-up (the fresh-process sections:
one untimed `generate` first; the VAE probe warms up inside its own process). Ratios
compare things measured in the same process, in turns; absolute times on a shared
machine are noisy. The report path is relative to the current directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinysora.bench import compare, data, dit, packing, sampling
from tinysora.bench.timing import (
    REPO_ROOT,
    load_average,
    machine_info,
)
from tinysora.config import Config, ConfigError
from tinysora.device import compute_dtype
from tinysora.eval.metrics import write_json
from tinysora.io.atomic import write_problem
from tinysora.perf import matmul_gflops, matmul_peak
from tinysora.train.recipe import DiTRecipe

DEFAULT_RECIPE = REPO_ROOT / "configs" / "dit_shapes.toml"
RESULTS_DIR = Path("bench") / "results"
REQUIRED_KEYS = (
    "bf16_peak_gflops",
    "train_mfu",
    "train_tokens_per_s",
    "dit_fwd_bwd_speedup_vs_diffusers",
    "sample_s_per_step",
    "demo_end_to_end_s",
    "packed_vs_padded_tokens_per_s",
)


@dataclass
class BenchConfig(Config):
    """How much to measure. ``None`` batch = the recipe's ``batch_size``."""

    warmup: int = 2
    repeats: int = 7  # every timing is the median of this many runs (after warm-up)
    peak_sizes: tuple[int, ...] = (512, 1024, 2048)
    train_batch: int | None = None
    compare_batch: int | None = None
    scaling_frames: tuple[int, ...] = (9, 17, 33, 65, 129)
    scaling_batch: int = 4  # clips per step, the same at every length
    sampling_repeats: int = 5  # generations timed in process
    e2e_repeats: int = 3  # fresh `tinysora generate` processes
    vae_frames: tuple[int, ...] = (17, 33, 129, 513)
    vae_repeats: int = 3  # fresh probe processes per length
    steps: int | None = None  # sampling steps; None = the model's
    packing_budget: int | None = None  # tokens per packed row; None = the recipe's
    packing_steps: int = 3  # packed training steps in the clip stream (recipe's rows each)
    packing_repeats: int = 3  # timed passes over the packed / padded steps
    packing_eager: bool = False  # True: no torch.compile there even if the recipe compiles
    data_files: int = 24  # video files of the data section's folder (and 4x for memory)
    data_steps: int = 20  # training steps of each data-section run
    data_batch: int = 8  # clips per training step there


def _full() -> BenchConfig:
    return BenchConfig()


def _quick() -> BenchConfig:
    return BenchConfig(
        warmup=1,
        repeats=3,
        peak_sizes=(1024, 2048),
        compare_batch=8,
        scaling_frames=(9, 17, 33),
        scaling_batch=2,
        sampling_repeats=2,
        e2e_repeats=2,
        vae_frames=(17, 129),
        vae_repeats=2,
        packing_budget=512,
        packing_steps=2,
        packing_repeats=2,
        packing_eager=True,  # compiling both arrangements takes ~1-2 min
        data_files=8,
        data_steps=8,
    )


PRESETS = {"full": _full, "quick": _quick}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="reduced version of every measurement (< 3 min)"
    )
    parser.add_argument("--json", help="report path (default bench/results/<date>-<name>.json)")
    parser.add_argument("--name", help="report name (default 'full' or 'quick')")
    parser.add_argument(
        "--config",
        help=f"DiT training recipe to bench (default {DEFAULT_RECIPE.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--model",
        help="model directory for sampling / end to end / VAE (default: bundled weights/ if it "
        "has a DiT, else the bundled VAE + a random-init DiT of the recipe's config)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (median)")
    parser.add_argument("--warmup", type=int, help="untimed runs before each measurement")
    parser.add_argument("--batch", type=int, help="batch of the training step and the side by side")
    parser.add_argument("--frames", type=int, nargs="+", help="frame counts of the scaling section")
    parser.add_argument("--vae-frames", type=int, nargs="+", help="frame counts of the VAE section")
    parser.add_argument(
        "--peak-sizes", type=int, nargs="+", help="square matmul sizes of the peak (e.g. 1024 2048)"
    )
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the scaling plot")
    parser.add_argument(
        "--data-files", type=int, help="data section: video files and training steps (24 / 8)"
    )


def settings_from_args(args: argparse.Namespace) -> BenchConfig:
    s = PRESETS["quick" if args.quick else "full"]()
    if args.repeats is not None:
        n = args.repeats
        s = dataclasses.replace(
            s, repeats=n, sampling_repeats=n, e2e_repeats=n, vae_repeats=n, packing_repeats=n
        )
    if args.warmup is not None:
        s.warmup = args.warmup
    if args.batch is not None:
        s.train_batch = s.compare_batch = args.batch
    if args.frames:
        s.scaling_frames = tuple(args.frames)
    if args.vae_frames:
        s.vae_frames = tuple(args.vae_frames)
    if args.peak_sizes:
        s.peak_sizes = tuple(args.peak_sizes)
    if args.steps is not None:
        s.steps = args.steps
    if args.data_files is not None:
        s.data_files = s.data_steps = args.data_files
    counts = {
        "--repeats": s.repeats,
        "--batch": s.train_batch or 1,
        "--steps": s.steps or 1,
        "--threads": args.threads or 1,
        "--data-files": s.data_files,
        "--frames": min(s.scaling_frames),
        "--vae-frames": min(s.vae_frames),
        "--peak-sizes": min(s.peak_sizes),
    }
    for flag, value in counts.items():
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    problem = write_problem(args.json) if args.json else None
    if problem is not None:
        raise ConfigError(f"--json {args.json}: {problem}")
    if s.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {s.warmup}")
    return s


class Progress:
    def __init__(self, total: int):
        self.total, self.i, self.t0 = total, 0, time.perf_counter()

    def __call__(self, what: str) -> None:
        self.i += 1
        elapsed = time.perf_counter() - self.t0
        print(
            f"[bench {self.i}/{self.total} +{elapsed:5.0f} s] {what}", file=sys.stderr, flush=True
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every section, write the JSON report and print a summary; returns the report."""
    settings = settings_from_args(args)  # bad options fail before any work
    compare.require_diffusers()
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.name or ("quick" if args.quick else "full")
    today = datetime.date.today().isoformat()
    out = Path(args.json) if args.json else RESULTS_DIR / f"{today}-{name}.json"
    recipe_path = Path(args.config) if args.config else DEFAULT_RECIPE
    recipe = DiTRecipe.load(recipe_path)
    cfg, text_len = recipe.model, recipe.pipeline.text_max_length
    w, r = settings.warmup, settings.repeats
    step = Progress(12)
    report: dict[str, Any] = {"name": name, "date": today, "recipe": str(recipe_path)}

    step("machine")
    report["machine"] = machine_info()
    report["settings"] = settings.to_dict()

    step("matmul peak (fp32, bf16)")
    peaks = {
        "fp32": matmul_peak(torch.float32, settings.peak_sizes, w, max(r, 5)),
        "bf16": matmul_peak(torch.bfloat16, settings.peak_sizes, w, max(r, 5)),
    }
    peaks["train_gemms_bf16_gflops"] = _train_gemms(recipe, settings, w, max(r, 5))
    report["matmul_peak"] = peaks
    bf16_peak = peaks["bf16"]["gflops"]
    dtype = str(compute_dtype()).removeprefix("torch.")
    mfu_peak = peaks["bf16" if dtype == "bfloat16" else "fp32"]["gflops"]

    with tempfile.TemporaryDirectory(prefix="tinysora-bench-") as tmp:
        work = Path(tmp)
        step(f"DiT training step (batch {settings.train_batch or recipe.batch_size})")
        train = dit.train_step(recipe, mfu_peak, settings.train_batch, w, r, out_dir=str(work))
        report["train_step"] = train

        step(f"side by side with diffusers (batch {settings.compare_batch or recipe.batch_size})")
        report["diffusers"] = compare.side_by_side(
            cfg,
            recipe.frames,
            recipe.height,
            recipe.width,
            text_len,
            settings.compare_batch or recipe.batch_size,
            w,
            r,
        )

        step(f"scaling with length: frames {list(settings.scaling_frames)}")
        report["scaling"] = dit.scaling(
            cfg,
            settings.scaling_frames,
            recipe.height,
            recipe.width,
            text_len,
            settings.scaling_batch,
            w,
            r,
        )

        budget = settings.packing_budget or recipe.packing.token_budget
        step(f"Patch n' Pack: attention kernels over one packed row of {budget} tokens")
        kernels = packing.kernels(
            recipe.packing.mixture, budget, cfg.heads, cfg.width // cfg.heads, w, r
        )
        step(
            f"Patch n' Pack: packed vs padded training, {settings.packing_steps} steps of "
            f"{recipe.packing.rows} x {budget} tokens"
        )
        training = packing.packed_vs_padded(
            recipe,
            settings.packing_steps,
            budget,
            warmup=0,  # the first pass (reported apart) is the warm-up
            repeats=settings.packing_repeats,
            out_dir=str(work),
            compile=False if settings.packing_eager else None,
        )
        report["packing"] = {"kernels": kernels, "training": training}

        step(
            f"your own videos: prepare {settings.data_files} files, training from the cache "
            "vs the world, memory, DDP 2 vs 1"
        )
        data_dir = work / "data"
        data_dir.mkdir()
        report["data"] = data.section(
            data_dir,
            str(recipe_path),
            settings.data_files,
            settings.data_steps,
            settings.data_batch,
        )

        model_dir, model_info = sampling.resolve_model(recipe, args.model, work)
        report["model"] = model_info
        step(f"sampling, in process ({model_info['source']})")
        report["sampling"], pipe = sampling.sampling(
            model_dir, work, settings.steps, w, settings.sampling_repeats
        )
        report["model"]["dit_config"] = pipe.dit.config.to_dict()

        step("sampler loop: ours vs diffusers FlowMatchEulerDiscreteScheduler")
        report["sampler_overhead"] = sampling.sampler_overhead(pipe, settings.steps, w, r)
        del pipe

        step("end to end: `tinysora generate` in a fresh process")
        report["end_to_end"] = sampling.end_to_end(
            model_dir, work, settings.steps, min(w, 1), settings.e2e_repeats, args.threads
        )

        step(f"VAE encode / decode speed and memory: frames {list(settings.vae_frames)}")
        report["vae"] = sampling.vae_speed_memory(
            model_dir / "vae", settings.vae_frames, settings.vae_repeats, args.threads
        )

    report["machine"]["load_average_end"] = load_average()
    ltx = report["diffusers"]["full_vs_ltx"]
    report.update(
        {
            "bf16_peak_gflops": bf16_peak,
            "fp32_peak_gflops": peaks["fp32"]["gflops"],
            "compute_dtype": dtype,
            "train_mfu": train["mfu"],
            "train_tokens_per_s": train["tokens_per_s"],
            "dit_fwd_bwd_speedup_vs_diffusers": ltx["speedup_fwd_bwd_flop_corrected"],
            "dit_fwd_bwd_speedup_vs_diffusers_raw": ltx["speedup_fwd_bwd"],
            "sample_s_per_step": report["sampling"]["s_per_step"],
            "demo_end_to_end_s": report["end_to_end"]["wall_s"],
            "packed_vs_padded_tokens_per_s": training["packed_vs_padded_tokens_per_s"],
            "definitions": DEFINITIONS,
            "bench_seconds": time.perf_counter() - t_start,
        }
    )
    report = {k: report[k] for k in (*_HEAD, *[k for k in report if k not in _HEAD])}
    if not args.no_plot:
        report["scaling"]["plot"] = plot_scaling(
            report["scaling"], out.with_name(out.stem + "-scaling.png")
        )
    write_json(report, out)
    print(summary(report))
    print(f"wrote {out}")
    return report


_HEAD = ("name", "date", *REQUIRED_KEYS)

DEFINITIONS = {
    "bf16_peak_gflops": "best median GFLOP/s of square bf16 torch.mm (sizes in settings)",
    "compute_dtype": "bfloat16 (autocast) where the CPU computes bf16 natively, else float32",
    "train_mfu": "model FLOPs per training step (train_step.flops_formula) / step time / "
    "the compute dtype's peak; the step = Trainer.fit's (fwd + bwd, clip, AdamW, EMA)",
    "train_tokens_per_s": "batch x tokens per clip / median training step time",
    "dit_fwd_bwd_speedup_vs_diffusers": "LTXVideoTransformer3DModel fwd + bwd time / our full "
    "DiT's, at equal model FLOPs (divided by their model FLOPs / ours); > 1 = ours faster",
    "sample_s_per_step": "median DiT sampling step in the pipeline (CFG: batch 2), batch 1",
    "demo_end_to_end_s": "median wall time of a fresh `python -m tinysora.cli generate PROMPT` "
    "process: start, imports, load, sampling, VAE decode, H.264 mp4",
    "packed_vs_padded_tokens_per_s": "real (non-padding) tokens / median time of all training "
    "steps (packing.training.step), packed rows over the same clips in batches padded to their "
    "longest, at about equal tokens per step; > 1 = packing trains faster (target 1.5)",
}


def _train_gemms(recipe: DiTRecipe, s: BenchConfig, warmup: int, repeats: int) -> dict:
    """bf16 GFLOP/s of the training step's Linear shapes (M = batch x tokens)."""
    cfg = recipe.model
    tokens = dit._prod(dit.token_grid(cfg, recipe.frames, recipe.height, recipe.width))
    m, d = (s.train_batch or recipe.batch_size) * tokens, cfg.width
    hidden = int(d * cfg.mlp_ratio)
    shapes = {"qkvo": (m, d, d), "mlp_in": (m, d, hidden), "mlp_out": (m, hidden, d)}
    return {
        f"{k} {a}x{b}x{c}": matmul_gflops(a, b, c, torch.bfloat16, warmup, repeats)
        for k, (a, b, c) in shapes.items()
    }


def plot_scaling(scaling: dict, path: Path) -> str | None:
    """Step time per clip vs frames, both attention modes (log-log); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for attention in ("full", "factorized"):
        rows = [r for r in scaling["rows"] if r["attention"] == attention]
        ax.plot([r["frames"] for r in rows], [r["s_per_clip"] for r in rows], "o-", label=attention)
    ax.set_xscale("log", base=2)
    frames = sorted({r["frames"] for r in scaling["rows"]})
    ax.set_xticks(frames, [str(f) for f in frames])
    ax.set_yscale("log")
    ax.set_xlabel("frames (64x64)")
    ax.set_ylabel("fwd + bwd s per clip")
    ax.set_title(f"DiT cost vs length (batch {scaling['batch']})")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def summary(rep: dict) -> str:
    """The report as a short readable table."""
    m, tr, sa, e2e = rep["machine"], rep["train_step"], rep["sampling"], rep["end_to_end"]
    lines = [
        f"tinysora bench '{rep['name']}' {rep['date']}: {m['cpu_model']}, "
        f"{m['torch_threads']} threads, torch {m['torch_version']}, "
        f"load avg {m['load_average_start']} -> {m['load_average_end']}",
        "  (ratios are measured in turns in one process; absolute times here are noisy)",
        f"model for sampling: {rep['model']['source']}",
        f"matmul peak        fp32 {rep['fp32_peak_gflops']:8.1f} GFLOP/s   "
        f"bf16 {rep['bf16_peak_gflops']:8.1f} GFLOP/s   (computes in {rep['compute_dtype']})",
        f"train step         {tr['step']['median_s']:.3f} s (batch {tr['batch']} x "
        f"{tr['tokens_per_clip']} tokens; fwd+bwd {tr['forward_backward']['median_s']:.3f} s)  "
        f"{tr['tokens_per_s']:.0f} tokens/s  MFU {100 * tr['mfu']:.1f}%  "
        f"({tr['flops_per_step'] / 1e9:.1f} GFLOP/step)",
    ]
    for key, label in (("full_vs_ltx", "LTX  "), ("factorized_vs_latte", "Latte")):
        p = rep["diffusers"][key]
        lines.append(
            f"vs diffusers {label} fwd+bwd ours {p['ours']['forward_backward']['median_s']:.3f} s "
            f"theirs {p['diffusers']['forward_backward']['median_s']:.3f} s -> "
            f"{p['speedup_fwd_bwd']:.2f}x (equal FLOPs {p['speedup_fwd_bwd_flop_corrected']:.2f}x,"
            f" their/our FLOPs {p['model_flops_ratio']:.2f}); fwd {p['speedup_forward']:.2f}x"
        )
    b = sa["breakdown_s"]
    lines.append(
        f"sampling           {sa['s_per_step'] * 1e3:.1f} ms/step x {sa['steps']} steps; "
        f"text {b['text_encode_s']:.3f} s, loop {b['sampling_s']:.2f} s, "
        f"VAE decode {b['vae_decode_s']:.3f} s, H.264 {b['h264_encode_s']:.3f} s"
    )
    split = (
        f" (start {e2e['process_start_s']:.1f} + load {e2e['cli_load_s']:.1f} + generate "
        f"{e2e['cli_generate_write_s']:.1f})"
        if "cli_load_s" in e2e
        else ""
    )
    lines.append(f"end to end         {e2e['wall_s']:.1f} s prompt -> mp4, fresh process{split}")
    so = rep["sampler_overhead"]
    lines.append(
        f"sampler loop       overhead ours {so['ours_overhead_us_per_step']:.0f} us/step, "
        f"diffusers {so['diffusers_overhead_us_per_step']:.0f} us/step; with the DiT "
        f"{so['dit_ours_s_per_step'] * 1e3:.1f} vs "
        f"{so['dit_diffusers_s_per_step'] * 1e3:.1f} ms/step"
    )
    for row in rep["vae"]["rows"]:
        lines.append(
            f"VAE T={row['frames']:<4d}         encode {row['encode_fps']:6.0f} fps, decode "
            f"{row['decode_fps']:6.0f} fps, peak RSS {row['peak_rss_mb']:.0f} MB "
            f"(+{row['peak_growth_mb']:.0f} MB over the loaded model)"
        )
    k, tr = rep["packing"]["kernels"], rep["packing"]["training"]
    cells = "  ".join(
        f"{name} {k['forward_vs_attend_mask'][name]:.2f}x/"
        + (f"{k['fwd_bwd_vs_attend_mask'][name]:.2f}x" if name in k["fwd_bwd"] else "n/a")
        for name in k["forward"]
    )
    lines.append(
        f"packed attention   {k['budget']} tokens, {len(k['clip_tokens'])} clips; time vs "
        f"attend_mask fwd/fwd+bwd: {cells}; fastest {k['fastest_forward']}/{k['fastest_fwd_bwd']}"
        f"{'' if k['all_agree'] else '  (OUTPUTS DISAGREE)'}"
    )
    pk, pd = tr["packed"], tr["padded"]
    lines.append(
        f"packed vs padded   {tr['packed_vs_padded_tokens_per_s']:.2f}x useful tokens/s "
        f"({pk['useful_tokens_per_s']:.0f} vs {pd['useful_tokens_per_s']:.0f}; efficiency "
        f"{pk['efficiency']:.2f} vs {pd['efficiency']:.2f}, padded batch {pd['batch']}; "
        f"{tr['mode']})"
    )
    d = rep["data"]
    p, t, ddp = d["prepare"], d["training"], d["ddp"]
    lines.append(
        f"your own videos    prepare {p['clips_per_s']:.2f} clips/s ({p['clips']} clips, peak RSS "
        f"x{p['rss_growth_4x_files']:.2f} for 4x files); training tokens/s from the cache "
        f"{t['tokens_per_s_cache']:.0f} vs world {t['tokens_per_s_world']:.0f} "
        f"({t['cache_vs_world']:.2f}x; peak RSS x{t['memory']['rss_growth']:.2f} for 4x clips)"
    )
    lines.append(
        f"DDP                2 processes x 1 thread {ddp['s_per_step_2_processes_1_thread']:.3f} "
        f"s/step vs 1 x 2 threads {ddp['s_per_step_1_process_2_threads']:.3f} "
        f"({ddp['speedup_2_vs_1']:.2f}x; a 2-core machine: correctness, not speed)"
    )
    sc = rep["scaling"]
    lines.append(f"scaling (fwd+bwd, batch {sc['batch']}, s per clip; x = vs the shortest):")
    for attention in ("full", "factorized"):
        rows = [r for r in sc["rows"] if r["attention"] == attention]
        cells = "  ".join(
            f"{r['frames']}f/{r['tokens_per_clip']}t "
            f"{r['s_per_clip']:.3f} ({r['time_vs_shortest']:.1f}x)"
            for r in rows
        )
        lines.append(f"  {attention:10s} {cells}")
    return "\n".join(lines)
