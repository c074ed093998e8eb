"""The text front end of the voice stack: what text can be spoken (``clean_text``), its
sentences (``split_sentences``), its phonemes (espeak-ng's IPA through ``phonemizer``)
and the fixed phoneme vocabulary (``phonemes.txt`` beside this file) that turns them into
ids. The corpus's sentence generator is ``voice.sentences``.
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
import warnings
from pathlib import Path

from tinysora.errors import UserError

VOCAB_FILE = Path(__file__).with_name("phonemes.txt")
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
MAX_TEXT_CHARS = 2000
# characters read as they are; anything else is skipped with a warning
PUNCTUATION = set(".,!?;:'\"-()")


class TextError(UserError):
    """Text the voice stack cannot speak."""


# --------------------------------------------------------------------------- text


def normalize_text(text: str) -> str:
    """Collapse whitespace and unify quotes / dashes; the phonemizer's input."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u2014", ", ")
    return re.sub(r"\s+", " ", text).strip()


def clean_text(text: str) -> str:
    """The text to speak: letters (Latin script), digits, spaces and plain punctuation.
    Other characters (emoji, other scripts, symbols) are skipped with a warning; empty
    text, text of punctuation only, and text over ``MAX_TEXT_CHARS`` are errors."""
    if not isinstance(text, str) or not text.strip():
        raise TextError("text is empty; give a sentence to say")
    if len(text) > MAX_TEXT_CHARS:
        raise TextError(
            f"text is {len(text)} characters long; the cap is {MAX_TEXT_CHARS} "
            "(split it into several requests)"
        )
    text = normalize_text(text)
    kept, skipped = [], []
    for ch in text:
        latin = ch.isalpha() and "LATIN" in unicodedata.name(ch, "")
        if latin or ch.isdigit() and ch.isascii() or ch == " " or ch in PUNCTUATION:
            kept.append(ch)
        else:
            skipped.append(ch)
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} character(s) that cannot be spoken: "
            f"{''.join(sorted(set(skipped)))!r}",
            stacklevel=3,
        )
    cleaned = re.sub(r"\s+", " ", "".join(kept)).strip()
    if not any(ch.isalnum() for ch in cleaned):
        raise TextError(
            f"text {text[:40]!r} has no words to say (only punctuation, emoji or "
            "symbols); give a sentence"
        )
    return cleaned


def split_sentences(text: str) -> list[str]:
    """Cleaned text -> its sentences: cut after . ! ? ; : (pieces without a word dropped)."""
    parts = re.split(r"(?<=[.!?;:])\s+", text)
    return [p for p in parts if any(ch.isalnum() for ch in p)]


# --------------------------------------------------------------------------- phonemes


# Where the phonemes come from: the espeak-ng library and data inside the
# ``espeakng-loader`` wheel (a dependency, so `pip install` is all speech needs). The
# system's libespeak-ng (apt-get install espeak-ng) is the fallback when the wheel's copy
# cannot load, or the choice when phonemizer's PHONEMIZER_ESPEAK_LIBRARY names a library.
LIBRARY_ENV = "PHONEMIZER_ESPEAK_LIBRARY"


@functools.lru_cache(maxsize=1)
def _backend():
    """phonemizer's en-us espeak backend (one per process: espeak-ng is a C library with
    global state, so a process phonemizes with one library only)."""
    try:
        from phonemizer.backend import EspeakBackend
        from phonemizer.backend.espeak.wrapper import EspeakWrapper
    except ImportError as e:
        raise TextError("phonemes need phonemizer: pip install phonemizer") from e

    def backend():
        return EspeakBackend("en-us", preserve_punctuation=True, with_stress=True)

    if not os.environ.get(LIBRARY_ENV):
        try:
            import espeakng_loader

            EspeakWrapper.set_library(espeakng_loader.get_library_path())
            EspeakWrapper.set_data_path(espeakng_loader.get_data_path())
            return backend()
        except (ImportError, RuntimeError, OSError) as e:
            warnings.warn(
                f"the bundled espeak-ng (espeakng-loader) did not load ({e}); "
                "trying the system's libespeak-ng",
                stacklevel=2,
            )
            EspeakWrapper.set_library(None)
            EspeakWrapper.set_data_path(None)
    try:
        return backend()
    except RuntimeError as e:
        raise TextError(
            "phonemes need espeak-ng: pip install espeakng-loader (or apt-get install espeak-ng)"
        ) from e


def phoneme_engine() -> dict[str, str]:
    """The espeak-ng that :func:`phonemize` uses: its library file and version."""
    backend = _backend()
    return {
        "library": str(backend._espeak.library_path),
        "version": ".".join(map(str, backend.version())),
    }


def phonemize(texts: list[str]) -> list[str]:
    """espeak-ng's en-us IPA with stress marks, words separated by spaces, punctuation
    kept (one batched call: about 30,000 words a second)."""
    from phonemizer.separator import Separator

    texts = [normalize_text(t) for t in texts]
    return _backend().phonemize(texts, separator=Separator(phone="", word=" "), strip=True)


class PhonemeVocab:
    """The fixed symbol list (``phonemes.txt``: one symbol a line, ids in file order,
    ``<pad>`` = 0). Unknown symbols are skipped and counted, never a crash."""

    def __init__(self, path: Path = VOCAB_FILE):
        lines = path.read_text(encoding="utf-8").split("\n")
        self.symbols = [line for line in lines if line != ""]
        if " " not in self.symbols:
            self.symbols.append(" ")
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self.pad, self.bos, self.eos = self.index[PAD], self.index[BOS], self.index[EOS]

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, phonemes: str, warn: bool = True) -> list[int]:
        ids, unknown = [], []
        for ch in phonemes:
            if ch in self.index:
                ids.append(self.index[ch])
            else:
                unknown.append(ch)
        if unknown and warn:
            warnings.warn(
                f"skipped {len(unknown)} unknown phoneme symbol(s) {sorted(set(unknown))!r}",
                stacklevel=2,
            )
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(self.symbols[i] for i in ids if i >= 3)
