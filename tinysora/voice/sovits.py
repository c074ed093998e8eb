"""The SoVITS generator, sized for a 2-core CPU: semantic codes + phonemes + a reference
voice -> waveform (GPT-SoVITS's SynthesizerTrn, written here).

    codes (25 Hz) --embed, x2--> code encoder --+
    phonemes --> phoneme encoder ----------------+-- MRTE (codes attend to phonemes)
    reference mel --> style encoder --> g -------+   + g --> post layers --> prior (m_p, logs_p)
    linear spectrogram --> posterior WaveNet(g) --> z ~ q(z | audio)
    z --flow(g)--> z_p, scored against the prior (KL);  z segment --HiFi-GAN(g)--> waveform

Training samples ``z`` from the posterior and decodes a random segment of it; inference
samples the prior, runs the flow backwards and decodes everything. Discriminators:
multi-period (2, 3, 5, 7, 11) plus one scale discriminator on the raw waveform.

Sizes: 16 kHz audio (the corpus engines' native rate; 32 kHz would double the decoder's
cost for bandwidth no engine produces), hop 320 (50 frames/s, as GPT-SoVITS), a HiFi-GAN
with upsampling 10 x 8 x 4 and 192 initial channels (V3-like, well under real time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from tinysora.config import Config
from tinysora.nn.attention import Attention, key_padding_mask
from tinysora.voice.audio import SpectrogramConfig
from tinysora.voice.content import Block


@dataclass
class SoVITSConfig(Config):
    sample_rate: int = 16000
    hop: int = 320
    n_fft: int = 1024
    n_mels: int = 80
    n_phonemes: int = 70  # the phoneme vocabulary's size (voice/phonemes.txt)
    code_dim: int = 256  # the codec's vector width
    codebook_size: int = 1024
    n_quantizers: int = 1
    hidden: int = 128  # prior / posterior / flow width
    inter: int = 96  # z's channels
    heads: int = 2
    code_layers: int = 2
    phone_layers: int = 3
    post_layers: int = 2
    gin: int = 128  # style vector width
    posterior_layers: int = 8
    flow_couplings: int = 4
    flow_wn_layers: int = 4
    dec_initial: int = 192
    dec_rates: tuple[int, ...] = (10, 8, 4)
    dec_kernels: tuple[int, ...] = (20, 16, 8)
    res_kernels: tuple[int, ...] = (3, 7)
    res_dilations: tuple[tuple[int, ...], ...] = ((1, 3), (1, 3))
    segment_frames: int = 32  # frames of z decoded per training example (0.64 s)
    disc_channels: int = 16  # the discriminators' first width (HiFi-GAN's are 2-8x wider)

    @property
    def spec_channels(self) -> int:
        return self.n_fft // 2 + 1


def spectrogram_config(c: SoVITSConfig) -> SpectrogramConfig:
    """The front end a model was trained with (its rate, FFT, hop and mel bands)."""
    return SpectrogramConfig(
        sample_rate=c.sample_rate, n_fft=c.n_fft, hop=c.hop, win=c.n_fft, n_mels=c.n_mels
    )


def sequence_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """(B, 1, T) float: 1 on valid frames."""
    return (torch.arange(t, device=lengths.device)[None] < lengths[:, None])[:, None].float()


class WaveNet(nn.Module):
    """Gated dilated convs with a global condition (VITS's WN), non-causal."""

    def __init__(self, hidden: int, kernel: int, layers: int, gin: int, dilation_rate: int = 1):
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.cond = weight_norm(nn.Conv1d(gin, 2 * hidden * layers, 1)) if gin else None
        self.ins = nn.ModuleList()
        self.res_skip = nn.ModuleList()
        for i in range(layers):
            d = dilation_rate**i
            pad = (kernel * d - d) // 2
            self.ins.append(
                weight_norm(nn.Conv1d(hidden, 2 * hidden, kernel, dilation=d, padding=pad))
            )
            out = 2 * hidden if i < layers - 1 else hidden
            self.res_skip.append(weight_norm(nn.Conv1d(hidden, out, 1)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None):
        """x (B, hidden, T), mask (B, 1, T), g (B, gin, 1) -> (B, hidden, T)."""
        skip = torch.zeros_like(x)
        cond = self.cond(g) if (g is not None and self.cond is not None) else None
        h = self.hidden
        for i in range(self.layers):
            a = self.ins[i](x)
            if cond is not None:
                a = a + cond[:, i * 2 * h : (i + 1) * 2 * h]
            acts = torch.tanh(a[:, :h]) * torch.sigmoid(a[:, h:])
            rs = self.res_skip[i](acts)
            if i < self.layers - 1:
                x = (x + rs[:, :h]) * mask
                skip = skip + rs[:, h:]
            else:
                skip = skip + rs
        return skip * mask


class PosteriorEncoder(nn.Module):
    """Linear spectrogram -> z ~ N(m, exp(logs)) (per frame, ``inter`` channels)."""

    def __init__(self, c: SoVITSConfig):
        super().__init__()
        self.pre = nn.Conv1d(c.spec_channels, c.hidden, 1)
        self.enc = WaveNet(c.hidden, 5, c.posterior_layers, c.gin)
        self.proj = nn.Conv1d(c.hidden, 2 * c.inter, 1)

    def forward(self, spec, lengths, g, generator: torch.Generator | None = None):
        mask = sequence_mask(lengths, spec.shape[2]).to(spec.dtype)
        x = self.enc(self.pre(spec) * mask, mask, g)
        m, logs = self.proj(x).chunk(2, dim=1)
        noise = torch.randn(m.shape, generator=generator).to(m.device, m.dtype)  # CPU draws
        z = (m + noise * torch.exp(logs)) * mask
        return z, m, logs, mask


class Coupling(nn.Module):
    """A mean-only residual affine coupling: the second half shifts by a function of the
    first; its last conv starts at zero so a fresh flow is the identity."""

    def __init__(self, c: SoVITSConfig):
        super().__init__()
        self.half = c.inter // 2
        self.pre = nn.Conv1d(self.half, c.hidden, 1)
        self.enc = WaveNet(c.hidden, 5, c.flow_wn_layers, c.gin)
        self.post = nn.Conv1d(c.hidden, self.half, 1)
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)

    def forward(self, x, mask, g, reverse: bool = False):
        x0, x1 = x[:, : self.half], x[:, self.half :]
        shift = self.post(self.enc(self.pre(x0) * mask, mask, g)) * mask
        x1 = x1 - shift if reverse else x1 + shift
        return torch.cat([x0, x1], dim=1) * mask


class Flow(nn.Module):
    """Couplings with channel flips between them (volume preserving: no log-det)."""

    def __init__(self, c: SoVITSConfig):
        super().__init__()
        self.couplings = nn.ModuleList(Coupling(c) for _ in range(c.flow_couplings))

    def forward(self, x, mask, g, reverse: bool = False):
        if not reverse:
            for layer in self.couplings:
                x = torch.flip(layer(x, mask, g), dims=[1])
        else:
            for layer in reversed(self.couplings):
                x = layer(torch.flip(x, dims=[1]), mask, g, reverse=True)
        return x


class ResBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs = nn.ModuleList(
            weight_norm(
                nn.Conv1d(channels, channels, kernel, dilation=d, padding=(kernel * d - d) // 2)
            )
            for d in dilations
        )

    def forward(self, x):
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, 0.1))
        return x


