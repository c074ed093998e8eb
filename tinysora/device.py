"""Where the math runs: the dtype this machine computes in.

tinysora keeps weights in fp32 (files in bf16) and computes under bf16 autocast where
the CPU has bf16 arithmetic (AVX512-BF16 or AMX: Intel Sapphire Rapids, AMD Zen 4/5),
and in plain fp32 where it does not. A CPU without it emulates bf16: measured on an
AMD EPYC Zen 3 (AVX2 only), a 1024^3 bf16 matmul runs at 1.3 GFLOP/s against 123 in
fp32, bf16 3D convolutions fall back to a naive kernel (VAE decode of 64x64x17: 14.6 s
against 0.43 s), and the bundled DiT's forward takes 0.32 s against 0.05 s.

So numbers, and a generation's exact bytes, depend on the machine kind: the same
computation is bit-identical only on the same kind of CPU.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def native_bf16() -> bool:
    """True when oneDNN has fast bf16 kernels for this CPU (its own check: AVX-512 or newer;
    AVX512-BF16 and AMX compute bf16 natively). False on AVX2-only CPUs."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def compute_dtype() -> torch.dtype:
    """bf16 where the CPU computes it natively, else fp32."""
    return torch.bfloat16 if native_bf16() else torch.float32


def autocast(enabled: bool = True) -> torch.autocast:
    """``torch.autocast`` to bf16 on a CPU with bf16 arithmetic; a no-op elsewhere (or when
    ``enabled`` is False)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled and native_bf16())
