"""Patch n' Pack: greedy packing, size planning, and the packed DiT computing each clip
exactly as if it were alone."""

from __future__ import annotations

import pytest
import torch

from tinysora.data.packing import (
    PAD,
    Mixture,
    bucketed_efficiency,
    first_fit_decreasing,
    pack,
    packed_efficiency,
    padded_efficiency,
    plan_row,
)
from tinysora.dit.model import DiT, DiTConfig
from tinysora.dit.patchify import grid_positions, patchify
from tinysora.worlds.shapes import SplitMix64


def test_first_fit_decreasing_places_every_item_once_within_budget():
    lengths = [7, 3, 5, 5, 2, 8, 1, 4]
    rows = first_fit_decreasing(lengths, 10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 4  # 35 tokens: 4 rows of 10 is the minimum
    with pytest.raises(ValueError, match="does not fit"):
        first_fit_decreasing([11], 10)


def _items(sizes, dim=6, text_dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens, positions, text, masks = [], [], [], []
    for k, (gt, gh, gw) in enumerate(sizes):
        tokens.append(torch.randn(gt * gh * gw, dim, generator=g))
        positions.append(grid_positions((gt, gh, gw)))
        text.append(torch.randn(4, text_dim, generator=g))
        masks.append(torch.arange(4) < 2 + k % 3)
    return tokens, positions, text, masks


def test_pack_and_unpack_round_trip():
    sizes = [(2, 2, 3), (1, 2, 2), (3, 1, 2), (1, 1, 1), (2, 2, 2)]
    tokens, positions, text, masks = _items(sizes)
    packed = pack(tokens, positions, text, masks, budget=16)
    assert packed.tokens.shape[1] == 16
    for i, back in enumerate(packed.unpack(packed.tokens)):
        assert torch.equal(back, tokens[i])
    for i, back in enumerate(packed.unpack(packed.positions)):
        assert torch.equal(back, positions[i])
    real = sum(len(x) for x in tokens)
    assert packed.valid.sum() == real
    assert packed.efficiency == pytest.approx(real / packed.segments.numel())
    # each clip's caption: its real tokens, tagged with its segment id
    for i, (row, start, _) in enumerate(packed.places):
        seg = int(packed.segments[row, start])
        mine = packed.text_segments[row] == seg
        assert torch.equal(packed.text[row][mine], text[i][masks[i]])
        assert packed.text_mask[row][mine].all()
    assert not packed.text_mask[packed.text_segments == PAD].any()
    per_clip = torch.arange(len(sizes), dtype=torch.float32)
    spread = packed.per_token(per_clip)
    for i, back in enumerate(packed.unpack(spread)):
        assert (back == i).all()
    planned = pack(tokens, positions, text, masks, budget=16, rows=[[4, 2, 3], [0, 1]])
    assert [place[0] for place in planned.places] == [1, 1, 0, 0, 0]  # rows as planned
    back = planned.unpack(planned.tokens)
    assert all(torch.equal(b, x) for b, x in zip(back, tokens, strict=True))
    with pytest.raises(ValueError, match="more than 14 tokens"):
        pack(tokens, positions, text, masks, budget=14, rows=[[0, 1], [2, 3, 4]])


def test_plan_row_fills_rows_with_legal_sizes():
    mixture = Mixture()
    rng = SplitMix64(7)
    budget, used = 1024, 0
    for _ in range(40):
        plan = plan_row(mixture, budget, rng)
        tokens = [mixture.tokens(*size) for size in plan]
        assert sum(tokens) <= budget
        used += sum(tokens)
        for frames, h, w in plan:
            assert frames in mixture.frames and h % 16 == 0 and w % 16 == 0
            assert max(h, w) <= 2 * min(h, w)
    assert used / (40 * budget) >= 0.97
    assert mixture.tokens(17, 64, 64) == 80 and mixture.tokens(1, 32, 32) == 4
    videos = Mixture(frames=(9, 17), frame_weights=(1.0, 1.0))  # no images to fill with
    plans = [plan_row(videos, budget, rng) for _ in range(20)]
    assert all(frames in (9, 17) for plan in plans for frames, _, _ in plan)


@pytest.mark.parametrize("attention", ["full", "factorized"])
def test_packed_model_output_equals_each_clip_alone(attention):
    torch.manual_seed(0)
    cfg = DiTConfig(in_channels=4, width=32, depth=2, heads=2, text_dim=8, attention=attention)
    model = DiT(cfg).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    g = torch.Generator().manual_seed(1)
    latents = [
        torch.randn(1, 4, t, h, w, generator=g)
        for t, h, w in [(3, 4, 4), (1, 6, 2), (2, 2, 8), (1, 2, 2)]
    ]  # an image among videos
    pieces = [patchify(x, cfg.patch) for x in latents]
    tokens = [tok[0] for tok, _ in pieces]
    positions = [grid_positions(grid) for _, grid in pieces]
    text = [torch.randn(5, 8, generator=g) for _ in latents]
    masks = [torch.arange(5) < n for n in (5, 2, 3, 4)]
    t = torch.tensor([0.1, 0.5, 0.9, 0.7])
    packed = pack(tokens, positions, text, masks, budget=32)
    assert packed.tokens.shape[0] < len(latents)  # really shares rows
    with torch.no_grad():
        out = model.forward_tokens(
            packed.tokens,
            packed.per_token(t),
            packed.positions,
            packed.text,
            packed.text_mask,
            packed.segments,
            packed.text_segments,
        )
        for i, got in enumerate(packed.unpack(out)):
            alone = model.forward_tokens(
                tokens[i][None], t[i : i + 1], positions[i], text[i][None], masks[i][None]
            )[0]
            assert alone.abs().max() > 1e-2
            assert (got - alone).abs().max() <= 1e-4, (i, (got - alone).abs().max())


def test_efficiency_baselines_on_known_cases():
    assert padded_efficiency([1, 2, 3, 4], 2) == pytest.approx(10 / 12)
    assert packed_efficiency([6, 4, 5, 5], 10) == 1.0
    assert packed_efficiency([6, 6], 10) == pytest.approx(12 / 20)
    m = Mixture()
    # same bucket (17 frames, square): padded to the larger; other bucket alone, batch 2
    sizes = [(17, 64, 64), (17, 32, 32), (9, 64, 32)]
    real = m.tokens(17, 64, 64) + m.tokens(17, 32, 32) + m.tokens(9, 64, 32)
    total = 2 * m.tokens(17, 64, 64) + 2 * m.tokens(9, 64, 32)
    assert bucketed_efficiency(sizes, m, 2) == pytest.approx(real / total)
