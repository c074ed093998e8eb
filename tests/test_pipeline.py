"""The text-to-video pipeline end to end, with tiny random-weight models saved as real files
and the real packaged MiniLM text encoder."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from tiny import save_tiny_model

from tinysora.config import ConfigError
from tinysora.diffusion.flow import FlowConfig, timestep_shift
from tinysora.io.checkpoint import CheckpointError
from tinysora.io.frames import load_video, to_uint8, to_unit
from tinysora.io.video import read_video
from tinysora.pipeline import (
    PipelineConfig,
    PipelineError,
    PromptWarning,
    TextToVideoPipeline,
    export_to_video,
    legal_size,
)
from tinysora.text.encoder import TextEncoder
from tinysora.worlds.captions import vocabulary

PROMPT = "a small red circle moving left on a black background"
CLI_S = 300  # the longest a `tinysora generate` of the tiny model may take (a few seconds)


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
    assert a.shape == (17, 64, 64, 3) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_np_frames_are_floats_in_0_1_and_to_uint8_gives_the_bytes(pipe, tmp_path):
    """diffusers' convention: "np" is float in [0, 1]; the uint8 bytes (those of "pil",
    and of every file the CLI writes) come back exactly with to_uint8."""
    g = torch.Generator().manual_seed(4)
    frames = pipe(PROMPT, num_frames=5, generator=g, progress=False).frames
    assert frames.dtype == np.float32 and frames.min() >= 0 and frames.max() <= 1
    g = torch.Generator().manual_seed(4)
    pil = pipe(PROMPT, num_frames=5, generator=g, output_type="pil", progress=False).frames
    as_bytes = np.stack([np.asarray(im) for im in pil])
    assert np.array_equal(to_uint8(frames), as_bytes)
    assert np.array_equal(np.load(export_to_video(frames, tmp_path / "x.npy")), as_bytes)
    assert np.array_equal(to_uint8(to_unit(as_bytes)), as_bytes)
    every = np.arange(256, dtype=np.uint8)
    assert np.array_equal(to_uint8(to_unit(every)), every)  # exact for every byte
    assert np.array_equal(load_video(frames), as_bytes)  # "np" frames condition as given


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
    with pytest.raises(PipelineError, match="num_inference_steps must be >= 1, got 0"):
        pipe(PROMPT, num_inference_steps=0, progress=False)  # not the default's 30 steps
    with pytest.raises(PipelineError, match="guidance_scale must be a finite number"):
        pipe(PROMPT, guidance_scale=float("nan"), progress=False)
    with pytest.raises(CheckpointError, match=r"no model 'fast-ish'.*known: default"):
        TextToVideoPipeline.from_pretrained("fast-ish")


def test_export_and_cli(pipe, model_dir, tmp_path):
    frames = pipe(PROMPT, num_frames=5, progress=False).frames
    path = export_to_video(frames, tmp_path / "a.mp4", fps=8)
    assert read_video(path)[0].shape == (5, 64, 64, 3)
    out = tmp_path / "cli.mp4"
    cmd = [sys.executable, "-m", "tinysora.cli", "generate", PROMPT, "-o", str(out)]
    args = ["--model", str(model_dir), "--seed", "3", "--height", "60"]
    res = subprocess.run(cmd + args, capture_output=True, text=True, timeout=CLI_S)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == str(out.resolve())
    assert read_video(out)[0].shape == (17, 64, 64, 3)
    # the size warning is one clean line: no Python warnings path, no source line
    warned = [line for line in res.stderr.splitlines() if "not legal" in line]
    assert warned == [
        "tinysora: warning: size 17x60x64 (frames x height x width) is not legal; using "
        "17x64x64 (frames 1+4k, sides multiples of 16 in 32..512)"
    ]
    assert "Warning" not in res.stderr and ".py:" not in res.stderr


def test_bad_output_name_fails_before_loading_or_sampling(model_dir, tmp_path):
    cmd = [sys.executable, "-m", "tinysora.cli", "generate", PROMPT, "-o", "x.mp5"]
    res = subprocess.run(
        cmd + ["--model", str(model_dir)], capture_output=True, text=True, timeout=CLI_S
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "tinysora: error: generate: argument -o/--output: cannot write video 'x.mp5': "
        "unsupported format ('.mp5'); use one of .gif, .mkv, .mov, .mp4, .npy, .png "
        "(see `tinysora generate -h`)"
    ]  # (no "sampling" progress bar before it)


def test_sampling_config_and_old_pipeline_json(tmp_path):
    old = {  # a pipeline.json as training wrote it before the sampling config was split
        "num_inference_steps": 12,
        "guidance_scale": 3.0,
        "sampler": "heun",
        "fps": 8.0,
        "text_max_length": 32,
        "flow": {"logit_mean": 0.0, "logit_std": 1.0, "uniform_fraction": 0.2,
                 "shift_base_tokens": 64, "base_shift": 1.5, "max_shift": 3.0,
                 "caption_dropout": 0.1},
    }  # fmt: skip
    (tmp_path / "pipeline.json").write_text(json.dumps(old))
    cfg = PipelineConfig.load(tmp_path / "pipeline.json")
    assert (cfg.num_inference_steps, cfg.sampler) == (12, "heun")
    assert (cfg.shift_base_tokens, cfg.base_shift, cfg.max_shift) == (64, 1.5, 3.0)
    assert timestep_shift(256, cfg) == timestep_shift(256, FlowConfig(**old["flow"]))
    flow = FlowConfig(shift_base_tokens=100, base_shift=2.0, max_shift=5.0)
    assert cfg.with_shift_of(flow).to_dict() == {
        **cfg.to_dict(),
        "shift_base_tokens": 100,
        "base_shift": 2.0,
        "max_shift": 5.0,
    }
    with pytest.raises(ConfigError, match="logit_std"):
        PipelineConfig.from_dict({**cfg.to_dict(), "logit_std": 1.0})  # training keys: typos


def test_missing_model_is_a_one_line_error(tmp_path):
    cmd = [sys.executable, "-m", "tinysora.cli", "generate", PROMPT, "--model", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_S)
    assert res.returncode == 2
    assert res.stderr.startswith("tinysora: error: no text-to-video model")
    assert len(res.stderr.strip().splitlines()) == 1


def test_prompt_words_the_model_does_not_know_are_warned(pipe, model_dir, tmp_path):
    """The pipeline checks prompts against the vocabulary in pipeline.json (the server
    gets the check too); the CLI shows it as one line."""
    saved = pipe.config
    pipe.config = dataclasses.replace(saved, vocabulary=vocabulary())
    try:
        with pytest.warns(PromptWarning, match=r"astronaut, riding -> rising\?, horse, mars"):
            pipe("an astronaut riding a horse on mars", num_frames=1, progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pipe(PROMPT, num_frames=1, progress=False)  # every word known: silent
        pipe.config = saved  # no vocabulary saved: no check
        pipe("an astronaut riding a horse on mars", num_frames=1, progress=False)
    finally:
        pipe.config = saved
    model = tmp_path / "model"
    for part in ("vae", "dit"):
        shutil.copytree(model_dir / part, model / part)
    dataclasses.replace(saved, vocabulary=vocabulary()).save(model / "pipeline.json")
    cmd = [sys.executable, "-m", "tinysora", "generate", "a smal red cirlce", "--frames", "1"]
    res = subprocess.run(
        [*cmd, "--model", str(model), "-o", str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    warned = [line for line in res.stderr.splitlines() if "not trained on" in line]
    assert len(warned) == 1 and warned[0].startswith("tinysora: warning: words the model")
    assert "smal -> small?, cirlce -> circle? (it knows colours: red," in warned[0]
