"""Tests for tinysora.dit.patchify: latents <-> (t, h, w) raster tokens and positions."""

from __future__ import annotations

import pytest
import torch

from tinysora.dit.patchify import grid_positions, grid_size, patchify, unpatchify


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("patch", "shape"),
    [
        ((1, 2, 2), (2, 3, 4, 6, 8)),  # non-square
        ((1, 2, 2), (1, 4, 1, 2, 10)),  # T = 1
        ((2, 2, 2), (2, 2, 4, 6, 4)),
        ((2, 2, 2), (1, 3, 2, 2, 2)),  # a single token
        ((1, 1, 1), (1, 2, 3, 5, 7)),  # odd sizes, one latent voxel per token
        ((1, 1, 1), (2, 1, 1, 1, 1)),
    ],
)
def test_round_trip_is_exact(patch, shape):
    b, c, t, h, w = shape
    x = torch.randn(*shape, generator=gen())
    tokens, grid = patchify(x, patch)
    pt, ph, pw = patch
    assert grid == (t // pt, h // ph, w // pw)
    assert tokens.shape == (b, grid[0] * grid[1] * grid[2], c * pt * ph * pw)
    assert torch.equal(unpatchify(tokens, grid, patch), x)


def test_grid_size():
    assert grid_size((5, 8, 12), (1, 2, 2)) == (5, 4, 6)
    assert grid_size((4, 2, 6), (2, 2, 2)) == (2, 1, 3)
    assert grid_size((1, 1, 1), (1, 1, 1)) == (1, 1, 1)


def test_grid_positions_are_thw_raster():
    pos = grid_positions((2, 2, 3))
    assert pos.shape == (12, 3)
    assert pos.dtype == torch.float32
    expected = [(i, j, k) for i in range(2) for j in range(2) for k in range(3)]
    assert [tuple(p) for p in pos.tolist()] == expected
    # token n = (i * gh + j) * gw + k
    assert pos[(1 * 2 + 0) * 3 + 2].tolist() == [1, 0, 2]


def test_grid_positions_frames_or_clip_time():
    # clip time: every clip spans [0, 4]; 5 latent frames keep integer positions
    assert torch.equal(grid_positions((5, 2, 2), 4.0), grid_positions((5, 2, 2)))
    assert grid_positions((17, 1, 1), 4.0)[:, 0].tolist() == [i / 4 for i in range(17)]
    assert grid_positions((3, 1, 1), 4.0)[:, 0].tolist() == [0.0, 2.0, 4.0]
    assert grid_positions((1, 2, 2), 4.0)[:, 0].tolist() == [0.0] * 4  # an image


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 2, 2), (1, 1, 1)])
def test_token_content_matches_its_position(patch):
    c, t, h, w = 3, 4, 6, 8
    pt, ph, pw = patch
    x = torch.randn(2, c, t, h, w, generator=gen(1))
    tokens, grid = patchify(x, patch)
    pos = grid_positions(grid)
    assert pos.shape[0] == tokens.shape[1]
    for n in (0, 1, grid[2], tokens.shape[1] // 2 + 1, tokens.shape[1] - 1):
        i, j, k = pos[n].long().tolist()
        cube = x[:, :, i * pt : (i + 1) * pt, j * ph : (j + 1) * ph, k * pw : (k + 1) * pw]
        # the token's channels are (c, pt, ph, pw) flattened in that order
        assert torch.equal(tokens[:, n], cube.reshape(2, -1))


def test_specific_token_of_non_square_grid():
    # latent (T=2, H=4, W=6), patch (1, 2, 2) -> grid (2, 2, 3); token (1, 1, 2) = n 11
    x = torch.arange(2 * 2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 2, 4, 6)
    tokens, grid = patchify(x, (1, 2, 2))
    assert grid == (2, 2, 3)
    n = (1 * 2 + 1) * 3 + 2
    assert grid_positions(grid)[n].tolist() == [1, 1, 2]
    expected = torch.stack([x[0, ch, 1, 2:4, 4:6].reshape(-1) for ch in range(2)]).reshape(-1)
    assert torch.equal(tokens[0, n], expected)


@pytest.mark.parametrize(
    ("shape", "patch"),
    [((3, 4, 4), (2, 2, 2)), ((2, 5, 4), (1, 2, 2)), ((2, 4, 7), (1, 2, 2))],
)
def test_non_divisible_sizes_raise(shape, patch):
    with pytest.raises(ValueError) as info:
        grid_size(shape, patch)
    msg = str(info.value)
    for size in shape:
        assert str(size) in msg
    assert str(patch) in msg
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 2, *shape), patch)
