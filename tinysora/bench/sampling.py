"""Generation sections of the bench: sampling, prompt -> mp4 end to end, sampler overhead, VAE.

The model timed is the bundled ``weights/`` when it has a DiT; otherwise a model
directory is built in a temporary directory from the bundled VAE, a randomly
initialized DiT of the recipe's config (bf16, as ``train_dit`` exports it) and the
recipe's pipeline settings. Weights do not change the time (no data-dependent work).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from tinysora.bench.timing import (
    measure_interleaved,
    python_cmd,
    subprocess_env,
)
from tinysora.device import autocast
from tinysora.diffusion.flow import timestep_shift
from tinysora.diffusion.samplers import cfg_denoiser, flow_times, sample_euler
from tinysora.dit.model import DiT
from tinysora.dit.patchify import grid_size
from tinysora.io.checkpoint import (
    BUNDLED_DIRS,
    load_config,
    resolve_model_dir,
    save_pretrained,
)
from tinysora.io.frames import tensor_to_frames
from tinysora.perf import measure, summarize
from tinysora.pipeline import TextToVideoPipeline, export_to_video
from tinysora.train.recipe import DiTRecipe
from tinysora.vae.model import SPACE_FACTOR, VAEConfig, latent_frames
from tinysora.worlds.shapes import sample_scene, split_seed

DEMO_PROMPT = "a large red circle bouncing on a navy background"


# ----------------------------------------------------------------------------- model


def resolve_model(recipe: DiTRecipe, model: str | None, work: Path) -> tuple[Path, dict]:
    """The pipeline directory to time and a description of it (see the module docstring)."""
    if model:
        return Path(model).resolve(), {"source": "given", "path": str(Path(model).resolve())}
    if any((root / "dit" / "config.json").is_file() for root in BUNDLED_DIRS):
        bundled = resolve_model_dir()
        return bundled, {"source": "bundled", "path": str(bundled)}
    root = build_model_dir(recipe, work / "model")
    return root, {
        "source": "random-init DiT of the recipe's config + the recipe's VAE (no trained DiT)",
        "path": str(root),
    }


def build_model_dir(recipe: DiTRecipe, root: Path) -> Path:
    """A pipeline directory: the recipe's VAE, a random-init DiT (bf16) and pipeline.json."""
    vae_dir = resolve_model_dir(recipe.vae, "vae")
    latent_channels = load_config(VAEConfig, vae_dir).latent_channels
    cfg = dataclasses.replace(recipe.model, in_channels=latent_channels)
    torch.manual_seed(0)
    save_pretrained(DiT(cfg), cfg, root / "dit", dtype=torch.bfloat16)
    shutil.copytree(vae_dir, root / "vae")
    recipe.pipeline.with_shift_of(recipe.flow).save(root / "pipeline.json")
    return root


def _prompts(start: int):
    """Distinct Shapes World captions, so the text encoder's per-prompt cache never hits."""
    i = start
    while True:
        yield sample_scene(split_seed("test", i)).caption
        i += 1


# ----------------------------------------------------------------------------- sampling


