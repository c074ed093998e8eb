"""Diffusers-format text-to-video models through tinysora's pipeline call, proven on a
tiny random ModelScope-layout model saved by diffusers itself (tests/tiny_diffusers.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from tiny_diffusers import save_tiny_ltx, save_tiny_modelscope

from tinysora.bridge.diffusers_video import BridgeError, DiffusersVideoPipeline
from tinysora.pipeline import TextToVideoPipeline

SIZE = {"num_frames": 4, "height": 32, "width": 32, "num_inference_steps": 3}


@pytest.fixture(scope="module")
def modelscope(tmp_path_factory):
    return save_tiny_modelscope(tmp_path_factory.mktemp("ms"))


@pytest.fixture(scope="module")
def pipe(modelscope):
    return TextToVideoPipeline.from_pretrained(modelscope)


def test_the_same_frames_as_diffusers_pipeline(modelscope, pipe):
    from diffusers import TextToVideoSDPipeline

    assert isinstance(pipe, DiffusersVideoPipeline)
    reference = TextToVideoSDPipeline.from_pretrained(modelscope)
    reference.set_progress_bar_config(disable=True)
    prompts = ["a red circle moving left", "a blue square"]
    for guidance in (1.0, 7.5):  # without and with classifier-free guidance
        args = {**SIZE, "guidance_scale": guidance, "negative_prompt": ["blurry", ""]}
        theirs = reference(
            prompts, generator=torch.Generator().manual_seed(3), output_type="np", **args
        ).frames
        ours = pipe(
            prompts,
            generator=torch.Generator().manual_seed(3),
            output_type="pt",
            progress=False,
            **args,
        ).frames
        assert len(ours) == 2
        for a, b in zip(ours, theirs, strict=True):
            assert a.shape == b.shape == (4, 32, 32, 3)
            np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-3)
        assert np.abs(ours[0].numpy() - ours[1].numpy()).max() > 1e-2  # the prompts differ


def test_a_transformer_model_ltx_video_gives_diffusers_frames_too(tmp_path):
    from diffusers import LTXPipeline

    root = save_tiny_ltx(tmp_path / "ltx")
    pipe = TextToVideoPipeline.from_pretrained(root)
    assert type(pipe).__name__ == "LTXVideoPipeline" and pipe.frames_rule == (1, 4)
    reference = LTXPipeline.from_pretrained(root)
    reference.set_progress_bar_config(disable=True)
    size = {"num_frames": 9, "height": 32, "width": 32, "num_inference_steps": 3}
    for guidance in (1.0, 3.0):
        args = {**size, "guidance_scale": guidance, "negative_prompt": "blurry"}
        gen = torch.Generator().manual_seed(5)
        theirs = reference("a red circle moving left", generator=gen, output_type="np", **args)
        ours = pipe(
            "a red circle moving left",
            generator=torch.Generator().manual_seed(5),
            output_type="pt",
            progress=False,
            **args,
        ).frames
        assert ours.shape == (9, 32, 32, 3)
        np.testing.assert_allclose(ours.numpy(), theirs.frames[0], rtol=1e-5, atol=1e-3)
    edit = pipe("a blue square", video=(ours.numpy() * 255).astype(np.uint8), strength=0.5,
                generator=torch.Generator().manual_seed(1), progress=False, **size)  # fmt: skip
    assert edit.frames.shape == (9, 32, 32, 3)
    with pytest.raises(BridgeError, match="takes 1 \\+ 4k frames"):
        pipe("a red circle", num_frames=8, height=32, width=32)


def test_np_frames_sdedit_and_what_needs_task_training(pipe):
    video = pipe("a red circle", generator=torch.Generator().manual_seed(0), progress=False, **SIZE)
    frames = video.frames
    assert frames.dtype == np.float32 and frames.shape == (4, 32, 32, 3)
    steps = []
    edit = pipe(
        "a blue circle",
        video=frames,
        strength=0.6,
        generator=torch.Generator().manual_seed(1),
        callback=steps.append,
        progress=False,
        **SIZE,
    ).frames
    assert edit.shape == frames.shape and len(steps) == 1  # int(3 steps x 0.6)
    with pytest.raises(BridgeError, match="trained with the conditioning tasks"):
        pipe("a red circle", image=frames[0], **SIZE)
    assert pipe.size_multiple == 4  # the tiny VAE's x2, then the UNet's one down
    with pytest.raises(BridgeError, match="multiples of 4"):
        pipe("a red circle", num_frames=4, height=34, width=32)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_bad_directories_get_a_one_line_error(modelscope, tmp_path):
    other = _copy(modelscope, tmp_path / "other")
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "FooPipeline"}))
    with pytest.raises(BridgeError, match="'FooPipeline' is not supported; supported: TextToV"):
        TextToVideoPipeline.from_pretrained(other)

    missing = _copy(modelscope, tmp_path / "missing")
    shutil.rmtree(missing / "unet")
    with pytest.raises(BridgeError, match="unet' is missing"):
        TextToVideoPipeline.from_pretrained(missing)

    pickled = _copy(modelscope, tmp_path / "pickled")
    from safetensors.torch import load_file

    weights = pickled / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), pickled / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(BridgeError, match="pickle checkpoint, not loaded by default") as e:
        TextToVideoPipeline.from_pretrained(pickled)
    assert "st.save_file(torch.load(" in str(e.value) and "\n" not in str(e.value)
    loaded = TextToVideoPipeline.from_pretrained(pickled, allow_pickle=True)
    assert isinstance(loaded, DiffusersVideoPipeline)


@pytest.mark.slow  # each command imports diffusers (~8 s)
def test_generate_eval_and_serve_take_a_diffusers_directory(modelscope, tmp_path):
    import subprocess
    import sys

    from tinysora.io.video import read_video
    from tinysora.serve.process import ServerProcess, submit, wait_for

    cli = [sys.executable, "-m", "tinysora.cli"]
    size = ["--frames", "5", "--height", "32", "--width", "32", "--steps", "2"]
    out = tmp_path / "out.mp4"
    gen = [*cli, "generate", "a red circle", "--model", str(modelscope), *size, "-o", str(out)]
    subprocess.run(gen, check=True, capture_output=True, timeout=300)
    assert read_video(out)[0].shape == (5, 32, 32, 3)
    report = tmp_path / "adherence.json"
    ev = [*cli, "eval", "adherence", "--model", str(modelscope), *size, "--n", "2"]
    subprocess.run([*ev, "--groups", "single", "--json", str(report)], check=True, timeout=300)
    assert json.loads(report.read_text())["single"]["prompts"] == 2
    with ServerProcess(modelscope, tmp_path / "serve") as server, server.client() as c:
        job = wait_for(c, submit(c, num_frames=5, height=32, width=32, num_inference_steps=2))
        assert job["status"] == "succeeded" and job["params"]["sampler"] == "DDIMScheduler"
        (tmp_path / "served.mp4").write_bytes(c.get(f"/v1/videos/{job['id']}/content").content)
        assert read_video(tmp_path / "served.mp4")[0].shape == (5, 32, 32, 3)


def test_the_modelscope_call_shape(modelscope, tmp_path):
    from tinysora.io.video import read_video
    from tinysora.modelscope import ModelScopeError, pipeline

    p = pipeline("text-to-video-synthesis", model=modelscope)
    text = {"text": "a red circle moving left", "num_frames": 4, "height": 32, "width": 32}
    out = p({**text, "num_inference_steps": 2}, output_video=str(tmp_path / "ms.mp4"))
    assert out["output_video"].endswith("ms.mp4")
    assert read_video(out["output_video"])[0].shape == (4, 32, 32, 3)
    bundled = pipeline("text-to-video-synthesis")  # no model: the bundled tinysora model
    path = bundled({"text": "a red circle", "num_frames": 5, "num_inference_steps": 2})
    assert read_video(path["output_video"])[0].shape == (5, 64, 64, 3)
    with pytest.raises(ModelScopeError, match="supported: text-to-video-synthesis"):
        pipeline("image-captioning")
    with pytest.raises(ModelScopeError, match="not a directory"):
        pipeline("text-to-video-synthesis", model=tmp_path / "nope")
    with pytest.raises(ModelScopeError, match="'text'"):
        p({"prompt": "x"})
