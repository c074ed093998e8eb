"""Pipeline conditioning with a tiny random model saved as real files: given latent
frames stay exactly as given, SDEdit spans plain generation to a near copy, and bad
inputs give clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import save_tiny_model

from tinysora.cli import main
from tinysora.io.frames import ConditioningError, fit_image, fit_video, load_image, to_uint8
from tinysora.io.video import write_video
from tinysora.pipeline import PipelineError, TextToVideoPipeline
from tinysora.worlds.shapes import parse_caption, render

PROMPT = "a large red circle moving right on a black background"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m"))


@pytest.fixture(scope="module")
def pipe(model_dir):
    return TextToVideoPipeline.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def clip():
    return render(parse_caption(PROMPT, seed=1), 64, 64, 17)


def latents(pipe, **kw):
    g = torch.Generator().manual_seed(3)
    return pipe(PROMPT, generator=g, output_type="latent", progress=False, **kw).frames


def test_image_to_video_keeps_frame_zero(pipe, clip, one_thread):
    out = latents(pipe, image=clip[0])
    torch.testing.assert_close(out[:, :, :1], pipe._encode(clip[:1]), atol=1e-5, rtol=0)
    free = latents(pipe)
    assert (out[:, :, 1:] - free[:, :, 1:]).abs().max() > 1e-3  # the rest is generated
    frames = pipe(PROMPT, image=clip[0], num_frames=9, progress=False).frames
    assert frames.shape == (9, 64, 64, 3)


def test_first_and_last_images_are_both_kept(pipe, clip, one_thread, tmp_path):
    last = write_video(tmp_path / "last.png", clip[-1:], fps=1)  # a path works too
    out = latents(pipe, first_image=clip[0], last_image=last)
    torch.testing.assert_close(out[:, :, :1], pipe._encode(clip[:1]), atol=1e-5, rtol=0)
    held = np.repeat(clip[-1:], 17, axis=0)
    torch.testing.assert_close(out[:, :, -1:], pipe._encode(held)[:, :, -1:], atol=1e-5, rtol=0)


def test_sdedit_strength_spans_copy_to_fresh_generation(pipe, clip, one_thread):
    start = pipe._encode(clip)
    near = latents(pipe, video=clip, strength=0.02)
    far = latents(pipe, video=clip, strength=1.0)
    assert (near - start).abs().mean() < 0.1 * (far - start).abs().mean()
    torch.testing.assert_close(far, latents(pipe), atol=1e-5, rtol=0)  # strength 1 = t2v


def test_bad_conditioning_inputs(pipe, clip):
    with pytest.raises(PipelineError, match="video and strength go together"):
        pipe(PROMPT, video=clip, progress=False)
    with pytest.raises(PipelineError, match=r"strength must be in \(0, 1\]"):
        pipe(PROMPT, video=clip, strength=1.5, progress=False)
    with pytest.raises(PipelineError, match="either image or first_image"):
        pipe(PROMPT, image=clip[0], first_image=clip[0], progress=False)
    with pytest.raises(ConditioningError, match=r"\(H, W, 3\) uint8 or float in \[0, 1\]"):
        pipe(PROMPT, image=clip[0].astype(np.int64), progress=False)
    with pytest.raises(PipelineError, match="needs a video"):
        pipe(PROMPT, last_image=clip[0], num_frames=1, progress=False)


def test_inputs_of_another_size_are_cropped_resized_and_warned(clip):
    wide = np.concatenate([clip[0], clip[0]], axis=1)  # 64 x 128
    with pytest.warns(UserWarning, match="centre-cropped and resized to 32x32"):
        small = fit_image(wide, 32, 32)
    assert small.shape == (32, 32, 3)
    assert np.array_equal(fit_image(clip[0], 64, 64), clip[0])  # same size: untouched
    with pytest.warns(UserWarning, match="has 17 frames; using 21"):
        longer = fit_video(clip, 21, 64, 64)
    assert np.array_equal(longer[17:], np.repeat(clip[-1:], 4, axis=0))
    assert load_image(clip[0]) is not None


def test_generate_cli_with_an_image_and_a_video(model_dir, clip, tmp_path, one_thread, capsys):
    model = str(model_dir)
    image = write_video(tmp_path / "first.png", clip[:1], fps=1)
    video = write_video(tmp_path / "in.mp4", clip, fps=8)
    base = ["generate", PROMPT, "--model", model, "--steps", "2"]
    assert main([*base, "--image", str(image), "-o", str(tmp_path / "i2v.mp4")]) == 0
    assert (
        main([*base, "--video", str(video), "--strength", "0.5", "-o", str(tmp_path / "e.gif")])
        == 0
    )
    out = capsys.readouterr().out.split()
    assert out[-2].endswith("i2v.mp4") and out[-1].endswith("e.gif")
    assert main([*base, "--video", str(video)]) == 2
    assert "video and strength go together" in capsys.readouterr().err


def test_extend_continues_a_clip_window_by_window(pipe, clip, one_thread):
    out = pipe(
        PROMPT, video=clip, extend=10, generator=torch.Generator().manual_seed(0), progress=False
    ).frames
    assert out.shape == (27, 64, 64, 3)
    assert np.array_equal(to_uint8(out[:17]), clip)  # the input comes back, then new frames
    long = pipe(PROMPT, num_frames=29, window=9, progress=False).frames
    assert long.shape == (29, 64, 64, 3)


@pytest.mark.parametrize("key", ["image", "first_image"])
def test_loop_pins_the_last_latent_to_frame_zero(pipe, clip, one_thread, key):
    out = latents(pipe, loop=True, **{key: clip[0]})
    torch.testing.assert_close(out[:, :, :1], pipe._encode(clip[:1]), atol=1e-5, rtol=0)
    held = pipe._encode(np.repeat(clip[:1], 17, axis=0))[:, :, -1:]
    torch.testing.assert_close(out[:, :, -1:], held, atol=1e-5, rtol=0)
    assert pipe(PROMPT, loop=True, num_frames=9, progress=False).frames.shape == (9, 64, 64, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"extend": 8}, "extend needs a video"),
        ({"video": "CLIP", "extend": -4}, "backward"),
        ({"video": "CLIP", "extend": 4, "strength": 0.5}, "extend takes a video only"),
        ({"loop": True, "last_image": "FRAME"}, "loop pins the last frame"),
        ({"prompt": [PROMPT, PROMPT], "loop": True}, "one prompt at a time"),
        ({"num_frames": 17, "window": 5}, "longer than the 5 context frames"),
        ({"video": "SHORT", "extend": 4}, "video of >= 5 frames"),
    ],
)
def test_bad_extension_and_loop_arguments(pipe, clip, kwargs, message):
    named = {"CLIP": clip, "FRAME": clip[0], "SHORT": clip[:3]}
    kwargs = {k: named.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    prompt = kwargs.pop("prompt", PROMPT)
    with pytest.raises(PipelineError, match=message):
        pipe(prompt, progress=False, **kwargs)
