"""The forced aligner behind the GPT stage's phoneme pointer: the monotonic Viterbi path
(marks without sound may be passed over, phonemes may not), the longest rest on one
phoneme, the pointer/advance targets a training batch carries, and a pointer model
warm-started from a plain run (``train voice-gpt --init``)."""

from __future__ import annotations

import numpy as np
import torch

from tinysora.train.voice_align import longest_rest, silent_marks, viterbi
from tinysora.voice.text import PhonemeVocab


def scored(path: list[int], p: int) -> np.ndarray:
    """(T, P) scores that favour ``path`` (one state per frame) by 5 nats."""
    scores = np.full((len(path), p), -5.0)
    scores[np.arange(len(path)), path] = 0.0
    return scores


def test_viterbi_follows_the_evidence_and_passes_over_silent_marks_only():
    silent = np.array([False, True, False, True, False])
    truth = [0, 0, 2, 2, 3, 4, 4]  # state 1 (a silent mark) has no frame
    assert viterbi(scored(truth, 5), silent).tolist() == truth
    # leading and trailing silent marks may be left out entirely
    edges = np.array([True, False, False, False, True])
    assert viterbi(scored([1, 1, 2, 3, 3], 5), edges).tolist() == [1, 1, 2, 3, 3]
    # a phoneme is never passed over: evidence for 0, 0, 2, 2 still gives state 1 a frame
    path = viterbi(scored([0, 0, 2, 2], 3), np.zeros(3, dtype=bool))
    assert path.tolist() in ([0, 1, 2, 2], [0, 0, 1, 2])
    # monotonic: evidence that goes back is not followed back
    back = viterbi(scored([0, 1, 2, 1, 2], 3), np.zeros(3, dtype=bool))
    assert np.all(np.diff(back) >= 0) and back[0] == 0 and back[-1] == 2


def test_silent_marks_are_the_non_letters():
    vocab = PhonemeVocab()
    silent = {
        s for s, quiet in zip(vocab.symbols, silent_marks(vocab).tolist(), strict=True) if quiet
    }
    assert {" ", ",", ".", "ˈ", "ˌ", "ː", "<pad>"} <= silent
    assert not {"a", "ə", "ʃ", "θ", "ŋ", "t"} & silent


def test_longest_rest():
    pointers = torch.tensor([0, 0, 0, 1, 2, 2, 0, 1, 1, 1, 1])  # two utterances: 6 + 5
    offsets = torch.tensor([0, 6, 11])
    assert longest_rest(pointers, offsets, q=1.0) == 4
    assert longest_rest(pointers, offsets, q=0.0) == 1


def test_a_batch_carries_each_target_codes_phoneme_and_the_move_after_it():
    from tinysora.train.voice_gpt import collate

    phonemes = torch.tensor([5, 6, 3, 7, 8, 9])  # prompt "5 6", space, target "7 8 9"
    codes = torch.tensor([1, 2, 3, 4, 5, 6, 7])  # prompt codes 1-3, target codes 4-7
    pointed = torch.tensor([3, 3, 4, 5])  # the target codes' phonemes (indices above)
    batch = collate([(phonemes, codes, 0, pointed)], bos=17, eos=16, max_advance=2)
    # position k predicts code k: prompt positions carry no pointer, <eos>'s the last
    assert batch["pointers"][0].tolist() == [-1, -1, -1, 3, 3, 4, 5, 5]
    # moves: 0, 1, 1, then past the end (6 - 5 = 1); the prompt's and <eos>'s unscored
    assert batch["advance"][0].tolist() == [-100, -100, -100, 0, 1, 1, 1, -100]
    assert batch["targets"][0].tolist() == [1, 2, 3, 4, 5, 6, 7, 16]


def test_warm_start_a_pointer_model_from_a_plain_run(tmp_path):
    import json

    import pytest

    from tinysora.io.checkpoint import CheckpointError, save_tensors
    from tinysora.train.voice_gpt import warm_start
    from tinysora.voice.gpt import GPTConfig, Text2Semantic

    small = dict(n_phonemes=12, codebook_size=16, dim=32, layers=2, heads=2)
    torch.manual_seed(0)
    plain = Text2Semantic(GPTConfig(**small))
    step = tmp_path / "run" / "checkpoints" / "step_00000040"
    step.mkdir(parents=True)
    save_tensors(plain.state_dict(), step / "ema.safetensors")
    (step / "state.json").write_text(json.dumps({"step": 40}))
    (step.parent / "latest").write_text("step_00000040")
    pointer = Text2Semantic(GPTConfig(**small, max_advance=2))
    fresh = pointer.head.weight[17:].clone()
    assert warm_start(pointer, tmp_path / "run") == 40
    assert torch.equal(pointer.head.weight[:17], plain.head.weight)  # codes + <eos> rows
    assert torch.equal(pointer.head.weight[17:], fresh)  # the advance rows start fresh
    assert torch.equal(pointer.blocks[1].mlp[0].weight, plain.blocks[1].mlp[0].weight)
    wider = Text2Semantic(GPTConfig(**{**small, "dim": 64}, max_advance=2))
    with pytest.raises(CheckpointError, match="has shape"):
        warm_start(wider, tmp_path / "run")
    with pytest.raises(CheckpointError, match="no checkpoints/latest"):
        warm_start(pointer, tmp_path)