def sampling(
    model_dir: Path,
    work: Path,
    steps: int | None,
    warmup: int,
    repeats: int,
    frames: int = 17,
    height: int = 64,
    width: int = 64,
) -> tuple[dict[str, Any], TextToVideoPipeline]:
    """In-process timing of each stage of one prompt -> mp4 generation (batch 1, with CFG).

    load (VAE + DiT + text encoder), text encoding (prompt and negative prompt, uncached),
    the sampling loop (per step: the interval between the pipeline's step callbacks),
    VAE decode (as the pipeline does it: bf16, 4 latent frames at a time) and the H.264
    encode (``export_to_video``).
    """
    load = []
    for _ in range(max(1, min(repeats, 3))):
        t0 = time.perf_counter()
        pipe = TextToVideoPipeline.from_pretrained(model_dir)
        load.append(time.perf_counter() - t0)
    prompts = _prompts(0)
    encoder = pipe.text_encoder
    text = measure(lambda: (encoder([next(prompts)]), encoder([next(prompts)])), warmup, repeats)

    steps = steps or pipe.config.num_inference_steps
    step_times: list[float] = []
    loop_times: list[float] = []
    latents = None
    for run in range(warmup + repeats):
        marks: list[float] = []
        t0 = time.perf_counter()
        latents = pipe(
            DEMO_PROMPT,
            num_frames=frames,
            height=height,
            width=width,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(run),
            output_type="latent",
            callback=lambda info, marks=marks: marks.append(time.perf_counter()),
            progress=False,
        ).frames
        if run >= warmup:
            loop_times.append(marks[-1] - t0)
            step_times += [b - a for a, b in zip(marks[:-1], marks[1:], strict=True)]
    if not step_times:  # one step: the loop is the step
        step_times = loop_times

    def decode():
        with torch.no_grad(), autocast():
            pixels = pipe.vae.decode(
                pipe.vae.denormalize(latents), num_frames=frames, chunk_latents=4
            )
        return tensor_to_frames(pixels[0])

    video = decode()
    decode_t = measure(decode, warmup, repeats)
    mp4 = work / "sample.mp4"
    h264 = measure(lambda: export_to_video(video, mp4, fps=pipe.config.fps), warmup, repeats)
    parts = {
        "text_encode_s": text["median_s"],
        "sampling_s": summarize(loop_times)["median_s"],
        "vae_decode_s": decode_t["median_s"],
        "h264_encode_s": h264["median_s"],
    }
    result = {
        "clip": [frames, height, width],
        "steps": steps,
        "guidance_scale": pipe.config.guidance_scale,
        "sampler": pipe.config.sampler,
        "dit_batch_per_step": 2 if pipe.config.guidance_scale != 1.0 else 1,
        "load": summarize(load),
        "text_encode": text,
        "sampling_loop": summarize(loop_times),
        "step": summarize(step_times),
        "s_per_step": summarize(step_times)["median_s"],
        "vae_decode": decode_t,
        "h264_encode": h264,
        "generate_in_process_s": sum(parts.values()),
        "breakdown_s": parts,
    }
    return result, pipe


def end_to_end(
    model_dir: Path, work: Path, steps: int | None, warmup: int, repeats: int, threads: int | None
) -> dict[str, Any]:
    """Wall time of ``python -m tinysora.cli generate PROMPT --model DIR -o OUT.mp4``.

    A fresh process each time: interpreter start, imports, model + text encoder load,
    sampling, decode, H.264. The CLI's own "load X s, generate + write Y s" line splits it.
    """
    out = work / "end_to_end.mp4"
    cmd = python_cmd("-m", "tinysora.cli", "generate", DEMO_PROMPT, "--model", str(model_dir))
    cmd += ["-o", str(out), "--seed", "0"] + (["--steps", str(steps)] if steps else [])
    env = subprocess_env(threads)
    splits: list[dict[str, float]] = []

    def once():
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
        if res.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
        found = re.search(r"load ([\d.]+) s, generate \+ write ([\d.]+) s", res.stderr)
        if found:
            splits.append({"load_s": float(found[1]), "generate_write_s": float(found[2])})

    wall = measure(once, warmup, repeats)
    result: dict[str, Any] = {"command": cmd[1:], "wall": wall, "wall_s": wall["median_s"]}
    timed = splits[warmup:]
    if timed:
        load = statistics.median(s["load_s"] for s in timed)
        gen = statistics.median(s["generate_write_s"] for s in timed)
        result["cli_load_s"] = load  # import torch + tinysora.pipeline + from_pretrained
        result["cli_generate_write_s"] = gen
        result["process_start_s"] = max(0.0, wall["median_s"] - load - gen)
    return result


# ----------------------------------------------------------------------------- sampler


def _cheap_denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """One elementwise op: makes the sampler loop's own overhead visible."""
    return x * t.view(-1, *([1] * (x.ndim - 1)))


@torch.no_grad()
def _diffusers_euler(scheduler, denoiser, x, times: torch.Tensor, extra: dict) -> torch.Tensor:
    """A diffusers pipeline's loop: set_timesteps, then scheduler.step after each model call.

    ``scheduler`` is a FlowMatchEulerDiscreteScheduler(shift=1) (built once, as a pipeline
    holds one), given our (already shifted) flow times as sigmas; it appends the final 0.
    """
    scheduler.set_timesteps(sigmas=times[:-1].tolist())
    for t in scheduler.timesteps:
        v = denoiser(x, (t / scheduler.config.num_train_timesteps).expand(x.shape[0]), **extra)
        x = scheduler.step(v, t, x).prev_sample
    return x


