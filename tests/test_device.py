"""The compute dtype follows the CPU: bf16 autocast only where the CPU has bf16 arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tinysora.device import autocast, compute_dtype, native_bf16


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.skip("no /proc/cpuinfo flags")


def test_native_bf16_follows_the_cpu_flags():
    flags = cpu_flags()
    if flags & {"avx512_bf16", "amx_bf16"}:
        assert native_bf16()  # Sapphire Rapids (AMX), Zen 4/5 (AVX512-BF16)
    if "avx512f" not in flags:
        assert not native_bf16()  # AVX2 only (e.g. Zen 3): bf16 would be emulated


def test_autocast_computes_in_the_compute_dtype():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with torch.no_grad():
        with autocast():
            y = layer(x)
        with autocast(enabled=False):
            z = layer(x)
    assert y.dtype == compute_dtype()
    assert z.dtype == torch.float32
    assert compute_dtype() == (torch.bfloat16 if native_bf16() else torch.float32)
