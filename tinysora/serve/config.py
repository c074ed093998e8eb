"""What ``tinysora serve`` runs (kept apart from the app: the CLI reads the defaults
without importing FastAPI)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    """What ``tinysora serve`` runs: the model, where jobs live, and the caps that keep
    one request from taking the server down."""

    model: str | None = None  # model directory (default: the bundled one)
    data_dir: str = "serve-data"  # jobs.sqlite3, videos/, uploads/
    device: str | None = None
    allow_pickle: bool = False  # diffusers-format models: .bin weights too (weights_only)
    api_key: str | None = None
    max_queue: int = 32  # waiting jobs; more get 429
    max_frames: int = 65
    max_side: int = 256
    max_steps: int = 100
    max_prompt_chars: int = 500
    max_upload_mb: float = 20.0
    voice_model: str | None = None  # speech model directory (default: bundled weights/voice)
    max_speech_chars: int = 2000  # POST /v1/speech text
    max_narration_chars: int = 300  # a video's narration (~20 s of speech)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)
