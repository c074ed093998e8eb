"""Voice conversion, the SoVITS stage on its own: SOURCE's words in REF's voice.

    from tinysora.voice.convert import VoiceConverter
    vc = VoiceConverter.from_pretrained()          # the bundled voice, or a run's model/
    wav = vc("source.wav", ref="reference.wav")    # float32 at vc.sample_rate
    vc.save(wav, "out.wav")

SOURCE's content codes (the frozen content encoder + codec) and REF's style vector (the
generator's style encoder on REF's log-mel) drive the generator; with ``text`` the
phonemes of SOURCE's words join the prior as in training, without it the prior runs on
the codes alone (the generator trains that way on a share of its examples). REF must be
a 3-10 s clip of speech (GPT-SoVITS's rule).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tinysora.errors import UserError
from tinysora.io.checkpoint import load_pretrained, resolve_model_dir
from tinysora.voice.audio import (
    AudioError,
    check_reference,
    load_audio,
    mel_spectrogram,
    save_audio,
)
from tinysora.voice.content import ContentModel
from tinysora.voice.sovits import SynthesizerTrn, spectrogram_config
from tinysora.voice.text import PhonemeVocab, phonemize

MIN_SOURCE_S = 0.3


class VoiceConverter:
    def __init__(self, content: ContentModel, sovits: SynthesizerTrn, vocab: PhonemeVocab):
        self.content, self.sovits, self.vocab = content.eval(), sovits.eval(), vocab
        self.spec = spectrogram_config(sovits.config)

    @property
    def sample_rate(self) -> int:
        return self.spec.sample_rate

    @property
    def device(self) -> torch.device:
        return next(self.sovits.parameters()).device

    def to(self, device: str | torch.device) -> VoiceConverter:
        """Move the models to ``device`` (inputs follow them; audio comes back as numpy)."""
        self.content.to(device)
        self.sovits.to(device)
        return self

    @classmethod
    def from_pretrained(cls, directory: str | Path | None = None) -> VoiceConverter:
        """A directory with ``content/``, ``sovits/`` and ``phonemes.txt``, found as the
        video model is (``io.checkpoint.resolve_model_dir``: the bundled model's
        ``voice/`` by default), or ``tinysora train voice``'s ``OUT/model``."""
        root = resolve_model_dir(directory, "voice")
        missing = [n for n in ("content", "sovits", "phonemes.txt") if not (root / n).exists()]
        if missing:
            raise UserError(
                f"'{root}' is not a voice model directory (missing {', '.join(missing)}); "
                "train one: tinysora train voice"
            )
        return cls(
            load_pretrained(ContentModel, root / "content"),
            load_pretrained(SynthesizerTrn, root / "sovits"),
            PhonemeVocab(root / "phonemes.txt"),
        )

    def samples(self, x: str | Path | np.ndarray) -> np.ndarray:
        """Mono float32 samples at sample_rate of a file (any rate, resampled) or an array."""
        if isinstance(x, np.ndarray):
            return x.astype(np.float32).reshape(-1)
        return load_audio(x, self.sample_rate)

    def log_mel(self, wav: np.ndarray) -> torch.Tensor:
        """(1, n_mels, T) log-mel of the model's front end."""
        n = len(wav) // self.spec.hop * self.spec.hop
        return mel_spectrogram(torch.from_numpy(wav[:n])[None], self.spec)

    @torch.no_grad()
    def __call__(
        self,
        source: str | Path | np.ndarray,
        ref: str | Path | np.ndarray,
        text: str | None = None,
        noise_scale: float = 0.5,
        seed: int = 0,
    ) -> np.ndarray:
        src = self.samples(source)
        if len(src) < MIN_SOURCE_S * self.sample_rate:
            raise AudioError(
                f"source is {len(src) / self.sample_rate:.2f} s long; give at least "
                f"{MIN_SOURCE_S:g} s of speech"
            )
        ref_wav = check_reference(self.samples(ref), self.sample_rate)
        dev = self.device
        codes = self.content.codes(self.log_mel(src).to(dev))  # (1, n_q, T')
        ids = self.vocab.encode(phonemize([text])[0]) if text else []
        ids = ids or [self.vocab.bos]  # no text: the prior runs on the codes alone
        wav = self.sovits.infer(
            codes,
            torch.tensor([ids], device=dev),
            self.log_mel(ref_wav).to(dev),
            noise_scale,
            torch.Generator().manual_seed(seed),
        )
        return wav.float().cpu().numpy()

    def save(self, wav: np.ndarray, path: str | Path) -> Path:
        return save_audio(path, wav, self.sample_rate)
