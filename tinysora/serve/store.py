"""The server's job store: one SQLite file, so nothing the server accepted is lost.

Every state change is one committed transaction (WAL journal), so a server killed with
``kill -9`` finds on restart exactly the jobs it had acknowledged: finished ones with
their files, queued ones still queued, and the one that was running put back in the
queue (:meth:`JobStore.requeue_interrupted`). A job moves

    queued -> running -> succeeded | failed
    queued | running -> canceled             (DELETE while it waits or runs)

and leaves the table only when a finished (or canceled) job is deleted. Rows are
ordered by ``seq`` (insertion order), which is also the history's cursor.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
ACTIVE = ("queued", "running")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    eta_s REAL,
    error TEXT,
    params TEXT NOT NULL,
    inputs TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
"""


class QueueFull(Exception):
    """The queue holds ``max_queue`` waiting jobs; try again later."""


@dataclass
class Job:
    seq: int
    id: str
    status: str
    progress: float
    eta_s: float | None
    error: str | None
    params: dict
    inputs: dict  # conditioning field -> file name in the job's upload folder
    created_at: float
    started_at: float | None
    finished_at: float | None

    def public(self) -> dict:
        """The job as ``GET /v1/videos/{id}`` shows it."""
        return {
            "id": self.id,
            "object": "video",
            "status": self.status,
            "progress": round(self.progress, 4),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 2),
            "error": self.error,
            "params": {**self.params, **{k: "(uploaded)" for k in self.inputs}},
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }


def new_job_id() -> str:
    return "vid_" + uuid.uuid4().hex


class JobStore:
    """Thread-safe access to ``jobs.sqlite3``: the API threads and the worker share one
    connection under a lock (SQLite serialises writers anyway)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _change(self, sql: str, args: tuple = ()) -> int:
        """Run one write; the number of rows it changed."""
        with self._lock:
            return self._db.execute(sql, args).rowcount

    @staticmethod
    def _job(row: sqlite3.Row | None) -> Job | None:
        if row is None:
            return None
        data = dict(row)
        data["params"] = json.loads(data["params"])
        data["inputs"] = json.loads(data["inputs"])
        return Job(**data)

    # ------------------------------------------------------------------ the API side

    def add(self, job_id: str, params: dict, inputs: dict, max_queue: int) -> Job:
        """Queue a job, unless ``max_queue`` jobs already wait (:class:`QueueFull`)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                waiting = self._db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'queued'"
                ).fetchone()[0]
                if waiting >= max_queue:
                    raise QueueFull(f"the queue is full ({waiting} jobs waiting)")
                self._db.execute(
                    "INSERT INTO jobs (id, status, params, inputs, created_at) "
                    "VALUES (?, 'queued', ?, ?, ?)",
                    (job_id, json.dumps(params), json.dumps(inputs), time.time()),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(job_id)

    def get(self, job_id: str) -> Job | None:
        return self._job(self._one("SELECT * FROM jobs WHERE id = ?", (job_id,)))

    def history(self, limit: int, cursor: int | None = None) -> list[Job]:
        """Up to ``limit`` jobs, newest first, older than ``cursor`` (a ``seq``) if given."""
        before = cursor if cursor is not None else 2**62
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE seq < ? ORDER BY seq DESC LIMIT ?", (before, limit)
            ).fetchall()
        return [self._job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {s: 0 for s in STATUSES} | {r[0]: r[1] for r in rows}

    def cancel(self, job_id: str) -> bool:
        """Mark a queued or running job canceled; False if it was not active."""
        return bool(
            self._change(
                "UPDATE jobs SET status = 'canceled', eta_s = NULL, finished_at = ? "
                "WHERE id = ? AND status IN ('queued', 'running')",
                (time.time(), job_id),
            )
        )

    def delete(self, job_id: str) -> bool:
        """Remove a finished or canceled job's row; False if it is active or unknown."""
        return bool(
            self._change(
                "DELETE FROM jobs WHERE id = ? AND status NOT IN ('queued', 'running')",
                (job_id,),
            )
        )

    # ------------------------------------------------------------------ the worker side

    def requeue_interrupted(self) -> int:
        """Put jobs left ``running`` by a dead server back in the queue (at startup)."""
        return self._change(
            "UPDATE jobs SET status = 'queued', progress = 0, eta_s = NULL, started_at = NULL "
            "WHERE status = 'running'"
        )

    def claim(self) -> Job | None:
        """The oldest queued job, now marked running (None if the queue is empty)."""
        with self._lock:
            row = self._db.execute(
                "UPDATE jobs SET status = 'running', started_at = ?, progress = 0 "
                "WHERE seq = (SELECT MIN(seq) FROM jobs WHERE status = 'queued') RETURNING *",
                (time.time(),),
            ).fetchone()
        return self._job(row)

    def progress(self, job_id: str, progress: float, eta_s: float | None) -> None:
        self._change(
            "UPDATE jobs SET progress = ?, eta_s = ? WHERE id = ? AND status = 'running'",
            (progress, eta_s, job_id),
        )

    def finish(self, job_id: str, status: str, error: str | None = None) -> bool:
        """End a running job as ``succeeded`` or ``failed``; False if it was canceled
        meanwhile (the cancel stands)."""
        progress = 1.0 if status == "succeeded" else None
        return bool(
            self._change(
                "UPDATE jobs SET status = ?, error = ?, eta_s = NULL, finished_at = ?, "
                "progress = COALESCE(?, progress) WHERE id = ? AND status = 'running'",
                (status, error, time.time(), progress, job_id),
            )
        )
