"""A speech corpus made offline from Debian's synthesizers (``tinysora voice corpus``).

Engines: espeak-ng (English dialects x voice variants), flite (its built-in voices) and
festival (kal / ked diphone voices, the slt HTS voice), each with its own pitch and
rate settings; flite and festival voices also get a "size" (resampling the engine's
output by a factor, which moves pitch and formants together, like a larger or smaller
speaker). Every voice is a fixed entry of ``voice_catalogue()``.

Splits (written as list files ``wav|speaker|text|phonemes``, wav paths relative to the
corpus directory):

- ``train.list``: the train voices saying train sentences;
- ``test_seen.list``: the train voices saying held-out sentences (never in training);
- ``test_unseen.list``: the unseen voices (whole base voices, e.g. flite's rms in all its
  variants, never heard in training) saying held-out sentences: zero-shot references.

Utterance k's voice and sentence are a function of k and the seed, and each wav is
written atomically, so an interrupted run resumes where it stopped and two runs with
the same arguments make the same corpus.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinysora.errors import UserError
from tinysora.voice.audio import load_audio, save_audio
from tinysora.voice.sentences import sentences, words
from tinysora.voice.text import VOCAB_FILE, PhonemeVocab, phonemize

RATE = 16000
ENGINES = ("espeak", "flite", "festival")
PROGRAMS = {"espeak": "espeak-ng", "flite": "flite", "festival": "text2wave"}
PACKAGES = {
    "espeak": "espeak-ng",
    "flite": "flite",
    "festival": "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts",
}
ESPEAK_DIALECTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)
ESPEAK_VARIANTS = words(
    "m1 m2 m3 m4 m5 m6 m7 f1 f2 f3 f4 f5 klatt klatt2 klatt3 klatt4 adam Alex Alicia Andrea "
    "Andy Annie benjamin caleb david ed edward Gene Henrique Hugo Jacky john Lee linda max "
    "Michael Mike paul pedro quincy rob robert steph travis victor zac grandma grandpa shelby"
)
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
N_ESPEAK = 40
UNSEEN_ESPEAK = 5  # espeak voices whose variant no train voice uses
UNSEEN_BASES = ("flite:rms", "festival:ked_diphone")  # base voices held out whole
HELD_OUT_SENTENCES = 200
TEST_SEEN_PER_VOICE = 4
TEST_UNSEEN_PER_VOICE = 24
MEAN_SECONDS = 3.2  # a first guess of an utterance's length, to size the sentence pool


class CorpusError(UserError):
    """A corpus that cannot be made: a missing engine, bad options."""


@dataclass(frozen=True)
class Voice:
    """One speaker of the corpus: an engine's base voice with its settings."""

    name: str
    engine: str  # espeak | flite | festival
    base: str  # espeak dialect+variant, flite voice, festival voice
    pitch: float  # espeak: -p 0..99; flite: f0 mean in Hz; festival: unused (0)
    rate: float  # espeak: words per minute; flite / festival: duration stretch
    size: float = 1.0  # resampling factor of the engine's output (>1: higher, faster)
    split: str = "train"  # train | unseen

    @property
    def base_id(self) -> str:
        return f"{self.engine}:{self.base.split('+')[-1] if self.engine == 'espeak' else self.base}"


def voice_catalogue(engines: tuple[str, ...] = ENGINES, seed: int = 0) -> list[Voice]:
    """Every voice, in a fixed order; ``split`` marks the zero-shot ones."""
    rng = random.Random(seed)
    voices = []
    if "espeak" in engines:
        variants = list(ESPEAK_VARIANTS)
        rng.shuffle(variants)
        for i, variant in enumerate(variants[:N_ESPEAK]):
            dialect = ESPEAK_DIALECTS[i % len(ESPEAK_DIALECTS)]
            pitch, wpm = rng.randint(30, 70), rng.randint(140, 185)
            name = f"espeak-{dialect}-{variant.lower()}-p{pitch}-s{wpm}"
            split = "unseen" if i >= N_ESPEAK - UNSEEN_ESPEAK else "train"
            voices.append(Voice(name, "espeak", f"{dialect}+{variant}", pitch, wpm, split=split))
    if "flite" in engines:
        for base in FLITE_VOICES:
            for k, (f0, stretch) in enumerate(((0.0, 1.0), (rng.choice((90, 150, 190)), 1.12))):
                voices.append(Voice(f"flite-{base}-{k}", "flite", base, f0, stretch))
    if "festival" in engines:
        for base in FESTIVAL_VOICES:
            for k, (stretch, size) in enumerate(((1.0, 1.0), (1.1, rng.choice((0.9, 1.12))))):
                voices.append(Voice(f"festival-{base}-{k}", "festival", base, 0.0, stretch, size))
    return [
        Voice(**{**asdict(v), "split": "unseen"}) if v.base_id in UNSEEN_BASES else v
        for v in voices
    ]


