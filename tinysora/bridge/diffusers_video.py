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

import dataclasses
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
from tinysora.io.frames import VideoOutput, fit_video, load_video, to_uint8

OUTPUT_TYPES = ("np", "pil", "latent", "pt")
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
    if name in ("scheduler", "tokenizer"):  # configs and vocabularies, no weights
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

    num_inference_steps: int = 50
    guidance_scale: float = 9.0
    sampler: str = "scheduler"  # the directory's scheduler class
    fps: float = 8.0


class DiffusersVideoPipeline:
    """A diffusers text-to-video model with ``TextToVideoPipeline``'s call: the call's
    checks and outputs here, each model family's denoising loop in a subclass
    (``_generate``: latents from noise or from a clip; ``_decode``: frames in [0, 1])."""

    components: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()  # the torch modules among them
    defaults = SamplingDefaults()
    frames_rule = (1, 1)  # num_frames = a + b k

    def __init__(self, **parts):
        for name in self.components:
            setattr(self, name, parts[name])
        self.config = dataclasses.replace(self.defaults, sampler=type(self.scheduler).__name__)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, allow_pickle: bool = False
    ) -> DiffusersVideoPipeline:
        """The pipeline of the family ``model_index.json`` names, its parts loaded."""
        root = Path(directory)
        _import_libraries()
        try:
            index = json.loads((root / "model_index.json").read_text())
        except (OSError, ValueError) as e:
            raise BridgeError(f"'{root}/model_index.json' cannot be read ({e})") from None
        kind = index.get("_class_name")
        family = LAYOUTS.get(kind)
        if family is None:
            raise BridgeError(
                f"'{root}': a diffusers '{kind}' is not supported; supported: "
                f"{', '.join(LAYOUTS)} (or a tinysora model: dit/, vae/, pipeline.json)"
            )
        parts = {}
        for name in family.components:
            if name not in index:
                raise BridgeError(f"'{root}/model_index.json' lists no '{name}'")
            parts[name] = _component(root, name, index[name], allow_pickle)
        for name in family.modules:
            parts[name].eval().requires_grad_(False)
        return family(**parts)

    @property
    def device(self) -> torch.device:
        return next(getattr(self, self.modules[0]).parameters()).device

    def to(self, device: str | torch.device) -> DiffusersVideoPipeline:
        device = resolve_device(device)
        for name in self.modules:
            getattr(self, name).to(device)
        return self

    def set_sampling(self, guidance_scale: float | None = None, sampler: str | None = None):
        """Change the default guidance scale (the sampler is the directory's scheduler)."""
        if sampler not in (None, self.config.sampler):
            raise BridgeError(f"this model samples with its {self.config.sampler} only")
        if guidance_scale is not None:
            self.config.guidance_scale = float(guidance_scale)
        return self

    def load_lora(self, directory, scale: float = 1.0):
        raise BridgeError("LoRA adapters (tinysora train lora) are for tinysora DiT models")

    # ----------------------------------------------------------------- the call

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_frames: int = 17,
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
        """Generate as the diffusers pipeline of this family does (the same noise from the
        same generator); ``video`` + ``strength`` re-generates a clip from its latents
        noised that far (SDEdit)."""
        unknown = set(conditioning) - set(NEEDS_TASK_TRAINING)
        if unknown:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(unknown))}")
        given = [k for k in NEEDS_TASK_TRAINING if _is_set(conditioning.get(k))]
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
        if height % self.size_multiple or width % self.size_multiple:
            raise BridgeError(f"height and width must be multiples of {self.size_multiple}")
        clip = None
        if video is not None:
            clip = load_video(video)
            num_frames = len(clip)
            clip = fit_video(clip, num_frames, height, width)
        a, b = self.frames_rule
        if num_frames < a or (num_frames - a) % b:
            raise BridgeError(f"this model takes {a} + {b}k frames, got {num_frames}")
        steps = num_inference_steps or self.config.num_inference_steps
        scale = self.config.guidance_scale if guidance_scale is None else guidance_scale

        def report(i: int, n: int, x: torch.Tensor) -> None:
            if callback is not None:  # flow-time-like fractions left, as our samplers say
                callback({"i": i, "t": (n - i) / n, "t_next": (n - i - 1) / n, "x_next": x})

        run = _Run(prompts, negatives, num_frames, height, width, steps, scale, generator)
        bar = tqdm(total=steps, desc="sampling", unit="step", disable=not progress)
        latents = self._generate(run, report, bar, clip, strength)
        bar.close()
        if output_type == "latent":
            return VideoOutput(latents)
        frames = self._decode(latents, run).cpu()  # (B, T, H, W, 3) in [0, 1]
        if output_type == "pt":
            clips = list(frames)
        else:
            clips = [f.numpy() for f in frames]  # "np": float32 in [0, 1], as diffusers'
            if output_type == "pil":
                from PIL import Image

                clips = [[Image.fromarray(im) for im in to_uint8(clip)] for clip in clips]
        return VideoOutput(clips[0] if isinstance(prompt, str) else clips)