class Generator(nn.Module):
    """HiFi-GAN: z (B, inter, T) + g -> waveform (B, 1, T x hop) in [-1, 1]."""

    def __init__(self, c: SoVITSConfig):
        super().__init__()
        if math.prod(c.dec_rates) != c.hop:
            raise ValueError(
                f"dec_rates {c.dec_rates} multiply to {math.prod(c.dec_rates)}, not the hop {c.hop}"
            )
        self.pre = nn.Conv1d(c.inter, c.dec_initial, 7, padding=3)
        self.cond = nn.Conv1d(c.gin, c.dec_initial, 1)
        self.ups, self.blocks = nn.ModuleList(), nn.ModuleList()
        ch = c.dec_initial
        for rate, kernel in zip(c.dec_rates, c.dec_kernels, strict=True):
            up = nn.ConvTranspose1d(ch, ch // 2, kernel, rate, padding=(kernel - rate) // 2)
            self.ups.append(weight_norm(up))
            ch //= 2
            self.blocks.append(
                nn.ModuleList(
                    ResBlock(ch, k, d) for k, d in zip(c.res_kernels, c.res_dilations, strict=True)
                )
            )
        self.post = nn.Conv1d(ch, 1, 7, padding=3, bias=False)

    def forward(self, z, g):
        x = self.pre(z) + self.cond(g)
        for up, blocks in zip(self.ups, self.blocks, strict=True):
            x = up(F.leaky_relu(x, 0.1))
            x = sum(b(x) for b in blocks) / len(blocks)
        return torch.tanh(self.post(F.leaky_relu(x)))


class StyleEncoder(nn.Module):
    """Reference log-mel (B, n_mels, T) -> style vector g (B, gin, 1): convs, then a
    masked mean over time (so any reference length works)."""

    def __init__(self, c: SoVITSConfig):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(c.n_mels, c.hidden, 5, padding=2),
            nn.Mish(),
            nn.Conv1d(c.hidden, c.hidden, 5, padding=2),
            nn.Mish(),
            nn.Conv1d(c.hidden, c.hidden, 5, padding=2),
            nn.Mish(),
        )
        self.proj = nn.Linear(c.hidden, c.gin)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = sequence_mask(lengths, mel.shape[2]).to(mel.dtype)
        h = self.net(mel) * mask
        pooled = h.sum(dim=2) / mask.sum(dim=2).clamp(min=1)
        return self.proj(pooled)[:, :, None]


