"""The bench's Patch n' Pack section on tiny shapes: the attention kernels agree, padded
batches really pad, packed rows reach the planner's efficiency, the result has its keys.
Nothing here asserts a speed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tinysora.bench import packing
from tinysora.bench.dit import token_grid
from tinysora.data.packing import PAD, Mixture, padded_efficiency
from tinysora.dit.model import DiT, DiTConfig
from tinysora.nn.attention import attend, segment_mask
from tinysora.train.recipe import DiTRecipe, PackingConfig

SMALL_MIX = Mixture(sides=(32, 48, 64), frames=(1, 9), frame_weights=(0.3, 0.7))
TINY = DiTConfig(width=32, depth=1, heads=2, text_dim=16)


def test_packed_row_is_laid_out_like_training():
    row = packing.packed_row(Mixture(), 1024, seed=3)
    lengths = sorted((start, n) for _, start, n in row.places)
    assert lengths[0][0] == 0 and len(lengths) > 2  # several clips, from the first token
    for (start, n), (nxt, _) in zip(lengths, lengths[1:], strict=False):
        assert start + n == nxt  # contiguous, no gaps between clips
    real = sum(n for _, n in lengths)
    assert int(row.valid.sum()) == real and (row.segments[0, real:] == PAD).all()


def test_kernels_agree_in_float32(one_thread):
    """attend with the block-diagonal mask == SDPA with it == the per-clip loop (fp32)."""
    row = packing.packed_row(SMALL_MIX, 96, seed=1)
    spans = sorted((start, n) for _, start, n in row.places)
    valid = row.valid[0]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 96, 16, generator=g) for _ in range(3))
    mask = segment_mask(row.segments)
    ref = attend(q, k, v, mask)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    loop = packing.per_segment_attend(q, k, v, spans)
    assert torch.allclose(sdpa[..., valid, :], ref[..., valid, :], atol=1e-5)
    assert torch.allclose(loop[..., valid, :], ref[..., valid, :], atol=1e-5)
    assert (loop[..., ~valid, :] == 0).all()


@pytest.mark.slow  # compiles flex attention (~11 s); make test-slow and make bench run it
def test_kernels_section_agrees_and_has_its_keys(one_thread):
    out = packing.kernels(SMALL_MIX, 96, heads=2, head_dim=16, warmup=0, repeats=1)
    for key in ("forward", "fwd_bwd", "forward_vs_attend_mask", "fwd_bwd_vs_attend_mask"):
        assert {"attend_mask", "sdpa_mask", "per_segment"} <= set(out[key]), key
    assert out["forward_vs_attend_mask"]["attend_mask"] == 1.0
    assert out["fastest_forward"] in out["forward"] and out["fastest_fwd_bwd"] in out["fwd_bwd"]
    assert out["all_agree"], out["agreement"]
    for name in ("sdpa_mask", "per_segment"):
        assert out["agreement"][name]["grad_rel_diff"] <= packing.BF16_RTOL
    flex = out["flex"]
    # flex either ran (and agreed) or says why not; same for its backward
    assert ("flex" in out["forward"]) != isinstance(flex["error_forward"], str)
    assert ("flex" in out["fwd_bwd"]) != isinstance(flex["error_fwd_bwd"], str)
    if "flex" in out["forward"]:
        assert out["agreement"]["flex"]["agrees"] and flex["compile_forward_s"] > 0
        assert 0 <= flex["tiles_skipped"] < 1
    assert sum(out["clip_tokens"]) <= 96 and 0 < out["useful_score_fraction"] < 1


def test_padded_batches_pad_and_packed_rows_reach_the_planner():
    mixture, budget, rows = Mixture(), 1024, 3
    cfg = DiTConfig(in_channels=8, patch=(1, 2, 2), width=32, depth=1, heads=2, text_dim=16)
    recipe = DiTRecipe(model=cfg)
    plans = packing.clip_stream(mixture, budget, rows, steps=4)
    sizes = [size for plan in plans for row in plan for size in row]
    assert len({frames for frames, _, _ in sizes}) > 1  # images and videos
    clips = packing.make_clips(cfg, sizes, recipe)
    lengths = [len(c.tokens) for c in clips]
    assert lengths == [mixture.tokens(*s) for s in sizes]  # the model's grid = the mixture's
    assert lengths == [math.prod(token_grid(cfg, *s)) for s in sizes]

    i = 0
    for plan in plans:  # each step: the planner's `rows` rows, as full as it made them
        step = []
        for row in plan:
            step.append(clips[i : i + len(row)])
            i += len(row)
        packed, target, t, loss_mask = packing.packed_batch(step, budget)
        planned = sum(len(c.tokens) for row in step for c in row) / (rows * budget)
        assert packed.tokens.shape[:2] == (rows, budget)
        assert packed.efficiency == pytest.approx(planned) and planned > 0.95
        assert torch.equal(loss_mask, packed.valid) and t.shape == (rows, budget)
        for (r, start, n), c in zip(packed.places, [c for row in step for c in row], strict=True):
            assert torch.equal(packed.tokens[r, start : start + n], c.tokens)
            assert torch.equal(target[r, start : start + n], c.target)
            seg = packed.segments[r, start]
            caption = packed.text[r][packed.text_segments[r] == seg]
            assert torch.equal(caption, c.text[c.text_mask])

    batch = packing.matching_batch(lengths, rows * budget)
    steps = math.ceil(len(lengths) / batch)
    total = packing.padded_tokens(lengths, batch)
    assert abs(total / steps - rows * budget) <= max(lengths)  # about a packed step's tokens
    padded = [packing.padded_batch(clips[i : i + batch]) for i in range(0, len(clips), batch)]
    assert sum(b.segments.numel() for b in padded) == total
    for i, b in enumerate(padded):
        assert b.tokens.shape[1] == max(lengths[i * batch : (i + 1) * batch])
        assert b.valid.sum(1).tolist() == lengths[i * batch : (i + 1) * batch]
        assert (b.tokens[~b.valid] == 0).all()
    efficiency = sum(lengths) / total
    assert efficiency < 0.9  # a mixed stream really pads
    whole = len(lengths) - len(lengths) % batch  # full batches: the packing.py baseline
    assert sum(lengths[:whole]) / packing.padded_tokens(lengths[:whole], batch) == pytest.approx(
        padded_efficiency(lengths[:whole], batch)
    )


def test_padded_rows_ignore_their_padding(one_thread):
    """A clip in a padded batch gives the model output it gives alone."""
    torch.manual_seed(0)
    model = DiT(TINY).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    clips = packing.make_clips(TINY, [(9, 32, 32), (1, 64, 32), (9, 48, 64)], DiTRecipe())
    batch = packing.padded_batch(clips)
    assert batch.efficiency < 1
    with torch.no_grad():
        out = model.forward_tokens(
            batch.tokens, batch.t, batch.positions, batch.text, batch.text_mask, batch.segments
        )
        for i, c in enumerate(clips):
            alone = model.forward_tokens(
                c.tokens[None], batch.t[i : i + 1], c.positions, c.text[None], c.text_mask[None]
            )[0]
            assert torch.allclose(out[i, : len(c.tokens)], alone, atol=1e-4)


def test_packed_vs_padded_result(one_thread, tmp_path):
    pk = PackingConfig(token_budget=96, rows=2, mixture=SMALL_MIX)
    out = packing.packed_vs_padded(
        DiTRecipe(model=TINY, packing=pk), steps=2, warmup=0, repeats=1, out_dir=str(tmp_path)
    )
    assert out["mode"] == "eager" and not out["compiled"]
    pk, pd = out["packed"], out["padded"]
    for side in (pk, pd):
        for key in ("useful_tokens_per_s", "tokens_per_s", "s_per_step", "first_pass_s"):
            assert side[key] > 0 and math.isfinite(side[key]), key
        assert side["pass"]["median_s"] > 0
        assert side["useful_tokens_per_s"] * side["pass"]["median_s"] == pytest.approx(
            out["real_tokens"]
        )
        assert 0 < side["useful_flops_share"] <= 1
    assert pk["efficiency"] == pytest.approx(pk["planned_efficiency"])
    assert pd["efficiency"] < pk["efficiency"]
    assert pd["batch"] >= 1 and pk["steps"] == 2
    assert out["packed_vs_padded_tokens_per_s"] == pytest.approx(
        pk["useful_tokens_per_s"] / pd["useful_tokens_per_s"]
    )
    assert out["meets_target"] == (out["packed_vs_padded_tokens_per_s"] >= 1.5)
