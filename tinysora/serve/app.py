"""The HTTP API and web page over one pipeline: FastAPI, jobs in SQLite, one worker.

    tinysora serve --port 7860                        # then open http://127.0.0.1:7860

| method and path                  | what it does                                          |
|----------------------------------|-------------------------------------------------------|
| ``POST /v1/videos``              | queue a job (JSON, or multipart with image / video    |
|                                  | files); 202 ``{"id", "status"}``, 429 when full       |
| ``GET /v1/videos/{id}``          | status, progress 0..1, ETA, error, params, times      |
| ``GET /v1/videos/{id}/content``  | the H.264 mp4 (Range requests: the browser can seek)  |
| ``GET /v1/videos?limit=&cursor=``| history, newest first                                 |
| ``DELETE /v1/videos/{id}``       | cancel a queued / running job, or delete a finished   |
|                                  | one and its files                                     |
| ``POST /v1/speech``              | text-to-speech in a reference voice (serve.speech)    |
| ``GET /health``                  | model, device, queue                                  |
| ``GET /``                        | the web page (``serve/static``, nothing from the web) |

Every field is checked before a job is queued: a bad one gets a 422 in FastAPI's usual
shape (``{"detail": [{"loc": ["body", FIELD], "msg": ...}]}``), against caps set by
:class:`ServeConfig` (frames, side, steps, prompt length, upload size). Uploads are
decoded to prove they are what they claim and stored under server-made names; no
parameter is ever a server path. With ``api_key`` set, ``/v1/*`` and ``/health`` want
``Authorization: Bearer KEY`` (or ``X-API-Key: KEY``) and answer 401 without it.
"""

from __future__ import annotations

import io
import math
import secrets
import shutil
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from tinysora.diffusion.samplers import SAMPLERS
from tinysora.errors import UserError
from tinysora.io.video import read_video, video_info
from tinysora.pipeline import MIN_SIDE, TextToVideoPipeline
from tinysora.serve.config import ServeConfig
from tinysora.serve.forms import body_doc, field_error, invalid, read_body, validated
from tinysora.serve.speech import SpeechModel, add_speech_routes, checked_text, decode_reference
from tinysora.serve.store import JobStore, QueueFull, new_job_id
from tinysora.serve.worker import CONTEXT_FRAMES, Worker
from tinysora.voice.audio import save_audio

STATIC = Path(__file__).parent / "static"
FILE_FIELDS = ("image", "first_image", "last_image", "video", "voice")
MAX_UPLOAD_PIXELS = 4096 * 4096  # an uploaded image or video frame larger than this is refused


