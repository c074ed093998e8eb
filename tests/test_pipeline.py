"""The text-to-video pipeline end to end, with tiny random-weight models saved as real files
and the real packaged MiniLM text encoder."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny import save_tiny_model

from tinysora.io.video import read_video
from tinysora.pipeline import (
    PipelineError,
    TextToVideoPipeline,
    export_to_video,
    legal_size,
)
from tinysora.text.encoder import TextEncoder

PROMPT = "a small red circle moving left on a black background"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"), steps=3)


@pytest.fixture(scope="module")
def pipe(model_dir):
    return TextToVideoPipeline.from_pretrained(model_dir, text_encoder=TextEncoder())


def test_generates_frames_and_is_deterministic(pipe):
    a = pipe(PROMPT, generator=torch.Generator().manual_seed(1), progress=False).frames
    b = pipe(PROMPT, generator=torch.Generator().manual_seed(1), progress=False).frames
    c = pipe(PROMPT, generator=torch.Generator().manual_seed(2), progress=False).frames
    assert a.shape == (17, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_one_generator_per_prompt_makes_a_batch_reproduce_lone_runs(pipe):
    prompts = [PROMPT, "a large blue square moving up on a white background"]
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    batch = pipe(prompts, generator=gens, output_type="latent", progress=False).frames
    for i, seed in enumerate((5, 6)):
        g = torch.Generator().manual_seed(seed)
        alone = pipe(prompts[i], generator=g, output_type="latent", progress=False).frames
        assert torch.allclose(batch[i], alone[0], atol=2e-2), (batch[i] - alone[0]).abs().max()
    assert not torch.allclose(batch[0], batch[1], atol=0.1)
    with pytest.raises(PipelineError, match="2 generators for 1 prompts"):
        pipe(PROMPT, generator=gens, progress=False)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m"])
def test_samplers_and_output_types(pipe, sampler):
    g = torch.Generator().manual_seed(0)
    latent = pipe(PROMPT, sampler=sampler, output_type="latent", generator=g, progress=False)
    assert latent.frames.shape == (1, 4, 5, 8, 8)
    pil = pipe(PROMPT, sampler=sampler, output_type="pil", num_frames=5, progress=False)
    assert len(pil.frames) == 5 and pil.frames[0].size == (64, 64)


def test_callback_sees_every_step(pipe):
    seen = []
    pipe(
        PROMPT, num_inference_steps=4, callback=lambda info: seen.append(info["i"]), progress=False
    )
    assert seen == [0, 1, 2, 3]


def test_illegal_size_is_rounded_with_a_warning(pipe):
    with pytest.warns(UserWarning, match="not legal"):
        out = pipe(PROMPT, num_frames=10, height=50, width=70, progress=False)
    assert out.frames.shape == (9, 48, 64, 3)
    assert legal_size(1, 20, 600, 16) == (1, 32, 512)


def test_batch_of_prompts_and_negative_prompt(pipe):
    out = pipe([PROMPT, "a large blue square"], negative_prompt="blurry", progress=False)
    assert len(out.frames) == 2 and out.frames[1].shape == (17, 64, 64, 3)


def test_bad_arguments(pipe):
    with pytest.raises(ValueError, match="output_type"):
        pipe(PROMPT, output_type="gif", progress=False)
    with pytest.raises(ValueError, match="euler"):
        pipe(PROMPT, sampler="ddim_magic", progress=False)


def test_export_and_cli(pipe, model_dir, tmp_path):
    frames = pipe(PROMPT, num_frames=5, progress=False).frames
    path = export_to_video(frames, tmp_path / "a.mp4", fps=8)
    assert read_video(path)[0].shape == (5, 64, 64, 3)
    out = tmp_path / "cli.mp4"
    cmd = [sys.executable, "-m", "tinysora.cli", "generate", PROMPT, "-o", str(out)]
    res = subprocess.run(cmd + ["--model", str(model_dir), "--seed", "3"], capture_output=True)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert res.stdout.decode().strip().splitlines()[-1] == str(out.resolve())
    assert read_video(out)[0].shape == (17, 64, 64, 3)


def test_missing_model_is_a_one_line_error(tmp_path):
    cmd = [sys.executable, "-m", "tinysora.cli", "generate", PROMPT, "--model", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.startswith("tinysora: error: no text-to-video model")
    assert len(res.stderr.strip().splitlines()) == 1
