"""One prepared CUDA check: train a few hundred steps and generate on the GPU, then write
``bench/results/<date>-gpu.json`` (tokens/s, MFU against the GPU's measured bf16 matmul
peak and its nominal one, seconds per sampling step, peak memory).

    bash scripts/gpu_check.sh            # what the `device` tool runs; under 8 minutes

Steps (each printed with its wall time):

1. the GPU, its bf16 matmul peak (8192^3, measured);
2. SDPA: a DiT forward in bf16 with only the flash and memory-efficient kernels allowed
   (PyTorch raises if attention would fall back to the math kernel);
3. ``train dit`` on the Shapes World (the bundled XS/2 recipe, a 512-clip latent cache,
   ``--steps`` steps, checkpoints and export as on the CPU) with ``--device cuda``;
4. generation with the bundled model and with the model just trained: 64x64x17 and
   256x256x33, 30 steps, seconds per sampling step.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
NOMINAL_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense, from the spec sheets


def stage(name: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:6.1f} s] {name}", flush=True)


def sdpa_check(device: torch.device) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from tinysora.dit.model import DiT, preset

    cfg = preset("XS/2")
    cfg.in_channels = 4
    dit = DiT(cfg).to(device).eval()
    x = torch.randn(2, 4, 9, 32, 32, device=device)  # 2 x 1296 tokens
    t = torch.rand(2, device=device)
    text = torch.randn(2, 32, cfg.text_dim, device=device)
    mask = torch.ones(2, 32, dtype=torch.bool, device=device)
    kernels = sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), kernels:
        out = dit(x, t, text, mask)
    return {"flash_or_efficient_only": True, "output_finite": bool(torch.isfinite(out).all())}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device, reset: bool = False) -> float | None:
    if device.type != "cuda":
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def sampling(model_dir: Path | None, device: torch.device, sizes) -> list[dict]:
    from tinysora import TextToVideoPipeline

    pipe = TextToVideoPipeline.from_pretrained(model_dir).to(device)
    results = []
    for frames, side in sizes:
        stamps: list[float] = []

        def on_step(info: dict, stamps=stamps) -> None:
            sync(device)
            stamps.append(time.perf_counter())

        args = dict(num_frames=frames, height=side, width=side, num_inference_steps=30)
        pipe("a large red circle bouncing on a navy background", progress=False, **args)  # warm
        peak_memory_gib(device, reset=True)
        t0 = time.perf_counter()
        video = pipe(
            "a large red circle bouncing on a navy background",
            generator=torch.Generator().manual_seed(0),
            callback=on_step,
            progress=False,
            **args,
        ).frames
        sync(device)
        total = time.perf_counter() - t0
        steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        results.append(
            {
                "size": f"{frames}x{side}x{side}",
                "s_per_sampling_step": sorted(steps)[len(steps) // 2],  # median, CFG pair
                "seconds_total": total,
                "peak_memory_gib": peak_memory_gib(device),
                "frames_shape": list(video.shape),
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--json", help="report path (default bench/results/<date>-gpu.json)")
    parser.add_argument(
        "--smoke", action="store_true", help="a few steps on the CPU: checks the script itself"
    )
    args = parser.parse_args()
    t0 = time.perf_counter()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False)")
    device = torch.device("cpu" if args.smoke else "cuda")
    from tinysora.perf import cpu_model, matmul_peak, peak_flops

    name = cpu_model() if args.smoke else torch.cuda.get_device_name(device)

    report: dict = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gpu": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    sizes = (256,) if args.smoke else (4096, 8192)
    peak = matmul_peak(torch.bfloat16, sizes, warmup=3, repeats=10, device=device)
    report["bf16_matmul_peak_tflops"] = peak["gflops"] / 1e3
    nominal = next((v for k, v in NOMINAL_BF16_TFLOPS.items() if k in name), None)
    report["bf16_nominal_tflops"] = nominal
    stage(f"{name}: bf16 matmul {peak['gflops'] / 1e3:.0f} TFLOP/s", t0)
    if not args.smoke:
        report["sdpa"] = sdpa_check(device)
        stage(f"SDPA flash/efficient kernels: {report['sdpa']}", t0)

    from tinysora.train.dit import train_dit
    from tinysora.train.recipe import DiTRecipe

    work = Path(tempfile.mkdtemp(prefix="tinysora-gpu-"))
    recipe_path = work / "recipe.json"
    r = DiTRecipe.load(ROOT / "configs" / "dit_shapes.toml")
    steps = 4 if args.smoke else args.steps
    r.cache_clips = 8 if args.smoke else 512
    r.train.steps, r.train.warmup_steps, r.train.checkpoint_every = steps, 50, 100
    r.train.log_every, r.train.eval_every, r.train.compile = 2 if args.smoke else 25, 10**9, False
    r.train.peak_tflops = report["bf16_matmul_peak_tflops"]
    r.save(recipe_path)
    peak_memory_gib(device, reset=True)
    t_train = time.perf_counter()
    model = train_dit(recipe_path, work / "run", device=str(device))
    train_s = time.perf_counter() - t_train
    log = [json.loads(x) for x in (work / "run" / "log.jsonl").read_text().splitlines()]
    steady = [x for x in log if "tokens_per_s" in x][2:] or log
    mean = lambda k: sum(x[k] for x in steady) / len(steady)  # noqa: E731
    report["training"] = {
        "recipe": "configs/dit_shapes.toml (XS/2, batch 32, 64x64x17) with cache_clips 512",
        "steps": steps,
        "seconds_incl_cache_and_export": train_s,
        "tokens_per_s": mean("tokens_per_s"),
        "s_per_step": mean("s_per_step"),
        "mfu_vs_measured_peak": mean("mfu"),
        "mfu_vs_nominal_peak": (
            mean("mfu") * report["bf16_matmul_peak_tflops"] / nominal if nominal else None
        ),
        "first_loss": log[0]["loss"],
        "last_loss": log[-1]["loss"],
        "peak_memory_gib": peak_memory_gib(device),
    }
    stage(f"trained {steps} steps: {report['training']}", t0)
    sizes = ((5, 32),) if args.smoke else ((17, 64), (33, 256))
    report["sampling_bundled"] = sampling(None, device, sizes)
    stage(f"sampling (bundled model): {report['sampling_bundled']}", t0)
    report["sampling_trained"] = sampling(model, device, sizes[:1])
    stage(f"sampling (just trained): {report['sampling_trained']}", t0)
    if not args.smoke:
        report["peak_flops_cached"] = peak_flops(device) / 1e12
    report["wall_s"] = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    day = datetime.date.today().isoformat()
    kind = "gpu-smoke" if args.smoke else "gpu"
    out = Path(args.json or ROOT / "bench" / "results" / f"{day}-{kind}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(out)


if __name__ == "__main__":
    main()
