"""Text-to-video pipeline: prompt -> text encoder -> DiT sampling in VAE latents -> frames.

    from tinysora import TextToVideoPipeline, export_to_video

    pipe = TextToVideoPipeline.from_pretrained()          # the bundled model
    video = pipe("a small red circle moving left", num_frames=17, height=64, width=64,
                 generator=torch.Generator().manual_seed(0))
    export_to_video(video.frames, "out.mp4", fps=8)

``video.frames`` are float32 in [0, 1], diffusers' convention; ``tinysora.io.frames.to_uint8``
gives the uint8 bytes that ``export_to_video`` writes.

A model directory holds ``vae/`` and ``dit/`` (each config.json + model.safetensors)
and ``pipeline.json`` (:class:`PipelineConfig`, the sampling defaults). What
``from_pretrained(X)`` loads (a directory, a bundled model's name such as ``"default"``,
or nothing): ``tinysora.io.checkpoint.resolve_model_dir``.
Sizes the VAE / patch grid cannot take are rounded to the nearest legal size with a
warning: height and width to a multiple of 16 (VAE factor 8 x patch 2) within
32..512, frames to 1 + 4k.

Reading order: sampling defaults, module helpers, then the pipeline's building blocks
(text, noise, encode / decode, one sampling run), the conditioning tasks built from
them (keyframes, extension, loop) and last ``__call__``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tinysora.config import Config
from tinysora.device import autocast, resolve_device
from tinysora.diffusion.flow import FlowConfig, draw_noise, timestep_shift
from tinysora.diffusion.samplers import cfg_denoiser, flow_times, get_sampler
from tinysora.dit.model import DiT
from tinysora.dit.patchify import grid_size
from tinysora.errors import UserError
from tinysora.io.checkpoint import load_pretrained, resolve_model_dir
from tinysora.io.frames import (
    VideoOutput,
    fit_image,
    fit_video,
    frames_to_tensor,
    load_image,
    load_video,
    tensor_to_frames,
    to_uint8,
    to_unit,
)
from tinysora.io.video import write_video
from tinysora.text.encoder import TextEncoder
from tinysora.text.vocabulary import ADAPTER_VOCABULARY, merge, unknown_words_warning
from tinysora.vae.model import SPACE_FACTOR, TIME_FACTOR, VideoVAE, latent_frames

MIN_SIDE, MAX_SIDE = 32, 512
OUTPUT_TYPES = ("np", "pil", "latent")
CONTEXT_LATENTS = 2  # latent frames an extension window is given (= the last 5 frames)
FLOW_KEYS = ("shift_base_tokens", "base_shift", "max_shift", "shared_noise")  # FlowConfig's


class PipelineError(UserError, ValueError):
    """Bad arguments to the pipeline (the message names the fix)."""


class PromptWarning(UserWarning):
    """A prompt has words the model was not trained on (``text.vocabulary``)."""


@dataclass
class PipelineConfig(Config):
    """Sampling defaults of a model (``pipeline.json``); a call's arguments override them.

    The shift fields set the resolution shift of the sampling times
    (``diffusion.flow.timestep_shift``); ``tinysora train dit`` copies them from the
    recipe's training ``[flow]`` when it exports a model.
    """

    num_inference_steps: int = 30
    guidance_scale: float = 4.0
    sampler: str = "euler"
    fps: float = 8.0
    text_max_length: int = 32
    # encode each subject clause of a prompt on its own (text.encoder.split_subjects)
    text_subjects: bool = False
    shift_base_tokens: int = 80
    base_shift: float = 1.0
    max_shift: float = 4.0
    shared_noise: float = 0.0  # VideoFusion noise, as the model trained (diffusion.flow)
    # the words of its training captions, by kind (text.vocabulary); a prompt's other
    # words get a warning. Written at export; empty: not checked
    vocabulary: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, data, *, where: str = "") -> PipelineConfig:
        """Older ``pipeline.json`` files nest the shift in the whole training ``flow``
        config; they still load (its other fields only mattered for training)."""
        if isinstance(data, dict) and isinstance(data.get("flow"), dict):
            data = dict(data)
            flow = data.pop("flow")
            data.update({k: flow[k] for k in FLOW_KEYS if k in flow})
        return super().from_dict(data, where=where)

    def with_shift_of(self, flow: FlowConfig) -> PipelineConfig:
        """This config with the time shift that ``flow`` trained with."""
        return dataclasses.replace(self, **{k: getattr(flow, k) for k in FLOW_KEYS})


def legal_size(num_frames: int, height: int, width: int, multiple: int) -> tuple[int, int, int]:
    """Nearest legal (frames, height, width): frames 1 + 4k, sides a multiple in 32..512."""

    def side(v: int) -> int:
        return int(min(MAX_SIDE, max(MIN_SIDE, multiple * round(v / multiple))))

    frames = 1 + TIME_FACTOR * max(0, round((num_frames - 1) / TIME_FACTOR))
    return frames, side(height), side(width)


def initial_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | list[torch.Generator] | None,
    shared: float = 0.0,
) -> torch.Tensor:
    """Gaussian latents (on the generator's device); with one generator per sample, sample
    i depends only on its own. ``shared``: VideoFusion noise (``diffusion.flow``)."""
    if not isinstance(generator, list):
        device = generator.device if generator is not None else "cpu"
        return draw_noise(shape, generator, shared, device)
    if len(generator) != shape[0]:
        raise PipelineError(f"got {len(generator)} generators for {shape[0]} prompts")
    one = (1, *shape[1:])
    return torch.cat([draw_noise(one, g, shared, g.device) for g in generator])


def frames_covering(seconds: float, fps: float) -> int:
    """The fewest legal frames (1 + 4k) that last at least ``seconds`` at ``fps`` (a clip
    of T frames lasts T / fps): how long a clip must be to hold a narration."""
    frames = math.ceil(round(seconds * fps, 6))
    return 1 + TIME_FACTOR * max(0, math.ceil((frames - 1) / TIME_FACTOR))


NARRATION_WINDOW = 17  # frames a narrated clip is made in, window by window, when it grows


def narrated_length(seconds: float, fps: float, num_frames: int) -> tuple[int, int | None]:
    """The rule that aligns a narration and its clip: the clip is extended to the
    speech's length, never cut (frames = the most of ``num_frames`` and
    ``frames_covering(seconds, fps)``); a clip grown past ``num_frames`` and 17 frames is
    made window by window (the ``window`` to pass, else None). The sound track is then
    padded to the clip's end (``export_to_video``)."""
    frames = max(num_frames, frames_covering(seconds, fps))
    span = max(num_frames, NARRATION_WINDOW)
    return frames, (span if frames > span else None)