class VideoRequest(BaseModel):
    """The fields of ``POST /v1/videos`` (JSON body or multipart form fields); unset
    options take the model's defaults (``pipeline.json``)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="what to generate")
    negative_prompt: str | None = Field(None, description="what to steer away from")
    num_frames: int = Field(17, ge=1, description="1 + 4k frames (the model's frames_rule)")
    height: int = Field(64, ge=MIN_SIDE, description="a multiple of 16 (patch 2)")
    width: int = Field(64, ge=MIN_SIDE, description="a multiple of 16 (patch 2)")
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0, le=30)
    sampler: Literal[tuple(SAMPLERS)] | None = None  # type: ignore[valid-type]
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="default: a random one")
    fps: float | None = Field(None, gt=0, le=120)
    strength: float | None = Field(None, gt=0, le=1, description="SDEdit, with a video")
    extend: int | None = Field(None, ge=1, description="frames to add to a video")
    loop: bool = False
    narrate: str | None = Field(None, description="a voice-over; the clip grows to hold it")
    voice_text: str | None = Field(None, description="the uploaded voice clip's transcript")


class Accepted(BaseModel):
    id: str
    status: str


def check_caps(req: VideoRequest, cfg: ServeConfig, files: set[str], pipe) -> list[dict]:
    """The server's caps and the model's legal sizes (``pipe.size_multiple``,
    ``pipe.frames_rule``): one error per bad field."""
    multiple, (a, b) = pipe.size_multiple, pipe.frames_rule
    errors = []
    if len(req.prompt) > cfg.max_prompt_chars:
        errors.append(field_error("prompt", f"at most {cfg.max_prompt_chars} characters"))
    if (req.num_frames - a) % b or req.num_frames > cfg.max_frames:
        legal = f"must be {a} + {b}k and at most {cfg.max_frames}"
        errors.append(field_error("num_frames", legal, req.num_frames))
    for side in ("height", "width"):
        value = getattr(req, side)
        if value % multiple or value > cfg.max_side:
            legal = f"must be a multiple of {multiple} in {MIN_SIDE}..{cfg.max_side}"
            errors.append(field_error(side, legal, value))
    if req.num_inference_steps is not None and req.num_inference_steps > cfg.max_steps:
        errors.append(field_error("num_inference_steps", f"at most {cfg.max_steps}"))
    video = "video" in files
    if (req.strength is not None or req.extend is not None) and not video:
        field = "strength" if req.strength is not None else "extend"
        errors.append(field_error(field, "needs a video file (multipart field 'video')"))
    if video and (req.strength is None) == (req.extend is None):
        message = "give either strength (edit it) or extend (continue it)"
        errors.append(field_error("video", message))
    if req.extend is not None and req.num_frames <= CONTEXT_FRAMES:
        errors.append(
            field_error("num_frames", f"an extension window must be > {CONTEXT_FRAMES} frames")
        )
    if "image" in files and "first_image" in files:
        errors.append(field_error("first_image", "give image or first_image (both mean frame 0)"))
    if req.loop and ({"last_image", "video"} & files):
        message = "a loop pins the last frame to frame 0: no last_image/video"
        errors.append(field_error("loop", message))
    if req.extend is not None and files - {"video"}:
        errors.append(field_error("extend", "an extension takes a video only (no images)"))
    if "last_image" in files and req.num_frames < a + b:
        errors.append(field_error("num_frames", f"last_image needs >= {a + b} frames"))
    if req.narrate is not None:
        try:
            checked_text(req.narrate, "narrate", cfg.max_narration_chars)
        except RequestValidationError as e:
            errors.extend(e.errors())
    elif "voice" in files or req.voice_text is not None:
        field = "voice" if "voice" in files else "voice_text"
        errors.append(field_error(field, "goes with narrate (the text to speak)"))
    if req.voice_text is not None and "voice" not in files:
        errors.append(field_error("voice_text", "is the transcript of a voice upload; send one"))
    return errors


def parse_request(data: dict, cfg: ServeConfig, files: set[str], pipe) -> VideoRequest:
    req = validated(VideoRequest, data)
    errors = check_caps(req, cfg, files, pipe)
    if errors:
        raise RequestValidationError(errors)
    return req


# ---------------------------------------------------------------------- uploads


def _claimed(upload: UploadFile, field: str, family: str) -> None:
    kind = (upload.content_type or "").split(";")[0].strip().lower()
    if kind and kind != "application/octet-stream" and not kind.startswith(family + "/"):
        raise invalid(field, f"must be {family}/*, not {kind}")


def save_image(data: bytes, field: str, folder: Path) -> str:
    """Decode an uploaded image (it must be one) and keep it as PNG."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_UPLOAD_PIXELS:
                raise invalid(field, "image larger than 4096 x 4096")
            rgb = image.convert("RGB")
    except RequestValidationError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a bad file
        reason = f"not a readable image ({type(e).__name__})"
        raise invalid(field, reason) from None
    name = f"{field}.png"
    rgb.save(folder / name)
    return name


def save_video(data: bytes, field: str, folder: Path, max_frames: int) -> tuple[str, int]:
    """Decode an uploaded video (it must be one) and keep its frames as .npy."""
    raw = folder / f"{field}.upload"  # no suffix PyAV would not sniff; never .npy
    raw.write_bytes(data)
    try:
        info = video_info(raw)
        if info["frames"] > max_frames or info["height"] * info["width"] > MAX_UPLOAD_PIXELS:
            raise RequestValidationError(
                [field_error(field, f"at most {max_frames} frames of at most 4096 x 4096")]
            )
        frames, _ = read_video(raw)
    except UserError as e:
        raise invalid(field, f"not a readable video ({e})") from None
    finally:
        raw.unlink(missing_ok=True)
    name = f"{field}.npy"
    np.save(folder / name, frames, allow_pickle=False)
    return name, len(frames)


