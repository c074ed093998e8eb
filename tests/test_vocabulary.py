"""A model's vocabulary (the words of its training captions) and the prompt check."""

from __future__ import annotations

from pathlib import Path

from tinysora.pipeline import PipelineConfig
from tinysora.text.vocabulary import (
    STOP_WORDS,
    from_captions,
    merge,
    unknown_words,
    unknown_words_warning,
    words,
)
from tinysora.worlds.captions import paraphrase, vocabulary
from tinysora.worlds.shapes import SplitMix64, sample_scene

WORLD = vocabulary()
BUNDLED = Path(__file__).resolve().parents[1] / "weights" / "pipeline.json"


def test_every_training_caption_of_the_world_is_in_its_vocabulary():
    rng = SplitMix64(0, 7)
    for seed in range(300):
        scene = sample_scene(seed)
        everything = paraphrase(scene, rng, 0.5, 0.5, 0.5, 1.0)  # synonyms always
        assert unknown_words([scene.caption, everything, paraphrase(scene, rng)], WORLD) == []
    assert list(WORLD) == ["colours", "shapes", "motions", "sizes", "backgrounds"]


def test_unknown_words_are_named_with_close_suggestions():
    assert unknown_words(["An astronaut riding a horse on Mars"], WORLD) == [
        "astronaut",
        "riding",
        "horse",
        "mars",
    ]
    line = unknown_words_warning(["a smal red cirlce", "a red cirlce"], WORLD)
    assert "smal -> small?, cirlce -> circle? (it knows colours: red, green" in line
    assert "shapes: circle, square, triangle" in line and "backgrounds: black" in line
    assert "\n" not in line
    assert unknown_words_warning(["a big crimson ball rising on a navy background"], WORLD) is None


def test_stop_words_pass_and_a_model_without_a_vocabulary_is_not_checked():
    assert {"a", "the", "on", "of", "and"} <= STOP_WORDS
    assert unknown_words(["the red circle of a square, on it"], WORLD) == []
    assert unknown_words(["an astronaut"], {}) == []
    assert unknown_words_warning(["an astronaut"], {}) is None


def test_free_captions_give_their_words_most_frequent_first():
    found = from_captions(["A dog runs on the beach.", "the dog sleeps", "Dog-sled 2"])
    assert found == {"words": ["dog", "beach", "runs", "sled", "sleeps"]}
    assert words("Dog-sled 2, it's") == ["dog", "sled", "it", "s"]
    assert from_captions([]) == {}
    assert merge({"a": ["x", "y"]}, {"a": ["y", "z"], "b": ["w"]}) == {
        "a": ["x", "y", "z"],
        "b": ["w"],
    }


def test_the_bundled_model_keeps_the_worlds_vocabulary():
    assert PipelineConfig.load(BUNDLED).vocabulary == WORLD
