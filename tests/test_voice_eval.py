"""`tinysora eval voice`: its own parts here; the full run with the offline judges
(pocketsphinx, Resemblyzer, DNSMOS, pyworld) in `make test-slow`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tinysora.eval.voice import bigram_arpa, mcd, reference_clip, words
from tinysora.voice.audio import SpectrogramConfig


def _read_arpa(path):
    uni, bi, section = {}, {}, None
    for line in path.read_text().splitlines():
        if line.startswith("\\"):
            section = line
            continue
        parts = line.split()
        if section == "\\1-grams:" and parts:
            uni[parts[1]] = (10 ** float(parts[0]), 10 ** float(parts[2]))
        elif section == "\\2-grams:" and parts:
            bi[(parts[1], parts[2])] = 10 ** float(parts[0])
    return uni, bi


def test_bigram_lm_is_a_distribution(tmp_path):
    sentences = ["A red circle moves left.", "A blue square moves right!", "The red one."]
    uni, bi = _read_arpa(bigram_arpa(sentences, tmp_path / "lm.arpa"))
    vocab = [w for w in uni if w != "<s>"]
    assert math.isclose(sum(uni[w][0] for w in vocab), 1.0, rel_tol=1e-5)
    for history in ("<s>", "a", "red", "moves"):
        total = sum(bi.get((history, w), uni[history][1] * uni[w][0]) for w in vocab)
        assert math.isclose(total, 1.0, rel_tol=1e-4), history
    assert words("It's A red-circle.") == ["it's", "a", "red", "circle"]


def test_mcd_zero_for_equal_and_grows_with_difference():
    spec = SpectrogramConfig()
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    a = (0.3 * np.sin(2 * np.pi * 200 * t) + 0.01 * rng.standard_normal(16000)).astype(np.float32)
    assert mcd(a, a, spec) == 0.0
    b = (0.3 * np.sin(2 * np.pi * 900 * t) + 0.01 * rng.standard_normal(16000)).astype(np.float32)
    assert mcd(a, b, spec) > 1.0


def test_reference_clip_is_3_to_10_s(tiny_corpus):
    from tinysora.voice.corpus import read_list

    rows = read_list(tiny_corpus / "test_seen.list")
    clip, used = reference_clip([r[0] for r in rows[:12]])
    assert 3.0 * 16000 <= len(clip) <= 10.0 * 16000 and used >= 1


@pytest.mark.slow
def test_eval_voice_end_to_end(tiny_corpus, tiny_voice_model, tmp_path):
    """The whole evaluation with the real judges on a (barely trained) tiny voice model."""
    pytest.importorskip("pocketsphinx")
    out = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "tinysora",
        "eval",
        "voice",
        "--model",
        str(tiny_voice_model),
        "--corpus",
        str(tiny_corpus),
        "--n",
        "2",
        "--json",
        str(out),
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resynthesis  WER" in done.stdout and "RTF" in done.stdout
    r = json.loads(out.read_text())
    assert r["n"] == 2 and 0 <= r["source"]["wer"] <= 1.5 and r["rtf"] > 0
    for task in ("resynthesis", "conversion"):
        assert -1 <= r[task]["sim_ref"] <= 1 and 1 <= r[task]["dnsmos"] <= 5
        assert len(r["rows"][task]) == 2
    assert r["resynthesis"]["mcd"] > 0 and set(r["targets"]) >= {"rtf_le_0.2"}


@pytest.mark.slow
def test_eval_voice_tts_end_to_end(tiny_corpus, tiny_tts, tmp_path):
    """`eval voice --tts` with the real judges on a (barely trained) tiny speech model."""
    pytest.importorskip("pocketsphinx")
    out = tmp_path / "tts.json"
    cmd = [
        sys.executable,
        "-m",
        "tinysora",
        "eval",
        "voice",
        "--tts",
        "--model",
        str(tiny_tts / "model"),
        "--corpus",
        str(tiny_corpus),
        "--n",
        "3",
        "--json",
        str(out),
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tts          WER" in done.stdout and "first streamed audio" in done.stdout
    r = json.loads(out.read_text())
    assert r["n"] == 3 and len(r["rows"]) == 3 and r["rtf"] > 0
    assert 0 <= r["engine_wer"] <= 1.5 and -1 <= r["sim_ref"] <= 1 and 1 <= r["dnsmos"] <= 5
    assert r["first_audio_s"]["max"] > 0 and sum(r["stops"].values()) >= 3
    assert set(r["targets"]) == {
        "wer_le_1.5x_engine",
        "sim_ref_ge_0.80",
        "duration_within_0.6_1.6x",
        "rtf_le_0.3",
        "first_audio_lt_1s",
    }
