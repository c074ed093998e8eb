"""Audio in and out for the voice stack: read any file soundfile or PyAV can decode as
mono float32 at the model's rate, write wav / ogg / flac, check reference clips, and
the spectrogram front end (``torch.stft`` + a mel matrix written here).

Bad input is a one-line ``AudioError``: not audio, empty, silent, or (for a reference)
outside 3-10 s. Wrong sample rates are resampled (soxr) and stereo is mixed down, with
no error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tinysora.errors import UserError

REF_SECONDS = (3.0, 10.0)  # GPT-SoVITS's reference length
SILENCE_DBFS = -50.0  # a clip whose loudest 50 ms window is below this is silent


class AudioError(UserError):
    """A file that is not usable audio, or a reference of the wrong length."""


def _read_soundfile(path: Path) -> tuple[np.ndarray, int] | None:
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        return None
    return data, rate


def _read_pyav(path: Path) -> tuple[np.ndarray, int] | None:
    """Anything FFmpeg decodes (mp3, aac, m4a, the audio of a video)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            chunks = []
            for frame in container.decode(stream):
                a = frame.to_ndarray().astype(np.float32)  # (channels, n) or (1, n x ch)
                if frame.format.is_packed:
                    a = a.reshape(-1, len(frame.layout.channels)).T
                if np.issubdtype(frame.to_ndarray().dtype, np.integer):
                    a /= float(np.iinfo(frame.to_ndarray().dtype).max)
                chunks.append(a)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError):
        return None
    if not chunks:
        return None
    return np.concatenate(chunks, axis=1).T, rate


def resample(wav: np.ndarray, rate: int, to: int) -> np.ndarray:
    """Band-limited resampling (soxr, its high-quality setting)."""
    if rate == to:
        return wav
    import soxr

    return soxr.resample(wav, rate, to, quality="HQ").astype(np.float32)


def load_audio(path: str | Path, rate: int) -> np.ndarray:
    """Mono float32 samples of ``path`` at ``rate`` Hz (resampled, channels averaged)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"'{path}' does not exist; give the path of an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"'{path}' is empty; give a wav / flac / ogg / mp3 file with sound")
    read = _read_soundfile(path) or _read_pyav(path)
    if read is None:
        raise AudioError(
            f"'{path}' is not audio that can be decoded; give a wav / flac / ogg / mp3 file"
        )
    data, source_rate = read
    if data.size == 0:
        raise AudioError(f"'{path}' holds no samples; give a clip with sound")
    mono = data.mean(axis=1).astype(np.float32)
    return resample(mono, source_rate, rate)


def save_audio(path: str | Path, wav: np.ndarray | torch.Tensor, rate: int) -> Path:
    """Write mono samples in [-1, 1]; the format follows the suffix (.wav 16-bit PCM,
    .flac, .ogg Vorbis)."""
    import soundfile

    path = Path(path)
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().float().cpu().numpy()
    wav = np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1.0, 1.0)
    subtype = {".wav": "PCM_16", ".flac": "PCM_16", ".ogg": "VORBIS"}.get(path.suffix.lower())
    if subtype is None:
        raise AudioError(f"cannot write '{path}': use a .wav, .flac or .ogg name")
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), wav, rate, subtype=subtype)
    return path


def peak_dbfs(wav: np.ndarray, rate: int, window_s: float = 0.05) -> float:
    """Loudness of the loudest ``window_s`` window (RMS, dB re full scale)."""
    n = max(1, int(rate * window_s))
    if len(wav) < n:
        wav = np.pad(wav, (0, n - len(wav)))
    frames = wav[: len(wav) // n * n].reshape(-1, n)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1).max())
    return 20 * math.log10(max(rms, 1e-10))


def check_reference(wav: np.ndarray, rate: int, name: str = "reference") -> np.ndarray:
    """A reference voice clip must be 3-10 s of sound (GPT-SoVITS's rule)."""
    seconds = len(wav) / rate
    lo, hi = REF_SECONDS
    if not lo <= seconds <= hi:
        raise AudioError(
            f"{name} is {seconds:.1f} s long; give a clip of {lo:g}-{hi:g} s "
            "(trim it, e.g. sox in.wav out.wav trim 0 8)"
        )
    if peak_dbfs(wav, rate) < SILENCE_DBFS:
        raise AudioError(
            f"{name} is silent (below {SILENCE_DBFS:g} dBFS); give a clip of someone speaking"
        )
    return wav


# --------------------------------------------------------------------------- spectra


@dataclass(frozen=True)
class SpectrogramConfig:
    """The front end: 16 kHz, 1024-point STFT, hop 320 (50 frames/s), 80 mel bands."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop: int = 320
    win: int = 1024
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = 8000.0

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop


def _hz_to_mel(f):
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's default)."""
    f = np.asarray(f, dtype=np.float64)
    linear = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, linear)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    linear = m * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log, linear)


def mel_matrix(cfg: SpectrogramConfig) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters, area-normalised (Slaney)."""
    freqs = np.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.f_min), _hz_to_mel(cfg.f_max), cfg.n_mels + 2))
    lower = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - freqs[None, :]) / (edges[2:] - edges[1:-1])[:, None]
    filters = np.maximum(0, np.minimum(lower, upper))
    filters *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return torch.from_numpy(filters.astype(np.float32))


def linear_spectrogram(wav: torch.Tensor, cfg: SpectrogramConfig) -> torch.Tensor:
    """(B, n) samples -> (B, n_fft // 2 + 1, n // hop) magnitudes (reflect-padded so that
    frame k is centred on sample k x hop + hop / 2)."""
    pad = (cfg.n_fft - cfg.hop) // 2
    x = torch.nn.functional.pad(wav.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    window = torch.hann_window(cfg.win, device=wav.device, dtype=wav.dtype)
    spec = torch.stft(x, cfg.n_fft, cfg.hop, cfg.win, window, center=False, return_complex=True)
    return torch.sqrt(spec.real**2 + spec.imag**2 + 1e-9)  # (B, F, frames)


def mel_spectrogram(
    wav: torch.Tensor, cfg: SpectrogramConfig, mel: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, n) samples -> (B, n_mels, n // hop) log-mel (natural log, floor 1e-5)."""
    mel = mel_matrix(cfg).to(wav.device) if mel is None else mel
    return torch.log(torch.clamp(mel @ linear_spectrogram(wav, cfg), min=1e-5))
