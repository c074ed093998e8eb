"""Content codes: a small HuBERT-style self-supervised encoder trained here, and the
residual VQ that turns its features into GPT-SoVITS's "semantic" codes.

* ``ContentEncoder``: log-mel at 50 frames/s (per-utterance normalised) -> linear ->
  convolutional position embedding -> pre-LN transformer. Trained by masked prediction
  (HuBERT): spans of input frames are replaced by a learned mask vector and the model
  predicts the k-means unit of every masked frame; iteration 1's units are k-means of
  MFCCs, iteration 2's of iteration 1's own features.
* ``SemanticCodec``: a stride-2 conv (50 -> 25 Hz) and a residual VQ (one codebook of
  1024 by default: k-means init, EMA updates with decay 0.99, dead-code restart,
  commitment loss), pretrained as an autoencoder of the content features (a transposed
  conv maps the codes back to 50 Hz) and then frozen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tinysora.config import Config
from tinysora.nn.attention import Attention, key_padding_mask


@dataclass
class ContentConfig(Config):
    n_mels: int = 80
    dim: int = 256
    layers: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    pos_kernel: int = 31  # the convolutional position embedding's width (frames)
    n_units: int = 100  # the k-means targets of the current iteration
    feature_layer: int = 4  # whose output the next iteration's k-means and the codec read
    mask_start: float = 0.065  # HuBERT: a frame starts a masked span with this probability
    mask_span: int = 10  # frames per span
    # ContentVec-style voice perturbation of the training input (targets stay the clean
    # audio's units): each clip's spectrum is scaled in frequency by a factor drawn from
    # [1 / (1 + warp), 1 + warp] (pitch and formants together, like a smaller / larger
    # speaker); 0 = off
    warp: float = 0.0


@dataclass
class CodecConfig(Config):
    dim: int = 256  # the content features' width
    code_dim: int = 256
    codebook_size: int = 1024
    n_quantizers: int = 1
    ema_decay: float = 0.99
    commitment: float = 0.25
    dead_threshold: float = 0.03  # EMA usage below this many vectors a step -> restart


def normalize_mel(mel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Per-utterance mean / variance normalisation of (B, n_mels, T) log-mels over the
    valid frames: removes level and channel tilt, part of what tells voices apart."""
    if lengths is None:
        mean = mel.mean(dim=2, keepdim=True)
        std = mel.std(dim=2, keepdim=True, correction=0)
    else:
        valid = torch.arange(mel.shape[2], device=mel.device)[None] < lengths[:, None]
        w = valid[:, None, :].float()
        count = w.sum(dim=2, keepdim=True).clamp(min=1)
        mean = (mel * w).sum(dim=2, keepdim=True) / count
        std = (((mel - mean) ** 2 * w).sum(dim=2, keepdim=True) / count).sqrt()
    return (mel - mean) / (std + 1e-5)