@dataclass
class _Run:
    """One call's request, as the family loops read it."""

    prompts: list[str]
    negatives: list[str]
    num_frames: int
    height: int
    width: int
    steps: int
    scale: float
    generator: torch.Generator | list[torch.Generator] | None

    @property
    def guided(self) -> bool:  # diffusers' pipelines guide only above 1
        return self.scale > 1.0


def _guide(eps: torch.Tensor, run: _Run) -> torch.Tensor:
    if not run.guided:
        return eps
    uncond, cond = eps.chunk(2)
    return uncond + run.scale * (cond - uncond)


class UNet3DVideoPipeline(DiffusersVideoPipeline):
    """ModelScope text-to-video (``TextToVideoSDPipeline``): a UNet3D predicting noise in
    the latents of a 2D SD VAE, CLIP text, a DDPM-family scheduler."""

    components = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    modules = ("unet", "vae", "text_encoder")
    defaults = SamplingDefaults(num_inference_steps=50, guidance_scale=9.0)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (the VAE, then the UNet's downs)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.down_block_types) - 1)

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

    def _decode(self, latents: torch.Tensor, run: _Run) -> torch.Tensor:
        """(B, C, T, h, w) latents -> float (B, T, H, W, 3) in [0, 1], as diffusers' pipeline
        decodes and post-processes them."""
        b, c, t, h, w = latents.shape
        z = (latents / self.vae.config.scaling_factor).permute(0, 2, 1, 3, 4)
        image = self.vae.decode(z.reshape(b * t, c, h, w)).sample.float()  # (B*T, 3, H, W)
        video = image.reshape(b, t, *image.shape[1:]).permute(0, 1, 3, 4, 2)
        return (video / 2 + 0.5).clamp(0, 1)

    def _generate(self, run: _Run, report, bar, clip, strength) -> torch.Tensor:
        text = self._embed(run.prompts)
        if run.guided:
            text = torch.cat([self._embed(run.negatives), text])
        self.scheduler.set_timesteps(run.steps, device=self.device)
        timesteps = self.scheduler.timesteps
        shape = (
            len(run.prompts),
            self.unet.config.in_channels,
            run.num_frames,
            run.height // self.vae_scale_factor,
            run.width // self.vae_scale_factor,
        )
        noise = _randn(shape, run.generator, text.dtype).to(self.device)
        if clip is None:
            x = noise * self.scheduler.init_noise_sigma
        else:  # SDEdit: start part-way, from the clip's latents noised to that step
            keep = min(int(run.steps * strength), run.steps)
            timesteps = timesteps[run.steps - keep :]
            start = self._encode(clip).expand(len(run.prompts), -1, -1, -1, -1)
            x = self.scheduler.add_noise(start, noise, timesteps[:1].repeat(len(run.prompts)))
        fold = "b c f h w -> (b f) c h w"  # the scheduler steps 4-D samples
        for i, t in enumerate(timesteps):
            inp = self.scheduler.scale_model_input(torch.cat([x] * 2) if run.guided else x, t)
            eps = _guide(self.unet(inp, t, encoder_hidden_states=text, return_dict=False)[0], run)
            out = self.scheduler.step(rearrange(eps, fold), t, rearrange(x, fold)).prev_sample
            x = rearrange(out, "(b f) c h w -> b c f h w", b=shape[0])
            report(i, len(timesteps), x)
            bar.update()
        return x


class LTXVideoPipeline(DiffusersVideoPipeline):
    """LTX-Video (``LTXPipeline``): a transformer over packed tokens of a causal video VAE's
    latents, T5 text, rectified flow with a resolution-dependent shift."""

    components = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    modules = ("transformer", "vae", "text_encoder")
    defaults = SamplingDefaults(num_inference_steps=50, guidance_scale=3.0, fps=25.0)
    max_sequence_length = 128  # LTXPipeline's
    frame_rate = 25  # what its RoPE is scaled for by default

    @property
    def frames_rule(self) -> tuple[int, int]:
        return 1, self.vae.temporal_compression_ratio * self.transformer.config.patch_size_t

    @property
    def size_multiple(self) -> int:
        return self.vae.spatial_compression_ratio * self.transformer.config.patch_size

    def _embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        states = self.text_encoder(tokens.input_ids.to(self.device))[0]
        return states.to(self.text_encoder.dtype), tokens.attention_mask.bool().to(self.device)

    def _grid(self, run: _Run) -> tuple[int, int, int]:
        """Latent (frames, height, width) of the request."""
        t = (run.num_frames - 1) // self.vae.temporal_compression_ratio + 1
        s = self.vae.spatial_compression_ratio
        return t, run.height // s, run.width // s

    def _pack(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, F, H, W) -> tokens (B, N, C p_t p p) in the transformer's order."""
        p, pt = self.transformer.config.patch_size, self.transformer.config.patch_size_t
        return rearrange(z, "b c (f pt) (h p) (w q) -> b (f h w) (c pt p q)", pt=pt, p=p, q=p)

    def _unpack(self, x: torch.Tensor, run: _Run) -> torch.Tensor:
        p, pt = self.transformer.config.patch_size, self.transformer.config.patch_size_t
        f, h, w = self._grid(run)
        return rearrange(
            x,
            "b (f h w) (c pt p q) -> b c (f pt) (h p) (w q)",
            f=f // pt,
            h=h // p,
            w=w // p,
            pt=pt,
            p=p,
            q=p,
        )

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        mean = self.vae.latents_mean.view(1, -1, 1, 1, 1).to(z.device, z.dtype)
        std = self.vae.latents_std.view(1, -1, 1, 1, 1).to(z.device, z.dtype)
        return mean, std, self.vae.config.scaling_factor

    def _encode(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> normalized latents (1, C, t, h, w)."""
        x = torch.tensor(frames, dtype=torch.float32).permute(3, 0, 1, 2)[None] / 127.5 - 1
        z = self.vae.encode(x.to(self.device, self.vae.dtype)).latent_dist.mean.float()
        mean, std, scale = self._stats(z)
        return (z - mean) * scale / std

    def _decode(self, latents: torch.Tensor, run: _Run) -> torch.Tensor:
        z = self._unpack(latents, run)
        mean, std, scale = self._stats(z)
        z = (z * std / scale + mean).to(self.vae.dtype)
        timestep = None  # LTXPipeline's default decode_timestep 0 adds no noise
        if self.vae.config.timestep_conditioning:
            timestep = torch.zeros(len(z), device=z.device, dtype=z.dtype)
        video = self.vae.decode(z, timestep, return_dict=False)[0].float()  # (B, 3, T, H, W)
        return (video.permute(0, 2, 3, 4, 1) / 2 + 0.5).clamp(0, 1)

    def _generate(self, run: _Run, report, bar, clip, strength) -> torch.Tensor:
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

        text, mask = self._embed(run.prompts)
        if run.guided:
            neg_text, neg_mask = self._embed(run.negatives)
            text, mask = torch.cat([neg_text, text]), torch.cat([neg_mask, mask])
        f, h, w = self._grid(run)
        shape = (len(run.prompts), self.transformer.config.in_channels, f, h, w)
        noise = self._pack(_randn(shape, run.generator, torch.float32)).to(self.device)
        cfg = self.scheduler.config
        mu = calculate_shift(
            f * h * w,
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
        sigmas = np.linspace(1.0, 1 / run.steps, run.steps)
        self.scheduler.set_timesteps(sigmas=sigmas, device=self.device, mu=mu)
        timesteps = self.scheduler.timesteps
        x = noise
        if clip is not None:  # SDEdit: the clip's latents noised to the first kept step
            begin = run.steps - min(int(run.steps * strength), run.steps)
            timesteps = timesteps[begin:]
            self.scheduler.set_begin_index(begin)
            start = self._pack(self._encode(clip)).expand(len(run.prompts), -1, -1)
            x = self.scheduler.scale_noise(start, timesteps[:1], noise)
        ratio = self.vae.spatial_compression_ratio
        rope = (self.vae.temporal_compression_ratio / self.frame_rate, ratio, ratio)
        for i, t in enumerate(timesteps):
            inp = torch.cat([x] * 2) if run.guided else x
            eps = self.transformer(
                hidden_states=inp.to(text.dtype),
                encoder_hidden_states=text,
                timestep=t.expand(len(inp)),
                encoder_attention_mask=mask,
                num_frames=f,
                height=h,
                width=w,
                rope_interpolation_scale=rope,
                return_dict=False,
            )[0].float()
            x = self.scheduler.step(_guide(eps, run), t, x, return_dict=False)[0]
            report(i, len(timesteps), x)
            bar.update()
        return x


LAYOUTS: dict[str, type[DiffusersVideoPipeline]] = {
    "TextToVideoSDPipeline": UNet3DVideoPipeline,
    "LTXPipeline": LTXVideoPipeline,
}


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
