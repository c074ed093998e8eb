"""Diffusers-format text-to-video models behind tinysora's pipeline call.

A directory with ``model_index.json`` (diffusers' layout) is built from the library
classes it names: for ModelScope's ``text-to-video-ms-1.7b`` (``TextToVideoSDPipeline``)
that is diffusers' ``UNet3DConditionModel`` and ``AutoencoderKL``, transformers'
``CLIPTextModel`` and ``CLIPTokenizer``, and the scheduler in ``scheduler/``. Nothing of
them is re-implemented here: this module only runs the denoising loop, the way the
diffusers pipeline does, so that the same prompt, seed, steps and guidance give the
same frames (``tests/test_bridge.py``):

    pipe = TextToVideoPipeline.from_pretrained("text-to-video-ms-1.7b")  # this class
    video = pipe("a red circle moving left", num_frames=16, height=256, width=256,
                 generator=torch.Generator().manual_seed(0))

Weights load from safetensors only; a pickle checkpoint (``.bin`` / ``.pt``) is refused
with the command that converts it, unless ``allow_pickle=True``, and then goes through
the libraries' ``weights_only`` loaders. Conditioning that needs tinysora's task
training (image-to-video, keyframes, extension, loops) is refused with a message;
SDEdit (``video`` + ``strength``) works with any model.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from tqdm import tqdm

from tinysora.device import resolve_device
from tinysora.errors import UserError
from tinysora.io.frames import VideoOutput, fit_video, load_video

OUTPUT_TYPES = ("np", "pil", "latent", "pt")
# model_index.json "_class_name" -> the components this loop needs
LAYOUTS = {
    "TextToVideoSDPipeline": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
}
LIBRARIES = ("diffusers", "transformers")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
NEEDS_TASK_TRAINING = ("image", "first_image", "last_image", "extend", "window", "loop")


class BridgeError(UserError, ValueError):
    """A diffusers-format directory that cannot be used (the message says why)."""


def is_diffusers_dir(directory: str | os.PathLike) -> bool:
    return (Path(directory) / "model_index.json").is_file()


def _convert_hint(path: Path) -> str:
    target = path.with_suffix(".safetensors")
    if path.name.startswith("pytorch_model"):
        target = path.with_name("model.safetensors")
    elif path.name.startswith("diffusion_pytorch_model"):
        target = path.with_name("diffusion_pytorch_model.safetensors")
    return (
        'python -c "import torch, safetensors.torch as st; st.save_file(torch.load('
        f"'{path}', weights_only=True), '{target}')\""
    )


def _check_weights(folder: Path, allow_pickle: bool) -> bool:
    """True for safetensors, False for a pickle checkpoint ``allow_pickle`` lets through;
    else a one-line error."""
    if any(folder.glob("*.safetensors")):
        return True
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise BridgeError(f"'{folder}': no weights (expected *.safetensors)")
    if not allow_pickle:
        raise BridgeError(
            f"'{pickles[0]}' is a pickle checkpoint, not loaded by default (it can run code); "
            f"convert it: {_convert_hint(pickles[0])} -- or pass allow_pickle=True / "
            "--allow-pickle to load it with torch's weights_only loader"
        )
    return False


def _component(root: Path, name: str, spec, allow_pickle: bool):
    """One component, built by the library class ``model_index.json`` names."""
    folder = root / name
    if not folder.is_dir():
        raise BridgeError(f"'{folder}' is missing (model_index.json lists '{name}')")
    if not (isinstance(spec, list) and len(spec) == 2 and spec[0] in LIBRARIES):
        raise BridgeError(f"'{root}/model_index.json': '{name}' must be [library, class]")
    library, class_name = spec
    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None:
        raise BridgeError(f"'{root}': {library} has no class '{class_name}' (for '{name}')")
    if name == "scheduler":
        return cls.from_pretrained(folder)
    if name == "tokenizer":
        return cls.from_pretrained(folder)
    safe = _check_weights(folder, allow_pickle)
    return cls.from_pretrained(folder, use_safetensors=safe)


def _import_libraries() -> None:
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise BridgeError(
            "diffusers-format models need diffusers: pip install 'tinysora[diffusers]'"
        ) from None


@dataclass
class SamplingDefaults:
    """The defaults a call falls back to (the fields ``PipelineConfig`` shares)."""

    num_inference_steps: int = 50  # TextToVideoSDPipeline's defaults
    guidance_scale: float = 9.0
    sampler: str = "scheduler"  # the directory's scheduler class
    fps: float = 8.0


class DiffusersVideoPipeline:
    """A diffusers text-to-video model with ``TextToVideoPipeline``'s call."""

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler):
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.scheduler = tokenizer, scheduler
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.config = SamplingDefaults(sampler=type(scheduler).__name__)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (the VAE, then the UNet's downs)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.down_block_types) - 1)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: str | torch.device) -> DiffusersVideoPipeline:
        device = resolve_device(device)
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device)
        return self

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, allow_pickle: bool = False
    ) -> DiffusersVideoPipeline:
        root = Path(directory)
        _import_libraries()
        try:
            index = json.loads((root / "model_index.json").read_text())
        except (OSError, ValueError) as e:
            raise BridgeError(f"'{root}/model_index.json' cannot be read ({e})") from None
        kind = index.get("_class_name")
        if kind not in LAYOUTS:
            raise BridgeError(
                f"'{root}': a diffusers '{kind}' is not supported; supported: "
                f"{', '.join(LAYOUTS)} (or a tinysora model: dit/, vae/, pipeline.json)"
            )
        parts = {}
        for name in LAYOUTS[kind]:
            if name not in index:
                raise BridgeError(f"'{root}/model_index.json' lists no '{name}'")
            parts[name] = _component(root, name, index[name], allow_pickle)
        for module in ("unet", "vae", "text_encoder"):
            parts[module].eval().requires_grad_(False)
        return cls(**parts)

    def set_sampling(self, guidance_scale: float | None = None, sampler: str | None = None):
        """Change the default guidance scale (the sampler is the directory's scheduler)."""
        if sampler not in (None, self.config.sampler):
            raise BridgeError(f"this model samples with its {self.config.sampler} only")
        if guidance_scale is not None:
            self.config.guidance_scale = float(guidance_scale)
        return self

    def load_lora(self, directory, scale: float = 1.0):
        raise BridgeError("LoRA adapters (tinysora train lora) are for tinysora DiT models")

    # ----------------------------------------------------------------- building blocks

    def _embed(self, prompts: list[str]) -> torch.Tensor:
        """CLIP token states (B, L, D), padded to the tokenizer's length, as diffusers does."""
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        states = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return states.to(self.text_encoder.dtype)

    def _encode(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> scaled latents (1, C, T, h, w): each frame by the 2D VAE."""
        x = torch.tensor(frames, dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1
        z = self.vae.encode(x.to(self.device, self.vae.dtype)).latent_dist.mean
        z = z * self.vae.config.scaling_factor  # (T, C, h, w)
        return z.permute(1, 0, 2, 3)[None].float()

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, T, h, w) latents -> float (B, T, H, W, 3) in [0, 1], as diffusers' pipeline
        decodes and post-processes them."""
        b, c, t, h, w = latents.shape
        z = (latents / self.vae.config.scaling_factor).permute(0, 2, 1, 3, 4)
        image = self.vae.decode(z.reshape(b * t, c, h, w)).sample.float()  # (B*T, 3, H, W)
        video = image.reshape(b, t, *image.shape[1:]).permute(0, 1, 3, 4, 2)
        return (video / 2 + 0.5).clamp(0, 1)

    def _step(self, x: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """One scheduler step on (B, C, T, h, w), frames folded into the batch (diffusers
        steps 4-D samples)."""
        b, c, f, h, w = x.shape
        fold = "b c f h w -> (b f) c h w"
        out = self.scheduler.step(rearrange(noise, fold), t, rearrange(x, fold)).prev_sample
        return rearrange(out, "(b f) c h w -> b c f h w", b=b, f=f)

    # ----------------------------------------------------------------- the call

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_frames: int = 16,
        height: int = 256,
        width: int = 256,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
        sampler: str | None = None,
        callback: Callable[[dict], None] | None = None,
        progress: bool = True,
        video=None,
        strength: float | None = None,
        **conditioning,
    ) -> VideoOutput:
        """Generate as ``TextToVideoSDPipeline`` does (same noise from the same generator);
        ``video`` + ``strength`` re-generates a clip from its latents noised that far."""
        given = [k for k in NEEDS_TASK_TRAINING if _is_set(conditioning.get(k))]
        unknown = set(conditioning) - set(NEEDS_TASK_TRAINING)
        if unknown:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(unknown))}")
        if given:
            raise BridgeError(
                f"{', '.join(given)} needs a tinysora model trained with the conditioning "
                "tasks; a diffusers model does text-to-video and SDEdit (video + strength)"
            )
        self.set_sampling(sampler=sampler)
        if output_type not in OUTPUT_TYPES:
            raise BridgeError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}")
        if (video is None) != (strength is None) or not (strength is None or 0 < strength <= 1):
            raise BridgeError("SDEdit takes video and strength in (0, 1] together")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = negative_prompt if negative_prompt is not None else ""
        negatives = [negatives] * len(prompts) if isinstance(negatives, str) else list(negatives)
        multiple = self.size_multiple
        if height % multiple or width % multiple:
            raise BridgeError(f"height and width must be multiples of {multiple}")
        steps = num_inference_steps or self.config.num_inference_steps
        scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        guided = scale > 1.0
        text = self._embed(prompts)
        if guided:
            text = torch.cat([self._embed(negatives), text])
        self.scheduler.set_timesteps(steps, device=self.device)
        timesteps = self.scheduler.timesteps
        if video is not None:
            clip = load_video(video)
            clip = fit_video(clip, len(clip), height, width)
            num_frames = len(clip)
        shape = (
            len(prompts),
            self.unet.config.in_channels,
            num_frames,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        noise = _randn(shape, generator, text.dtype).to(self.device)
        if video is None:
            x = noise * self.scheduler.init_noise_sigma
        else:  # SDEdit: start part-way, from the clip's latents noised to that step
            keep = min(int(steps * strength), steps)
            timesteps = timesteps[steps - keep :]
            start = self._encode(clip).expand(len(prompts), -1, -1, -1, -1)
            x = self.scheduler.add_noise(start, noise, timesteps[:1].repeat(len(prompts)))
        for i, t in enumerate(tqdm(timesteps, desc="sampling", disable=not progress)):
            inp = torch.cat([x] * 2) if guided else x
            inp = self.scheduler.scale_model_input(inp, t)
            eps = self.unet(inp, t, encoder_hidden_states=text, return_dict=False)[0]
            if guided:
                uncond, cond = eps.chunk(2)
                eps = uncond + scale * (cond - uncond)
            x = self._step(x, eps, t)
            if callback is not None:
                n = len(timesteps)
                callback({"i": i, "t": (n - i) / n, "t_next": (n - i - 1) / n, "x_next": x})
        if output_type == "latent":
            return VideoOutput(x)
        frames = self._decode(x).cpu()  # (B, T, H, W, 3) in [0, 1]
        if output_type == "pt":
            clips = list(frames)
        else:
            clips = [(f * 255).round().to(torch.uint8).numpy() for f in frames]
            if output_type == "pil":
                from PIL import Image

                clips = [[Image.fromarray(im) for im in clip] for clip in clips]
        return VideoOutput(clips[0] if isinstance(prompt, str) else clips)


def _is_set(value) -> bool:
    return value is not None and value is not False


def _randn(shape, generator, dtype) -> torch.Tensor:
    """The initial noise as diffusers' ``randn_tensor`` draws it on the CPU: one draw of the
    whole batch from one generator, or one per sample from a list."""
    if isinstance(generator, list):
        return torch.cat(
            [torch.randn((1, *shape[1:]), generator=g, dtype=dtype) for g in generator]
        )
    return torch.randn(shape, generator=generator, dtype=dtype)
