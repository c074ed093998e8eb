"""Where the math runs: the device (``--device``) and the dtype it computes in.

tinysora keeps weights in fp32 (files in bf16) and computes under bf16 autocast where
the hardware has bf16 arithmetic: CUDA GPUs from Ampere on, and CPUs with AVX512-BF16 or
AMX (Intel Sapphire Rapids, AMD Zen 4/5). Elsewhere it computes in plain fp32. A CPU
without bf16 arithmetic emulates it: measured on an AMD EPYC Zen 3 (AVX2 only), a
1024^3 bf16 matmul runs at 1.3 GFLOP/s against 123 in fp32, bf16 3D convolutions fall
back to a naive kernel (VAE decode of 64x64x17: 14.6 s against 0.43 s), and the bundled
DiT's forward takes 0.32 s against 0.05 s.

So numbers, and a generation's exact bytes, depend on the machine kind: the same
computation is bit-identical only on the same kind of CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import torch

from tinysora.errors import UserError


class DeviceError(UserError, ValueError):
    """A ``--device`` this machine does not have."""


@functools.cache
def native_bf16() -> bool:
    """True when oneDNN has fast bf16 kernels for this CPU (its own check: AVX-512 or newer;
    AVX512-BF16 and AMX compute bf16 natively). False on AVX2-only CPUs."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``--device`` -> a torch.device: ``cpu``, ``cuda`` or ``cuda:N``; None = ``cuda`` when
    a GPU is there (under torchrun: ``cuda:LOCAL_RANK``), else ``cpu``."""
    if name is None or str(name) == "":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise DeviceError(f"--device {name}: tinysora runs on cpu and cuda; use one of them")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {name}: this machine has no CUDA GPU (or this torch is a CPU build); "
            "use --device cpu"
        )
    count = torch.cuda.device_count()
    index = device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", 0))
    if index >= count:
        raise DeviceError(f"--device {name}: there are {count} CUDA devices (cuda:0..{count - 1})")
    return torch.device("cuda", index)


def compute_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """bf16 where ``device`` computes it natively, else fp32."""
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if native_bf16() else torch.float32


def autocast(device: str | torch.device = "cpu", enabled: bool = True) -> torch.autocast:
    """``torch.autocast`` to bf16 on a ``device`` with bf16 arithmetic; a no-op elsewhere
    (or when ``enabled`` is False)."""
    kind = torch.device(device).type
    bf16 = compute_dtype(device) == torch.bfloat16
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=enabled and bf16)


def to_device(batch, device: torch.device):
    """A batch on ``device``: tensors moved (non-blocking), tuples / lists / dicts and
    dataclasses of them recursively, other values as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        fields = dataclasses.fields(batch)
        moved = {f.name: to_device(getattr(batch, f.name), device) for f in fields}
        return dataclasses.replace(batch, **moved)
    return batch
