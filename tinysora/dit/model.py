"""Spacetime diffusion transformer (DiT) over latent patch tokens.

Per block (DiT's adaLN-Zero, PixArt's cross-attention, ViViT's factorised attention):

    c = timestep embedding, per token (B, N, D) or shared (B, 1, D)
    x += gate1(c) * SelfAttn(modulate(norm(x), c))      full: all tokens of a clip
                                                         factorized: same frame, then
    [x += gate2(c) * TemporalAttn(modulate(norm(x), c))]   same place across frames
    x += CrossAttn(norm(x), text, text mask)
    x += gate3(c) * MLP(modulate(norm(x), c))

Positions enter only through 3D RoPE on (t, h, w), so unseen sizes and lengths
work. The modulation is computed from a per-token timestep, so some tokens can be
given clean (t = 0) while others are generated. Packing many clips into one
sequence needs only ``segments`` (clip id per token) and ``text_segments``: the
masks are built from them. Every modulation and the final layer start at zero,
so a fresh block is the identity and a fresh model predicts zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from tinysora.config import Config, ConfigError
from tinysora.diffusion.flow import given_times
from tinysora.dit.patchify import grid_positions, patchify, unpatchify
from tinysora.nn.attention import Attention, rope_angles, rope_table, segment_mask
from tinysora.nn.layers import MLP, RMSNorm, TimestepEmbedder, modulate


@dataclass
class DiTConfig(Config):
    in_channels: int = 8  # latent channels of the VAE
    patch: tuple[int, int, int] = (1, 2, 2)
    width: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    text_dim: int = 384  # all-MiniLM-L6-v2 hidden size
    attention: Literal["full", "factorized"] = "full"
    rope_theta: float = 100.0
    # 0: temporal positions count latent frames; > 0: each clip spans [0, time_span]
    # (clip time; see grid_positions)
    time_span: float = 0.0
    # transformer layers over the projected text tokens before any block reads them
    # (HunyuanVideo's token refiner: each word's state can take in its neighbours', e.g.
    # a shape word its own color); 0 = none
    text_refiner: int = 0

    @classmethod
    def from_dict(cls, data, *, where: str = "") -> DiTConfig:
        """Also takes ``preset`` (a name of :data:`PRESETS`): the preset's fields, then the
        other keys override them (a recipe's ``[model] preset = "S/2"``)."""
        if isinstance(data, dict) and "preset" in data:
            data = dict(data)
            name = data.pop("preset")
            data = {**preset(name).to_dict(), **data}
        return super().from_dict(data, where=where)


def _tiny() -> DiTConfig:
    return DiTConfig(width=192, depth=6, heads=3)


def _xsmall() -> DiTConfig:
    return DiTConfig(width=256, depth=8, heads=4)


def _small() -> DiTConfig:
    return DiTConfig(width=384, depth=12, heads=6)


def _base() -> DiTConfig:
    return DiTConfig(width=768, depth=12, heads=12)


# Parameter counts with in_channels 8, patch (1, 2, 2), text_dim 384:
# tiny 5.1M (factorized 6.7M), XS/2 12.0M, S/2 39.7M (52.2M), B/2 158.2M (207.8M).
PRESETS = {"tiny": _tiny, "XS/2": _xsmall, "S/2": _small, "B/2": _base}


def preset(name: str) -> DiTConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown DiT preset {name!r}; use one of {', '.join(PRESETS)}")
    return PRESETS[name]()


class RefinerBlock(nn.Module):
    """A pre-norm transformer layer over the text tokens (1D RoPE on the token index).
    Its output projections start at zero, so a fresh refiner is the identity: a trained
    model gains one without changing what it computes."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.attn = Attention(d, heads)
        self.mlp = MLP(d, 4 * d)
        for layer in (self.attn.out, self.mlp.fc2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, text, mask, rope) -> torch.Tensor:
        text = text + self.attn(self.norm1(text), mask=mask, rope=rope)
        return text + self.mlp(self.norm2(text))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.width
        self.factorized = cfg.attention == "factorized"
        self.norm1 = RMSNorm(d, affine=False)
        self.attn = Attention(d, cfg.heads)
        if self.factorized:
            self.norm_t = RMSNorm(d, affine=False)
            self.attn_t = Attention(d, cfg.heads)
        self.norm_x = RMSNorm(d)
        self.cross = Attention(d, cfg.heads, kv_dim=d)
        nn.init.zeros_(self.cross.out.weight)  # ungated residual: start at zero (PixArt)
        nn.init.zeros_(self.cross.out.bias)
        self.norm2 = RMSNorm(d, affine=False)
        self.mlp = MLP(d, int(d * cfg.mlp_ratio))
        self.n_mod = 9 if self.factorized else 6
        self.modulation = nn.Linear(d, self.n_mod * d)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x, c, text, masks: dict, rope, grid=None, cross_probs: bool = False):
        """x (B, N, D); c: SiLU'd timestep embedding, (B, 1, D) shared by a row's tokens
        or a :class:`PerToken` pair; text (B, L, D).

        ``grid`` (gt, gh, gw): the tokens of each row are one clip in raster order, so
        factorized attention runs on reshaped groups (frames, then patch columns)
        instead of masking the full N x N attention; None = use the masks.
        ``cross_probs``: also return the cross-attention probabilities (B, h, N, L).
        """
        mods = _modulation(self.modulation, c).chunk(self.n_mod, dim=-1)  # (B, N or 1, D) each
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = mods[:6]
        h = modulate(self.norm1(x), shift_attn, scale_attn)
        if self.factorized:
            shift_time, scale_time, gate_time = mods[6:]
        if self.factorized and grid is not None:
            x = x + gate_attn * _grouped(self.attn, h, rope, grid[0], across_time=False)
            h = modulate(self.norm_t(x), shift_time, scale_time)
            x = x + gate_time * _grouped(self.attn_t, h, rope, grid[0], across_time=True)
        else:
            x = x + gate_attn * self.attn(h, mask=masks["self"], rope=rope)
            if self.factorized:
                h = modulate(self.norm_t(x), shift_time, scale_time)
                x = x + gate_time * self.attn_t(h, mask=masks["temporal"], rope=rope)
        cross = self.cross(self.norm_x(x), context=text, mask=masks["text"], probs=cross_probs)
        cross, probs = cross if cross_probs else (cross, None)
        x = x + cross
        h = modulate(self.norm2(x), shift_mlp, scale_mlp)
        x = x + gate_mlp * self.mlp(h)
        return (x, probs) if cross_probs else x


@dataclass
class PerToken:
    """Per-token conditioning stored once per distinct flow time: embeddings (K, D) of
    the K distinct times and ``index`` (B, N) into them. Tokens take few distinct times
    (a clip's time, or 0 for tokens given clean), so modulation Linears run on K rows,
    not on every token, and their outputs are gathered."""

    values: torch.Tensor
    index: torch.Tensor


def _modulation(layer: nn.Linear, c) -> torch.Tensor:
    if isinstance(c, PerToken):
        return layer(c.values)[c.index]  # (B, N, out)
    return layer(c)


def _grouped(attn, x: torch.Tensor, rope: torch.Tensor, frames: int, across_time: bool):
    """Attention within each frame (all patches of one t) or, ``across_time``, within
    each patch column (one (h, w) over all t); x (B, N, D) in (t, h, w) raster order."""
    b, n, d = x.shape
    a = rope.expand(b, -1, -1)
    x, a = x.view(b, frames, n // frames, d), a.reshape(b, frames, n // frames, -1)
    if across_time:
        x, a = x.transpose(1, 2), a.transpose(1, 2)  # (B, hw, T, .)
    groups, size = x.shape[1], x.shape[2]
    y = attn(x.reshape(b * groups, size, d), rope=a.reshape(b * groups, size, -1))
    y = y.view(b, groups, size, d)
    return (y.transpose(1, 2) if across_time else y).reshape(b, n, d)


class DiT(nn.Module):
    config_class = DiTConfig  # what ``io.checkpoint.load_pretrained`` reads config.json into

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.config = cfg
        d = cfg.width
        patch_dim = cfg.in_channels * cfg.patch[0] * cfg.patch[1] * cfg.patch[2]
        self.x_embed = nn.Linear(patch_dim, d)
        self.t_embed = TimestepEmbedder(d)
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU())
        self.refiner = nn.ModuleList([RefinerBlock(d, cfg.heads) for _ in range(cfg.text_refiner)])
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.depth)])
        self.norm_out = RMSNorm(d, affine=False)
        self.out_modulation = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, patch_dim)
        for layer in (self.out_modulation, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def compile_blocks(self) -> None:
        """torch.compile every block in place (one graph serves all of them; weights and
        state_dict keys unchanged). The elementwise work of norms, modulation, RoPE and
        GELU is fused: on this CPU an XS/2 training step's fwd+bwd takes 0.24 s instead of
        0.42 s after ~15 s of compiling."""
        for block in self.blocks:
            block.compile()

    def forward_tokens(
        self,
        tokens: torch.Tensor,
        t: torch.Tensor,
        positions: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        segments: torch.Tensor | None = None,
        text_segments: torch.Tensor | None = None,
        grid: tuple[int, int, int] | None = None,
        cross_probs: tuple[int, ...] = (),
    ):
        """Velocity for patch tokens.

        tokens (B, N, patch_dim); t (B,) or per token (B, N); positions (N, 3) or
        (B, N, 3); text (B, L, text_dim) with text_mask (B, L) True = real token;
        segments (B, N) / text_segments (B, L): clip ids when several clips are packed
        into one sequence (None = one clip per row); grid (gt, gh, gw) when every row
        is one whole clip in raster order (lets factorized attention skip the masks).
        Returns (B, N, patch_dim); with ``cross_probs`` (block indices), also the list of
        those blocks' cross-attention probabilities (B, heads, N, L) (grounding losses).
        """
        b, n, _ = tokens.shape
        grouped = self.config.attention == "factorized" and grid is not None
        if grouped and (segments is not None or n != grid[0] * grid[1] * grid[2]):
            raise ValueError("grid is only for rows that hold one whole clip (no segments)")
        if positions.ndim == 2:
            positions = positions[None].expand(b, -1, -1)  # (B, N, 3)
        masks = self._masks(positions, text_mask, segments, text_segments, grouped)
        head_dim = self.config.width // self.config.heads
        rope = rope_table(rope_angles(positions, head_dim, self.config.rope_theta))
        if t.ndim == 1:  # one time per row
            c = nn.functional.silu(self.t_embed(t[:, None]))  # (B, 1, D)
        else:  # per token (B, N)
            values, index = torch.unique(t, return_inverse=True)
            c = PerToken(nn.functional.silu(self.t_embed(values)), index)
        x = self.x_embed(tokens)
        text = self.text_proj(text)
        if len(self.refiner):
            text = self._refine(text, text_mask, text_segments)
        probs = []
        for i, block in enumerate(self.blocks):
            if i in cross_probs:
                x, p = block(x, c, text, masks, rope, grid if grouped else None, cross_probs=True)
                probs.append(p)
            else:
                x = block(x, c, text, masks, rope, grid if grouped else None)
        shift, scale = _modulation(self.out_modulation, c).chunk(2, dim=-1)
        out = self.out(modulate(self.norm_out(x), shift, scale))
        return (out, probs) if cross_probs else out

    def _refine(self, text, text_mask, text_segments) -> torch.Tensor:
        """The refiner over text (B, L, D): a token sees the real tokens of its own caption
        (and itself, so padding rows are never empty)."""
        b, n, _ = text.shape
        mask = text_mask[:, None, :] | torch.eye(n, dtype=torch.bool, device=text.device)
        if text_segments is not None:
            mask = mask & (text_segments[:, :, None] == text_segments[:, None, :])
        positions = torch.zeros(n, 3, device=text.device)
        positions[:, 0] = torch.arange(n, device=text.device)
        head_dim = self.config.width // self.config.heads
        rope = rope_table(rope_angles(positions, head_dim, self.config.rope_theta))[None]
        for layer in self.refiner:
            text = layer(text, mask[:, None], rope)
        return text

    def _masks(self, positions, text_mask, segments, text_segments, grouped=False) -> dict:
        """Boolean attention masks (True = attend), each (B, 1, Nq, Nk) or None."""
        same_clip = segment_mask(segments) if segments is not None else None
        text = text_mask[:, None, None, :]  # (B, 1, 1, L)
        if segments is not None and text_segments is not None:
            text = text & (segments[:, :, None] == text_segments[:, None, :])[:, None]
        masks = {"self": same_clip, "temporal": None, "text": text}
        if self.config.attention == "factorized" and not grouped:
            same_t = (positions[:, :, None, 0] == positions[:, None, :, 0])[:, None]
            same_hw = (positions[:, :, None, 1:] == positions[:, None, :, 1:]).all(-1)[:, None]
            masks["self"] = same_t if same_clip is None else same_t & same_clip
            masks["temporal"] = same_hw if same_clip is None else same_hw & same_clip
        return masks

    def forward(self, latents, t, text, text_mask, given=None, clean=None) -> torch.Tensor:
        """Velocity for latents (B, C, T, H, W) at flow time t (B,) -> (B, C, T, H, W);
        text (B, L, text_dim) with text_mask (B, L) True = real token.

        Conditioning: ``given`` (B or 1, 1, T, H, W) bool marks latents given clean,
        with their values in ``clean`` (broadcastable to ``latents``; None = already in
        ``latents``). Given latents enter at flow time 0 (:func:`given_times`) and get
        velocity 0, so every sampler keeps them as they are. ``given`` must be constant
        over each patch.
        """
        patch = self.config.patch
        if given is not None and clean is not None:
            latents = torch.where(given, clean, latents)
        tokens, grid = patchify(latents, patch)
        if given is not None:
            given_tokens = patchify(given.expand_as(latents).float(), patch)[0][..., 0] > 0
            t = given_times(t, given_tokens)  # (B, N)
        positions = grid_positions(grid, self.config.time_span).to(latents.device)
        v = self.forward_tokens(tokens, t, positions, text, text_mask, grid=grid)
        v = unpatchify(v.float() if given is not None else v, grid, patch)
        return v if given is None else torch.where(given, 0.0, v)
