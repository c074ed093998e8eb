"""The phonemes come from the espeak-ng inside the espeakng-loader wheel, so speech
works after `pip install` alone; the system's libespeak-ng is only a fallback (or the
choice when PHONEMIZER_ESPEAK_LIBRARY names it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import espeakng_loader
import pytest

from tinysora.voice.text import phoneme_engine, phonemize

ENGINE = (
    "from tinysora.voice.text import phoneme_engine, phonemize; import json; "
    "print(json.dumps([phoneme_engine(), phonemize(['The door is open.'])]))"
)
SYSTEM = Path("/usr/lib/x86_64-linux-gnu/libespeak-ng.so.1")


def test_the_bundled_library_and_data_are_used():
    """Even where the system has espeak-ng 1.51 (make test installs it for the corpus
    tests), the wheel's 1.52 library and data phonemize."""
    engine = phoneme_engine()
    bundled = Path(espeakng_loader.get_library_path()).resolve()
    assert Path(engine["library"]).resolve() == bundled
    assert engine["version"] == "1.52.0"
    assert phonemize(["A small red circle bouncing."]) == ["ɐ smˈɔːl ɹˈɛd sˈɜːkəl bˈaʊnsɪŋ."]


def run_engine(env: dict) -> tuple[dict, list[str]]:
    res = subprocess.run(
        [sys.executable, "-c", ENGINE], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-1000:]
    return json.loads(res.stdout)


@pytest.mark.skipif(not SYSTEM.exists(), reason="no system espeak-ng (make test installs it)")
def test_phonemizer_env_var_picks_the_system_library():
    env = {**os.environ, "PHONEMIZER_ESPEAK_LIBRARY": str(SYSTEM)}
    engine, phonemes = run_engine(env)
    assert Path(engine["library"]).resolve() == SYSTEM.resolve()
    assert engine["version"] == "1.51"
    assert phonemes == ["ðə dˈoːɹ ɪz ˈoʊpən."]  # 1.51's vowel before r: what the corpus had
