"""VAE evaluation: reconstruction quality on test-split clips, compression, speed, memory.

    tinysora eval vae [--model weights/vae] [--n 200] [--json OUT]

* quality: PSNR / SSIM of the posterior-mean reconstruction on rendered test
  clips at 64x64x17, on clip shapes the VAE did not train on (48x96x33,
  112x64x9), and on images (T = 1); and the share of clips whose reconstruction the
  detector reads back exactly as the scene (color, shape, motion of every object, no
  extras): the ceiling the VAE puts on a text-to-video model's prompt adherence;
* compression ratio = pixels x 3 / latent elements at 64x64x17;
* encode / decode throughput (frames/s, bf16, chunked with the causal cache) and
  peak memory at T = 33, 129, 513 (64x64), each measured in a fresh subprocess
  (peak resident set size minus the size right after loading the model).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from tinysora.device import autocast, resolve_device
from tinysora.eval import fidelity
from tinysora.eval.fidelity import clip_fidelity, fidelity_line
from tinysora.eval.metrics import write_json
from tinysora.io.checkpoint import load_pretrained, resolve_model_dir
from tinysora.io.frames import frames_to_tensor
from tinysora.nn.metrics import psnr, ssim
from tinysora.vae.model import VideoVAE, latent_frames, reconstruct
from tinysora.worlds.detect import detect, judge
from tinysora.worlds.shapes import render, sample_scene, split_seed

QUALITY_SETS = {
    "64x64x17": (64, 64, 17),
    "48x96x33": (48, 96, 33),
    "112x64x9": (112, 64, 9),
    "image_64x64": (64, 64, 1),
}
MEMORY_LENGTHS = (33, 129, 513)
CHUNK_FRAMES = 16  # encode 1 + 16 frames, then 16 at a time (decode: 4 latent frames)
PROBE_S = 900  # deadline of one speed / memory probe process


def quality(vae, n: int) -> dict:
    """PSNR / SSIM per set, the share of clips whose reconstruction the detector reads
    back exactly as the scene (the ceiling on prompt adherence), and for video sets the
    fidelity of the round trips beside that of the renders themselves (the reference)."""
    out = {}
    for name, (h, w, t) in QUALITY_SETS.items():
        ps, ss, right, fid, ref = [], [], 0, [], []
        for i in tqdm(range(n), desc=name, unit="clip", leave=False):
            scene = sample_scene(split_seed("test", i))
            clip = render(scene, h, w, t)
            rec = reconstruct(vae, clip, chunk_frames=CHUNK_FRAMES)
            ps.append(psnr(rec, clip))
            ss.append(ssim(rec, clip))
            detection = detect(rec)
            right += judge(scene, detection, judge_motion=t > 1)["all_right"]
            if t > 1:
                fid.append(clip_fidelity(rec, detection))
                ref.append(clip_fidelity(clip))
        out[name] = {
            "clips": n,
            "psnr_mean": float(np.mean(ps)),
            "psnr_min": float(np.min(ps)),
            "ssim_mean": float(np.mean(ss)),
            "detected_exactly": right / n,
        }
        if t > 1:
            out[name]["fidelity"] = fidelity.summarize(fid)
            out[name]["fidelity_reference"] = fidelity.summarize(ref)
    return out


def compression(vae) -> dict:
    h, w, t = 64, 64, 17
    c = vae.config.latent_channels
    latent = c * latent_frames(t) * (h // 8) * (w // 8)
    return {
        "shape": [t, h, w],
        "latent_shape": [c, latent_frames(t), h // 8, w // 8],
        "ratio": t * h * w * 3 / latent,
    }


def speed_and_memory(model_dir: str, frames: int) -> dict:
    """Encode + decode one 64x64 clip of ``frames`` frames; run in a fresh process."""
    vae = load_pretrained(VideoVAE, model_dir)
    clip = render(sample_scene(split_seed("test", 0)), 64, 64, frames)
    x = frames_to_tensor(clip)[None]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB: model + input loaded
    with torch.no_grad(), autocast():
        warm = vae.encode(x[:, :, :5], chunk_frames=CHUNK_FRAMES).mean  # warm-up both ways
        vae.decode(warm, num_frames=5, chunk_latents=CHUNK_FRAMES // 4)
        t0 = time.perf_counter()
        z = vae.encode(x, chunk_frames=CHUNK_FRAMES).mean
        t1 = time.perf_counter()
        vae.decode(z, num_frames=frames, chunk_latents=CHUNK_FRAMES // 4)
        t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "frames": frames,
        "encode_fps": frames / (t1 - t0),
        "decode_fps": frames / (t2 - t1),
        "peak_rss_mb": peak / 1024,  # whole process (Python + torch + model + clip)
        "rss_before_mb": base / 1024,
    }


def evaluate(model_dir: str, n: int, device: str | None = "cpu") -> dict:
    """Compression and quality (on ``device``); speed and memory on the CPU, each length in
    a fresh process (its peak RSS)."""
    vae = load_pretrained(VideoVAE, model_dir).to(resolve_device(device))
    report = {
        "model": model_dir,
        "config": vae.config.to_dict(),
        "threads": torch.get_num_threads(),
    }
    report["compression"] = compression(vae)
    report["quality"] = quality(vae, n)
    report["speed_memory"] = []
    for t in MEMORY_LENGTHS:
        cmd = [sys.executable, "-m", "tinysora.cli", "eval", "vae", "--model", model_dir]
        cmd += ["--_probe", str(t)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=PROBE_S)
        report["speed_memory"].append(json.loads(res.stdout.strip().splitlines()[-1]))
    return report


def run(args: argparse.Namespace) -> dict:
    model = str(resolve_model_dir(args.model, "vae"))
    if args._probe:
        result = speed_and_memory(model, args._probe)
        print(json.dumps(result))
        return result
    report = evaluate(model, args.n, args.device)
    for name, q in report["quality"].items():
        print(
            f"{name:12s} PSNR {q['psnr_mean']:.2f} dB (min {q['psnr_min']:.2f}), "
            f"SSIM {q['ssim_mean']:.4f}, detected exactly {q['detected_exactly']:.1%} "
            f"over {q['clips']} clips"
        )
        if "fidelity" in q:
            print(f"{'':12s} fidelity {fidelity_line(q['fidelity'])}")
            print(f"{'':12s} renders  {fidelity_line(q['fidelity_reference'])}")
    print(f"compression ratio {report['compression']['ratio']:.1f}x at 64x64x17")
    for s in report["speed_memory"]:
        print(
            f"T={s['frames']:4d}: encode {s['encode_fps']:.0f} fps, decode {s['decode_fps']:.0f} "
            f"fps, peak RSS {s['peak_rss_mb']:.0f} MB (before encoding {s['rss_before_mb']:.0f})"
        )
    write_json(report, args.json)
    return report
