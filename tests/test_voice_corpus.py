"""The voice stack's floor: audio I/O and checks, the spectra, text -> phonemes, and the
offline corpus (real espeak-ng and flite processes, real wav files)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from tinysora.voice.audio import (
    AudioError,
    SpectrogramConfig,
    check_reference,
    linear_spectrogram,
    load_audio,
    mel_matrix,
    mel_spectrogram,
    save_audio,
)
from tinysora.voice.corpus import (
    UNSEEN_BASES,
    CorpusError,
    build_corpus,
    read_list,
    voice_catalogue,
)
from tinysora.voice.sentences import sentences
from tinysora.voice.text import PhonemeVocab, phonemize

needs_engines = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None,
    reason="make test installs espeak-ng and flite",
)
RATE = 16000


def tone(seconds: float, hz: float = 220.0, rate: int = RATE, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


# --------------------------------------------------------------------------- audio


def test_load_audio_mixes_stereo_and_resamples(tmp_path):
    import soundfile

    left, right = tone(1.0, 220, 22050), tone(1.0, 220, 22050, amp=0.1)
    soundfile.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 22050)
    wav = load_audio(tmp_path / "s.wav", RATE)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - RATE) <= 2
    assert np.abs(wav).max() == pytest.approx(0.3, abs=0.01)  # the mean of both channels


def test_save_and_load_roundtrip_formats(tmp_path):
    x = tone(0.5)
    for suffix in (".wav", ".flac", ".ogg"):
        path = save_audio(tmp_path / f"a{suffix}", x, RATE)
        y = load_audio(path, RATE)
        n = min(len(x), len(y))
        assert abs(len(y) - len(x)) < 0.01 * RATE
        assert np.corrcoef(x[:n], y[:n])[0, 1] > 0.99
    with pytest.raises(AudioError, match=r"\.wav, \.flac or \.ogg"):
        save_audio(tmp_path / "a.mp4", x, RATE)


def test_load_audio_decodes_compressed_audio_with_pyav(tmp_path):
    import av

    path = tmp_path / "a.m4a"
    x = tone(1.0, 440, 44100)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray(x[None, :], format="flt", layout="mono")
        frame.sample_rate = 44100
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    y = load_audio(path, RATE)
    assert abs(len(y) / RATE - 1.0) < 0.1
    spectrum = np.abs(np.fft.rfft(y[2000:14000]))
    assert abs(np.argmax(spectrum) * RATE / 12000 - 440) < 5


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"this is not audio at all" * 10, "not audio"), (None, "does not exist")],
)
def test_load_audio_bad_files_one_line(tmp_path, content, message):
    path = tmp_path / "x.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioError, match=message) as e:
        load_audio(path, RATE)
    assert "\n" not in str(e.value)


def test_check_reference_length_and_silence():
    assert len(check_reference(tone(5.0), RATE)) == 5 * RATE
    for seconds in (2.0, 11.0):
        with pytest.raises(AudioError, match="give a clip of 3-10 s"):
            check_reference(tone(seconds), RATE)
    with pytest.raises(AudioError, match="silent"):
        check_reference(np.zeros(5 * RATE, np.float32) + 1e-6, RATE)


def test_spectrogram_frames_and_mel_peak():
    cfg = SpectrogramConfig()
    x = torch.from_numpy(tone(1.0, 1000.0))[None]
    lin = linear_spectrogram(x, cfg)
    assert lin.shape == (1, cfg.n_fft // 2 + 1, RATE // cfg.hop)  # 50 frames a second
    peak_bin = lin[0, :, 25].argmax().item()
    assert abs(peak_bin * RATE / cfg.n_fft - 1000.0) < RATE / cfg.n_fft
    mel = mel_matrix(cfg)
    assert mel.shape == (cfg.n_mels, cfg.n_fft // 2 + 1) and (mel >= 0).all()
    assert (mel.sum(dim=1) > 0).all()  # no empty band
    logmel = mel_spectrogram(x, cfg)
    centres = mel.argmax(dim=1) * RATE / cfg.n_fft  # each band's centre frequency
    band = logmel[0, :, 25].argmax().item()
    assert abs(centres[band].item() - 1000.0) < 60.0


# --------------------------------------------------------------------------- text


def test_sentences_are_distinct_deterministic_and_phonemize():
    a, b = sentences(300, seed=3), sentences(300, seed=3)
    assert a == b and len(set(a)) == 300
    assert any(s.endswith("background.") for s in a)  # Shapes World captions are in
    assert sentences(50, seed=4) != a[:50]
    phones = phonemize(["A red circle, moving left."])[0]
    assert phones.startswith("ɐ ɹˈɛd") and "," in phones
    vocab = PhonemeVocab()
    ids = vocab.encode(phones)
    assert vocab.decode(ids) == phones
    assert min(ids) >= 3  # ids 0-2 are <pad> <bos> <eos>


def test_vocab_skips_unknown_symbols_with_a_warning():
    vocab = PhonemeVocab()
    with pytest.warns(UserWarning, match="skipped 1 unknown"):
        ids = vocab.encode("ɐ\u2603b")
    assert vocab.decode(ids) == "ɐb"


# --------------------------------------------------------------------------- corpus


def test_catalogue_has_40_voices_and_whole_unseen_bases():
    voices = voice_catalogue()
    assert len({v.name for v in voices}) == len(voices) >= 40
    unseen = [v for v in voices if v.split == "unseen"]
    assert len(unseen) >= 6
    train_bases = {v.base_id for v in voices if v.split == "train"}
    assert not {v.base_id for v in unseen} & train_bases  # no variant of them is trained
    assert set(UNSEEN_BASES) <= {v.base_id for v in unseen}
    assert {v.engine for v in voices} == {"espeak", "flite", "festival"}


@needs_engines
def test_corpus_splits_files_and_resume(tmp_path):
    import soundfile

    out = tmp_path / "corpus"
    summary = build_corpus(out, hours=0.01, engines=("espeak", "flite"), test_per_voice=(1, 2))
    assert summary["failed"] == 0 and summary["unknown_phoneme_symbols"] == 0
    train = read_list(out / "train.list")
    seen, unseen = read_list(out / "test_seen.list"), read_list(out / "test_unseen.list")
    assert len(train) == summary["utterances"]["train"] >= summary["voices"]["train"]
    train_speakers = {r[1] for r in train}
    assert {r[1] for r in seen} <= train_speakers
    assert not {r[1] for r in unseen} & train_speakers  # zero-shot voices never trained
    assert len({r[1] for r in unseen}) == summary["voices"]["unseen"] >= 5
    assert not {r[2] for r in seen + unseen} & {r[2] for r in train}  # held-out sentences
    vocab = PhonemeVocab(out / "phonemes.txt")
    for wav, _speaker, text, phones in train[:10] + unseen[:4]:
        info = soundfile.info(str(wav))
        assert info.samplerate == RATE and info.channels == 1 and 0.5 < info.duration < 15
        assert text and vocab.decode(vocab.encode(phones, warn=False)) == phones
    assert json.loads((out / "corpus.json").read_text())["hours"]["train"] > 0
    # resume: a lost wav is made again, the others are not touched
    lost = train[3][0]
    mtimes = {r[0]: r[0].stat().st_mtime_ns for r in train}
    lost.unlink()
    build_corpus(out, hours=0.01, engines=("espeak", "flite"), test_per_voice=(1, 2))
    assert lost.is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if p != lost)
    assert read_list(out / "train.list") == train


@needs_engines
def test_corpus_cli_and_errors(tmp_path):
    cli = [sys.executable, "-m", "tinysora", "voice", "corpus"]
    done = subprocess.run(
        cli
        + [
            "--out",
            str(tmp_path / "c"),
            "--hours",
            "0.005",
            "--engines",
            "flite",
            "--test-per-voice",
            "1",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "train voices" in done.stdout and (tmp_path / "c" / "train.list").is_file()
    bad = subprocess.run(
        cli + ["--out", str(tmp_path / "d"), "--engines", "espeak,bogus"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2 and "unknown engine(s) ['bogus']" in bad.stderr
    assert bad.stderr.count("\n") == 1
    with pytest.raises(CorpusError, match="--hours must be positive"):
        build_corpus(tmp_path / "e", hours=0)


def test_missing_engine_names_the_package(tmp_path):
    """With no synthesizer on PATH, the command names the packages to install."""
    cli = [sys.executable, "-m", "tinysora", "voice", "corpus", "--out", str(tmp_path)]
    env = {**os.environ, "PATH": str(tmp_path)}
    done = subprocess.run(
        cli + ["--engines", "flite,festival"], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 2
    assert "apt-get install -y flite festival festvox-kallpc16k" in done.stderr
    assert done.stderr.count("\n") == 1


@pytest.mark.slow
def test_corpus_with_festival(tmp_path):
    """Festival's three voices (make test-slow installs them) in a small corpus."""
    if shutil.which("text2wave") is None:
        pytest.skip("make test-slow installs festival and its voices")
    summary = build_corpus(tmp_path, hours=0.002, engines=("festival",), test_per_voice=(1, 1))
    assert summary["failed"] == 0 and summary["voices"] == {"train": 4, "unseen": 2}
    rows = read_list(tmp_path / "train.list") + read_list(tmp_path / "test_unseen.list")
    bases = {r[1].rsplit("-", 1)[0].removeprefix("festival-") for r in rows}
    assert bases == {"kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"}
    import soundfile

    assert all(soundfile.info(str(r[0])).samplerate == RATE for r in rows)
