"""Measuring the machine: timing, the CPU's name, the matmul peak that MFU divides by.

Every timing is the median of ``repeats`` runs after ``warmup`` runs (the first
calls of a shape build oneDNN kernels and grow the allocator).

Training logs MFU against the matmul peak in the dtype it computes in
(``tinysora.device.compute_dtype``): :func:`peak_flops` measures it once per machine
(CPU model, torch version, threads, dtype) and keeps it in
``$XDG_CACHE_HOME/tinysora/matmul_peak.json`` (default ``~/.cache``), so a run does
not spend seconds timing 2048^3 matmuls; a recipe can also give it
(``[train] peak_tflops``). ``tinysora bench`` always measures afresh.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tinysora.device import compute_dtype
from tinysora.io.atomic import atomic_write_text


def measure(fn: Callable[[], Any], warmup: int = 2, repeats: int = 5) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times, then time ``repeats`` runs: median / min / max seconds."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return summarize(times)


def summarize(times: list[float]) -> dict[str, float]:
    """Median / min / max of a list of seconds (the median is the number the bench uses)."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": len(times),
    }


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(
    m: int, k: int, n: int, dtype: torch.dtype, warmup: int, repeats: int, device="cpu"
) -> float:
    """Median GFLOP/s of one (m, k) @ (k, n) matmul in ``dtype`` (2 m k n FLOPs) on
    ``device`` (CUDA: timed to the end of the kernel)."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    out = torch.empty(m, n, dtype=dtype, device=device)
    cuda = torch.device(device).type == "cuda"

    def run() -> None:
        torch.mm(a, b, out=out)
        if cuda:
            torch.cuda.synchronize(device)

    t = measure(run, warmup, repeats)
    return 2 * m * k * n / t["median_s"] / 1e9


def matmul_peak(
    dtype: torch.dtype = torch.bfloat16,
    sizes: tuple[int, ...] = (1024, 2048),
    warmup: int = 2,
    repeats: int = 10,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Measured matmul ceiling: the best median GFLOP/s over square sizes ``sizes``."""
    per_size = {str(n): matmul_gflops(n, n, n, dtype, warmup, repeats, device) for n in sizes}
    best = max(per_size, key=per_size.get)
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "gflops": per_size[best],
        "best_size": int(best),
        "gflops_by_size": per_size,
        "threads": torch.get_num_threads(),
    }


def peak_cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "tinysora" / "matmul_peak.json"


def peak_flops(device: str | torch.device = "cpu") -> float:
    """This machine's (or GPU's) matmul FLOP/s in its compute dtype (:func:`matmul_peak`),
    measured once and cached."""
    device = torch.device(device)
    dtype = compute_dtype(device)
    version = f"torch {torch.__version__}"
    if device.type == "cuda":
        sizes = (4096, 8192)
        key = f"{torch.cuda.get_device_name(device)} | {version} | {dtype}"
    else:
        sizes = (1024, 2048)
        key = f"{cpu_model()} | {version} | {torch.get_num_threads()} threads | {dtype}"
    path = peak_cache_path()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict) or not isinstance(cached.get(key), (int, float)):
        cached = cached if isinstance(cached, dict) else {}
        cached[key] = matmul_peak(dtype, sizes, device=device)["gflops"] * 1e9
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(cached, indent=1))
        except OSError:
            pass  # a read-only home: measure again next time
    return float(cached[key])
