"""Zero-shot text-to-speech, GPT-SoVITS's pipeline: text -> phonemes -> GPT -> semantic
codes -> SoVITS -> waveform, in the voice of a 3-10 s reference clip.

    from tinysora.voice.speech import SpeechPipeline
    tts = SpeechPipeline.from_pretrained()           # weights/voice, or a voice-gpt run's model/
    out = tts("Hello there. How are you?", ref_audio="ref.wav", ref_text="What ref says.")
    tts.save(out.audio, "out.wav")                   # float32 at tts.sample_rate
    for chunk in tts.stream("Long text ...", ref_audio="ref.wav"):
        ...                                          # audio as the codes come

The reference gives the GPT its prompt (its codes, and its transcript's phonemes when
``ref_text`` is given) and SoVITS its style vector. Text is cut at sentence boundaries
(and long sentences at commas, then between words) into pieces of at most
``MAX_PIECE_PHONEMES``; each piece is generated on its own and the pieces are joined with
pauses. A piece whose GPT run ends in a loop or at the length bound (``gpt.sample_codes``)
is sampled again with the next seed, up to ``retries`` times.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from tinysora.config import Config
from tinysora.errors import UserError
from tinysora.io.checkpoint import load_pretrained, resolve_model_dir
from tinysora.voice.audio import AudioError, check_reference
from tinysora.voice.convert import VoiceConverter
from tinysora.voice.gpt import Generation, SamplingConfig, Text2Semantic, sample_codes
from tinysora.voice.text import TextError, clean_text, phonemize, split_sentences

MAX_PIECE_PHONEMES = 120  # ~7 s of speech: the length the GPT trained on, with a prompt
SENTENCE_PAUSE_S = 0.3
CLAUSE_PAUSE_S = 0.15
WORD_PAUSE_S = 0.05
SPEEDS = (0.5, 2.0)


@dataclass
class Piece:
    text: str
    phonemes: list[int]
    pause_s: float  # silence after it


@dataclass
class SpeechOutput:
    audio: np.ndarray  # float32 in [-1, 1]
    sample_rate: int
    pieces: list[dict] = field(default_factory=list)  # text, codes, stop, attempts each

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass
class Reference:
    wav: np.ndarray
    mel: torch.Tensor  # (1, n_mels, R)
    codes: torch.Tensor  # (T0,) the GPT's prompt
    phonemes: list[int]  # of ref_text, [] without it


DEFAULT_VOICE = ("default_voice.wav", "default_voice.txt")  # in a model directory
CONFIG_NAME = "speech.json"  # the pipeline's defaults, in a model directory


@dataclass
class SpeechConfig(Config):
    """The speech pipeline's defaults: every knob a call leaves out (None) takes its value
    here, in the API, ``tinysora speak``, narration and ``POST /v1/speech`` alike. Saved
    as ``speech.json`` beside the model's weights; a model directory without one (an
    older run) takes these."""

    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # the GPT's knobs
    speed: float = 1.0  # 0.5-2.0: the codes stretched in time before SoVITS
    noise_scale: float = 0.3  # SoVITS's prior noise (measured best with the pointer model)
    retries: int = 2  # resamplings of a piece that ends in a loop or at the length bound
    # streaming: the first chunk after first_chunk_codes + lookahead_codes codes (0.5 s of
    # speech), then one about every chunk_codes, each vocoded with context_codes before
    # its new codes and lookahead_codes after
    first_chunk_codes: int = 8
    chunk_codes: int = 25
    lookahead_codes: int = 4
    context_codes: int = 25

    def given(self, **knobs) -> SpeechConfig:
        """This config with the knobs that are not None in place of its values (sampling
        knobs by their names: top_k, top_p, ...), each checked with a one-line error."""
        knobs = {k: v for k, v in knobs.items() if v is not None}
        names = {f.name for f in fields(SamplingConfig)}
        sampling = replace(self.sampling, **{k: v for k, v in knobs.items() if k in names})
        cfg = replace(self, sampling=sampling, **{k: v for k, v in knobs.items() if k not in names})
        check_settings(cfg)
        return cfg


class SpeechPipeline:
    """The GPT stage and the voice converter (content encoder + SoVITS) of one model, its
    phoneme vocabulary, its defaults (``config``) and its default voice."""

    def __init__(
        self,
        gpt: Text2Semantic,
        voice: VoiceConverter,
        config: SpeechConfig | None = None,
        default_voice: tuple[Path, str] | None = None,
    ):
        self.gpt, self.voice = gpt.eval(), voice
        self.config = config if config is not None else SpeechConfig()
        self.vocab = voice.vocab
        self.space = self.vocab.index[" "]
        self.default_voice = default_voice  # (clip, its transcript): ref_audio=None

    def to(self, device: str | torch.device) -> SpeechPipeline:
        """Move the models to ``device`` (inputs follow them; the audio comes back as
        numpy arrays)."""
        self.gpt.to(device)
        self.voice.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.gpt.parameters()).device

    @property
    def sample_rate(self) -> int:
        return self.voice.sample_rate

    def save(self, audio: np.ndarray, path: str | Path) -> Path:
        """Write samples as .wav / .flac / .ogg (by the suffix)."""
        return self.voice.save(audio, path)

    @classmethod
    def from_pretrained(cls, directory: str | Path | None = None) -> SpeechPipeline:
        """A directory with ``gpt/``, ``content/``, ``sovits/`` and ``phonemes.txt`` (and
        optionally ``speech.json`` and a default voice), found as the video model is
        (``io.checkpoint.resolve_model_dir``: the bundled model's ``voice/`` by default),
        or ``tinysora train voice-gpt``'s OUT/model."""
        root = resolve_model_dir(directory, "voice")
        if not (root / "gpt").is_dir():
            raise UserError(
                f"'{root}' has no gpt/ (the text-to-speech stage); train one: "
                "tinysora train voice-gpt --config configs/voice_gpt.toml"
            )
        gpt = load_pretrained(Text2Semantic, root / "gpt")
        config = SpeechConfig.load(root / CONFIG_NAME) if (root / CONFIG_NAME).is_file() else None
        clip, transcript = (root / name for name in DEFAULT_VOICE)
        default = (clip, transcript.read_text().strip()) if clip.is_file() else None
        return cls(gpt, VoiceConverter.from_pretrained(root), config, default)

    # ------------------------------------------------------------------ inputs
    def pieces(self, text: str) -> list[Piece]:
        """Text -> pieces of at most MAX_PIECE_PHONEMES phonemes, with their pauses."""
        out = []
        for sentence in split_sentences(clean_text(text)):
            out.extend(self._cut(sentence, SENTENCE_PAUSE_S))
        if not out:
            raise TextError(f"text {text[:40]!r} has no words to say; give a sentence")
        return out

    def _cut(self, sentence: str, pause: float) -> list[Piece]:
        ids = self.vocab.encode(phonemize([sentence])[0])
        if len(ids) <= MAX_PIECE_PHONEMES:
            return [Piece(sentence, ids, pause)] if ids else []
        parts = re.split(r"(?<=,)\s+", sentence)  # at commas, else between words
        if len(parts) == 1:
            parts = sentence.split()
        if len(parts) == 1:  # one endless word: its first phonemes
            return [Piece(sentence, ids[:MAX_PIECE_PHONEMES], pause)]
        first, second = " ".join(parts[: len(parts) // 2]), " ".join(parts[len(parts) // 2 :])
        mid = CLAUSE_PAUSE_S if first.endswith(",") else WORD_PAUSE_S
        return [*self._cut(first, mid), *self._cut(second, pause)]

    def reference(self, ref_audio: str | Path | np.ndarray | None, ref_text: str | None = None):
        """The reference clip (a path, or samples at ``sample_rate``; None: the model's
        default voice with its transcript) checked (3-10 s, not silent) and encoded: its
        log-mel, its codes, its transcript's phonemes."""
        if ref_audio is None:
            if self.default_voice is None:
                raise UserError(
                    "this model has no default voice; give a reference clip "
                    "(ref_audio / --voice REF.wav)"
                )
            ref_audio, ref_text = self.default_voice
        wav = self.voice.samples(ref_audio)
        wav = check_reference(wav, self.sample_rate)
        mel = self.voice.log_mel(wav).to(self.device)
        codes = self.voice.content.codes(mel)[0, 0]  # (T0,) first quantizer
        phonemes = []
        if ref_text:
            phonemes = self.vocab.encode(phonemize([clean_text(ref_text)])[0])
        return Reference(wav, mel, codes, phonemes)

    def _prompt(self, ref: Reference, piece: Piece) -> torch.Tensor:
        ids = [*ref.phonemes, self.space, *piece.phonemes] if ref.phonemes else piece.phonemes
        return torch.tensor(ids, device=self.device)

    # ------------------------------------------------------------------ synthesis
    def codes(
        self, ref: Reference, piece: Piece, sampling: SamplingConfig, seed: int, retries: int
    ) -> tuple[Generation, int]:
        """The piece's codes, resampled (next seed) while a run ends in a loop or at the
        length bound; returns the first clean run, else the last, and the attempts."""
        for attempt in range(retries + 1):
            g = torch.Generator().manual_seed(seed + 7919 * attempt)
            prompt = self._prompt(ref, piece)
            *_, result = sample_codes(self.gpt, prompt, ref.codes, len(piece.phonemes), sampling, g)
            if result.stop == "eos":
                break
        return result, attempt + 1

    def vocode(
        self,
        codes: list[int],
        ref: Reference,
        piece: Piece,
        noise_scale: float,
        seed: int,
        speed: float,
    ) -> np.ndarray:
        if not codes:
            return np.zeros(0, np.float32)
        dev = self.device
        wav = self.voice.sovits.infer(
            torch.tensor(codes, device=dev)[None, None],
            torch.tensor([piece.phonemes], device=dev),
            ref.mel,
            noise_scale,
            torch.Generator().manual_seed(seed),
            speed,
        )
        return wav.float().cpu().numpy()

    def _inputs(self, text: str, ref_audio, ref_text) -> tuple[list[Piece], Reference]:
        """The text's pieces and the encoded reference (or the one given), both checked."""
        pieces = self.pieces(text)
        ref = ref_audio if isinstance(ref_audio, Reference) else self.reference(ref_audio, ref_text)
        return pieces, ref

    def _silence(self, seconds: float, speed: float) -> np.ndarray:
        return np.zeros(int(seconds / speed * self.sample_rate), np.float32)

    @torch.no_grad()
    def __call__(
        self,
        text: str,
        ref_audio: str | Path | np.ndarray | Reference | None = None,
        ref_text: str | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        repetition_penalty: float | None = None,
        speed: float | None = None,
        seed: int = 0,
        noise_scale: float | None = None,
        retries: int | None = None,
    ) -> SpeechOutput:
        """Say ``text`` in the reference's voice; a knob left None takes ``config``'s."""
        cfg = self.config.given(
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            repetition_penalty=repetition_penalty,
            speed=speed,
            noise_scale=noise_scale,
            retries=retries,
        )
        pieces, ref = self._inputs(text, ref_audio, ref_text)
        parts, info = [], []
        for k, piece in enumerate(pieces):
            result, attempts = self.codes(ref, piece, cfg.sampling, seed + k, cfg.retries)
            wav = self.vocode(result.codes, ref, piece, cfg.noise_scale, seed + k, cfg.speed)
            parts.append(wav)
            if k < len(pieces) - 1:
                parts.append(self._silence(piece.pause_s, cfg.speed))
            info.append(
                {
                    "text": piece.text,
                    "phonemes": len(piece.phonemes),
                    "codes": len(result.codes),
                    "stop": result.stop,
                    "attempts": attempts,
                }
            )
        return SpeechOutput(np.concatenate(parts), self.sample_rate, info)

    @torch.no_grad()
    def stream(
        self,
        text: str,
        ref_audio: str | Path | np.ndarray | Reference | None = None,
        ref_text: str | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        repetition_penalty: float | None = None,
        speed: float | None = None,
        seed: int = 0,
        noise_scale: float | None = None,
        first_chunk_codes: int | None = None,
        chunk_codes: int | None = None,
        lookahead_codes: int | None = None,
        context_codes: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield float32 audio chunks as the GPT's codes come: the first after
        ``first_chunk_codes`` + ``lookahead_codes`` codes, then about every
        ``chunk_codes``. Each chunk is SoVITS on the new codes with ``context_codes``
        before them and ``lookahead_codes`` after, cross-faded into the last one. A loop
        is cut where it is found (no resampling: its start may already be out). A knob
        left None takes ``config``'s."""
        cfg = self.config.given(
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            repetition_penalty=repetition_penalty,
            speed=speed,
            noise_scale=noise_scale,
            first_chunk_codes=first_chunk_codes,
            chunk_codes=chunk_codes,
            lookahead_codes=lookahead_codes,
            context_codes=context_codes,
        )
        pieces, ref = self._inputs(text, ref_audio, ref_text)
        for k, piece in enumerate(pieces):
            g = torch.Generator().manual_seed(seed + k)
            codes: list[int] = []
            window = _StreamWindow(self, ref, piece, cfg, seed + k)
            due = cfg.first_chunk_codes + cfg.lookahead_codes
            prompt = self._prompt(ref, piece)
            for item in sample_codes(
                self.gpt, prompt, ref.codes, len(piece.phonemes), cfg.sampling, g
            ):
                if isinstance(item, Generation):
                    codes = item.codes
                    break
                codes.append(item)
                if len(codes) >= due:
                    chunk = window.emit(codes, final=False)
                    if len(chunk):
                        yield chunk
                    due = len(codes) + cfg.chunk_codes
            chunk = window.emit(codes, final=True)
            if len(chunk):
                yield chunk
            if k < len(pieces) - 1:
                yield self._silence(piece.pause_s, cfg.speed)


class _StreamWindow:
    """Bookkeeping of one piece's streamed audio: which codes are out, the cross-fade."""

    FADE_S = 0.02

    def __init__(self, tts: SpeechPipeline, ref, piece, cfg: SpeechConfig, seed: int):
        self.tts, self.ref, self.piece = tts, ref, piece
        self.noise_scale, self.seed, self.speed = cfg.noise_scale, seed, cfg.speed
        self.context, self.lookahead = cfg.context_codes, cfg.lookahead_codes
        self.samples_per_code = 2 * tts.voice.spec.hop / cfg.speed
        self.fade = int(self.FADE_S * tts.sample_rate)
        self.done = 0  # codes whose audio is out
        self.tail = np.zeros(0, np.float32)  # audio past the last cut, to fade into
        self.calls = 0

    def emit(self, codes: list[int], final: bool) -> np.ndarray:
        end = len(codes) if final else len(codes) - self.lookahead
        if end <= self.done:  # nothing new (or a loop was cut below what is out)
            return np.zeros(0, np.float32)
        start = max(0, self.done - self.context)
        self.calls += 1
        wav = self.tts.vocode(
            codes[start:],
            self.ref,
            self.piece,
            self.noise_scale,
            self.seed + self.calls,
            self.speed,
        )
        at = lambda code: int(round((code - start) * self.samples_per_code))  # noqa: E731
        new = wav[at(self.done) : len(wav) if final else at(end)].copy()
        n = min(self.fade, len(self.tail), len(new))
        if n:
            w = np.linspace(0.0, 1.0, n, dtype=np.float32)
            new[:n] = self.tail[:n] * (1 - w) + new[:n] * w
        self.tail = np.zeros(0, np.float32) if final else wav[at(end) : at(end) + self.fade].copy()
        self.done = end
        return new


def check_settings(cfg: SpeechConfig) -> None:
    """The knobs, each checked with a one-line error naming it."""
    s = cfg.sampling
    if not (isinstance(s.top_k, int) and s.top_k >= 0):
        raise UserError(f"top_k must be an integer >= 0 (0 = off), got {s.top_k!r}")
    if not 0.0 < s.top_p <= 1.0:
        raise UserError(f"top_p must be in (0, 1], got {s.top_p!r}")
    if not 0.0 < s.temperature <= 5.0:
        raise UserError(f"temperature must be in (0, 5], got {s.temperature!r}")
    if not 1.0 <= s.repetition_penalty <= 5.0:
        raise UserError(f"repetition_penalty must be in [1, 5], got {s.repetition_penalty!r}")
    if not SPEEDS[0] <= cfg.speed <= SPEEDS[1]:
        raise UserError(f"speed must be in [{SPEEDS[0]:g}, {SPEEDS[1]:g}], got {cfg.speed!r}")
    if not 0.0 <= cfg.noise_scale <= 2.0:
        raise UserError(f"noise_scale must be in [0, 2], got {cfg.noise_scale!r}")
    counts = {
        "retries": (cfg.retries, 0),
        "history": (s.history, 0),
        "first_chunk_codes": (cfg.first_chunk_codes, 1),
        "chunk_codes": (cfg.chunk_codes, 1),
        "lookahead_codes": (cfg.lookahead_codes, 0),
        "context_codes": (cfg.context_codes, 0),
    }
    for name, (value, low) in counts.items():
        if not (isinstance(value, int) and value >= low):
            raise UserError(f"{name} must be an integer >= {low}, got {value!r}")


__all__ = [
    "SpeechPipeline",
    "SpeechConfig",
    "SpeechOutput",
    "AudioError",
    "TextError",
]