class CrossAttention(Attention):
    """Queries (code frames) attend to keys (phonemes), pre-LN, residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__(dim, heads, qk_norm=False, out_name="proj")
        self.norm_q, self.norm_k = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context, context_mask):
        y = super().forward(self.norm_q(x), self.norm_k(context), context_mask, sdpa=True)
        return x + y


class PriorEncoder(nn.Module):
    """Codes + phonemes + g -> the prior's (m_p, logs_p) at 50 Hz (MRTE-style)."""

    def __init__(self, c: SoVITSConfig):
        super().__init__()
        d = c.hidden
        # the frozen codec's codebooks (copied in by the trainer): codes -> vectors
        self.codebooks = nn.ModuleList(
            nn.Embedding(c.codebook_size, c.code_dim) for _ in range(c.n_quantizers)
        )
        self.codebooks.requires_grad_(False)
        self.code_in = nn.Linear(c.code_dim, d)
        self.code_blocks = nn.ModuleList(Block(d, c.heads, 4.0) for _ in range(c.code_layers))
        self.phone_emb = nn.Embedding(c.n_phonemes, d)
        self.phone_blocks = nn.ModuleList(Block(d, c.heads, 4.0) for _ in range(c.phone_layers))
        self.mrte = CrossAttention(d, c.heads)
        self.style = nn.Linear(c.gin, d)
        self.post_blocks = nn.ModuleList(Block(d, c.heads, 4.0) for _ in range(c.post_layers))
        self.proj = nn.Linear(d, 2 * c.inter)

    def forward(self, codes, frame_lengths, phonemes, phone_lengths, g, frames: int = 0):
        """codes (B, n_q, T') at 25 Hz, phonemes (B, P) -> m_p, logs_p (B, inter, T),
        mask (B, 1, T): T = 2 T' frames at 50 Hz, or ``frames`` (the code sequence
        stretched linearly to it: speech slower or faster)."""
        vectors = sum(book(codes[:, i]) for i, book in enumerate(self.codebooks))
        x = self.code_in(vectors).repeat_interleave(2, dim=1)  # (B, T, d) at 50 Hz
        if frames and frames != x.shape[1]:
            x = F.interpolate(x.transpose(1, 2), size=frames, mode="linear").transpose(1, 2)
        t = x.shape[1]
        frame_mask = key_padding_mask(frame_lengths, t)
        for block in self.code_blocks:
            x = block(x, frame_mask)
        p = self.phone_emb(phonemes)
        phone_mask = key_padding_mask(phone_lengths, p.shape[1])
        for block in self.phone_blocks:
            p = block(p, phone_mask)
        x = self.mrte(x, p, phone_mask) + self.style(g.transpose(1, 2))
        for block in self.post_blocks:
            x = block(x, frame_mask)
        mask = sequence_mask(frame_lengths, t).to(x.dtype)
        m, logs = self.proj(x).transpose(1, 2).chunk(2, dim=1)
        return m * mask, logs * mask, mask