# ---------------------------------------------------------------------- the app


def _auth(cfg: ServeConfig) -> Callable:
    def check(request: Request) -> None:
        if cfg.api_key is None:
            return
        given = request.headers.get("x-api-key")
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            given = bearer[7:].strip()
        if given is None or not secrets.compare_digest(given, cfg.api_key):
            raise HTTPException(
                401,
                "missing or wrong API key: send 'Authorization: Bearer KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def create_app(cfg: ServeConfig, pipe: TextToVideoPipeline | None = None) -> FastAPI:
    """The app; the pipeline (``cfg.model`` on ``cfg.device`` unless given) loads at startup."""
    data = Path(cfg.data_dir)
    state: dict = {}
    speech = SpeechModel(cfg.voice_model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        (data / "videos").mkdir(parents=True, exist_ok=True)
        (data / "uploads").mkdir(parents=True, exist_ok=True)
        store = JobStore(data / "jobs.sqlite3")
        store.requeue_interrupted()
        pipeline = pipe or TextToVideoPipeline.from_pretrained(
            cfg.model, allow_pickle=cfg.allow_pickle
        )
        if cfg.device:
            pipeline.to(cfg.device)
        worker = Worker(store, pipeline, data, speech)
        worker.start()
        state.update(store=store, pipe=pipeline, worker=worker)
        yield
        worker.stop()
        store.close()

    app = FastAPI(
        title="tinysora",
        summary="Text-to-video jobs over a queue that survives restarts",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load from a CDN: the page fetches nothing
        redoc_url=None,
    )
    auth = [Depends(_auth(cfg))]

    def job_or_404(job_id: str):
        job = state["store"].get(job_id)
        if job is None:
            raise HTTPException(404, f"no video '{job_id}' (ids come from POST /v1/videos)")
        return job

    @app.get("/health", dependencies=auth)
    def health() -> dict:
        pipeline, worker = state["pipe"], state["worker"]
        return {
            "status": "ok",
            "model_loaded": True,
            "model": cfg.model or "bundled",
            "device": str(pipeline.device),
            "queue": state["store"].counts(),
            "max_queue": cfg.max_queue,
            "limits": {
                "max_frames": cfg.max_frames,
                "max_side": cfg.max_side,
                "side_multiple": pipeline.size_multiple,
                "frames_rule": list(pipeline.frames_rule),
                "max_steps": cfg.max_steps,
                "max_prompt_chars": cfg.max_prompt_chars,
                "max_upload_mb": cfg.max_upload_mb,
                "max_narration_chars": cfg.max_narration_chars,
                "max_speech_chars": cfg.max_speech_chars,
            },
            "running": worker.current,
            "worker_alive": worker.is_alive(),
        }

    @app.post(
        "/v1/videos",
        status_code=202,
        response_model=Accepted,
        dependencies=auth,
        openapi_extra=body_doc(VideoRequest, FILE_FIELDS, "prompt"),
    )
    async def create_video(request: Request):
        limit = len(FILE_FIELDS) * cfg.max_upload_bytes + 2**20
        fields, uploads = await read_body(request, FILE_FIELDS, limit)
        req = parse_request(fields, cfg, set(uploads), state["pipe"])
        store, worker = state["store"], state["worker"]
        if store.counts()["queued"] >= cfg.max_queue:
            raise _queue_full(worker)
        job_id = new_job_id()
        folder = data / "uploads" / job_id
        try:
            inputs, params = await _take_uploads(uploads, folder, req, cfg, speech)
            pipeline = state["pipe"].config
            params |= {
                "num_inference_steps": req.num_inference_steps or pipeline.num_inference_steps,
                "guidance_scale": pipeline.guidance_scale
                if req.guidance_scale is None
                else req.guidance_scale,
                "sampler": req.sampler or pipeline.sampler,
                "fps": req.fps or pipeline.fps,
                "seed": secrets.randbelow(2**31) if req.seed is None else req.seed,
            }
            job = store.add(job_id, params, inputs, cfg.max_queue)
        except QueueFull:
            shutil.rmtree(folder, ignore_errors=True)
            raise _queue_full(worker) from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        worker.notify()
        return {"id": job.id, "status": job.status}

    @app.get("/v1/videos", dependencies=auth)
    def list_videos(
        limit: int = Query(20, ge=1, le=100),
        cursor: str | None = Query(None, pattern=r"^\d+$", description="next_cursor of a page"),
    ) -> dict:
        jobs = state["store"].history(limit + 1, int(cursor) if cursor else None)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return {
            "object": "list",
            "data": [j.public() for j in jobs],
            "next_cursor": str(jobs[-1].seq) if more else None,
        }

    @app.get("/v1/videos/{job_id}", dependencies=auth)
    def get_video(job_id: str) -> dict:
        return job_or_404(job_id).public()

    @app.get(
        "/v1/videos/{job_id}/content",
        dependencies=auth,
        response_class=FileResponse,
        responses={200: {"content": {"video/mp4": {}}}},
    )
    def get_content(job_id: str):
        job = job_or_404(job_id)
        if job.status != "succeeded":
            raise HTTPException(409, f"video '{job_id}' is {job.status}: no content")
        path = data / "videos" / f"{job_id}.mp4"
        if not path.is_file():
            raise HTTPException(404, f"the file of video '{job_id}' is gone")
        return FileResponse(
            path,
            media_type="video/mp4",
            filename=f"{job_id}.mp4",
            content_disposition_type="inline",
        )

    @app.delete("/v1/videos/{job_id}", dependencies=auth)
    def delete_video(job_id: str) -> dict:
        store, worker = state["store"], state["worker"]
        job_or_404(job_id)
        if store.cancel(job_id):
            worker.cancel(job_id)
            return {"id": job_id, "status": "canceled", "deleted": False}
        if not store.delete(job_id):  # went active again meanwhile? (cannot: ids are new)
            raise HTTPException(409, f"video '{job_id}' could not be deleted; try again")
        (data / "videos" / f"{job_id}.mp4").unlink(missing_ok=True)
        shutil.rmtree(data / "uploads" / job_id, ignore_errors=True)
        return {"id": job_id, "status": "deleted", "deleted": True}

    add_speech_routes(app, cfg, auth, speech)

    @app.exception_handler(UserError)
    async def userfield_error(request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="page")
    return app


def _queue_full(worker: Worker) -> HTTPException:
    seconds = max(1, math.ceil(worker.seconds_per_job))
    return HTTPException(
        429,
        "the queue is full: retry later (see Retry-After) or raise --max-queue",
        headers={"Retry-After": str(seconds)},
    )


async def _take_uploads(
    uploads: dict[str, UploadFile], folder: Path, req: VideoRequest, cfg: ServeConfig, speech
) -> tuple[dict, dict]:
    """Check and store the uploaded files; the job's params with the video's length."""
    params = req.model_dump(exclude={"seed", "sampler", "fps"}, exclude_none=True)
    params.setdefault("negative_prompt", None)
    inputs = {}
    if uploads:
        folder.mkdir(parents=True)
    for field, upload in uploads.items():
        content = await upload.read(cfg.max_upload_bytes + 1)
        if len(content) > cfg.max_upload_bytes:
            raise HTTPException(413, f"{field}: upload over {cfg.max_upload_mb:g} MB")
        if field == "video":
            _claimed(upload, field, "video")
            name, frames = await run_in_threadpool(
                save_video, content, field, folder, cfg.max_frames
            )
            total = frames + (req.extend or 0)
            if total > cfg.max_frames:
                raise RequestValidationError(
                    [field_error("extend", f"video + extend = {total} frames > {cfg.max_frames}")]
                )
            if req.strength is not None:  # an edit keeps the video's length
                params["num_frames"] = frames
        elif field == "voice":  # a narration's reference: 3-10 s of sound, kept as wav
            _claimed(upload, field, "audio")
            rate = (await run_in_threadpool(speech.get)).sample_rate
            wav = await run_in_threadpool(decode_reference, content, field, folder, rate)
            name = "voice.wav"
            save_audio(folder / name, wav, rate)
        else:
            _claimed(upload, field, "image")
            name = await run_in_threadpool(save_image, content, field, folder)
        inputs[field] = name
    return inputs, params
