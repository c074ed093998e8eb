"""Model FLOPs of the DiT: what training logs and ``tinysora bench`` divide by the
measured matmul peak (``tinysora.perf``) to report MFU."""

from __future__ import annotations

from tinysora.dit.model import DiTConfig


def attention_flops(cfg: DiTConfig, grid: tuple[int, int, int], text_len: int) -> float:
    """Forward FLOPs of one block's attention scores and values for one clip.

    full: 4 N^2 D; factorized: 4 N (gh gw) D within frames + 4 N gt D within patch
    columns; plus cross-attention 4 N L D. N = gt gh gw tokens, D = width.
    """
    gt, gh, gw = grid
    n, d = gt * gh * gw, cfg.width
    if cfg.attention == "factorized":
        self_attn = 4 * n * (gh * gw) * d + 4 * n * gt * d
    else:
        self_attn = 4 * n * n * d
    return self_attn + 4 * n * text_len * d


def dit_flops_per_sample(cfg: DiTConfig, grid: tuple[int, int, int], text_len: int) -> float:
    """Forward+backward FLOPs of one clip with a (gt, gh, gw) token grid:
    3 x depth x (2 x matmul params per token x N + attention_flops).

    Matmul params per block: self-attn 4 D^2 (+4 D^2 if factorized), cross-attn q/out
    2 D^2 (k/v on text: 2 D^2 x text_len / N), MLP 2 r D^2; the per-sample modulation,
    patch embedding, output layer and timestep MLP are left out (~1% at XS/2). A text
    refiner adds per layer 3 x (2 x 12 D^2 x L + 4 L^2 D).
    """
    n = grid[0] * grid[1] * grid[2]
    d, r = cfg.width, cfg.mlp_ratio
    n_self = 2 if cfg.attention == "factorized" else 1
    per_token = (4 * n_self + 2 + 2 * r) * d * d + 2 * d * d * text_len / n
    refiner = cfg.text_refiner * (2 * 12 * d * d * text_len + 4 * text_len**2 * d)
    return 3 * (cfg.depth * (2 * per_token * n + attention_flops(cfg, grid, text_len)) + refiner)
