"""A real ``tinysora serve`` process on loopback, shared by the server and browser tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

FINAL = ("succeeded", "failed", "canceled")
STARTUP_S = 120


class Server:
    """``python -m tinysora.cli serve`` on a free port (uvicorn picks it: ``--port 0``),
    one torch thread, its log in ``data_dir/server.log``."""

    def __init__(self, model: Path, data_dir: Path, *args: str, api_key: str | None = None):
        self.model, self.data_dir, self.args, self.api_key = model, Path(data_dir), args, api_key
        self.process: subprocess.Popen | None = None
        self.base = ""

    def start(self) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "server.log"
        cmd = [sys.executable, "-m", "tinysora.cli", "serve", "--port", "0"]
        cmd += ["--model", str(self.model), "--data-dir", str(self.data_dir), *self.args]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(log, "w") as err:
            self.process = subprocess.Popen(cmd, env=env, stdout=err, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            found = re.search(r"Uvicorn running on (http://\S+)", log.read_text())
            if found:
                self.base = found.group(1)
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{log.read_text()}")
            time.sleep(0.1)
        raise RuntimeError(f"the server did not start in {STARTUP_S} s:\n{log.read_text()}")

    def log(self) -> str:
        return (self.data_dir / "server.log").read_text()

    def client(self, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=60, **kwargs)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(60)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill(signal.SIGINT)


def submit(client: httpx.Client, **fields) -> str:
    response = client.post("/v1/videos", json={"prompt": "a red circle moving left", **fields})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_for(client: httpx.Client, job_id: str, until=FINAL, timeout: float = 120) -> dict:
    """Poll the job until its status is in ``until``; the last status seen."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/videos/{job_id}").json()
        if job["status"] in until or time.monotonic() > deadline:
            return job
        time.sleep(0.05)
