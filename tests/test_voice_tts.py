"""The GPT stage and zero-shot text-to-speech: the model's parts (prefix-LM mask, KV
cache, sampling filters), the guards against GPT-SoVITS's reported failures (truncation,
endless output, loops), the training run, SpeechPipeline (whole and streamed) and
`tinysora speak`, with bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import reference_wav
from numerics import assert_close_fp32

from tinysora.voice.gpt import (
    LENGTH_MARGIN,
    GPTBlock,
    GPTConfig,
    SamplingConfig,
    Text2Semantic,
    filter_logits,
    find_loop,
    guided_attention_loss,
    prefix_lm_mask,
    sample_codes,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def small(**overrides) -> Text2Semantic:
    torch.manual_seed(0)
    c = GPTConfig(n_phonemes=12, codebook_size=16, dim=32, layers=2, heads=2, dropout=0.0)
    for k, v in overrides.items():
        setattr(c, k, v)
    return Text2Semantic(c).eval()


def test_fresh_block_is_identity_and_mask_is_prefix_lm():
    x = torch.randn(2, 5, 32)
    assert torch.equal(GPTBlock(32, 2, 4.0, 0.0)(x), x)
    m = prefix_lm_mask(torch.tensor([2, 3]), 3, torch.tensor([2, 1]), 2)[:, 0]  # (B, 5, 5)
    # example 0: phonemes 0-1 valid (2 is padding), codes 3-4 valid
    assert m[0, 0].tolist() == [True, True, False, False, False]  # a phoneme sees phonemes
    assert m[0, 3].tolist() == [True, True, False, True, False]  # a code: phonemes + itself
    assert m[0, 4].tolist() == [True, True, False, True, True]  # ... + earlier codes
    assert m[1, 3].tolist() == [True, True, True, True, False]  # example 1: one code valid


def test_kv_cache_decoding_equals_the_full_forward():
    model = small()
    for block in model.blocks:  # not identity blocks, so the cache matters
        for p in (block.attn.proj, block.mlp[2]):
            torch.nn.init.normal_(p.weight, std=0.1)
    phonemes, codes = torch.randint(3, 12, (7,)), torch.randint(0, 16, (9,))
    inputs = torch.cat([torch.tensor([model.config.bos]), codes])
    full = model(phonemes[None], torch.tensor([7]), inputs[None], torch.tensor([10]))[0]
    steps = model.stream(phonemes, codes[:4])
    cached = [next(steps)] + [steps.send((int(c), None)) for c in codes[4:]]
    assert_close_fp32(torch.stack(cached), full[4:])
    # a pointer model: each position also carries the phoneme its target code voices
    pointer = small(max_advance=2)
    torch.nn.init.normal_(pointer.blocks[0].attn.proj.weight, std=0.1)
    pointers = torch.tensor([-1] * 4 + [2, 2, 3, 3, 5, 6])  # the prompt's 4 codes: none
    full = pointer(
        phonemes[None], torch.tensor([7]), inputs[None], torch.tensor([10]), pointers=pointers[None]
    )[0]
    assert full.shape[-1] == 16 + 1 + 3  # codes, <eos>, then moves of 0-2 phonemes
    steps = pointer.stream(phonemes, codes[:4], int(pointers[4]))
    cached = [next(steps)] + [
        steps.send((int(c), int(q))) for c, q in zip(codes[4:], pointers[5:], strict=True)
    ]
    assert_close_fp32(torch.stack(cached), full[4:])
    moved = pointer(
        phonemes[None],
        torch.tensor([7]),
        inputs[None],
        torch.tensor([10]),
        pointers=pointers.roll(1)[None],
    )[0]
    assert not torch.allclose(moved[5:], full[5:])  # the pointer is read


def test_attention_maps_and_the_guided_attention_cost():
    model = small()
    for block in model.blocks:
        torch.nn.init.normal_(block.attn.proj.weight, std=0.1)
    phonemes, codes = torch.randint(3, 12, (2, 6)), torch.randint(0, 16, (2, 9))
    lengths = (torch.tensor([6, 4]), torch.tensor([9, 7]))
    plain = model(phonemes, lengths[0], codes, lengths[1])
    logits, maps = model(phonemes, lengths[0], codes, lengths[1], attention_layers=2)
    assert_close_fp32(logits, plain)  # the explicit attention computes the same
    assert len(maps) == 2 and maps[0].shape == (2, 2, 9, 6)
    # a diagonal map costs ~0, its mirror image a lot; queries before `free` cost nothing
    t, p = 10, 5
    diagonal = torch.zeros(1, 1, t, p)
    diagonal[0, 0, torch.arange(t), torch.arange(t) * p // t] = 1.0
    mirrored = diagonal.flip(-1)
    args = (torch.tensor([p]), torch.tensor([t]), torch.tensor([0]), 0.2)
    low, high = guided_attention_loss([diagonal], *args), guided_attention_loss([mirrored], *args)
    assert low < 0.1 < 0.5 < high
    free = guided_attention_loss(
        [mirrored], torch.tensor([p]), torch.tensor([t]), torch.tensor([t]), 0.2
    )
    assert free == 0


def test_filter_logits():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, -1.0])
    kept = filter_logits(logits, torch.tensor([], dtype=torch.long), 2, 1.0, 1.0, 1.0)
    assert torch.isfinite(kept).tolist() == [True, True, False, False, False]
    # top-p: 4 and 3 hold 0.64 + 0.24 = 0.88 of the mass; 0.7 needs both, 0.5 only the first
    assert torch.isfinite(filter_logits(logits, torch.tensor([]).long(), 0, 0.7, 1, 1)).sum() == 2
    assert torch.isfinite(filter_logits(logits, torch.tensor([]).long(), 0, 0.5, 1, 1)).sum() == 1
    penalized = filter_logits(logits, torch.tensor([0, 4]), 0, 1.0, 1.0, 2.0)
    assert penalized[0] == 2.0 and penalized[4] == -2.0 and penalized[1] == 3.0
    assert filter_logits(logits, torch.tensor([]).long(), 0, 1.0, 2.0, 1.0)[0] == 2.0


def test_find_loop():
    block = [5, 9, 2, 7, 7, 1, 3]
    assert find_loop([1, 2] + block * 3) == 7
    assert find_loop([1, 2] + block * 2) is None  # twice is not yet a loop
    assert find_loop([4] * 40) is None  # silence: one code held
    assert find_loop(list(range(40))) is None


def cycle_model(period: int = 7) -> Text2Semantic:
    """A GPT that, greedily, always follows code i with code (i + 1) % period: a loop."""
    model = small(min_codes_per_phoneme=1.0, max_codes_per_phoneme=30.0)
    with torch.no_grad():
        model.code_emb.weight.zero_()
        model.head.weight.zero_()
        model.head.bias.zero_()
        for i in range(period):
            model.code_emb.weight[i, i] = 100.0
            model.head.weight[(i + 1) % period, i] = 1.0
        model.code_emb.weight[model.config.bos, period - 1] = 100.0
    return model


def generate(model, n_phonemes, sampling, seed=0):
    phonemes = torch.randint(3, 12, (n_phonemes,))
    items = list(
        sample_codes(
            model,
            phonemes,
            torch.zeros(0, dtype=torch.long),
            n_phonemes,
            sampling,
            torch.Generator().manual_seed(seed),
        )
    )
    result = items[-1]
    assert items[: len(result.codes)] == result.codes  # streamed first (a loop's end is cut)
    assert result.stop == "loop" or len(items) - 1 == len(result.codes)
    return result


def test_guards_against_truncation_endless_output_and_loops():
    greedy = SamplingConfig(top_k=1, repetition_penalty=1.0)
    loop = generate(cycle_model(), 10, greedy)
    assert loop.stop == "loop" and loop.codes[:7] == [0, 1, 2, 3, 4, 5, 6]
    assert len(loop.codes) == 7  # the block said once: its two repeats cut
    # truncation: a model that wants to stop at once still says min x phonemes codes
    eager = small(min_codes_per_phoneme=1.5, max_codes_per_phoneme=3.0)
    with torch.no_grad():
        eager.head.bias[eager.config.eos] = 1e4
    short = generate(eager, 10, SamplingConfig())
    low, high = LENGTH_MARGIN
    assert short.stop == "eos" and len(short.codes) == int(low * 1.5 * 10)
    # endless: a model that never says <eos> stops at max x phonemes codes
    endless = small(min_codes_per_phoneme=1.5, max_codes_per_phoneme=3.0)
    with torch.no_grad():
        endless.head.bias[endless.config.eos] = -1e4
    long = generate(endless, 10, SamplingConfig(top_k=0, repetition_penalty=1.0))
    assert long.stop == "limit" and len(long.codes) == math.ceil(high * 3.0 * 10)


def test_a_pointer_model_says_each_phoneme_and_stops_past_the_last():
    greedy = SamplingConfig(top_k=1, repetition_penalty=1.0)
    # always one phoneme a code: exactly one code per target phoneme, whatever <eos> wants
    steady = small(max_advance=2, max_codes_per_phoneme=30.0)
    with torch.no_grad():
        steady.head.bias[steady.config.eos] = 1e4  # <eos> is not how a pointer model ends
        steady.head.bias[steady.config.eos + 1 + 1] = 1e4
    result = generate(steady, 9, greedy)
    assert result.stop == "eos" and len(result.codes) == 9
    # a pointer that never moves on is moved after max_dwell codes on one phoneme
    stuck = small(max_advance=2, max_dwell=3, max_codes_per_phoneme=30.0)
    with torch.no_grad():
        stuck.head.bias[stuck.config.eos + 1] = 1e4  # advance 0
    result = generate(stuck, 9, greedy)
    assert result.stop == "eos" and len(result.codes) == 9 * 3
    # skipping: the pointer moves at most max_advance phonemes a code
    hasty = small(max_advance=2, min_codes_per_phoneme=0.1, max_codes_per_phoneme=30.0)
    with torch.no_grad():
        hasty.head.bias[hasty.config.eos + 1 + 2] = 1e4
    assert len(generate(hasty, 9, greedy).codes) == 5  # ceil(9 / 2)


def test_pipeline_resamples_a_looping_piece(tiny_tts):
    from tinysora.voice.convert import VoiceConverter
    from tinysora.voice.speech import Piece, Reference, SpeechPipeline

    voice = VoiceConverter.from_pretrained(tiny_tts / "model")
    ref = Reference(np.zeros(1, np.float32), torch.zeros(1, 80, 1), torch.tensor([0, 1]), [])
    piece = Piece("words", [3] * 10, 0.3)
    greedy = SamplingConfig(top_k=1, repetition_penalty=1.0)
    result, attempts = SpeechPipeline(cycle_model(), voice).codes(ref, piece, greedy, 0, 2)
    assert result.stop == "loop" and attempts == 3  # every seed loops: three tries, then give up
    eager = small(min_codes_per_phoneme=1.0)
    with torch.no_grad():
        eager.head.bias[eager.config.eos] = 1e4
    result, attempts = SpeechPipeline(eager, voice).codes(ref, piece, greedy, 0, 2)
    assert result.stop == "eos" and attempts == 1


@pytest.mark.filterwarnings("ignore:skipped")  # emoji-only text warns, then fails
def test_text_is_cleaned_and_bad_text_is_one_line_errors():
    from tinysora.voice.text import MAX_TEXT_CHARS, TextError, clean_text, split_sentences

    assert clean_text("  Hello,\n  world!  ") == "Hello, world!"
    with pytest.warns(UserWarning, match="skipped 2 character"):
        assert clean_text("Hi \U0001f600 there \u4e16.") == "Hi there ."
    assert clean_text("Caf\u00e9 na\u00efve") == "Caf\u00e9 na\u00efve"  # Latin letters stay
    for bad, message in (
        ("", "empty"),
        ("   ", "empty"),
        ("?!...", "no words"),
        ("\U0001f600\U0001f389", "no words"),
        ("a" * (MAX_TEXT_CHARS + 1), "the cap is"),
    ):
        with pytest.raises(TextError, match=message) as e:
            clean_text(bad)
        assert "\n" not in str(e.value)
    assert split_sentences("One. Two? Three! Four; five ...") == [
        "One.",
        "Two?",
        "Three!",
        "Four;",
        "five ...",
    ]


def test_train_voice_gpt_exports_a_whole_tts_model(tiny_tts):
    model = tiny_tts / "model"
    for name in ("gpt", "content", "sovits"):
        assert (model / name / "config.json").is_file()
        assert (model / name / "model.safetensors").is_file()
    config = json.loads((model / "gpt" / "config.json").read_text())
    assert 0 < config["min_codes_per_phoneme"] < config["max_codes_per_phoneme"]
    assert config["max_advance"] == 2 and config["max_dwell"] >= 1  # a pointer model
    for split in ("train", "test_seen"):  # its aligned corpus
        assert (tiny_tts / "features" / f"align_{split}.safetensors").is_file()
    log = [json.loads(line) for line in (tiny_tts / "log.jsonl").read_text().splitlines()]
    assert log[-1]["eval"]["val_loss"] > 0 and log[-1]["eval"]["val_advance_ce"] > 0
    assert "acc" in log[-2] and "advance_ce" in log[-2]
    assert (tiny_tts / "checkpoints" / "latest").exists()


def test_speech_pipeline_whole_streamed_and_bad_input(tiny_tts, tiny_corpus, tmp_path):
    import soundfile

    from tinysora.voice.audio import AudioError
    from tinysora.voice.speech import MAX_PIECE_PHONEMES, SpeechPipeline, TextError

    tts = SpeechPipeline.from_pretrained(tiny_tts / "model")
    ref, _, rows = reference_wav(tiny_corpus, tmp_path / "ref.wav")
    text = "The red ball rolls. A blue cat sleeps!"
    out = tts(text, ref_audio=ref, seed=3, retries=0)
    c = tts.gpt.config
    assert [p["text"] for p in out.pieces] == ["The red ball rolls.", "A blue cat sleeps!"]
    for p in out.pieces:  # every piece within the duration guard
        low, high = LENGTH_MARGIN
        assert int(low * c.min_codes_per_phoneme * p["phonemes"]) <= p["codes"]
        assert p["codes"] <= math.ceil(high * c.max_codes_per_phoneme * p["phonemes"])
    per_code = 2 * tts.voice.spec.hop
    codes = sum(p["codes"] for p in out.pieces)
    assert len(out.audio) == codes * per_code + int(0.3 * tts.sample_rate)
    assert out.audio.dtype == np.float32 and np.isfinite(out.audio).all()
    again = tts(text, ref_audio=ref, seed=3, retries=0)
    assert np.array_equal(out.audio, again.audio)  # seeded
    # streamed: the same codes (same seeds), so the same length, in several chunks
    chunks = list(tts.stream(text, ref_audio=ref, seed=3))
    assert len(chunks) >= 3 and sum(map(len, chunks)) == len(out.audio)
    # speed 2: the same codes at half the frames; a transcript of the reference is a prompt
    fast = tts(text, ref_audio=ref, seed=3, retries=0, speed=2.0)
    assert [p["codes"] for p in fast.pieces] == [p["codes"] for p in out.pieces]
    assert abs(len(fast.audio) - len(out.audio) / 2) <= 2 * per_code
    assert tts(text, ref_audio=ref, ref_text=rows[0][2], retries=0).pieces[0]["codes"] > 0
    # long text: cut into sentences, and a long sentence at commas, each piece bounded
    long = ", ".join(["the quick brown fox jumps over the lazy dog"] * 6) + ". The end."
    pieces = tts.pieces(long)
    assert len(pieces) >= 3 and pieces[-1].text == "The end."
    assert all(0 < len(p.phonemes) <= MAX_PIECE_PHONEMES for p in pieces)
    # bad input: one-line errors naming the problem
    short = tmp_path / "short.wav"
    soundfile.write(str(short), np.zeros(2 * 16000, np.float32) + 0.1, 16000)
    silent = tmp_path / "silent.wav"
    soundfile.write(str(silent), np.zeros(5 * 16000, np.float32), 16000)
    junk = tmp_path / "junk.wav"
    junk.write_text("not audio")
    for bad_ref, message in ((short, "3-10 s"), (silent, "silent"), (junk, "not audio")):
        with pytest.raises(AudioError, match=message):
            tts("Hello.", ref_audio=bad_ref)
    with pytest.raises(TextError, match="no words"):
        tts("...", ref_audio=ref)
    with pytest.raises(Exception, match="speed must be in"):
        tts("Hello.", ref_audio=ref, speed=3.0)


def test_knobs_left_out_take_the_models_speech_json(tiny_tts, tiny_corpus, tmp_path):
    """One place for each default: a call's knobs left out (None) take the model
    directory's speech.json (the trainer writes SpeechConfig's), which the CLI, the
    server and narration all go through."""
    import shutil

    from tinysora.errors import UserError
    from tinysora.voice.speech import SpeechConfig, SpeechPipeline

    model = tmp_path / "model"
    shutil.copytree(tiny_tts / "model", model)
    assert SpeechConfig.load(model / "speech.json") == SpeechConfig()
    ref, _, _ = reference_wav(tiny_corpus, tmp_path / "ref.wav")
    text = "The red ball rolls."
    plain = SpeechPipeline.from_pretrained(model)
    assert plain.to("cpu") is plain and plain.device == torch.device("cpu")
    cfg = SpeechConfig(noise_scale=0.0, speed=2.0, retries=0)
    cfg.sampling.top_k = 3
    cfg.save(model / "speech.json")
    tts = SpeechPipeline.from_pretrained(model)
    assert tts.config == cfg
    given = plain(text, ref_audio=ref, seed=1, top_k=3, noise_scale=0.0, speed=2.0, retries=0)
    defaulted = tts(text, ref_audio=ref, seed=1)
    assert np.array_equal(defaulted.audio, given.audio)
    assert not np.array_equal(plain(text, ref_audio=ref, seed=1).audio, given.audio)
    assert tts(text, ref_audio=ref, seed=1, speed=1.0).seconds > 1.5 * defaulted.seconds
    for knob, message in (("noise_scale", "noise_scale must be in"), ("retries", "retries must")):
        with pytest.raises(UserError, match=message):
            tts(text, ref_audio=ref, **{knob: -1})
    with pytest.raises(UserError, match="chunk_codes must"):
        next(tts.stream(text, ref_audio=ref, chunk_codes=0))


def test_speak_options_left_out_are_none_for_the_models_defaults():
    from tinysora.cli import build_parser

    args = build_parser().parse_args(["speak", "Hi.", "-o", "out.wav"])
    knobs = ("speed", "top_k", "top_p", "temperature", "repetition_penalty")
    assert all(getattr(args, k) is None for k in knobs)  # SpeechConfig.given keeps the model's


def test_speak_cli(tiny_tts, tiny_corpus, tmp_path):
    import soundfile

    ref, _, _ = reference_wav(tiny_corpus, tmp_path / "ref.wav")
    out = tmp_path / "out.wav"
    cli = [sys.executable, "-m", "tinysora", "speak"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--model", str(tiny_tts / "model"), "--ref", str(ref), "-o", str(out)]
    done = subprocess.run(
        cli + ["Hello there \U0001f600.", *common, "--seed", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "skipped 1 character" in done.stderr and "wrote" in done.stdout
    assert soundfile.info(str(out)).samplerate == 16000 and soundfile.info(str(out)).duration > 0
    for bad, message in (
        (["", *common], "empty"),
        (["Hi.", *common[:-1], str(tmp_path / "x.mp3")], ".wav, .flac or .ogg"),
        (["Hi.", *common, "--speed", "9"], "speed must be in"),
        (["Hi.", "--model", str(tmp_path), "--ref", str(ref), "-o", str(out)], "has no gpt/"),
    ):
        fail = subprocess.run(cli + bad, capture_output=True, text=True, timeout=600, env=env)
        assert fail.returncode == 2 and fail.stderr.count("\n") == 1, fail.stderr
        assert message in fail.stderr


def test_frames_covering():
    from tinysora.pipeline import frames_covering

    assert frames_covering(2.0, 8) == 17  # 16 frames would do; 1 + 4k makes it 17
    assert frames_covering(2.125, 8) == 17 and frames_covering(2.13, 8) == 21
    assert frames_covering(0.0, 8) == 1


def test_generate_narrated_video(tiny_tts, tiny_corpus, tmp_path):
    """`tinysora generate --narrate`: the speech comes first and the clip is extended to
    hold it; the mp4's AAC track and H.264 track last the same within one frame."""
    from tinysora.io.video import audio_info, video_info

    ref, _, _ = reference_wav(tiny_corpus, tmp_path / "ref.wav")
    out = tmp_path / "narrated.mp4"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [
        sys.executable,
        "-m",
        "tinysora",
        "generate",
        "a red circle moving left",
        "--steps",
        "2",
        "--frames",
        "5",
        "-o",
        str(out),
        "--voice-model",
        str(tiny_tts / "model"),
        "--voice",
        str(ref),
    ]
    text = "The red circle moves to the left. Then it stops."
    done = subprocess.run(
        cli + ["--narrate", text], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr
    video, audio = video_info(out), audio_info(out)
    assert audio["codec"] == "aac" and video["codec"] == "h264"
    seconds = video["frames"] / video["fps"]
    assert video["frames"] > 5  # extended from --frames 5 to hold the speech
    assert abs(audio["seconds"] - seconds) <= 1 / video["fps"]
    silent = subprocess.run(
        cli[:-4] + ["-o", str(tmp_path / "x.gif"), "--narrate", "Hi."],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert silent.returncode == 2 and ".mp4, .mov or .mkv" in silent.stderr


def test_bundled_speech_model_speaks_in_its_default_voice(tmp_path):
    """The bundled weights/voice speaks with no model and no reference given (its default
    voice), and its GPT has learned the codes: teacher-forced on the default voice's own
    clip and transcript, its next-code loss is far below chance (ln 1025 = 6.9 nats).
    How well it speaks is measured by `eval voice --tts` (weights/README.md)."""
    import soundfile

    from tinysora.train.voice_gpt import collate, gpt_loss
    from tinysora.voice.speech import SpeechPipeline
    from tinysora.voice.text import phonemize

    tts = SpeechPipeline.from_pretrained()
    clip, transcript = tts.default_voice
    ref = tts.reference(None)
    c = tts.gpt.config
    phonemes = torch.tensor(tts.vocab.encode(phonemize([transcript])[0]))
    with torch.no_grad():
        loss, _ = gpt_loss(tts.gpt, collate([(phonemes, ref.codes, 0, None)], c.bos, c.eos))
    assert float(loss) < 4.0
    out = tts("A small red circle is bouncing. The blue square waits.", seed=0)
    assert len(out.pieces) == 2 and 1.0 < out.seconds < 10.0
    wav = tmp_path / "said.wav"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "tinysora", "speak", "Hello there.", "-o", str(wav)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert soundfile.info(str(wav)).duration > 0.3
