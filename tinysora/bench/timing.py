"""Measuring tools shared by the bench sections: timing, the machine, matmul peaks, FLOPs.

Every timing is the median of ``repeats`` runs after ``warmup`` runs (the first
calls of a shape build oneDNN kernels and grow the allocator). Absolute times on a
shared machine are noisy; the bench reports ratios between things measured in the
same process, one right after the other.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from tinysora.perf import cpu_model, summarize

REPO_ROOT = Path(__file__).resolve().parents[2]


def measure_interleaved(
    fns: dict[str, Callable[[], Any]], warmup: int = 2, repeats: int = 5
) -> dict[str, dict[str, float]]:
    """Like :func:`measure` for several functions, run in turns (a b a b ...).

    Compared functions see the same machine conditions: a burst of load elsewhere hits
    all of them, not just the one that happened to run at that moment.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: summarize(ts) for name, ts in times.items()}


def cpu_flags() -> list[str]:
    """The matmul-relevant ISA flags of the CPU (AVX-512, AMX), as /proc/cpuinfo lists them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            keep = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
            return [f for f in keep if f in flags]
    return []


def git_commit() -> str | None:
    """``<commit>[-dirty]`` of the checkout the code runs from, or None outside git."""
    try:
        run = {"cwd": REPO_ROOT, "capture_output": True, "text": True, "timeout": 10}
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, torch threads, versions, load at the start."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "load_average_start": load_average(),
    }
    try:
        import diffusers

        info["diffusers_version"] = diffusers.__version__
    except ImportError:
        info["diffusers_version"] = None
    return info


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (runnable processes; > cores = contended)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def subprocess_env(threads: int | None) -> dict[str, str]:
    """Environment for child processes: same threads as this one when ``threads`` is set."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


# ----------------------------------------------------------------------------- FLOPs

_aten = torch.ops.aten


def _sdpa_cpu_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    """q (B, h, Nq, d) k (B, h, Nk, d) v (B, h, Nk, dv): scores 2 Nq Nk d + values 2 Nq Nk dv."""
    b, h, nq, d = q
    return 2 * b * h * nq * k[2] * d + 2 * b * h * nq * k[2] * v[3]


def _sdpa_cpu_backward_flops(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    """Backward of the above: four matmuls of the forward's sizes (dq, dk, dv, dscores)."""
    return 2 * _sdpa_cpu_flops(q, k, v)


# torch's FlopCounterMode knows the CUDA attention kernels but not the CPU flash kernel that
# F.scaled_dot_product_attention dispatches to here; without these the diffusers models'
# attention would count as zero.
CPU_SDPA_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
}
ATTENTION_OPS = {
    _aten.bmm,
    _aten.baddbmm,
    _aten._scaled_dot_product_flash_attention_for_cpu,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward,
}


def count_flops(fn: Callable[[], Any]) -> dict[str, int]:
    """Run ``fn`` once under FlopCounterMode: executed FLOPs, split into attention and the rest.

    ``attention`` = batched matmuls (our explicit ``q @ k^T``, ``p @ v``) and SDPA kernels;
    ``linear`` = everything else counted (mm / addmm of Linear layers, convolutions).
    """
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        fn()
    by_op = counter.get_flop_counts().get("Global", {})
    attention = sum(int(v) for op, v in by_op.items() if _packet(op) in ATTENTION_OPS)
    total = int(counter.get_total_flops())
    return {"total": total, "attention": attention, "linear": total - attention}


def _packet(op):
    """OpOverload -> its OpOverloadPacket (aten.bmm.default -> aten.bmm)."""
    return getattr(op, "overloadpacket", op)
