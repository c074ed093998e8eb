"""The bundled model's generations stay bit-identical across refactors.

``tests/data/golden.json`` holds md5s of the uint8 frames (or fp32 latents) of fixed
calls: plain text-to-video and the conditioning paths (image-to-video, extension,
SDEdit, loop). Kernels (and the compute dtype, ``tinysora.device``) differ between
CPUs, so the md5s are checked on the CPU kinds and torch builds they were recorded
with and skipped elsewhere. The fast set
(4 steps, latents) runs in ``make test``; the full set is the CLI's default calls
(``tinysora generate PROMPT --seed S``, 30 steps, decoded) and runs in ``make test-slow``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tinysora import TextToVideoPipeline
from tinysora.device import compute_dtype
from tinysora.perf import cpu_model
from tinysora.worlds.shapes import parse_caption, render

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden.json").read_text())
FAST = 4  # sampling steps of the fast set


def cpu_kind() -> str:
    """Model name, family / model numbers and the matmul ISA flags: what picks kernels."""
    info = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    flags = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in info["flags"]]
    return f"{cpu_model()} | family {info['cpu family']} model {info['model']} | {' '.join(flags)}"


RECORD = GOLDEN["kinds"].get(cpu_kind(), {})
pytestmark = pytest.mark.skipif(
    RECORD.get("torch") != torch.__version__ or RECORD.get("threads") != torch.get_num_threads(),
    reason=f"no md5s recorded for '{cpu_kind()}' with torch {torch.__version__} at "
    f"{torch.get_num_threads()} threads",
)


def calls() -> dict[str, tuple[str, dict, int]]:
    """name -> (prompt, conditioning, seed); inputs rendered as `tinysora world` does."""
    image = render(
        parse_caption("a small green square moving right on a black background", 3), 64, 64, 1
    )[0]
    clip = render(
        parse_caption("a large blue triangle moving up on a white background", 5), 64, 64, 17
    )
    return {
        "t2v": ("a large red circle bouncing on a navy background", {}, 0),
        "i2v": ("a small green square moving right on a black background", {"image": image}, 1),
        "extend": (
            "a large blue triangle moving up on a white background",
            {"video": clip, "extend": 8},
            2,
        ),
        "sdedit": (
            "a large red circle moving up on a white background",
            {"video": clip, "strength": 0.6},
            3,
        ),
        "loop": ("a small yellow circle moving left on a gray background", {"loop": True}, 4),
    }


def md5(x) -> str:
    array = x.numpy() if torch.is_tensor(x) else np.asarray(x)
    return hashlib.md5(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def pipe():
    return TextToVideoPipeline.from_pretrained()


@pytest.mark.parametrize("name", ["t2v", "i2v", "sdedit"])
def test_fast_latents_are_bit_identical(pipe, name):
    prompt, kwargs, seed = calls()[name]
    out = pipe(
        prompt,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=FAST,
        output_type="latent",
        progress=False,
        **kwargs,
    )
    assert RECORD["dtype"] == str(compute_dtype()).removeprefix("torch.")
    assert md5(out.frames) == RECORD["fast"][name]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["t2v", "i2v", "extend", "sdedit", "loop"])
def test_cli_default_generations_are_bit_identical(pipe, name):
    prompt, kwargs, seed = calls()[name]
    out = pipe(prompt, generator=torch.Generator().manual_seed(seed), progress=False, **kwargs)
    assert md5(out.frames) == RECORD["full"][name]