def check_engines(engines: tuple[str, ...]) -> None:
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise CorpusError(f"unknown engine(s) {unknown}; choose from {', '.join(ENGINES)}")
    missing = [e for e in engines if shutil.which(PROGRAMS[e]) is None]
    if missing:
        packages = " ".join(PACKAGES[e] for e in missing)
        raise CorpusError(
            f"{', '.join(missing)} not installed: apt-get install -y {packages} "
            "(or leave them out with --engines)"
        )


def _engine_command(voice: Voice, out: Path) -> list[str]:
    if voice.engine == "espeak":
        return [
            "espeak-ng",
            "-v",
            voice.base,
            "-p",
            str(int(voice.pitch)),
            "-s",
            str(int(voice.rate)),
            "-w",
            str(out),
            "--stdin",
        ]
    if voice.engine == "flite":
        cmd = ["flite", "-voice", voice.base, "--setf", f"duration_stretch={voice.rate}"]
        if voice.pitch:
            cmd += ["--setf", f"int_f0_target_mean={voice.pitch}"]
        return cmd + ["-f", "/dev/stdin", "-o", str(out)]
    return [
        "text2wave",
        "-eval",
        f"(voice_{voice.base})",
        "-eval",
        f"(Parameter.set 'Duration_Stretch {voice.rate})",
        "-o",
        str(out),
    ]


def synthesize(voice: Voice, text: str, rate: int = RATE) -> np.ndarray:
    """``text`` in ``voice``: mono float32 at ``rate``, peak-normalised to 0.9."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        done = subprocess.run(
            _engine_command(voice, raw), input=text.encode(), capture_output=True, timeout=120
        )
        if done.returncode != 0 or not raw.is_file():
            err = done.stderr.decode(errors="replace").strip().splitlines()
            raise CorpusError(
                f"{voice.engine} failed on voice {voice.name}: {err[-1] if err else 'no output'}"
            )
        # size s: play the engine's audio s x faster (pitch and formants up by s)
        wav = load_audio(raw, round(rate / voice.size))
    wav = _trim(wav, rate)
    peak = float(np.abs(wav).max()) if len(wav) else 0.0
    return wav * (0.9 / peak) if peak > 0 else wav


def _trim(wav: np.ndarray, rate: int, floor_db: float = -45.0, keep_s: float = 0.1):
    """Cut leading / trailing silence, keeping ``keep_s`` of it at each end."""
    n = int(0.02 * rate)
    if len(wav) < 2 * n:
        return wav
    frames = wav[: len(wav) // n * n].reshape(-1, n)
    db = 10 * np.log10((frames.astype(np.float64) ** 2).mean(axis=1) + 1e-12)
    loud = np.nonzero(db > db.max() + floor_db)[0]
    if len(loud) == 0:
        return wav
    keep = int(keep_s * rate)
    return wav[max(0, loud[0] * n - keep) : min(len(wav), (loud[-1] + 1) * n + keep)]


@dataclass(frozen=True)
class Utterance:
    key: str  # wav path relative to the corpus directory
    voice: Voice
    text: str
    phonemes: str
    split: str  # train | test_seen | test_unseen

    def line(self) -> str:
        return f"{self.key}|{self.voice.name}|{self.text}|{self.phonemes}"


def plan(
    hours: float,
    engines: tuple[str, ...],
    seed: int = 0,
    test_per_voice: tuple[int, int] = (TEST_SEEN_PER_VOICE, TEST_UNSEEN_PER_VOICE),
) -> list[Utterance]:
    """Every utterance of the corpus, in order: train (until ``hours`` of speech are
    expected), then the two test splits (``test_per_voice``: held-out sentences per
    train voice, per unseen voice)."""
    voices = voice_catalogue(engines, seed)
    train_voices = [v for v in voices if v.split == "train"]
    unseen = [v for v in voices if v.split == "unseen"]
    if not train_voices:
        raise CorpusError(f"engines {engines} leave no train voice; add espeak or flite")
    n_train = max(len(train_voices), round(hours * 3600 / MEAN_SECONDS))
    pool = sentences(n_train + HELD_OUT_SENTENCES, seed)
    held, train_text = pool[:HELD_OUT_SENTENCES], pool[HELD_OUT_SENTENCES:]
    phones = dict(zip(pool, phonemize(pool), strict=True))
    rng = random.Random(seed + 1)
    out = []
    for k, text in enumerate(train_text):
        voice = train_voices[k % len(train_voices)]
        out.append(Utterance(f"wavs/{voice.name}/{k:06d}.wav", voice, text, phones[text], "train"))
    seen_n, unseen_n = test_per_voice
    for split, group, per in (
        ("test_seen", train_voices, seen_n),
        ("test_unseen", unseen, unseen_n),
    ):
        for voice in group:
            for j, text in enumerate(rng.sample(held, min(per, len(held)))):
                key = f"wavs/{voice.name}/{split}_{j:03d}.wav"
                out.append(Utterance(key, voice, text, phones[text], split))
    return out


def _make(root: Path, u: Utterance) -> float | str:
    """Synthesize one utterance unless its wav exists: its length in seconds, or the
    engine's one-line error (the utterance is then left out and counted)."""
    path = root / u.key
    if path.is_file():
        import soundfile

        return soundfile.info(str(path)).duration
    try:
        wav = synthesize(u.voice, u.text)
    except (CorpusError, subprocess.TimeoutExpired) as e:
        return str(e)
    tmp = path.with_suffix(".tmp.wav")
    save_audio(tmp, wav, RATE)
    tmp.replace(path)  # atomic: a killed run never leaves half a wav
    return len(wav) / RATE