class SynthesizerTrn(nn.Module):
    config_class = SoVITSConfig

    def __init__(self, config: SoVITSConfig):
        super().__init__()
        self.config = c = config
        self.style = StyleEncoder(c)
        self.prior = PriorEncoder(c)
        self.posterior = PosteriorEncoder(c)
        self.flow = Flow(c)
        self.decoder = Generator(c)

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        """Training pass. ``batch``: codes (B, n_q, T'), spec (B, F, T = 2T'),
        frame_lengths (B,), phonemes (B, P), phone_lengths (B,), ref_mel (B, n_mels, R),
        ref_lengths (B,)."""
        c = self.config
        g = self.style(batch["ref_mel"], batch["ref_lengths"])
        lengths = batch["frame_lengths"]
        z, m_q, logs_q, mask = self.posterior(batch["spec"], lengths, g, generator)
        z_p = self.flow(z, mask, g)
        m_p, logs_p, _ = self.prior(
            batch["codes"], lengths, batch["phonemes"], batch["phone_lengths"], g
        )
        starts = random_segments(lengths, c.segment_frames, generator)
        z_slice = slice_segments(z, starts, c.segment_frames)
        wav = self.decoder(z_slice, g)
        return {
            "wav": wav,
            "starts": starts,
            "z_p": z_p,
            "m_p": m_p,
            "logs_p": logs_p,
            "logs_q": logs_q,
            "mask": mask,
        }

    @torch.no_grad()
    def infer(
        self,
        codes: torch.Tensor,
        phonemes: torch.Tensor,
        ref_mel: torch.Tensor,
        noise_scale: float = 0.5,
        generator: torch.Generator | None = None,
        speed: float = 1.0,
    ) -> torch.Tensor:
        """One utterance: (1, n_q, T') codes, (1, P) phonemes (``[<bos>]`` alone: no text),
        (1, n_mels, R) reference log-mel -> (2 T' x hop / speed,) waveform."""
        dev = codes.device
        g = self.style(ref_mel, torch.tensor([ref_mel.shape[2]], device=dev))
        frames = max(1, round(2 * codes.shape[2] / speed))
        lengths = torch.tensor([frames], device=dev)
        phone_lengths = torch.tensor([phonemes.shape[1]], device=dev)
        m_p, logs_p, mask = self.prior(codes, lengths, phonemes, phone_lengths, g, frames)
        noise = torch.randn(m_p.shape, generator=generator).to(dev, m_p.dtype)
        z_p = (m_p + noise * torch.exp(logs_p) * noise_scale) * mask
        z = self.flow(z_p, mask, g, reverse=True)
        return self.decoder(z * mask, g)[0, 0]


def random_segments(lengths: torch.Tensor, frames: int, generator=None) -> torch.Tensor:
    """(B,) start frames of a ``frames``-long window inside each valid length."""
    room = (lengths - frames).clamp(min=0) + 1
    u = torch.rand(len(lengths), generator=generator).to(lengths.device)
    return (u * room).long()


