"""Tests for the spacetime DiT: zero init, RoPE, masks, per-token timesteps, packing.

Covers tinysora.dit.model, tinysora.nn.attention and tinysora.nn.layers with tiny
configs (width 32) so the whole file runs in a few seconds on one CPU thread.
"""

from __future__ import annotations

import inspect
import math
import re

import pytest
import torch
from numerics import assert_close_fp32

import tinysora.dit.model as dit_model
import tinysora.nn.attention as dit_attention
from tinysora.config import ConfigError
from tinysora.diffusion.flow import given_times
from tinysora.dit.model import PRESETS, DiT, DiTBlock, DiTConfig, preset
from tinysora.dit.patchify import grid_positions, patchify, unpatchify
from tinysora.nn.attention import (
    Attention,
    apply_rope,
    rope_angles,
    rope_split,
    rope_table,
    segment_mask,
)
from tinysora.nn.layers import MLP, RMSNorm, TimestepEmbedder, modulate

MODES = ["full", "factorized"]
TEXT_DIM = 16


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_cfg(attention: str = "full", **kw) -> DiTConfig:
    base = dict(in_channels=4, width=32, depth=2, heads=2, text_dim=TEXT_DIM)
    base.update(kw)
    return DiTConfig(attention=attention, **base)


def randomize(model: torch.nn.Module, std: float = 0.02, seed: int = 0) -> torch.nn.Module:
    """Every parameter ~ N(0, std): breaks the zero init so every path is live."""
    g = gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def make_model(attention: str = "full", std: float = 0.02, seed: int = 0, **kw) -> DiT:
    torch.manual_seed(seed)
    return randomize(DiT(tiny_cfg(attention, **kw)), std=std, seed=seed)


def text_inputs(b: int, L: int, lengths: list[int], seed: int = 5):
    text = torch.randn(b, L, TEXT_DIM, generator=gen(seed))
    mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]  # (B, L)
    return text, mask


# ----------------------------------------------------------------------------- zero init


