"""The worker: one thread that runs the queued jobs one at a time on the pipeline.

It claims the oldest queued job, speaks its narration if it has one (the clip is then
extended to hold it: ``pipeline.narrated_length``), runs ``TextToVideoPipeline.__call__``
with the job's params (uploaded conditioning files by their server-made paths), reports
progress and an ETA from the sampler's callback, and writes the mp4 (with the narration
as its AAC track) atomically to ``videos/<id>.mp4``
before the job is marked succeeded. A job that raises is marked failed with a one-line
message and the worker goes on with the next. A canceled job stops at its next sampling
step; on shutdown the running job goes back to the queue.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

from tinysora.errors import UserError
from tinysora.pipeline import (
    CONTEXT_LATENTS,
    TextToVideoPipeline,
    export_to_video,
    narrated_length,
)
from tinysora.serve.store import Job, JobStore
from tinysora.vae.model import TIME_FACTOR

CONTEXT_FRAMES = 1 + TIME_FACTOR * (CONTEXT_LATENTS - 1)  # frames an extension window is given


class _Interrupted(Exception):
    """Raised inside the sampler's callback to stop a canceled job (or on shutdown)."""


def sampling_runs(params: dict, inputs: dict) -> int:
    """How many sampler runs a job makes (its progress is their mean): a loop without an
    image first makes its frame 0; an extension makes one run per window."""
    if params.get("extend"):
        added = params["num_frames"] - CONTEXT_FRAMES  # new frames per window
        return max(1, math.ceil(params["extend"] / added))
    return 2 if params.get("loop") and "image" not in inputs else 1


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    if isinstance(exc, UserError):
        return message or type(exc).__name__
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class Worker(threading.Thread):
    def __init__(self, store: JobStore, pipe: TextToVideoPipeline, data_dir: Path, speech=None):
        super().__init__(name="tinysora-worker", daemon=True)
        self.store, self.pipe, self.data_dir = store, pipe, Path(data_dir)
        self.speech = speech  # serve.speech.SpeechModel: narration
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._current: str | None = None
        self._interrupt = threading.Event()
        self._lock = threading.Lock()
        self.jobs_run = 0
        self.seconds_per_job = 10.0  # a running mean: the Retry-After of a full queue

    # called from the API threads
    def notify(self) -> None:
        """A job was queued: wake up if idle."""
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Stop ``job_id`` at its next sampling step if it is the one running."""
        with self._lock:
            if self._current == job_id:
                self._interrupt.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current sampling step; a running job goes back to the queue."""
        self._stopping.set()
        self._interrupt.set()
        self._wake.set()
        self.join(timeout)

    @property
    def current(self) -> str | None:
        return self._current

    # the thread
    def run(self) -> None:
        while not self._stopping.is_set():
            job = self.store.claim()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            with self._lock:
                self._current = job.id
                self._interrupt.clear()
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._current = None

    def _narration(self, job: Job):
        """The job's narration (None without one), spoken before its clip is sampled."""
        p = job.params
        if not p.get("narrate"):
            return None
        voice = job.inputs.get("voice")
        voice = str(self.data_dir / "uploads" / job.id / voice) if voice else None
        tts = self.speech.get()
        return tts(p["narrate"], ref_audio=voice, ref_text=p.get("voice_text"), seed=p["seed"])

    def _run(self, job: Job) -> None:
        start = time.perf_counter()
        p = job.params
        runs = sampling_runs(p, job.inputs)
        frames, window, speech = p["num_frames"], None, None
        done_runs, t_start, last = 0, 1.0, 0.0  # runs finished; this run's start, fraction

        def on_step(info: dict) -> None:
            nonlocal done_runs, t_start, last
            if self._interrupt.is_set():
                raise _Interrupted
            if info["i"] == 0:  # a sampler run begins (flow time t_start -> 0)
                done_runs += last > 0
                t_start = float(info["t"])
            last = (t_start - float(info["t_next"])) / t_start
            progress = min(0.99, (min(done_runs, runs - 1) + last) / runs)
            elapsed = time.perf_counter() - start
            self.store.progress(job.id, progress, elapsed / progress * (1 - progress))

        uploads = self.data_dir / "uploads" / job.id
        files = {k: str(uploads / name) for k, name in job.inputs.items() if k != "voice"}
        try:
            speech = self._narration(job)
            if speech is not None:  # the clip is extended to hold the speech
                frames, window = narrated_length(speech.seconds, p["fps"], frames)
                if window:
                    runs = 1 + math.ceil((frames - window) / (window - CONTEXT_FRAMES))
            video = self.pipe(
                p["prompt"],
                negative_prompt=p.get("negative_prompt"),
                num_frames=frames,
                window=window,
                height=p["height"],
                width=p["width"],
                num_inference_steps=p["num_inference_steps"],
                guidance_scale=p["guidance_scale"],
                sampler=p["sampler"],
                generator=torch.Generator().manual_seed(p["seed"]),
                callback=on_step,
                progress=False,
                strength=p.get("strength"),
                extend=p.get("extend"),
                loop=bool(p.get("loop")),
                **files,
            )
            path = self.data_dir / "videos" / f"{job.id}.mp4"
            sound = (
                {} if speech is None else {"audio": speech.audio, "audio_rate": speech.sample_rate}
            )
            export_to_video(video.frames, path, fps=p["fps"], **sound)
            del video
        except _Interrupted:
            if self._stopping.is_set():  # shutdown, not cancel: run it again next time
                self.store.requeue_interrupted()
            return
        except Exception as exc:  # noqa: BLE001 - a job fails alone, the server goes on
            if not isinstance(exc, UserError):
                traceback.print_exc(file=sys.stderr)
            self.store.finish(job.id, "failed", one_line(exc))
            return
        finally:
            self.jobs_run += 1
            seconds = time.perf_counter() - start
            self.seconds_per_job += (seconds - self.seconds_per_job) / min(self.jobs_run, 10)
        if not self.store.finish(job.id, "succeeded"):  # canceled as it finished
            path.unlink(missing_ok=True)
