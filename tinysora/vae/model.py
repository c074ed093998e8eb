"""Causal 3D video VAE: (3, T, H, W) pixels <-> (c, 1 + (T - 1) / 4, H / 8, W / 8) latents.

Design (MAGVIT-v2 / CogVideoX-style causal video autoencoder, sized for a CPU):

* **Causal in time.** Every 3D convolution pads only on the past (by repeating
  frame 0), so output frame i depends on input frames <= i. Temporal
  downsampling keeps frame 0 on its own and averages later frames in pairs;
  upsampling repeats them. So frame 0 is encoded alone, an image (T = 1) is a
  1-frame video, and T = 1 + 4k frames -> 1 + k latent frames.
* **Spatial factor 8** = a 2x2 pixel-unshuffle at the input (cheap: the first
  convolutions run at H/2) x two stride-2 downsamples.
* **Norms are per position** (RMS over channels), never over time or space, so
  encoding a clip in chunks gives the same numbers as encoding it whole.
* **Chunked encode / decode** with a causal cache: each causal conv keeps its last
  (k - 1) input frames in ``cache`` between chunks, so any length runs in memory
  that does not grow with T.
* T not of the form 1 + 4k: :func:`pad_frames` repeats the last frame up to the
  next legal length; :meth:`VideoVAE.decode` crops back with ``num_frames``.

Pixels are float in [-1, 1], shape (B, 3, T, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinysora.config import Config
from tinysora.device import autocast
from tinysora.io.frames import frames_to_tensor, tensor_to_frames

TIME_FACTOR = 4
SPACE_FACTOR = 8
INITIAL_LOGVAR = -8.0


@dataclass
class VAEConfig(Config):
    latent_channels: int = 8
    channels: tuple[int, int, int] = (64, 96, 128)  # widths at H/2, H/4, H/8
    encoder_blocks: int = 1  # residual blocks per resolution (encoder)
    decoder_blocks: int = 2  # residual blocks per resolution (decoder)
    # latents fed to the DiT are (z - shift_factor) * scaling_factor; both are measured
    # on training latents after training (tinysora.train.vae.measure_latent_stats).
    scaling_factor: float = 1.0
    shift_factor: float = 0.0


Cache = dict  # {module: tensor of past frames}; None means "whole clip"


def legal_num_frames(num_frames: int) -> int:
    """The smallest T' >= T of the form 1 + 4k."""
    return 1 + -(-(num_frames - 1) // TIME_FACTOR) * TIME_FACTOR


def pad_frames(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Pad (B, C, T, H, W) with copies of the last frame to 1 + 4k frames; returns (x, T)."""
    t = x.shape[2]
    extra = legal_num_frames(t) - t
    if extra:
        x = torch.cat([x, x[:, :, -1:].expand(-1, -1, extra, -1, -1)], dim=2)
    return x, t


def latent_frames(num_frames: int) -> int:
    return 1 + (legal_num_frames(num_frames) - 1) // TIME_FACTOR


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels at every (t, h, w) position, with a learned gain."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels, 1, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        rms = x.float().pow(2).mean(1, keepdim=True).add(self.eps).rsqrt()
        return (x.float() * rms).to(x.dtype) * self.gain


class CausalConv3d(nn.Module):
    """3D convolution padded only on the past in time (zero 'same' padding in space)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__()
        self.past = kernel - 1
        self.conv = nn.Conv3d(cin, cout, kernel, padding=(0, kernel // 2, kernel // 2))

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        starts = cache is None or self not in cache
        if self.past and starts and x.shape[2] == 1:
            # A lone first frame sees only copies of itself: the same numbers as a 2D conv
            # with the kernel summed over time (faster, and it avoids oneDNN bf16 Conv3d
            # backward kernels that stall or crash for single-output-frame shapes).
            if cache is not None:
                cache[self] = x.expand(-1, -1, self.past, -1, -1).detach()
            weight = self.conv.weight.sum(2)  # (cout, cin, kh, kw)
            y = F.conv2d(x[:, :, 0], weight, self.conv.bias, padding=self.conv.padding[1:])
            return y[:, :, None]
        if self.past:
            # the frames before this call; at the start of the clip, copies of frame 0
            past = x[:, :, :1].expand(-1, -1, self.past, -1, -1) if starts else cache[self]
            x = torch.cat([past, x], dim=2)  # (B, C, past + T, H, W)
            if cache is not None:
                cache[self] = x[:, :, -self.past :].detach()
        return self.conv(x)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = ChannelRMSNorm(cin), CausalConv3d(cin, cout)
        self.norm2, self.conv2 = ChannelRMSNorm(cout), CausalConv3d(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return _pointwise(self.skip, x) + h


def _pointwise(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1x1x1 Conv3d applied frame by frame as a 1x1 Conv2d (identity passes through).

    Same weights and numbers; it sidesteps oneDNN bf16 Conv3d backward kernels that
    stall (2 threads) or corrupt memory (1 thread) for some shapes in torch 2.13
    (seen for 64 -> 32 channels at 64x64).
    """
    if isinstance(conv, nn.Identity):
        return x
    b, c, t, h, w = x.shape
    y = x.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, H, W)
    y = F.conv2d(y, conv.weight[:, :, 0], conv.bias)
    return y.reshape(b, t, -1, h, w).transpose(1, 2)  # (B, C', T, H, W)


def _starts_clip(module: nn.Module, cache: Cache | None) -> bool:
    """True if this call holds frame 0 (whole clip, or the first chunk)."""
    if cache is None:
        return True
    first = module not in cache
    cache[module] = True
    return first


class Downsample(nn.Module):
    """Stride-2 conv in space; in time, frame 0 alone and later frames averaged in pairs."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, H, W)
        y = self.conv(F.pad(y, (0, 1, 0, 1))) + F.avg_pool2d(y, 2)  # residual shortcut
        y = y.reshape(b, t, c, h // 2, w // 2).transpose(1, 2)  # (B, C, T, H/2, W/2)
        first = y[:, :, :1] if _starts_clip(self, cache) else y[:, :, :0]
        rest = y[:, :, first.shape[2] :]
        if rest.shape[2] % 2:
            raise ValueError("Downsample: frames after frame 0 must come in pairs")
        rest = 0.5 * (rest[:, :, 0::2] + rest[:, :, 1::2])
        return torch.cat([first, rest], dim=2)


class Upsample(nn.Module):
    """Nearest x2 in space then a 3x3 conv; in time, frame 0 stays single, others doubled."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        first = x[:, :, :1] if _starts_clip(self, cache) else x[:, :, :0]
        rest = x[:, :, first.shape[2] :].repeat_interleave(2, dim=2)
        x = torch.cat([first, rest], dim=2)
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, H, W)
        y = F.interpolate(y, scale_factor=2.0, mode="nearest")
        y = self.conv(y) + y  # residual shortcut
        return y.reshape(b, t, c, 2 * h, 2 * w).transpose(1, 2)  # (B, C, T, 2H, 2W)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        c0, c1, c2 = cfg.channels
        self.conv_in = CausalConv3d(3 * 4, c0)
        layers: list[nn.Module] = []
        for cin, cout, down in ((c0, c0, True), (c0, c1, True), (c1, c2, False)):
            layers += [ResBlock(cin if i == 0 else cout, cout) for i in range(cfg.encoder_blocks)]
            if down:
                layers.append(Downsample(cout))
        layers.append(ResBlock(c2, c2))
        self.layers = nn.ModuleList(layers)
        self.norm_out = ChannelRMSNorm(c2)
        self.conv_out = CausalConv3d(c2, 2 * cfg.latent_channels)
        self.latent_channels = cfg.latent_channels
        if c2 % cfg.latent_channels:
            raise ValueError("channels[2] must be a multiple of latent_channels")
        # Start with a small posterior std (e^-4 = 0.02): with unit std the decoder first sees
        # mostly noise and learning crawls until the log-variance has been pushed down.
        with torch.no_grad():
            self.conv_out.conv.bias[cfg.latent_channels :].fill_(INITIAL_LOGVAR)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        # (B, 3, T, H, W) -> pixel-unshuffle -> (B, 12, T, H/2, W/2)
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t, h // 2, 2, w // 2, 2).permute(0, 1, 4, 6, 2, 3, 5)
        x = x.reshape(b, c * 4, t, h // 2, w // 2)
        x = self.conv_in(x, cache)
        for layer in self.layers:
            x = layer(x, cache)
        moments = self.conv_out(F.silu(self.norm_out(x)), cache)  # (B, 2c, t, H/8, W/8)
        # shortcut: the mean also gets the features averaged in groups of channels
        b, c, t, h, w = x.shape
        shortcut = x.reshape(b, self.latent_channels, c // self.latent_channels, t, h, w).mean(2)
        return torch.cat(
            [moments[:, : self.latent_channels] + shortcut, moments[:, self.latent_channels :]],
            dim=1,
        )


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        c0, c1, c2 = cfg.channels
        self.conv_in = CausalConv3d(cfg.latent_channels, c2)
        layers: list[nn.Module] = [ResBlock(c2, c2)]
        for cin, cout, up in ((c2, c2, True), (c2, c1, True), (c1, c0, False)):
            layers += [ResBlock(cin if i == 0 else cout, cout) for i in range(cfg.decoder_blocks)]
            if up:
                layers.append(Upsample(cout))
        self.layers = nn.ModuleList(layers)
        self.norm_out = ChannelRMSNorm(c0)
        self.conv_out = CausalConv3d(c0, 3 * 4)

    def forward(self, z: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        repeat = self.conv_in.conv.out_channels // z.shape[1]
        x = self.conv_in(z, cache) + z.repeat_interleave(repeat, dim=1)  # residual shortcut
        for layer in self.layers:
            x = layer(x, cache)
        x = self.conv_out(F.silu(self.norm_out(x)), cache)  # (B, 12, T, H/2, W/2)
        b, c4, t, h, w = x.shape
        x = x.reshape(b, 3, 2, 2, t, h, w).permute(0, 1, 4, 5, 2, 6, 3)
        return x.reshape(b, 3, t, h * 2, w * 2)  # pixel-shuffle -> (B, 3, T, H, W)


@dataclass
class Posterior:
    """Diagonal Gaussian over latents (B, c, t, h, w)."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # drawn on the generator's device (a CPU generator: the same noise on any device)
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(
            self.mean.shape, generator=generator, dtype=self.mean.dtype, device=device
        )
        eps = eps.to(self.mean.device)
        return self.mean + torch.exp(0.5 * self.logvar) * eps

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per latent element, averaged."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).mean()


class VideoVAE(nn.Module):
    config_class = VAEConfig  # what ``io.checkpoint.load_pretrained`` reads config.json into

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor, chunk_frames: int | None = None) -> Posterior:
        """(B, 3, T, H, W) in [-1, 1] -> posterior over (B, c, 1 + (T' - 1) / 4, H/8, W/8).

        T is padded to T' = 1 + 4k (repeat last frame). ``chunk_frames`` (a multiple
        of 4) encodes 1 + chunk_frames frames first, then chunk_frames at a time,
        carrying the causal cache: same result, memory bounded in T.
        """
        _check_pixels(x)
        x, _ = pad_frames(x)
        if chunk_frames is None or x.shape[2] <= 1 + chunk_frames:
            moments = self.encoder(x)
        else:
            if chunk_frames <= 0 or chunk_frames % TIME_FACTOR:
                raise ValueError(
                    f"chunk_frames must be a positive multiple of {TIME_FACTOR}, got {chunk_frames}"
                )
            cache: Cache = {}
            starts = range(1 + chunk_frames, x.shape[2], chunk_frames)
            pieces = [x[:, :, : 1 + chunk_frames]] + [x[:, :, s : s + chunk_frames] for s in starts]
            moments = torch.cat([self.encoder(p, cache) for p in pieces], dim=2)
        mean, logvar = moments.chunk(2, dim=1)
        return Posterior(mean, logvar.clamp(-30.0, 20.0))

    def decode(
        self, z: torch.Tensor, num_frames: int | None = None, chunk_latents: int | None = None
    ) -> torch.Tensor:
        """Latents (B, c, t, h, w) -> pixels (B, 3, 1 + 4(t - 1), 8h, 8w), cropped to num_frames.

        ``chunk_latents`` decodes that many latent frames at a time with the causal cache.
        """
        if chunk_latents is not None and chunk_latents <= 0:
            raise ValueError(f"chunk_latents must be positive, got {chunk_latents}")
        if chunk_latents is None or z.shape[2] <= chunk_latents:
            x = self.decoder(z)
        else:
            cache: Cache = {}
            pieces = z.split(chunk_latents, dim=2)
            x = torch.cat([self.decoder(p, cache) for p in pieces], dim=2)
        return x if num_frames is None else x[:, :, :num_frames]

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Training pass: (reconstruction cropped to T, posterior)."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator), num_frames=x.shape[2]), posterior

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents -> the unit-scale latents the DiT works in."""
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.config.scaling_factor + self.config.shift_factor


def reconstruct(vae: VideoVAE, frames: np.ndarray, chunk_frames: int | None = 16) -> np.ndarray:
    """uint8 (T, H, W, 3) -> reconstructed uint8 (T, H, W, 3) through the posterior mean
    (``device.autocast``, chunked with the causal cache)."""
    device = next(vae.parameters()).device
    x = frames_to_tensor(frames)[None].to(device)
    with torch.no_grad(), autocast(device):
        z = vae.encode(x, chunk_frames=chunk_frames).mean
        y = vae.decode(z, num_frames=x.shape[2], chunk_latents=chunk_frames and chunk_frames // 4)
    return tensor_to_frames(y[0])


def _check_pixels(x: torch.Tensor) -> None:
    if x.ndim != 5 or x.shape[1] != 3:
        raise ValueError(f"VAE input must be (B, 3, T, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % SPACE_FACTOR or w % SPACE_FACTOR:
        raise ValueError(f"VAE input height and width must be multiples of 8, got {h}x{w}")
