"""The one multi-head attention of every model (the DiT, the voice's content encoder,
SoVITS and the GPT stage), and the 3D rotary positions of spacetime tokens.

Masks are boolean, True = may attend, shaped to broadcast to (B, heads, Nq, Nk).
Packing many clips into one sequence needs only :func:`segment_mask` (tokens
attend within their own clip) combined with the masks below; padded sequences
(speech) need :func:`key_padding_mask`.
"""

from __future__ import annotations

import torch
from torch import nn


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Head-dim channels rotated by t, h and w: about 1/4 for time, 3/8 each for space."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")
    dt = 2 * max(1, head_dim // 8)
    dh = 2 * ((head_dim - dt) // 4)
    return dt, dh, head_dim - dt - dh


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """positions (..., N, 3) (t, h, w) -> rotation angles (..., N, head_dim / 2)."""
    parts = []
    for axis, d in enumerate(rope_split(head_dim)):
        freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # (d/2,)
        parts.append(positions[..., axis, None].float() * freqs)  # (..., N, d/2)
    return torch.cat(parts, dim=-1)


def rope_table(angles: torch.Tensor) -> torch.Tensor:
    """Angles (..., N, hd/2) -> the table apply_rope uses, (..., N, 2 hd) = [cos, cos, sin, sin]
    (computed once per forward, shared by every block)."""
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos, sin, sin], dim=-1)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[i], x[i + hd/2]) of x (B, heads, N, hd) by angle i, with the
    table (B or 1, N, 2 hd) of :func:`rope_table`; computed in x's dtype (bf16 in training:
    half the memory traffic of fp32, no strided copies)."""
    cos, sin = table[:, None].to(x.dtype).chunk(2, dim=-1)  # (B, 1, N, hd) each
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


# Self-attention over at least this many keys goes to SDPA (see attend)
SDPA_MIN_TOKENS = 256


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    sdpa: bool = False,
    probs: bool = False,
):
    """softmax(q k^T / sqrt(d) + mask) v: written out with two matmuls (softmax in fp32),
    or with ``F.scaled_dot_product_attention`` when ``sdpa``. ``probs``: also return the
    attention probabilities (B, h, Nq, Nk) fp32 (always the written-out form).

    Measured on this CPU (torch 2.13, bf16 fwd+bwd of the XS/2 DiT, compiled blocks):
    for 80-token clips (batch 32) the explicit form takes 0.29 s and SDPA 0.53 s (its
    CPU backward is slow at short lengths); for packed rows of 1024 tokens with a
    block-diagonal mask (3 rows) the explicit form takes 1.09 s and SDPA 0.78 s.
    ``sdpa`` must only be set when no query row is fully masked (SDPA gives NaN there),
    as in self-attention, where a token always sees itself.
    """
    if sdpa and not probs:
        return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (B, h, Nq, Nk)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores.float(), dim=-1)
    out = weights.to(v.dtype) @ v
    return (out, weights) if probs else out


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """segment ids (B, N) -> (B, 1, N, N): a token sees only tokens of its own clip."""
    return (segments[:, :, None] == segments[:, None, :])[:, None]


def key_padding_mask(lengths: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """Lengths (B,) of padded sequences -> (B, 1, 1, N) bool, True where a key is real
    (None for None: nothing is padded)."""
    if lengths is None:
        return None
    return (torch.arange(n, device=lengths.device)[None] < lengths[:, None])[:, None, None, :]


class KVCache:
    """One layer's keys and values (B, h, N, hd) of the positions decoded so far; each
    attention call given the cache appends its new positions (autoregressive sampling)."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v


class Attention(nn.Module):
    """Multi-head self- or cross-attention with optional RoPE, a boolean mask, a KV cache
    and the attention probabilities on request.

    Projections: ``q`` and ``kv`` (self- or cross-attention over a context of any width,
    the DiT's), or with ``fused`` one ``qkv`` (self-attention, the voice models'); then
    the output projection, ``out`` or ``out_name`` (the bundled voice weights call it
    ``proj``). ``qk_norm``: LayerNorm of each head's queries and keys (the DiT's).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        kv_dim: int | None = None,
        qk_norm: bool = True,
        fused: bool = False,
        out_name: str = "out",
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        if fused and kv_dim not in (None, dim):
            raise ValueError("a fused qkv projection is for self-attention (no kv_dim)")
        self.heads, self.head_dim, self.fused = heads, dim // heads, fused
        if fused:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out_name = out_name
        setattr(self, out_name, nn.Linear(dim, dim))
        self.q_norm = nn.LayerNorm(self.head_dim, elementwise_affine=False) if qk_norm else None
        self.k_norm = nn.LayerNorm(self.head_dim, elementwise_affine=False) if qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        rope: torch.Tensor | None = None,
        cache: KVCache | None = None,
        sdpa: bool | None = None,
        probs: bool = False,
    ):
        """x (B, N, D); context (B, L, Dc) for cross-attention (else self); ``rope``: the
        :func:`rope_table` of the tokens' positions (self-attention); ``cache``: the keys
        and values of earlier positions, extended with x's (then x's queries see them
        all, and ``mask`` covers the whole key span or is None). ``sdpa``: True / False
        forces the form of :func:`attend`, None picks by length. ``probs``: return
        (output, probabilities (B, h, N, L) fp32)."""
        b, n, d = x.shape
        ctx = x if context is None else context
        if self.fused:
            if context is not None:
                raise ValueError("a fused qkv projection attends to x itself, not a context")
            q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        else:
            q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, h, N, hd)
            k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, self.head_dim).unbind(2)
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, h, L, hd)
        if self.q_norm is not None:  # (autocast runs the norm in fp32: back to v's dtype)
            q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        if cache is not None:
            k, v = cache.extend(k, v)
        if sdpa is None:  # self-attention: SDPA on CUDA always (flash / memory-efficient
            # kernels), on the CPU from SDPA_MIN_TOKENS keys (see attend)
            sdpa = context is None and (x.is_cuda or k.shape[2] >= SDPA_MIN_TOKENS)
        y = attend(q, k, v, mask, sdpa, probs)  # (B, h, N, hd)
        y, weights = y if probs else (y, None)
        y = getattr(self, self.out_name)(y.transpose(1, 2).reshape(b, n, d))
        return (y, weights) if probs else y