def slice_segments(x: torch.Tensor, starts: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, T) -> (B, C, size) windows from ``starts`` (zero past the end)."""
    x = F.pad(x, (0, size))
    return torch.stack([x[b, :, s : s + size] for b, s in enumerate(starts.tolist())])


# --------------------------------------------------------------------------- discriminators


def _scores(convs: nn.ModuleList, post: nn.Module, x: torch.Tensor):
    """A discriminator's (flattened scores, every layer's activations)."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), 0.1)
        features.append(x)
    x = post(x)
    features.append(x)
    return x.flatten(1), features


class PeriodDiscriminator(nn.Module):
    """Folds the waveform into (T / p, p) and runs 2-D convs along time."""

    def __init__(self, period: int, ch: int):
        super().__init__()
        self.period = period
        widths = [1, ch, 2 * ch, 4 * ch, 8 * ch, 8 * ch]
        self.convs = nn.ModuleList(
            weight_norm(
                nn.Conv2d(widths[i], widths[i + 1], (5, 1), (3 if i < 4 else 1, 1), padding=(2, 0))
            )
            for i in range(5)
        )
        self.post = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, x):
        b, c, t = x.shape
        if t % self.period:
            x = F.pad(x, (0, self.period - t % self.period), mode="reflect")
        return _scores(self.convs, self.post, x.view(b, c, -1, self.period))


class ScaleDiscriminator(nn.Module):
    """Grouped strided 1-D convs on the raw waveform (HiFi-GAN's MSD at scale 1)."""

    def __init__(self, ch: int):
        super().__init__()
        specs = [
            (1, ch, 15, 1, 1),
            (ch, 4 * ch, 41, 4, 4),
            (4 * ch, 8 * ch, 41, 4, 16),
            (8 * ch, 8 * ch, 41, 4, 16),
            (8 * ch, 8 * ch, 5, 1, 1),
        ]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv1d(i, o, k, s, groups=g, padding=k // 2)) for i, o, k, s, g in specs
        )
        self.post = weight_norm(nn.Conv1d(8 * ch, 1, 3, padding=1))

    def forward(self, x):
        return _scores(self.convs, self.post, x)


class MultiDiscriminator(nn.Module):
    """One scale discriminator + period discriminators for 2, 3, 5, 7, 11."""

    def __init__(self, ch: int = 16, periods: tuple[int, ...] = (2, 3, 5, 7, 11)):
        super().__init__()
        self.discs = nn.ModuleList(
            [ScaleDiscriminator(ch)] + [PeriodDiscriminator(p, ch) for p in periods]
        )

    def forward(self, real, fake):
        out = [(d(real), d(fake)) for d in self.discs]
        return (
            [r[0] for r, _ in out],
            [f[0] for _, f in out],
            [r[1] for r, _ in out],
            [f[1] for _, f in out],
        )


# --------------------------------------------------------------------------- losses


def discriminator_loss(real_scores, fake_scores) -> torch.Tensor:
    """LSGAN: real -> 1, fake -> 0."""
    return sum(
        ((1 - r) ** 2).mean() + (f**2).mean() for r, f in zip(real_scores, fake_scores, strict=True)
    )


def generator_loss(fake_scores) -> torch.Tensor:
    return sum(((1 - f) ** 2).mean() for f in fake_scores)


def feature_loss(real_features, fake_features) -> torch.Tensor:
    """L1 between the discriminators' inner activations on real and generated audio (x 2)."""
    loss = 0.0
    for real, fake in zip(real_features, fake_features, strict=True):
        for r, f in zip(real, fake, strict=True):
            loss = loss + (r.detach() - f).abs().mean()
    return 2 * loss


def kl_loss(z_p, logs_q, m_p, logs_p, mask) -> torch.Tensor:
    """KL(q(z) || p(z)) evaluated at the flowed posterior sample (VITS)."""
    kl = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2.0 * logs_p)
    return (kl * mask).sum() / mask.sum()