def build_corpus(
    out: str | Path,
    hours: float = 3.0,
    engines: tuple[str, ...] = ENGINES,
    seed: int = 0,
    jobs: int = 2,
    test_per_voice: tuple[int, int] = (TEST_SEEN_PER_VOICE, TEST_UNSEEN_PER_VOICE),
) -> dict:
    """Make (or finish) the corpus in ``out``; returns its summary (``corpus.json``)."""
    if hours <= 0:
        raise CorpusError(f"--hours must be positive, got {hours}")
    check_engines(engines)
    root = Path(out)
    utterances = plan(hours, engines, seed, test_per_voice)
    for voice in {u.voice.name for u in utterances}:
        (root / "wavs" / voice).mkdir(parents=True, exist_ok=True)
    vocab = PhonemeVocab()
    seconds = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        lengths = pool.map(lambda u: _make(root, u), utterances)
        for u, s in tqdm(
            zip(utterances, lengths, strict=True),
            total=len(utterances),
            desc="synthesizing",
            unit="utt",
        ):
            seconds[u.key] = s
    failed = {k: v for k, v in seconds.items() if isinstance(v, str)}
    utterances = [u for u in utterances if u.key not in failed]
    for split in ("train", "test_seen", "test_unseen"):
        lines = [u.line() for u in utterances if u.split == split]
        tmp = root / f"{split}.list.tmp"
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(root / f"{split}.list")
    shutil.copyfile(VOCAB_FILE, root / "phonemes.txt")
    voices = {v.name: asdict(v) for v in voice_catalogue(engines, seed)}
    unknown = sum(len(u.phonemes) - len(vocab.encode(u.phonemes, warn=False)) for u in utterances)
    summary = {
        "rate": RATE,
        "seed": seed,
        "engines": list(engines),
        "voices": {
            "train": sum(v["split"] == "train" for v in voices.values()),
            "unseen": sum(v["split"] == "unseen" for v in voices.values()),
        },
        "utterances": {
            s: sum(u.split == s for u in utterances) for s in ("train", "test_seen", "test_unseen")
        },
        "hours": {
            s: sum(seconds[u.key] for u in utterances if u.split == s) / 3600
            for s in ("train", "test_seen", "test_unseen")
        },
        "unknown_phoneme_symbols": unknown,
        "failed": len(failed),
        "failures": dict(list(failed.items())[:20]),
    }
    (root / "voices.json").write_text(json.dumps(voices, indent=1))
    (root / "corpus.json").write_text(json.dumps(summary, indent=1))
    return summary


def read_list(path: str | Path) -> list[tuple[Path, str, str, str]]:
    """(wav path, speaker, text, phonemes) rows of a list file; wav paths resolved
    against the list's directory."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"'{path}' does not exist; make a corpus with tinysora voice corpus")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != 4:
            raise CorpusError(
                f"{path}:{n}: expected wav|speaker|text|phonemes, got {len(parts)} field(s)"
            )
        rows.append((path.parent / parts[0], parts[1], parts[2], parts[3]))
    return rows