def export_to_video(
    frames, path: str | os.PathLike, fps: float = 8.0, audio=None, audio_rate: int | None = None
) -> Path:
    """Write (T, H, W, 3) frames, float in [0, 1] (``output_type="np"``) or uint8, or a
    list of PIL images, as mp4/gif/png/npy (floats become bytes by ``io.frames.to_uint8``,
    as diffusers' ``export_to_video`` does); ``audio`` (mono float samples at
    ``audio_rate``) as the mp4's AAC track, fitted to the clip's length (io.video)."""
    if isinstance(frames, list):
        frames = np.stack([np.asarray(f) for f in frames])
    return write_video(path, to_uint8(frames), fps=fps, audio=audio, audio_rate=audio_rate)


def _prompt_lists(prompt, negative_prompt) -> tuple[list[str], list[str]]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    negatives = negative_prompt if negative_prompt is not None else ""
    negatives = [negatives] * len(prompts) if isinstance(negatives, str) else list(negatives)
    if len(negatives) != len(prompts):
        raise PipelineError("negative_prompt must be one string or one per prompt")
    return prompts, negatives


def check_conditioning(image, first_image, last_image, video, strength, extend, loop) -> None:
    """PipelineError unless the conditioning arguments go together (cheap: callers run it
    before loading a model)."""
    if image is not None and first_image is not None:
        raise PipelineError("give either image or first_image (both mean frame 0)")
    if strength is not None and not 0 < strength <= 1:
        raise PipelineError(f"strength must be in (0, 1], got {strength}")
    if extend is not None:
        if video is None:
            raise PipelineError("extend needs a video to continue (--video X --extend N)")
        if extend < 1:
            raise PipelineError(
                f"extend must be >= 1 frame (backward: not supported), got {extend}"
            )
        if loop or any(x is not None for x in (strength, image, first_image, last_image)):
            raise PipelineError("extend takes a video only (no images, strength or loop)")
    elif (video is None) != (strength is None):
        raise PipelineError("video and strength go together (SDEdit: --video X --strength S)")
    if loop and (last_image is not None or video is not None):
        raise PipelineError("loop pins the last frame to frame 0: no last_image or video")


