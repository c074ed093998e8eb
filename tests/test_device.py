"""Devices: the compute dtype follows the CPU (bf16 autocast only where the CPU has bf16
arithmetic), ``--device`` names only what is there, batches move whole."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinysora.cli import main
from tinysora.config import ConfigError
from tinysora.data.packing import pack
from tinysora.device import (
    DeviceError,
    autocast,
    compute_dtype,
    native_bf16,
    resolve_device,
    to_device,
)
from tinysora.train.steps import PackedBatch


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


# ----------------------------------------------------------------------------- --device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


@no_cuda
def test_resolve_device_defaults_to_the_cpu_without_a_gpu():
    assert resolve_device(None) == resolve_device("cpu") == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize(
    ("name", "needle"),
    [("cuda", "no CUDA GPU"), ("cuda:1", "no CUDA GPU"), ("tpu", "cpu, cuda"), ("gpu!", "not a")],
)
def test_resolve_device_refuses_what_is_not_here(name, needle):
    with pytest.raises(DeviceError, match=needle):
        resolve_device(name)


@no_cuda
@pytest.mark.parametrize(
    "args",
    [
        ["generate", "a red circle", "--device", "cuda"],
        ["prepare", "folder", "--out", "cache", "--device", "cuda"],
        ["train", "dit", "--config", "recipe.toml", "--out", "run", "--device", "cuda:0"],
        ["eval", "adherence", "--device", "cuda"],
        ["vae", "roundtrip", "in.mp4", "-o", "out.mp4", "--device", "cuda"],
    ],
    ids=["generate", "prepare", "train", "eval", "vae"],
)
def test_cli_device_cuda_without_a_gpu_is_one_line_error(tmp_path, monkeypatch, capsys, args):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()  # the inputs exist: only the device is wrong
    (tmp_path / "recipe.toml").write_text("")
    (tmp_path / "in.mp4").write_bytes(b"")
    before = sorted(tmp_path.iterdir())
    assert main(args) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "--device cpu" in lines[0], lines
    assert sorted(tmp_path.iterdir()) == before  # nothing loaded, nothing written


@no_cuda
def test_cli_device_error_from_a_real_process(tmp_path):
    cmd = [sys.executable, "-m", "tinysora", "generate", "a red circle", "--device", "cuda"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("tinysora: error: --device cuda: this machine has no CUDA")


MASK = torch.ones(2, dtype=torch.bool)


def test_to_device_moves_nested_batches_and_dataclasses():
    batch = PackedBatch(
        pack(
            [torch.ones(3, 4)], [torch.zeros(3, 3)], [torch.ones(2, 5)], [torch.ones(2).bool()], 4
        ),
        torch.ones(1, 4, 4),
        torch.ones(1, 4),
        torch.ones(1, 4).bool(),
        1.0,
        3,
    )
    moved = to_device((batch, [torch.zeros(2)], {"x": torch.ones(1)}, None), torch.device("cpu"))
    assert isinstance(moved[0], PackedBatch) and moved[0].packed.places == batch.packed.places
    assert torch.equal(moved[0].packed.tokens, batch.packed.tokens) and moved[3] is None
    assert moved[2]["x"].device.type == "cpu"


def test_packed_batch_shards_by_rows():
    rows = [torch.full((2, 4), float(i)) for i in range(4)]
    packed = pack(
        rows, [torch.zeros(2, 3)] * 4, [torch.ones(2, 5)] * 4, [torch.ones(2).bool()] * 4, 2
    )
    batch = PackedBatch(packed, packed.tokens, packed.segments.float(), packed.valid, 8.0, 8)
    halves = [batch.shard(r, 2) for r in (0, 1)]
    assert [h.packed.tokens[:, 0, 0].tolist() for h in halves] == [[0.0, 2.0], [1.0, 3.0]]
    assert all(h.flops == 4.0 and h.tokens == 4 for h in halves)
    with pytest.raises(ConfigError, match="rows = 4 do not split over 3"):
        batch.shard(0, 3)
