"""``POST /v1/speech`` (zero-shot text-to-speech, in the spirit of GPT-SoVITS's api_v2
``/tts``) and the speech model the server shares with narrated video jobs.

Fields (JSON, a form, or multipart with a ``ref_audio`` file): ``text``, ``ref_audio`` (an
upload, 3-10 s; none: the model's default voice), ``prompt_text`` (its transcript),
``top_k``, ``top_p``, ``temperature``, ``repetition_penalty``, ``speed``, ``seed``,
``media_type`` (wav / ogg / aac) and ``streaming``. The answer is the audio; streamed,
it is sent as the GPT's codes come: wav as one header (sizes left open) and then PCM
chunks, ogg and aac as one self-contained stream per chunk (chained Ogg, ADTS frames).
A bad field is a 422 naming it, before any audio is made.
"""

from __future__ import annotations

import io
import secrets
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import av
import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tinysora.serve.config import ServeConfig
from tinysora.serve.forms import body_doc, invalid, read_body, validated
from tinysora.voice.audio import AudioError, check_reference, load_audio
from tinysora.voice.speech import Reference, SpeechPipeline
from tinysora.voice.text import TextError, clean_text

MEDIA = {"wav": "audio/wav", "ogg": "audio/ogg", "aac": "audio/aac"}


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, description="what to say")
    prompt_text: str | None = Field(None, description="the reference clip's transcript")
    # the knobs left out take the model's defaults (its speech.json: voice.speech.SpeechConfig)
    top_k: int | None = Field(None, ge=0, le=4096, description="default: the model's")
    top_p: float | None = Field(None, gt=0, le=1, description="default: the model's")
    temperature: float | None = Field(None, gt=0, le=5, description="default: the model's")
    repetition_penalty: float | None = Field(None, ge=1, le=5, description="default: the model's")
    speed: float | None = Field(None, ge=0.5, le=2.0, description="default: the model's")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="default: a random one")
    media_type: Literal["wav", "ogg", "aac"] = "wav"
    streaming: bool = False


class SpeechModel:
    """The speech pipeline, loaded on first use (a server that never speaks never pays)."""

    def __init__(self, directory: str | None):
        self.directory = directory
        self._tts: SpeechPipeline | None = None
        self._lock = threading.Lock()

    def get(self) -> SpeechPipeline:
        with self._lock:
            if self._tts is None:
                self._tts = SpeechPipeline.from_pretrained(self.directory)
            return self._tts


def checked_text(text: str, field: str, cap: int) -> tuple[str, list[str]]:
    """``text`` if it can be spoken (else a 422 naming ``field``) and the warnings about
    characters it skips."""
    if len(text) > cap:
        raise invalid(field, f"at most {cap} characters", len(text))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            clean_text(text)
        except TextError as e:
            raise invalid(field, str(e)) from None
    return text, [str(w.message) for w in caught]