class Block(Attention):
    """Pre-LN transformer block with a key-padding mask. It is its attention (the fused
    ``qkv`` and ``proj`` sit at the block's level, as the bundled weights name them)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__(dim, heads, qk_norm=False, fused=True, out_name="proj")
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + super().forward(self.norm1(x), mask=mask, sdpa=True)
        return x + self.mlp(self.norm2(x))


class ContentEncoder(nn.Module):
    def __init__(self, config: ContentConfig):
        super().__init__()
        self.config = c = config
        self.inp = nn.Linear(c.n_mels, c.dim)
        self.mask_vector = nn.Parameter(torch.randn(c.dim) * 0.02)
        self.pos = nn.Conv1d(c.dim, c.dim, c.pos_kernel, padding=c.pos_kernel // 2, groups=16)
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.n_units)

    def forward(
        self,
        mel: torch.Tensor,
        lengths: torch.Tensor | None = None,
        masked: torch.Tensor | None = None,
        upto: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, n_mels, T) log-mel -> (features (B, T, D) after block ``upto`` (default:
        all, then normed), unit logits (B, T, n_units) or None when stopped early).
        ``masked`` (B, T) bool: frames replaced by the mask vector."""
        x = self.inp(normalize_mel(mel, lengths).transpose(1, 2))  # (B, T, D)
        if masked is not None:
            x = torch.where(masked[..., None], self.mask_vector.to(x.dtype), x)
        mask = key_padding_mask(lengths, x.shape[1])
        if mask is not None:  # padded frames are zeros, as past the end of a lone clip
            x = x * mask[:, 0, 0, :, None]
        x = x + F.gelu(self.pos(x.transpose(1, 2))).transpose(1, 2)
        x = self.run_blocks(x, mask, 0, len(self.blocks) if upto is None else upto)
        if upto is not None:
            return x, None
        x = self.norm(x)
        return x, self.head(x)

    def run_blocks(self, x: torch.Tensor, mask, first: int, last: int) -> torch.Tensor:
        """Blocks ``first`` .. ``last - 1`` on (B, T, D) hidden states."""
        for block in self.blocks[first:last]:
            x = block(x, mask)
        return x

    def finish(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """Unit logits from the features of ``feature_layer`` (what ``forward`` would give)."""
        x = self.run_blocks(
            x, key_padding_mask(lengths, x.shape[1]), self.config.feature_layer, len(self.blocks)
        )
        return self.head(self.norm(x))

    @torch.no_grad()
    def features(self, mel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) features of ``feature_layer`` (what the codec and k-means read)."""
        return self.forward(mel, lengths, upto=self.config.feature_layer)[0]


def warp_mel(mel: torch.Tensor, factors: torch.Tensor, f_max: float = 8000.0) -> torch.Tensor:
    """(B, n_mels, T) log-mel with each clip's frequency axis scaled by ``factors`` (B,):
    band m takes the value of the band whose centre frequency is f_m / factor (linear
    interpolation between bands; past the top band, the top band). Time is untouched,
    so frame labels stay aligned."""
    from tinysora.voice.audio import _hz_to_mel, _mel_to_hz

    n = mel.shape[1]
    edges = _mel_to_hz(torch.linspace(0, float(_hz_to_mel(f_max)), n + 2).numpy())
    centres = torch.from_numpy(edges[1:-1]).float()  # (n_mels,) Hz
    source_hz = centres[None] / factors[:, None]  # (B, n_mels)
    pos = torch.from_numpy(_hz_to_mel(source_hz.numpy())).float()
    pos = (pos / float(_hz_to_mel(f_max)) * (n + 1) - 1).clamp(0, n - 1)  # fractional band
    lo = pos.floor().long().clamp(max=n - 2)
    frac = (pos - lo)[..., None]  # (B, n_mels, 1)
    take = lambda idx: torch.gather(mel, 1, idx[..., None].expand(-1, -1, mel.shape[2]))  # noqa: E731
    return take(lo) * (1 - frac) + take(lo + 1) * frac


def span_mask(
    shape: tuple[int, int], start: float, span: int, generator: torch.Generator
) -> torch.Tensor:
    """(B, T) bool: each frame starts a ``span``-frame masked run with prob. ``start``."""
    b, t = shape
    starts = torch.rand(b, t, generator=generator) < start
    masked = torch.zeros(b, t + span, dtype=torch.bool)
    for k in range(span):
        masked[:, k : k + t] |= starts
    return masked[:, :t]


# --------------------------------------------------------------------------- k-means


def kmeans(
    x: torch.Tensor, k: int, iters: int = 20, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(N, D) float -> (k, D) centroids: k-means++ seeding, then Lloyd iterations; an
    empty cluster takes the point farthest from its centroid."""
    x = x.float()
    g = generator or torch.Generator().manual_seed(0)
    n = len(x)
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}")
    centroids = x[torch.randint(n, (1,), generator=g)]
    d2 = torch.cdist(x, centroids).squeeze(1) ** 2
    for _ in range(1, k):
        pick = torch.multinomial(d2 / d2.sum() if d2.sum() > 0 else torch.ones(n), 1, generator=g)
        centroids = torch.cat([centroids, x[pick]])
        d2 = torch.minimum(d2, (torch.cdist(x, x[pick]).squeeze(1)) ** 2)
    for _ in range(iters):
        assign, dist = nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            far = dist.topk(int(empty.sum())).indices
            centroids[empty] = x[far]
    return centroids


def nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536):
    """(N,) index of the nearest centroid and (N,) its squared distance."""
    idx, dist = [], []
    c2 = (centroids**2).sum(1)
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk].float()
        d = (part**2).sum(1, keepdim=True) - 2 * part @ centroids.T + c2[None]
        m = d.min(dim=1)
        idx.append(m.indices)
        dist.append(m.values.clamp(min=0))
    return torch.cat(idx), torch.cat(dist)


def mfcc(mel: torch.Tensor, n: int = 13) -> torch.Tensor:
    """(B, n_mels, T) log-mel -> (B, 3n, T): DCT-II cepstra + deltas + delta-deltas."""
    m = mel.shape[1]
    k = torch.arange(m, dtype=mel.dtype, device=mel.device)
    basis = torch.cos(math.pi / m * (k[None] + 0.5) * torch.arange(n, device=mel.device)[:, None])
    c = torch.einsum("nm,bmt->bnt", basis.to(mel.dtype), mel)
    d1 = _delta(c)
    return torch.cat([c, d1, _delta(d1)], dim=1)


def _delta(c: torch.Tensor) -> torch.Tensor:
    p = F.pad(c, (2, 2), mode="replicate")
    return (2 * (p[..., 4:] - p[..., :-4]) + (p[..., 3:-1] - p[..., 1:-3])) / 10.0


# --------------------------------------------------------------------------- RVQ


