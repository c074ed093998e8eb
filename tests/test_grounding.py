"""The grounding loss (train/grounding.py): subject words and object tokens are the
right ones, the loss is 0 when every subject word looks only at its object and grows
when it looks at the other one, and a tiny DiT trains with it end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny import tiny_recipe

from tinysora.config import ConfigError
from tinysora.dit.model import DiT, DiTConfig
from tinysora.text.encoder import TextEncoder
from tinysora.train.dit import train_dit
from tinysora.train.grounding import (
    grounding_loss,
    grounding_targets,
    object_tokens,
    subject_words,
)
from tinysora.worlds.shapes import parse_caption

TWO = "a small red circle moving left and a large blue square moving down on a white background"


def test_subject_words_skip_articles_and_the_background():
    assert subject_words(TWO, 2) == [[1, 2, 3, 4, 5], [8, 9, 10, 11, 12]]
    assert subject_words("little crimson ball still", 1) == [[0, 1, 2, 3]]
    assert subject_words("", 2) == [[], []]


def test_object_tokens_follow_each_object_through_the_latent_frames():
    scene = parse_caption(TWO, 7)
    tokens = object_tokens(scene, 17, 64, 64, (1, 2, 2))  # latents 5 x 8 x 8 -> 5 x 4 x 4
    assert tokens.shape == (2, 80) and tokens.dtype == bool
    per_frame = tokens.reshape(2, 5, 4, 4)
    assert per_frame.any((2, 3)).all()  # both objects in every latent frame
    cols = [np.nonzero(per_frame[0, t].any(0))[0].mean() for t in range(5)]
    rows = [np.nonzero(per_frame[1, t].any(1))[0].mean() for t in range(5)]
    assert cols[-1] < cols[0] and rows[-1] > rows[0]  # red goes left, blue goes down


def test_targets_put_each_subject_word_token_on_its_object():
    encoder = TextEncoder(max_length=32, cache_size=0)
    scene = parse_caption(TWO, 7)
    captions = [TWO, ""]
    words, places = grounding_targets(
        [scene, scene], captions, encoder.word_ids(captions), 17, 64, 64, (1, 2, 2)
    )
    assert words.shape == (2, 2, 32) and places.shape == (2, 2, 80)
    assert words[0, 0].sum() == 5 and words[0, 1].sum() == 5  # one token per word here
    assert not (words[0, 0] & words[0, 1]).any() and not words[1].any()  # dropped caption
    assert torch.equal(places[0], torch.from_numpy(object_tokens(scene, 17, 64, 64, (1, 2, 2))))


def test_word_ids_follow_the_token_slots_with_per_subject_text():
    """text_subjects puts each clause's tokens ([CLS] ... [SEP]) side by side: the word
    indices still point into the whole prompt ("and" is word 6 and has no token)."""
    encoder = TextEncoder(max_length=32, cache_size=0, subjects=True)
    ids = encoder.word_ids([TWO, ""])
    _, mask = encoder([TWO, ""])
    words = TWO.split()
    assert ids[0, :8].tolist() == [-1, 0, 1, 2, 3, 4, 5, -1]
    assert ids[0, 8:20].tolist() == [-1, *range(7, 17), -1]
    assert words[6] == "and" and 6 not in ids[0].tolist()
    assert (ids[0] >= 0).sum() == mask[0].sum() - 4 and (ids[1] < 0).all()


def test_loss_is_zero_on_the_object_and_grows_off_it():
    b, h, n, length = 1, 2, 6, 4
    words = torch.zeros(b, 2, length, dtype=torch.bool)
    words[0, 0, 1] = words[0, 1, 2] = True
    places = torch.zeros(b, 2, n, dtype=torch.bool)
    places[0, 0, :3] = places[0, 1, 3:] = True

    def probs(word_1_on: slice, word_2_on: slice) -> torch.Tensor:
        a = torch.full((b, h, n, length), 1e-9)
        a[..., word_1_on, 1] = 1.0
        a[..., word_2_on, 2] = 1.0
        return a / a.sum(-1, keepdim=True)

    right = grounding_loss([probs(slice(0, 3), slice(3, 6))], words, places)
    swapped = grounding_loss([probs(slice(3, 6), slice(0, 3))], words, places)
    half = grounding_loss([probs(slice(0, 6), slice(0, 6))], words, places)
    assert float(right) == pytest.approx(0.0, abs=1e-6)
    assert float(swapped) == pytest.approx(1.0, abs=1e-6)
    assert float(half) == pytest.approx(0.25, abs=1e-6)  # (1 - 1/2)^2
    nobody = torch.zeros_like(words)
    assert float(grounding_loss([probs(slice(0, 3), slice(3, 6))], nobody, places)) == 0.0


def test_the_dit_returns_cross_attention_of_the_asked_blocks_only():
    torch.manual_seed(0)
    dit = DiT(DiTConfig(in_channels=4, width=32, depth=3, heads=2)).eval()
    x, t = torch.randn(2, 4, 2, 4, 4), torch.rand(2)
    text, mask = torch.randn(2, 5, 384), torch.ones(2, 5, dtype=torch.bool)
    from tinysora.dit.patchify import grid_positions, patchify

    tokens, grid = patchify(x, dit.config.patch)
    positions = grid_positions(grid)
    plain = dit.forward_tokens(tokens, t, positions, text, mask, grid=grid)
    out, probs = dit.forward_tokens(tokens, t, positions, text, mask, grid=grid, cross_probs=(0, 2))
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-6)  # same velocity
    assert len(probs) == 2 and probs[0].shape == (2, 2, tokens.shape[1], 5)
    torch.testing.assert_close(probs[1].sum(-1), torch.ones(2, 2, tokens.shape[1]))


def test_a_tiny_dit_trains_with_grounding_and_logs_it(tmp_path, one_thread):
    recipe = tiny_recipe(
        tmp_path,
        top="cache_clips = 8\nbatch_size = 4\nencode_batch = 4\n",
        extra="[grounding]\nweight = 0.5\nblocks = [0]\n",
        steps=2,
    )
    train_dit(recipe, tmp_path / "run")
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    ground = [r["grounding"] for r in logs if "grounding" in r]
    assert ground and all(0.0 <= g <= 1.0 for g in ground)


def test_grounding_refuses_what_it_cannot_ground(tmp_path):
    bad = tiny_recipe(tmp_path, extra="[grounding]\nweight = 1.0\nblocks = [5]\n")
    with pytest.raises(ConfigError, match="blocks"):
        train_dit(bad, tmp_path / "run")
