"""tinysora: a Sora-style text-to-video system you can train on a laptop CPU.

    from tinysora import TextToVideoPipeline, export_to_video
    from tinysora import SpeechPipeline      # zero-shot text-to-speech (tinysora.voice)

The public names are imported on first use, so ``import tinysora.config`` (or the
``tinysora --help`` command) does not load torch and the models.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "TextToVideoPipeline": "tinysora.pipeline",
    "PipelineConfig": "tinysora.pipeline",
    "VideoOutput": "tinysora.io.frames",
    "export_to_video": "tinysora.pipeline",
    "read_video": "tinysora.io.video",
    "write_video": "tinysora.io.video",
    "load_video": "tinysora.io.frames",
    "load_image": "tinysora.io.frames",
    "SpeechPipeline": "tinysora.voice.speech",
}
__all__ = ["__version__", *_PUBLIC]


def __dir__() -> list[str]:
    """The public names (tab completion and ``dir(tinysora)``), not the loader's."""
    return sorted(__all__)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'tinysora' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