class VectorQuantizer(nn.Module):
    """One codebook with EMA updates (no codebook gradient), dead-code restart."""

    def __init__(self, size: int, dim: int, decay: float, dead_threshold: float):
        super().__init__()
        self.size, self.decay, self.dead_threshold = size, decay, dead_threshold
        self.register_buffer("codebook", torch.zeros(size, dim))
        self.register_buffer("ema_sum", torch.zeros(size, dim))
        self.register_buffer("ema_count", torch.zeros(size))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def init_from(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """k-means initialisation on (N, dim) vectors."""
        self.codebook.copy_(kmeans(x, self.size, iters=10, generator=generator))
        self.ema_sum.copy_(self.codebook)
        self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """(N, dim) -> (quantized (N, dim), codes (N,)); EMA update in training."""
        codes, _ = nearest(x.detach(), self.codebook)
        q = self.codebook[codes]
        if self.training:
            self._update(x.detach().float(), codes, generator)
        return q, codes

    @torch.no_grad()
    def _update(self, x: torch.Tensor, codes: torch.Tensor, generator) -> None:
        onehot_count = torch.bincount(codes, minlength=self.size).float()
        sums = torch.zeros_like(self.ema_sum).index_add_(0, codes, x)
        self.ema_count.mul_(self.decay).add_(onehot_count, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.ema_count.sum()
        count = (self.ema_count + 1e-5) / (n + self.size * 1e-5) * n  # Laplace smoothing
        self.codebook.copy_(self.ema_sum / count[:, None])
        dead = self.ema_count < self.dead_threshold
        if dead.any():  # restart: dead codes take random vectors of this batch
            g = generator or torch.Generator().manual_seed(int(n.item()) % 2**31)
            pick = torch.randint(len(x), (int(dead.sum()),), generator=g)
            self.codebook[dead] = x[pick]
            self.ema_sum[dead] = x[pick]
            self.ema_count[dead] = 1.0


class SemanticCodec(nn.Module):
    """Content features (B, T, dim) at 50 Hz <-> codes (B, n_q, T / 2) at 25 Hz."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        self.config = c = config
        self.down = nn.Conv1d(c.dim, c.code_dim, kernel_size=2, stride=2)
        self.quantizers = nn.ModuleList(
            VectorQuantizer(c.codebook_size, c.code_dim, c.ema_decay, c.dead_threshold)
            for _ in range(c.n_quantizers)
        )
        self.up = nn.ConvTranspose1d(c.code_dim, c.dim, kernel_size=2, stride=2)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) -> (B, T // 2, code_dim)."""
        t = features.shape[1] // 2 * 2
        return self.down(features[:, :t].transpose(1, 2)).transpose(1, 2)

    def quantize(self, z: torch.Tensor, generator=None):
        """(B, T', code_dim) -> (quantized (B, T', code_dim), codes (B, n_q, T'))."""
        b, t, d = z.shape
        residual = z.reshape(b * t, d)
        total = torch.zeros_like(residual)
        codes = []
        for vq in self.quantizers:
            q, c = vq(residual, generator)
            total = total + q
            residual = residual - q
            codes.append(c.view(b, t))
        return total.view(b, t, d), torch.stack(codes, dim=1)

    @torch.no_grad()
    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) content features -> (B, n_q, T // 2) codes."""
        return self.quantize(self.project(features))[1]

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, n_q, T') codes -> (B, T', code_dim): the sum of their codebook vectors."""
        return sum(vq.codebook[codes[:, i]] for i, vq in enumerate(self.quantizers))

    def forward(self, features: torch.Tensor, generator=None):
        """Autoencode: (reconstruction (B, T, dim), codes, commitment loss)."""
        z = self.project(features)
        q, codes = self.quantize(z, generator)
        commit = F.mse_loss(z, q.detach())
        q = z + (q - z).detach()  # straight-through
        recon = self.up(q.transpose(1, 2)).transpose(1, 2)
        return recon, codes, self.config.commitment * commit


def perplexity(codes: torch.Tensor, size: int) -> float:
    """exp(entropy) of the code histogram: the number of equally used codes it equals."""
    p = torch.bincount(codes.flatten(), minlength=size).float()
    p = p / p.sum()
    return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))


@dataclass
class ContentModelConfig(Config):
    """What ``voice/content/config.json`` holds: the encoder and the codec."""

    encoder: ContentConfig = field(default_factory=ContentConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)


class ContentModel(nn.Module):
    """The frozen encoder + codec, saved together as ``content/``."""

    config_class = ContentModelConfig

    def __init__(self, config: ContentModelConfig):
        super().__init__()
        self.config = config
        self.encoder = ContentEncoder(config.encoder)
        self.codec = SemanticCodec(config.codec)

    @torch.no_grad()
    def codes(self, mel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n_mels, T) log-mel at 50 Hz -> (B, n_q, T // 2) codes at 25 Hz."""
        return self.codec.encode(self.encoder.features(mel, lengths))