def decode_reference(data: bytes, field: str, folder: Path, rate: int) -> np.ndarray:
    """An uploaded reference decoded (any format FFmpeg reads) and checked: 3-10 s of
    sound; else a 422 naming ``field``."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / f"{field}-{secrets.token_hex(6)}.upload"
    raw.write_bytes(data)
    try:
        return check_reference(load_audio(raw, rate), rate, field)
    except AudioError as e:
        raise invalid(field, str(e).replace(f"'{raw}'", "the upload")) from None
    finally:
        raw.unlink(missing_ok=True)


def encode(audio: np.ndarray, rate: int, media_type: str) -> bytes:
    """Mono float samples as a whole wav (PCM 16), ogg (Vorbis) or aac (ADTS) file."""
    buffer = io.BytesIO()
    if media_type == "aac":
        with av.open(buffer, mode="w", format="adts") as container:
            stream = container.add_stream("aac", rate=rate)
            stream.layout = "mono"
            frame = av.AudioFrame.from_ndarray(
                audio[None].astype(np.float32), format="flt", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, 0
            container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    else:
        import soundfile

        subtype = "PCM_16" if media_type == "wav" else "VORBIS"
        soundfile.write(
            buffer, np.clip(audio, -1, 1), rate, format=media_type.upper(), subtype=subtype
        )
    return buffer.getvalue()


def wav_header(rate: int) -> bytes:
    """A PCM 16 mono WAV header whose sizes say "unknown" (streamed)."""
    size = 0xFFFFFFFF
    return (
        b"RIFF"
        + (size).to_bytes(4, "little")
        + b"WAVEfmt "
        + (16).to_bytes(4, "little")
        + (1).to_bytes(2, "little")
        + (1).to_bytes(2, "little")
        + rate.to_bytes(4, "little")
        + (2 * rate).to_bytes(4, "little")
        + (2).to_bytes(2, "little")
        + (16).to_bytes(2, "little")
        + b"data"
        + (size).to_bytes(4, "little")
    )


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def streamed(chunks: Iterator[np.ndarray], rate: int, media_type: str) -> Iterator[bytes]:
    if media_type == "wav":
        yield wav_header(rate)
    for chunk in chunks:
        if len(chunk):
            yield pcm16(chunk) if media_type == "wav" else encode(chunk, rate, media_type)


def add_speech_routes(app: FastAPI, cfg: ServeConfig, auth: list, model: SpeechModel) -> None:
    upload_dir = Path(cfg.data_dir) / "uploads"

    @app.post(
        "/v1/speech",
        dependencies=auth,
        response_class=Response,
        responses={200: {"content": {m: {} for m in MEDIA.values()}}},
        openapi_extra=body_doc(SpeechRequest, ("ref_audio",), "text"),
    )
    async def speech(request: Request):
        fields, uploads = await read_body(request, ("ref_audio",), cfg.max_upload_bytes + 2**20)
        req = validated(SpeechRequest, fields)
        upload = uploads.get("ref_audio")
        _, notes = checked_text(req.text, "text", cfg.max_speech_chars)
        if req.prompt_text is not None:
            checked_text(req.prompt_text, "prompt_text", cfg.max_speech_chars)
        tts = await run_in_threadpool(model.get)
        wav = None
        if upload is not None:
            data = await upload.read(cfg.max_upload_bytes + 1)
            if len(data) > cfg.max_upload_bytes:
                raise HTTPException(413, f"ref_audio: upload over {cfg.max_upload_mb:g} MB")
            wav = await run_in_threadpool(
                decode_reference, data, "ref_audio", upload_dir, tts.sample_rate
            )
        elif req.prompt_text is not None:
            raise invalid(
                "prompt_text",
                "goes with a ref_audio upload (the default voice has its own transcript)",
            )
        ref: Reference = await run_in_threadpool(tts.reference, wav, req.prompt_text)
        seed = secrets.randbelow(2**31) if req.seed is None else req.seed
        knobs = dict(
            ref_audio=ref,
            top_k=req.top_k,
            top_p=req.top_p,
            seed=seed,
            temperature=req.temperature,
            speed=req.speed,
            repetition_penalty=req.repetition_penalty,
        )
        headers = {"X-Seed": str(seed)}
        if notes:
            headers["X-Warning"] = "; ".join(notes).encode("ascii", "backslashreplace").decode()
        if req.streaming:
            chunks = tts.stream(req.text, **knobs)
            return StreamingResponse(
                streamed(chunks, tts.sample_rate, req.media_type),
                media_type=MEDIA[req.media_type],
                headers=headers,
            )
        out = await run_in_threadpool(lambda: tts(req.text, **knobs))
        body = await run_in_threadpool(encode, out.audio, out.sample_rate, req.media_type)
        headers["X-Audio-Seconds"] = f"{out.seconds:.3f}"
        return Response(body, media_type=MEDIA[req.media_type], headers=headers)
