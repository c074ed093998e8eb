"""A corpus split as tensors: every utterance's log-mel (and, for the generator, its
samples), speaker and phoneme ids, computed once into one safetensors file and cropped
into batches deterministically by step; with the frozen content codes beside them, the
``Split`` every voice trainer after the content stage reads.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tinysora.io.atomic import atomic_write_text
from tinysora.io.checkpoint import load_tensors, save_tensors
from tinysora.voice.audio import SpectrogramConfig, load_audio, mel_matrix, mel_spectrogram
from tinysora.voice.content import ContentModel
from tinysora.voice.corpus import read_list
from tinysora.voice.text import PhonemeVocab


@dataclass
class Utterances:
    """One split: ``mel`` (frames, n_mels) float16 of all utterances end to end,
    ``offsets`` (U + 1,) into it; ``speaker`` (U,) ids into ``speakers``; ``phonemes``
    (P,) ids with ``phone_offsets`` (U + 1,); optional ``wav`` (samples,) float16 with
    ``wav_offsets`` (hop x the mel offsets)."""

    mel: torch.Tensor
    offsets: torch.Tensor
    speaker: torch.Tensor
    phonemes: torch.Tensor
    phone_offsets: torch.Tensor
    speakers: list[str]
    texts: list[str]
    paths: list[str]
    wav: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.speaker)

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def utterance_mel(self, i: int) -> torch.Tensor:
        """(n_mels, T) float32."""
        return self.mel[self.offsets[i] : self.offsets[i + 1]].float().T

    def utterance_phonemes(self, i: int) -> torch.Tensor:
        return self.phonemes[self.phone_offsets[i] : self.phone_offsets[i + 1]]

    def utterance_wav(self, i: int, hop: int) -> torch.Tensor:
        return self.wav[self.offsets[i] * hop : self.offsets[i + 1] * hop].float()


def build_utterances(
    list_path: str | Path,
    out: str | Path,
    spec: SpectrogramConfig,
    speakers: list[str] | None = None,
    keep_wav: bool = False,
) -> Path:
    """Compute a split's tensors into ``out`` (safetensors + ``.json`` beside it).
    ``speakers`` fixes the id order (e.g. the train split's), else sorted names."""
    rows = read_list(list_path)
    names = speakers if speakers is not None else sorted({r[1] for r in rows})
    index = {s: i for i, s in enumerate(names)}
    vocab = PhonemeVocab(Path(list_path).parent / "phonemes.txt")
    mel_fb = mel_matrix(spec)
    mels, wavs, phones, speaker, meta = [], [], [], [], {"texts": [], "paths": []}
    skipped = 0
    for wav_path, name, text, phonemes in tqdm(rows, desc=f"features {Path(list_path).name}"):
        try:
            wav = load_audio(wav_path, spec.sample_rate)
        except Exception as e:  # a corrupt file is skipped and counted, never fatal
            warnings.warn(f"skipped {wav_path}: {e}", stacklevel=2)
            skipped += 1
            continue
        n = len(wav) // spec.hop * spec.hop
        x = torch.from_numpy(wav[:n])[None]
        mels.append(mel_spectrogram(x, spec, mel_fb)[0].T.to(torch.float16))
        if keep_wav:
            wavs.append(x[0].to(torch.float16))
        phones.append(torch.tensor(vocab.encode(phonemes, warn=False), dtype=torch.int64))
        speaker.append(index.get(name, -1))
        meta["texts"].append(text)
        meta["paths"].append(str(wav_path))
    if not mels:
        raise ValueError(f"no readable utterance in '{list_path}'")
    cumulative = lambda parts: torch.tensor([0] + np.cumsum([len(p) for p in parts]).tolist())  # noqa: E731
    tensors = {
        "mel": torch.cat(mels),
        "offsets": cumulative(mels),
        "speaker": torch.tensor(speaker, dtype=torch.int64),
        "phonemes": torch.cat(phones),
        "phone_offsets": cumulative(phones),
    }
    if keep_wav:
        tensors["wav"] = torch.cat(wavs)
    out = Path(out)
    meta.update(speakers=names, skipped=skipped, spec=spec.__dict__)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the metadata first: the tensors' file marks the split done (a run killed between
    # the two writes computes it again)
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta))
    save_tensors(tensors, out)
    return out


def load_utterances(path: str | Path) -> Utterances:
    path = Path(path)
    t = load_tensors(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    return Utterances(
        mel=t["mel"],
        offsets=t["offsets"],
        speaker=t["speaker"],
        phonemes=t["phonemes"],
        phone_offsets=t["phone_offsets"],
        speakers=meta["speakers"],
        texts=meta["texts"],
        paths=meta["paths"],
        wav=t.get("wav"),
    )


def crop_batch(
    data: Utterances, frames: int, batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random utterances, a random ``frames``-long window of each (zero-padded when
    shorter): (mel (B, n_mels, frames) float32, lengths (B,), utterance ids (B,), start
    frames (B,))."""
    lengths_all = data.lengths()
    ids = torch.randint(len(data), (batch,), generator=generator)
    n_mels = data.mel.shape[1]
    mel = torch.zeros(batch, n_mels, frames)
    lengths = torch.zeros(batch, dtype=torch.int64)
    starts = torch.zeros(batch, dtype=torch.int64)
    for b, i in enumerate(ids.tolist()):
        n = int(lengths_all[i])
        start = int(torch.randint(max(1, n - frames + 1), (1,), generator=generator))
        take = min(frames, n - start)
        s = int(data.offsets[i]) + start
        mel[b, :, :take] = data.mel[s : s + take].float().T
        lengths[b], starts[b] = take, start
    return mel, lengths, ids, starts


@dataclass
class Split:
    """A split's utterances and their content codes (all end to end, with offsets)."""

    data: Utterances
    codes: torch.Tensor  # (n_q, total code frames)
    code_offsets: torch.Tensor  # (U + 1,)
    by_speaker: dict[int, list[int]]

    def utterance_codes(self, i: int) -> torch.Tensor:
        return self.codes[:, self.code_offsets[i] : self.code_offsets[i + 1]]


def load_split(
    corpus: str | Path,
    spec: SpectrogramConfig,
    out: Path,
    split: str,
    content: ContentModel,
    speakers: list[str] | None = None,
    keep_wav: bool = True,
) -> Split:
    """A corpus split's features (samples too with ``keep_wav``) and content codes,
    computed once into OUT/features (shared by the generator and the GPT stage)."""
    path = out / "features" / f"{split}.safetensors"
    if not path.is_file():
        build_utterances(Path(corpus) / f"{split}.list", path, spec, speakers, keep_wav=keep_wav)
    data = load_utterances(path)
    codes_path = out / "features" / f"codes_{split}.safetensors"
    if not codes_path.is_file():
        parts = [
            content.codes(data.utterance_mel(i)[None])[0]
            for i in tqdm(range(len(data)), desc=f"codes {split}")
        ]
        offsets = torch.tensor([0] + torch.tensor([p.shape[1] for p in parts]).cumsum(0).tolist())
        save_tensors({"codes": torch.cat(parts, dim=1), "offsets": offsets}, codes_path)
    t = load_tensors(codes_path)
    by_speaker: dict[int, list[int]] = {}
    for i, s in enumerate(data.speaker.tolist()):
        by_speaker.setdefault(s, []).append(i)
    return Split(data, t["codes"], t["offsets"], by_speaker)