def sampler_overhead(
    pipe: TextToVideoPipeline,
    steps: int | None,
    warmup: int,
    repeats: int,
    frames: int = 17,
    height: int = 64,
    width: int = 64,
) -> dict[str, Any]:
    """Our ``sample_euler`` vs diffusers' scheduler loop, same denoiser, same flow times.

    With a one-op denoiser, overhead per step = (loop - the denoiser calls alone) / steps.
    With the real DiT (+ CFG, as the pipeline runs it) both loops are timed per step.
    """
    from tinysora.bench.compare import require_diffusers

    require_diffusers()
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    steps = steps or pipe.config.num_inference_steps
    shape = (latent_frames(frames), height // SPACE_FACTOR, width // SPACE_FACTOR)
    x = torch.randn(1, pipe.vae.config.latent_channels, *shape)  # (1, C, t, h, w)
    gt, gh, gw = grid_size(shape, pipe.dit.config.patch)
    tokens = gt * gh * gw
    times = flow_times(steps, timestep_shift(tokens, pipe.config))
    ts = [float(v) for v in times[:-1]]

    @torch.no_grad()
    def bare():
        for t in ts:
            _cheap_denoiser(x, torch.full((x.shape[0],), t))

    cheap = measure_interleaved(
        {
            "ours": lambda: sample_euler(_cheap_denoiser, x, times),
            "diffusers": lambda: _diffusers_euler(scheduler, _cheap_denoiser, x, times, {}),
            "denoiser_only": bare,
        },
        warmup=max(warmup, 2),
        repeats=max(repeats, 10),
    )
    bare_s = cheap["denoiser_only"]["median_s"]
    ours_over = (cheap["ours"]["median_s"] - bare_s) / steps
    theirs_over = (cheap["diffusers"]["median_s"] - bare_s) / steps

    def denoiser(x, t, text, text_mask):
        with autocast():
            return pipe.dit(x, t, text, text_mask).float()

    guided = cfg_denoiser(denoiser, pipe.config.guidance_scale)
    states, mask = pipe.text_encoder([DEMO_PROMPT, ""])
    extra = {
        "cond": {"text": states[:1], "text_mask": mask[:1]},
        "uncond": {"text": states[1:], "text_mask": mask[1:]},
    }
    same = (
        (
            sample_euler(_cheap_denoiser, x, times)
            - _diffusers_euler(scheduler, _cheap_denoiser, x, times, {})
        )
        .abs()
        .max()
        .item()
    )  # the cheap denoiser, not the DiT: a fresh DiT predicts exactly zero
    with torch.no_grad():
        real = measure_interleaved(
            {
                "ours": lambda: sample_euler(guided, x, times, extra),
                "diffusers": lambda: _diffusers_euler(scheduler, guided, x, times, extra),
            },
            warmup,
            repeats,
        )
    ours_step = real["ours"]["median_s"] / steps
    theirs_step = real["diffusers"]["median_s"] / steps
    return {
        "steps": steps,
        "latent_shape": list(x.shape),
        "cheap_denoiser": cheap,
        "ours_overhead_us_per_step": ours_over * 1e6,
        "diffusers_overhead_us_per_step": theirs_over * 1e6,
        "overhead_ratio_diffusers_over_ours": theirs_over / ours_over if ours_over > 0 else None,
        "dit_cfg": real,
        "dit_ours_s_per_step": ours_step,
        "dit_diffusers_s_per_step": theirs_step,
        "dit_speedup": theirs_step / ours_step,
        "max_abs_diff_final_latents": same,
    }


# ----------------------------------------------------------------------------- VAE


def vae_speed_memory(
    vae_dir: Path, lengths: tuple[int, ...], repeats: int, threads: int | None
) -> dict[str, Any]:
    """Encode / decode frames/s and peak memory vs T (64x64): ``tinysora.eval.vae``'s probe,
    each run in a fresh process (``--_probe T``), median over ``repeats`` processes."""
    env = subprocess_env(threads)
    rows = []
    for frames in lengths:
        runs = []
        for _ in range(repeats):
            cmd = python_cmd(
                "-m",
                "tinysora.cli",
                "eval",
                "vae",
                "--model",
                str(vae_dir),
                "--_probe",
                str(frames),
            )
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))

        def med(key, runs=runs):
            return statistics.median(r[key] for r in runs)

        rows.append(
            {
                "frames": frames,
                "encode_fps": med("encode_fps"),
                "decode_fps": med("decode_fps"),
                "peak_rss_mb": med("peak_rss_mb"),
                "rss_after_load_mb": med("rss_before_mb"),
                "peak_growth_mb": statistics.median(
                    r["peak_rss_mb"] - r["rss_before_mb"] for r in runs
                ),
                "runs": len(runs),
            }
        )
    return {
        "vae": str(vae_dir),
        "clip_size": [64, 64],
        "method": "python -m tinysora.cli eval vae --_probe T: bf16, encode 1 + 16 frames then 16 "
        "at a time, decode 4 latent frames at a time (causal cache); peak RSS of the process",
        "rows": rows,
    }