def block_inputs(model: DiT, n: int = 6, L: int = 4, seed: int = 1):
    """Random x, c, text, masks and RoPE table for a (1, 2, 3) grid, batch 2."""
    d = model.config.width
    x = torch.randn(2, n, d, generator=gen(seed))
    c = torch.randn(2, n, d, generator=gen(seed + 1))  # per-token conditioning
    text = torch.randn(2, L, d, generator=gen(seed + 2))
    text_mask = torch.tensor([[True] * L, [True, True, False, False]])
    positions = grid_positions((1, 2, 3))[None].expand(2, -1, -1)
    masks = model._masks(positions, text_mask, None, None)
    rope = rope_table(rope_angles(positions, d // model.config.heads, model.config.rope_theta))
    return x, c, text, masks, rope


@pytest.mark.parametrize("attention", MODES)
def test_fresh_block_is_identity(attention):
    torch.manual_seed(0)
    cfg = tiny_cfg(attention)
    model = DiT(cfg)
    block = DiTBlock(cfg)
    x, c, text, masks, angles = block_inputs(model)
    with torch.no_grad():
        assert torch.equal(block(x, c, text, masks, angles), x)


@pytest.mark.parametrize("attention", MODES)
def test_fresh_block_gated_paths_are_zero(attention):
    """The adaLN-gated paths (self/temporal attention, MLP) start at zero.

    Isolates the part of the zero-init that does hold: with the (ungated)
    cross-attention output silenced, a fresh block returns its input exactly.
    """
    torch.manual_seed(0)
    cfg = tiny_cfg(attention)
    model = DiT(cfg)
    block = DiTBlock(cfg)
    with torch.no_grad():
        block.cross.out.weight.zero_()
        block.cross.out.bias.zero_()
    x, c, text, masks, angles = block_inputs(model)
    with torch.no_grad():
        assert torch.equal(block(x, c, text, masks, angles), x)


@pytest.mark.parametrize("attention", MODES)
def test_fresh_model_predicts_zero(attention):
    torch.manual_seed(0)
    model = DiT(tiny_cfg(attention)).eval()
    latents = torch.randn(2, 4, 2, 4, 6, generator=gen(1))
    text, mask = text_inputs(2, 5, [5, 2])
    with torch.no_grad():
        out = model(latents, torch.tensor([0.3, 0.9]), text, mask)
    assert out.shape == latents.shape
    assert torch.equal(out, torch.zeros_like(latents))


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("attention", MODES)
def test_any_grid_size_gives_input_shape(attention):
    model = make_model(attention)
    shapes_before = {k: v.shape for k, v in model.state_dict().items()}
    text, mask = text_inputs(2, 3, [3, 1])
    t = torch.tensor([0.2, 0.8])
    # (T, H, W) latent sizes, incl. T = 1 and 3x6x10 (not a size anything was built for)
    for size in [(1, 2, 2), (2, 4, 4), (3, 6, 10), (5, 2, 8), (1, 8, 2)]:
        latents = torch.randn(2, 4, *size, generator=gen(sum(size)))
        with torch.no_grad():
            out = model(latents, t, text, mask)
        assert out.shape == latents.shape
        assert torch.isfinite(out).all()
        assert out.abs().max() > 0
    # RoPE only: no position table, nothing shaped by (or grown for) the grid
    assert list(model.buffers()) == []
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes_before
    cfg = model.config
    d = cfg.width
    patch_dim = cfg.in_channels * math.prod(cfg.patch)
    allowed = {patch_dim, d, 2 * d, 6 * d, 9 * d, int(d * cfg.mlp_ratio), cfg.text_dim, 256}
    for name, p in model.named_parameters():
        assert set(p.shape) <= allowed, (name, tuple(p.shape))


def test_forward_matches_forward_tokens():
    model = make_model("full")
    latents = torch.randn(1, 4, 2, 4, 6, generator=gen(2))
    text, mask = text_inputs(1, 3, [2])
    t = torch.tensor([0.4])
    tokens, grid = patchify(latents, model.config.patch)
    with torch.no_grad():
        a = model(latents, t, text, mask)
        b = model.forward_tokens(tokens, t, grid_positions(grid), text, mask)
    assert torch.equal(patchify(a, model.config.patch)[0], b)


# ----------------------------------------------------------------------------- timesteps


@pytest.mark.parametrize("attention", MODES)
def test_shared_t_equals_per_token_t(attention):
    model = make_model(attention, std=0.2)
    latents = torch.randn(2, 4, 2, 4, 4, generator=gen(3))
    text, mask = text_inputs(2, 4, [4, 2])
    t = torch.tensor([0.25, 0.75])
    n = 2 * 2 * 2
    with torch.no_grad():
        shared = model(latents, t, text, mask)
        per_token = model(latents, t[:, None].expand(2, n).contiguous(), text, mask)
    torch.testing.assert_close(per_token, shared, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", MODES)
def test_clean_tokens_change_other_tokens_and_own_modulation(attention):
    model = make_model(attention, std=0.2)
    latents = torch.randn(1, 4, 2, 4, 4, generator=gen(4))  # grid (2, 2, 2): 8 tokens
    tokens, grid = patchify(latents, model.config.patch)
    positions = grid_positions(grid)
    text, mask = text_inputs(1, 3, [3])
    t_all = torch.full((1, 8), 0.8)
    t_clean = t_all.clone()
    t_clean[0, :4] = 0.0  # first latent frame clean (image-to-video style)

    captured = []
    hook = model.blocks[0].modulation.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        out_all = model.forward_tokens(tokens, t_all, positions, text, mask)
        out_clean = model.forward_tokens(tokens, t_clean, positions, text, mask)
    hook.remove()

    # the modulation runs once per distinct time; gather it back per token
    mod_all, mod_clean = (
        out[torch.unique(t, return_inverse=True)[1]]
        for out, t in zip(captured, (t_all, t_clean), strict=True)
    )  # (1, N, n_mod * D) each
    assert captured[0].shape[0] == 1 and captured[1].shape[0] == 2  # distinct times
    assert mod_all.shape == (1, 8, model.blocks[0].n_mod * model.config.width)
    # the clean tokens' own modulation changed; the others' did not
    assert (mod_all[0, :4] - mod_clean[0, :4]).abs().amax(-1).min() > 1e-4
    assert_close_fp32(mod_all[0, 4:], mod_clean[0, 4:])  # (1, D) vs (2, D) GEMMs
    # and the noisy tokens see the clean ones through attention
    assert (out_all[0, 4:] - out_clean[0, 4:]).abs().max() > 1e-4
    assert (out_all[0, :4] - out_clean[0, :4]).abs().max() > 1e-4


@pytest.mark.parametrize("attention", MODES)
def test_forward_holds_given_latents_clean(attention):
    model = make_model(attention, std=0.2)
    patch = model.config.patch
    latents = torch.randn(2, 4, 3, 4, 4, generator=gen(40))  # (B, C, T, H, W)
    clean = torch.randn(1, 4, 3, 4, 4, generator=gen(41))
    given = torch.zeros(1, 1, 3, 4, 4, dtype=torch.bool)
    given[:, :, 0] = True  # the first latent frame given (image-to-video)
    t = torch.tensor([0.7, 0.3])
    text, mask = text_inputs(2, 6, [4, 2])
    with torch.no_grad():
        v = model(latents, t, text, mask, given=given, clean=clean)
        # the token path by hand: given tokens set clean, at flow time 0
        x = torch.where(given, clean, latents)
        tokens, grid = patchify(x, patch)
        given_tokens = patchify(given.expand_as(x).float(), patch)[0][..., 0] > 0  # (B, N)
        t_tok = given_times(t, given_tokens)
        ref = model.forward_tokens(tokens, t_tok, grid_positions(grid), text, mask, grid=grid)
        moved = model(latents + 5.0 * given, t, text, mask, given=given, clean=clean)
        other = model(latents, t, text, mask, given=given, clean=clean + 1.0)
    assert t_tok[:, :4].eq(0).all() and t_tok[0, 4:].eq(0.7).all() and t_tok[1, 4:].eq(0.3).all()
    assert (v[:, :, 0] == 0).all()  # given latents get velocity 0: every sampler keeps them
    assert_close_fp32(v[:, :, 1:], unpatchify(ref, grid, patch)[:, :, 1:])
    assert torch.equal(moved, v)  # what x holds at given places is replaced by clean
    assert (other[:, :, 1:] - v[:, :, 1:]).abs().max() > 1e-4  # the clean values are seen


# ----------------------------------------------------------------------------- text mask


@pytest.mark.parametrize("attention", MODES)
def test_text_padding_is_ignored(attention):
    model = make_model(attention, std=0.2)
    latents = torch.randn(2, 4, 1, 4, 4, generator=gen(6))
    t = torch.tensor([0.5, 0.5])
    text, mask = text_inputs(2, 6, [4, 2])
    other = torch.randn(text.shape, generator=gen(7)) * 3
    padded_changed = torch.where(mask[..., None], text, other)
    real_changed = text.clone()
    real_changed[0, 1] = other[0, 1]
    real_changed[1, 0] = other[1, 0]
    with torch.no_grad():
        base = model(latents, t, text, mask)
        same = model(latents, t, padded_changed, mask)
        diff = model(latents, t, real_changed, mask)
    assert_close_fp32(same, base)
    for row in range(2):
        assert (diff[row] - base[row]).abs().max() > 1e-4


def test_a_fresh_text_refiner_is_the_identity_and_a_trained_one_reads_word_order():
    """A refiner added to a trained model changes nothing until it trains; once its
    weights move, a word's state depends on its neighbours, so swapping two real tokens
    changes the output (the plain model only sees a set of tokens)."""
    plain = make_model(std=0.2, seed=4)
    refined = DiT(tiny_cfg(text_refiner=2)).eval()
    state = refined.state_dict()
    state.update(plain.state_dict())
    refined.load_state_dict(state)
    latents = torch.randn(2, 4, 1, 4, 4, generator=gen(6))
    t = torch.tensor([0.5, 0.5])
    text, mask = text_inputs(2, 6, [4, 3])
    swapped = text.clone()
    swapped[:, [0, 1]] = text[:, [1, 0]]
    with torch.no_grad():
        base = plain(latents, t, text, mask)
        assert_close_fp32(refined(latents, t, text, mask), base)
        assert_close_fp32(plain(latents, t, swapped, mask), base)  # no positions on text
        randomize(refined.refiner, std=0.2, seed=9)
        moved = refined(latents, t, text, mask)
        assert (moved - base).abs().max() > 1e-4
        assert (refined(latents, t, swapped, mask) - moved).abs().max() > 1e-4
        padded_changed = torch.where(mask[..., None], text, text + 5)
        assert_close_fp32(refined(latents, t, padded_changed, mask), moved)


# ----------------------------------------------------------------------------- masks


def test_factorized_masks_split_space_and_time():
    model = DiT(tiny_cfg("factorized"))
    pos = grid_positions((2, 2, 3))  # (12, 3)
    positions = pos[None]
    masks = model._masks(positions, torch.ones(1, 4, dtype=torch.bool), None, None)
    n = pos.shape[0]
    same_t = torch.tensor([[pos[i, 0] == pos[j, 0] for j in range(n)] for i in range(n)])
    same_hw = torch.tensor(
        [[bool((pos[i, 1:] == pos[j, 1:]).all()) for j in range(n)] for i in range(n)]
    )
    assert masks["self"].shape == (1, 1, n, n)
    assert torch.equal(masks["self"][0, 0], same_t)
    assert torch.equal(masks["temporal"][0, 0], same_hw)
    assert masks["self"][0, 0].sum() == n * 6  # 6 tokens per frame
    assert masks["temporal"][0, 0].sum() == n * 2  # 2 frames per place


def test_grouped_factorized_attention_equals_the_masked_form():
    torch.manual_seed(0)
    model = DiT(tiny_cfg("factorized"))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    latents = torch.randn(2, model.config.in_channels, 3, 4, 6)
    t = torch.tensor([0.3, 0.8])
    text, text_mask = torch.randn(2, 5, model.config.text_dim), torch.ones(2, 5, dtype=bool)
    tokens, grid = patchify(latents, model.config.patch)
    positions = grid_positions(grid)
    masked = model.forward_tokens(tokens, t, positions, text, text_mask)
    grouped = model.forward_tokens(tokens, t, positions, text, text_mask, grid=grid)
    assert (grouped - masked).abs().max() < 1e-5
    assert masked.abs().max() > 1e-2  # the comparison is not between zeros
    whole = model(latents, t, text, text_mask)
    assert_close_fp32(whole, unpatchify(grouped, grid, model.config.patch))
    with pytest.raises(ValueError, match="one whole clip"):
        model.forward_tokens(tokens[:, :-1], t, positions[:-1], text, text_mask, grid=grid)


def test_full_masks_and_segments():
    model = DiT(tiny_cfg("full"))
    positions = grid_positions((2, 2, 3))[None]
    text_mask = torch.tensor([[True, True, False]])
    masks = model._masks(positions, text_mask, None, None)
    assert masks["self"] is None and masks["temporal"] is None
    assert torch.equal(masks["text"], text_mask[:, None, None, :])

    segments = torch.tensor([[0] * 5 + [1] * 7])
    text_segments = torch.tensor([[0, 0, 1]])
    masks = model._masks(positions, text_mask, segments, text_segments)
    assert torch.equal(masks["self"], segment_mask(segments))
    expected_text = torch.tensor([[True, True, False]] * 5 + [[False, False, False]] * 7)
    assert torch.equal(masks["text"][0, 0], expected_text)


def test_segment_mask():
    seg = torch.tensor([[0, 0, 1, 1, 1]])
    m = segment_mask(seg)
    assert m.shape == (1, 1, 5, 5)
    assert m[0, 0, 0, 1] and m[0, 0, 2, 4] and not m[0, 0, 1, 2] and not m[0, 0, 4, 0]


# ----------------------------------------------------------------------------- packing


@pytest.mark.parametrize(
    "time_span, text_refiner",
    [(0.0, 0), (4.0, 0), (4.0, 2)],
    ids=["frames", "clip-time", "refiner"],
)
@pytest.mark.parametrize("attention", MODES)
def test_packed_clips_equal_solo_clips(attention, time_span, text_refiner):
    """Patch n' Pack: two clips in one sequence give each clip's solo output (with
    frame-count or clip-time temporal positions; with a text refiner, whose captions
    stay apart too)."""
    model = make_model(attention, std=0.2, seed=3, text_refiner=text_refiner)
    patch = model.config.patch
    lat_a = torch.randn(1, 4, 2, 4, 4, generator=gen(10))  # grid (2, 2, 2): 8 tokens
    lat_b = torch.randn(1, 4, 1, 2, 6, generator=gen(11))  # grid (1, 1, 3): 3 tokens
    tok_a, grid_a = patchify(lat_a, patch)
    tok_b, grid_b = patchify(lat_b, patch)
    pos_a, pos_b = grid_positions(grid_a, time_span), grid_positions(grid_b, time_span)
    L = 6
    text_a, mask_a = text_inputs(1, L, [5], seed=12)
    text_b, mask_b = text_inputs(1, L, [3], seed=13)
    t_a, t_b = torch.tensor([0.3]), torch.tensor([0.9])

    with torch.no_grad():
        solo_a = model.forward_tokens(tok_a, t_a, pos_a, text_a, mask_a)
        solo_b = model.forward_tokens(tok_b, t_b, pos_b, text_b, mask_b)

        n_a, n_b = tok_a.shape[1], tok_b.shape[1]
        tokens = torch.cat([tok_a, tok_b], dim=1)  # (1, 11, patch_dim)
        t = torch.cat([t_a.expand(n_a), t_b.expand(n_b)])[None]  # (1, 11) per token
        positions = torch.cat([pos_a, pos_b])  # (11, 3): each clip's own grid
        text = torch.cat([text_a, text_b], dim=1)  # (1, 2L, text_dim)
        text_mask = torch.cat([mask_a, mask_b], dim=1)
        segments = torch.tensor([[0] * n_a + [1] * n_b])
        text_segments = torch.tensor([[0] * L + [1] * L])
        packed = model.forward_tokens(
            tokens, t, positions, text, text_mask, segments, text_segments
        )
        leaky = model.forward_tokens(tokens, t, positions, text, text_mask)  # no segments

    assert solo_a.abs().max() > 1e-2 and solo_b.abs().max() > 1e-2
    assert (packed[:, :n_a] - solo_a).abs().max() <= 1e-4
    assert (packed[:, n_a:] - solo_b).abs().max() <= 1e-4
    # negative control: without segment ids the clips do leak into each other
    assert (leaky[:, :n_a] - solo_a).abs().max() > 1e-3


# ----------------------------------------------------------------------------- RoPE


def test_clip_time_changes_only_other_lengths():
    """A model with time_span 4 computes the same velocity as time_span 0 for 5 latent
    frames (so a frame-position model can be fine-tuned into clip time) and a different
    one for 9."""
    frames = make_model("full", std=0.2, seed=5)
    clip = make_model("full", std=0.2, seed=5, time_span=4.0)
    text, mask = text_inputs(1, 4, [4], seed=6)
    t = torch.tensor([0.5])
    with torch.no_grad():
        for gt, same in [(5, True), (9, False)]:
            x = torch.randn(1, 4, gt, 4, 4, generator=gen(gt))
            diff = (frames(x, t, text, mask) - clip(x, t, text, mask)).abs().max()
            assert (diff == 0) == same, (gt, diff)


@pytest.mark.parametrize("head_dim", [2, 4, 8, 16, 32, 64, 96, 128])
def test_rope_split(head_dim):
    parts = rope_split(head_dim)
    assert len(parts) == 3
    assert sum(parts) == head_dim
    assert all(p % 2 == 0 and p >= 0 for p in parts)
    assert parts[0] > 0


def test_rope_split_rejects_odd():
    with pytest.raises(ValueError, match="even"):
        rope_split(15)


def test_rope_angles_shape_and_zero_position():
    pos = grid_positions((2, 3, 4))[None]  # (1, 24, 3)
    ang = rope_angles(pos, 16, 100.0)
    assert ang.shape == (1, 24, 8)
    assert torch.equal(ang[0, 0], torch.zeros(8))  # position (0, 0, 0): no rotation
    x = torch.randn(1, 2, 24, 16, generator=gen(20))
    torch.testing.assert_close(apply_rope(x, rope_table(ang))[:, :, 0], x[:, :, 0])


def test_apply_rope_preserves_norms():
    head_dim = 16
    pos = torch.randint(0, 50, (2, 7, 3), generator=gen(21))
    ang = rope_angles(pos, head_dim, 100.0)
    x = torch.randn(2, 3, 7, head_dim, generator=gen(22))
    y = apply_rope(x, rope_table(ang))
    assert y.shape == x.shape
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(y, x)


@pytest.mark.parametrize("head_dim", [8, 16, 32])
def test_rope_dot_product_depends_only_on_offset(head_dim):
    q = torch.randn(1, 1, 1, head_dim, generator=gen(23))
    k = torch.randn(1, 1, 1, head_dim, generator=gen(24))

    def score(p_q, p_k):
        a_q = rope_angles(torch.tensor([[p_q]]), head_dim, 100.0)  # (1, 1, hd/2)
        a_k = rope_angles(torch.tensor([[p_k]]), head_dim, 100.0)
        return (apply_rope(q, rope_table(a_q)) * apply_rope(k, rope_table(a_k))).sum().item()

    p1, p2 = [1, 2, 3], [4, 0, 7]
    base = score(p1, p2)
    for d in ([3, -2, 5], [0, 0, 1], [7, 11, -1]):
        shifted = score(
            [a + b for a, b in zip(p1, d, strict=True)], [a + b for a, b in zip(p2, d, strict=True)]
        )
        assert shifted == pytest.approx(base, abs=1e-4, rel=1e-4)
    # ...and it does depend on the offset, along every axis
    for axis in range(3):
        moved = list(p2)
        moved[axis] += 1
        assert abs(score(p1, moved) - base) > 1e-4


# ----------------------------------------------------------------------------- Attention


def test_long_self_attention_goes_to_sdpa_with_the_same_result(monkeypatch):
    torch.manual_seed(0)
    attn = Attention(32, 2).eval()
    x = torch.randn(2, 12, 32, generator=gen(32))
    segments = torch.tensor([[0] * 5 + [1] * 7, [0] * 12])
    positions = grid_positions((1, 3, 4))[None].expand(2, -1, -1)
    rope = rope_table(rope_angles(positions, 16, 100.0))
    with torch.no_grad():
        explicit = attn(x, mask=segment_mask(segments), rope=rope)
        calls = []
        sdpa = torch.nn.functional.scaled_dot_product_attention
        monkeypatch.setattr(
            torch.nn.functional,
            "scaled_dot_product_attention",
            lambda *a, **k: calls.append(1) or sdpa(*a, **k),
        )
        monkeypatch.setattr(dit_attention, "SDPA_MIN_TOKENS", 12)
        fused = attn(x, mask=segment_mask(segments), rope=rope)
    assert calls and torch.allclose(fused, explicit, atol=1e-5)


def test_attention_all_true_mask_equals_no_mask():
    torch.manual_seed(0)
    attn = Attention(32, 2).eval()
    x = torch.randn(2, 5, 32, generator=gen(30))
    rope = rope_table(rope_angles(grid_positions((1, 1, 5))[None].expand(2, -1, -1), 16, 100.0))
    with torch.no_grad():
        a = attn(x, mask=torch.ones(2, 1, 5, 5, dtype=torch.bool), rope=rope)
        b = attn(x, rope=rope)
    assert_close_fp32(a, b)

    cross = Attention(32, 2, kv_dim=24).eval()
    ctx = torch.randn(2, 3, 24, generator=gen(31))
    with torch.no_grad():
        a = cross(x, context=ctx, mask=torch.ones(2, 1, 1, 3, dtype=torch.bool))
        b = cross(x, context=ctx)
    assert a.shape == (2, 5, 32)
    assert_close_fp32(a, b)


def test_attention_rejects_indivisible_width():
    with pytest.raises(ValueError, match="divisible"):
        Attention(30, 4)


# ----------------------------------------------------------------------------- presets


def _comment_counts() -> dict[str, tuple[float, float | None]]:
    """Parse "name 5.1M (factorized 6.7M), name 39.7M (52.2M), name 12.0M" in model.py."""
    src = inspect.getsource(dit_model)
    block = src[src.index("# Parameter counts") : src.index("PRESETS = ")]
    text = " ".join(line.lstrip("# ") for line in block.splitlines()[1:])
    found = re.findall(r"(\S+) ([\d.]+)M(?: \((?:factorized )?([\d.]+)M\))?", text)
    return {name: (float(full), float(fact) if fact else None) for name, full, fact in found}


def test_preset_parameter_counts_match_comment():
    counts = _comment_counts()
    assert {"tiny", "S/2", "B/2"} <= set(counts)
    assert set(counts) == set(PRESETS)  # every preset has its count in the comment
    for name, (full, fact) in counts.items():
        cfg = preset(name)
        # the comment's counts are for these settings
        assert (cfg.in_channels, cfg.patch, cfg.text_dim) == (8, (1, 2, 2), 384)
        for attention, expected in (("full", full), ("factorized", fact)):
            if expected is None:
                continue
            cfg.attention = attention
            with torch.device("meta"):  # exact shapes, no memory or init time
                model = DiT(cfg)
            n = sum(p.numel() for p in model.parameters()) / 1e6
            assert n == pytest.approx(expected, abs=0.1), (name, attention, n)


def test_tiny_preset_builds_for_real():
    model = DiT(preset("tiny"))
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert n == pytest.approx(_comment_counts()["tiny"][0], abs=0.1)
    assert preset("tiny") is not preset("tiny")  # a fresh config each call


def test_unknown_preset_lists_names():
    with pytest.raises(ValueError) as info:
        preset("XL/2")
    msg = str(info.value)
    assert "XL/2" in msg
    for name in PRESETS:
        assert name in msg


# ----------------------------------------------------------------------------- layers


def test_timestep_embedder():
    torch.manual_seed(0)
    emb = TimestepEmbedder(32)
    with torch.no_grad():
        out = emb(torch.tensor([0.0, 1.0]))
        per_token = emb(torch.rand(2, 5, generator=gen(40)))
    assert out.shape == (2, 32)
    assert per_token.shape == (2, 5, 32)
    assert torch.isfinite(out).all() and torch.isfinite(per_token).all()
    assert (out[0] - out[1]).abs().max() > 1e-3


@pytest.mark.parametrize("affine", [True, False])
def test_rmsnorm_unit_rms(affine):
    norm = RMSNorm(32, affine=affine)
    x = torch.randn(3, 4, 32, generator=gen(41)) * 7 + 2
    y = norm(x)
    assert y.shape == x.shape
    rms = y.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-4, rtol=1e-4)


def test_modulate_and_mlp():
    x = torch.randn(2, 5, 8, generator=gen(42))
    zero = torch.zeros(2, 1, 8)
    assert torch.equal(modulate(x, zero, zero), x)
    shift = torch.randn(2, 5, 8, generator=gen(43))  # per token
    scale = torch.randn(2, 1, 8, generator=gen(44))  # shared
    torch.testing.assert_close(modulate(x, shift, scale), x * (1 + scale) + shift)
    assert MLP(8, 32)(x).shape == x.shape


# ----------------------------------------------------------------------------- config


def test_config_json_round_trip():
    cfg = DiTConfig(
        in_channels=4, patch=(2, 2, 2), width=64, depth=3, heads=4, attention="factorized"
    )
    back = DiTConfig.from_json(cfg.to_json())
    assert back == cfg
    assert isinstance(back.patch, tuple)
    assert DiTConfig.from_dict(preset("S/2").to_dict()) == preset("S/2")


def test_config_rejects_unknown_attention():
    data = DiTConfig().to_dict()
    data["attention"] = "sparse"
    with pytest.raises(ConfigError, match="sparse") as info:
        DiTConfig.from_dict(data)
    assert "full" in str(info.value) and "factorized" in str(info.value)


@pytest.mark.slow  # ~50 s of torch.compile
def test_compiled_blocks_compute_the_same_velocity_and_gradients():
    torch.manual_seed(0)
    model = DiT(tiny_cfg())
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)  # not the identity blocks of a fresh model
    x = torch.randn(2, 4, 2, 4, 4, generator=gen(1))
    text, mask = torch.randn(2, 3, model.config.text_dim, generator=gen(2)), torch.ones(2, 3) > 0
    tokens, grid = patchify(x, model.config.patch)
    t_tok = torch.tensor([[0.0] * 4 + [0.7] * 4, [0.3] * 8])  # given tokens at t = 0

    def run():
        model.zero_grad(set_to_none=True)
        v = model(x, torch.tensor([0.2, 0.9]), text, mask)
        u = model.forward_tokens(tokens, t_tok, grid_positions(grid), text, mask, grid=grid)
        (v.square().mean() + u.square().mean()).backward()
        return v, u, [p.grad.clone() for p in model.parameters()]

    eager = run()
    keys = list(model.state_dict())
    model.compile_blocks()
    compiled = run()
    assert list(model.state_dict()) == keys
    for a, b in zip(compiled[:2] + tuple(compiled[2]), eager[:2] + tuple(eager[2]), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