@dataclass
class _Run:
    """How to run one sampling: steps, guidance, sampler function, progress reporting."""

    steps: int
    scale: float
    sample: Callable
    callback: Callable[[dict], None] | None
    progress: bool


class TextToVideoPipeline:
    def __init__(self, vae: VideoVAE, dit: DiT, text_encoder: TextEncoder, config: PipelineConfig):
        self.vae, self.dit, self.text_encoder, self.config = vae, dit, text_encoder, config
        if dit.config.in_channels != vae.config.latent_channels:
            raise PipelineError("the DiT's in_channels do not match the VAE's latent channels")

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike | None = None,
        text_encoder: TextEncoder | None = None,
        allow_pickle: bool = False,
    ) -> TextToVideoPipeline:
        """Load ``directory`` (default: ``TINYSORA_MODEL``, else the bundled model).

        A diffusers-format directory (``model_index.json``, e.g. ModelScope's
        text-to-video-ms-1.7b) loads as a ``bridge.diffusers_video.DiffusersVideoPipeline``
        with the same call; ``allow_pickle`` lets it read ``.bin`` weights (weights_only).
        """
        root = resolve_model_dir(directory)
        from tinysora.bridge.diffusers_video import DiffusersVideoPipeline, is_diffusers_dir

        if is_diffusers_dir(root):
            return DiffusersVideoPipeline.from_pretrained(root, allow_pickle=allow_pickle)
        if not (root / "dit" / "config.json").is_file():
            raise PipelineError(
                f"no text-to-video model in '{root}' (expected dit/, vae/ and pipeline.json, "
                "or a diffusers model_index.json); "
                "train one with `tinysora train dit` or pass --model DIR"
            )
        config = PipelineConfig.load(root / "pipeline.json")
        encoder = text_encoder or TextEncoder(
            max_length=config.text_max_length, subjects=config.text_subjects
        )
        vae = load_pretrained(VideoVAE, root / "vae")
        return cls(vae, load_pretrained(DiT, root / "dit"), encoder, config)

    def to(self, device: str | torch.device) -> TextToVideoPipeline:
        """Run on ``device`` (``cpu``, ``cuda``, ``cuda:N``): DiT, VAE and text encoder move
        there. Noise is still drawn from the call's generator (a CPU generator gives the
        same starting noise on every device)."""
        device = resolve_device(device)
        self.dit.to(device)
        self.vae.to(device)
        self.text_encoder.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (the VAE's factor x the patch)."""
        return SPACE_FACTOR * self.dit.config.patch[1]

    @property
    def frames_rule(self) -> tuple[int, int]:
        """Legal frame counts are a + b k: the causal VAE's first frame, then its x4."""
        return 1, TIME_FACTOR

    def load_lora(self, directory: str | os.PathLike, scale: float = 1.0) -> TextToVideoPipeline:
        """Add a LoRA adapter (``tinysora train lora``) to the DiT, its update times ``scale``;
        the words of its training captions join the model's vocabulary."""
        from tinysora.dit.lora import load_lora  # peft loads accelerate: only when asked

        load_lora(self.dit, directory, scale)
        words = Path(directory) / ADAPTER_VOCABULARY
        if words.is_file():
            added = json.loads(words.read_text())
            self.config = dataclasses.replace(
                self.config, vocabulary=merge(self.config.vocabulary, added)
            )
        return self

    def set_sampling(self, guidance_scale: float | None = None, sampler: str | None = None):
        """Change the default guidance scale / sampler (None keeps the model's)."""
        if sampler is not None:
            try:
                get_sampler(sampler)
            except ValueError as e:
                raise PipelineError(str(e)) from None
            self.config.sampler = sampler
        if guidance_scale is not None:
            self.config.guidance_scale = float(guidance_scale)
        return self

    # ----------------------------------------------------------------- building blocks

    def _run(self, steps, guidance_scale, sampler, callback, progress) -> _Run:
        run = _Run(
            steps=self.config.num_inference_steps if steps is None else steps,
            scale=self.config.guidance_scale if guidance_scale is None else guidance_scale,
            sample=get_sampler(sampler or self.config.sampler),
            callback=callback,
            progress=progress,
        )
        if run.steps < 1:
            raise PipelineError(f"num_inference_steps must be >= 1, got {run.steps}")
        if not math.isfinite(run.scale):
            raise PipelineError(f"guidance_scale must be a finite number, got {run.scale}")
        return run

    def _legal_size(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        multiple = self.size_multiple
        legal = legal_size(num_frames, height, width, multiple)
        if legal != (num_frames, height, width):
            warnings.warn(
                f"size {num_frames}x{height}x{width} (frames x height x width) is not legal; "
                f"using {legal[0]}x{legal[1]}x{legal[2]} (frames 1+4k, sides multiples of "
                f"{multiple} in {MIN_SIDE}..{MAX_SIDE})",
                stacklevel=3,
            )
        return legal

    def _latent_shape(self, batch: int, num_frames: int, height: int, width: int):
        c = self.vae.config.latent_channels
        return (batch, c, latent_frames(num_frames), height // SPACE_FACTOR, width // SPACE_FACTOR)

    def _text(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        states, mask = self.text_encoder(prompts)
        return {"text": states, "text_mask": mask}

    def _encode(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> normalized latents (1, C, t, h, w) (posterior mean)."""
        x = frames_to_tensor(frames)[None].to(self.device)
        with autocast(self.device):
            z = self.vae.encode(x, chunk_frames=16).mean
        return self.vae.normalize(z.float())

    def _decode(self, latents: torch.Tensor, num_frames: int) -> np.ndarray:
        """(1, C, t, h, w) normalized latents -> uint8 (T, H, W, 3)."""
        with autocast(self.device):
            pixels = self.vae.decode(
                self.vae.denormalize(latents), num_frames=num_frames, chunk_latents=4
            )
        return tensor_to_frames(pixels[0])

    def _velocity(self, x, t, text, text_mask, given=None, clean=None) -> torch.Tensor:
        """The DiT's velocity (under ``device.autocast``); ``given`` latents held at ``clean``."""
        with autocast(self.device):
            return self.dit(x, t, text, text_mask, given=given, clean=clean).float()

    def _sample(
        self,
        prompts,
        negatives,
        shape,
        generator,
        run: _Run,
        clean=None,
        given=None,
        start=None,
        strength=None,
    ) -> torch.Tensor:
        """Latents (B, C, t, h, w): the flow ODE from noise (or from ``start`` noised to
        ``strength``), with ``given`` latents (B or 1, 1, t, h, w) held at ``clean``."""
        x = initial_noise(shape, generator, self.config.shared_noise).to(self.device)
        tokens = int(np.prod(grid_size(shape[2:], self.dit.config.patch)))
        times = flow_times(run.steps, timestep_shift(tokens, self.config))
        if start is not None:
            times = torch.cat([times.new_tensor([strength]), times[times < strength]])
            x = (1 - strength) * start + strength * x
        cond, uncond = self._text(prompts), self._text(negatives)
        if given is not None:
            given, clean = given.to(self.device), clean.to(self.device)
            x = torch.where(given, clean, x)
            held = {
                "given": given.expand(shape[0], -1, -1, -1, -1),
                "clean": clean.expand(shape[0], -1, -1, -1, -1),
            }
            cond, uncond = {**cond, **held}, {**uncond, **held}
        bar = tqdm(total=len(times) - 1, desc="sampling", unit="step", disable=not run.progress)

        def on_step(info: dict) -> None:
            bar.update(1)
            if run.callback is not None:
                run.callback(info)

        guided = cfg_denoiser(self._velocity, run.scale)
        extra = {"cond": cond, "uncond": uncond}
        latents = run.sample(guided, x, times, extra_args=extra, callback=on_step)
        bar.close()
        return latents

    @staticmethod
    def _output(clips: list[np.ndarray], single: bool, output_type: str) -> VideoOutput:
        """uint8 clips as ``output_type`` asks: float32 in [0, 1] or PIL images."""
        if output_type == "pil":
            from PIL import Image

            clips = [[Image.fromarray(f) for f in clip] for clip in clips]
        else:
            clips = [to_unit(clip) for clip in clips]
        return VideoOutput(clips[0] if single else clips)

    # ----------------------------------------------------------------- conditioning tasks

    def _keyframes(self, first, last, num_frames: int, height: int, width: int):
        """Clean latents (1, C, t, h, w) and the given mask (1, 1, t, h, w) for images
        pinned at frame 0 and / or the last frame (None, None without images). The last
        latent frame stands for the last 4 frames: it is encoded from a clip that holds
        the last image still."""
        if first is None and last is None:
            return None, None
        t = latent_frames(num_frames)
        given = torch.zeros(1, 1, t, height // SPACE_FACTOR, width // SPACE_FACTOR, dtype=bool)
        clean = torch.zeros(1, self.vae.config.latent_channels, *given.shape[2:])
        if first is not None:
            frame = fit_image(load_image(first), height, width)
            clean[:, :, :1] = self._encode(frame[None])
            given[:, :, 0] = True
        if last is not None:
            if t < 2:
                raise PipelineError("last_image needs a video (num_frames >= 5)")
            frame = fit_image(load_image(last), height, width)
            clean[:, :, -1:] = self._encode(np.repeat(frame[None], num_frames, 0))[:, :, -1:]
            given[:, :, -1] = True
        return clean, given

    def _extend(
        self, prompts, negatives, video, extend, num_frames, window, height, width, generator, run
    ) -> np.ndarray:
        """The clip (given, or a first generated window) continued window by window; each
        window is given the last 1 + 4 (CONTEXT_LATENTS - 1) frames so far."""
        window = window or num_frames
        window, height, width = self._legal_size(window, height, width)
        context = 1 + TIME_FACTOR * (CONTEXT_LATENTS - 1)
        if window <= context:
            raise PipelineError(f"the window must be longer than the {context} context frames")
        if video is None:
            shape = self._latent_shape(1, window, height, width)
            clip = self._decode(self._sample(prompts, negatives, shape, generator, run), window)
            target = num_frames
        else:
            clip = load_video(video)
            if len(clip) < context:
                raise PipelineError(f"extend needs a video of >= {context} frames, got {len(clip)}")
            clip = fit_video(clip, len(clip), height, width)
            target = len(clip) + extend
        shape = self._latent_shape(1, window, height, width)
        given = torch.zeros(1, 1, *shape[2:], dtype=torch.bool)
        given[:, :, :CONTEXT_LATENTS] = True
        while len(clip) < target:
            clean = torch.zeros(shape)
            clean[:, :, :CONTEXT_LATENTS] = self._encode(clip[-context:])
            latents = self._sample(prompts, negatives, shape, generator, run, clean, given)
            clip = np.concatenate([clip, self._decode(latents, window)[context:]])
        return clip[:target]

    def _loop_anchor(self, prompts, negatives, image, num_frames, height, width, generator, run):
        """Frame 0 of a looping clip: the given image, or that of a first generation."""
        if image is not None:
            return image
        _, height, width = self._legal_size(num_frames, height, width)
        shape = self._latent_shape(1, 1, height, width)
        return self._decode(self._sample(prompts, negatives, shape, generator, run), 1)[0]

    # ----------------------------------------------------------------- the call

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_frames: int = 17,
        height: int = 64,
        width: int = 64,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
        sampler: str | None = None,
        callback: Callable[[dict], None] | None = None,
        progress: bool = True,
        image=None,
        first_image=None,
        last_image=None,
        video=None,
        strength: float | None = None,
        extend: int | None = None,
        window: int | None = None,
        loop: bool = False,
    ) -> VideoOutput:
        """Generate videos from prompts (diffusers-style; see the module doc).

        Conditioning (one prompt at a time for ``extend`` / ``window`` / ``loop``):

        * ``image``: frame 0 (image-to-video); ``first_image`` / ``last_image`` pin the
          ends (interpolation, keyframes);
        * ``video`` + ``strength`` in (0, 1]: re-generate the clip under the prompt from
          its latents noised to flow time ``strength`` (SDEdit; low keeps more);
        * ``video`` + ``extend=N``: continue the clip by N frames, ``window`` frames
          (default ``num_frames``) at a time, each window given the last
          1 + 4 (CONTEXT_LATENTS - 1) frames so far; returns the whole longer clip;
        * ``window`` < ``num_frames`` without a video: a long clip made the same way
          from a first generated window (memory bounded by the window);
        * ``loop``: the clip ends where it starts (its last frame pinned to frame 0).

        Images: PIL, (H, W, 3) or a path; videos: (T, H, W, 3) or a path (arrays uint8,
        or float in [0, 1] as ``output_type="np"`` returns them).
        Inputs of another size are resized (centre crop to the aspect) with a warning.
        Given latent frames enter the DiT clean at t = 0 and come out as given.
        """
        prompts, negatives = _prompt_lists(prompt, negative_prompt)
        unknown = unknown_words_warning(prompts, self.config.vocabulary)
        if unknown is not None:
            warnings.warn(unknown, PromptWarning, stacklevel=3)  # the caller, past no_grad
        single = isinstance(prompt, str)
        if output_type not in OUTPUT_TYPES:
            raise PipelineError(f"output_type must be 'np', 'pil' or 'latent', got {output_type!r}")
        run = self._run(num_inference_steps, guidance_scale, sampler, callback, progress)
        check_conditioning(image, first_image, last_image, video, strength, extend, loop)
        windowed = extend is not None or (window is not None and window < num_frames)
        if (windowed or loop) and len(prompts) != 1:
            raise PipelineError("extend, window and loop take one prompt at a time")
        if windowed:
            if output_type == "latent":
                raise PipelineError("output_type 'latent' is not available with extend / window")
            args = (video, extend, num_frames, window, height, width, generator, run)
            return self._output([self._extend(prompts, negatives, *args)], single, output_type)
        first = image if image is not None else first_image
        if loop:  # frame 0 (given, or from a first generation) pinned at both ends
            first = self._loop_anchor(
                prompts, negatives, first, num_frames, height, width, generator, run
            )
            last_image = first
        if video is not None:
            video = load_video(video)
            num_frames = len(video)
        num_frames, height, width = self._legal_size(num_frames, height, width)
        clean, given = self._keyframes(first, last_image, num_frames, height, width)
        start = None
        if video is not None:
            start = self._encode(fit_video(video, num_frames, height, width))
        shape = self._latent_shape(len(prompts), num_frames, height, width)
        held = (clean, given, start, strength)
        latents = self._sample(prompts, negatives, shape, generator, run, *held)
        if output_type == "latent":
            return VideoOutput(latents)
        clips = [self._decode(z[None], num_frames) for z in latents]
        return self._output(clips, single, output_type)
