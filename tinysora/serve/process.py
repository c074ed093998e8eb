"""A real ``tinysora serve`` process on loopback, and an httpx client for it: what the
server tests, the browser tests and the serving benchmark drive.

    with ServerProcess(model_dir, data_dir, "--max-queue", "8") as server:
        with server.client() as client:
            job = wait_for(client, submit(client, num_frames=9))
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

FINAL = ("succeeded", "failed", "canceled")
STARTUP_S = 120


class ServerProcess:
    """``python -m tinysora.cli serve`` on a free port (uvicorn picks it: ``--port 0``)
    with ``threads`` torch threads (one: beside a test process), its log in
    ``data_dir/server.log``; ``model`` None serves the bundled model."""

    def __init__(
        self,
        model: Path | None,
        data_dir: Path,
        *args: str,
        api_key: str | None = None,
        threads: int = 1,
    ):
        self.model, self.data_dir, self.args, self.api_key = model, Path(data_dir), args, api_key
        self.threads = threads
        self.process: subprocess.Popen | None = None
        self.base = ""  # http://host:port once started

    def start(self) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "server.log"
        cmd = [sys.executable, "-m", "tinysora.cli", "serve", "--port", "0"]
        cmd += ["--data-dir", str(self.data_dir), *self.args]
        if self.model is not None:
            cmd += ["--model", str(self.model)]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
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

    def rss_mb(self) -> float:
        """The server process's resident memory (Linux /proc), MiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def log(self) -> str:
        return (self.data_dir / "server.log").read_text()

    def client(self, **kwargs):
        """An ``httpx.Client`` on this server, with its API key."""
        import httpx  # a test / bench dependency, not the server's

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=60, **kwargs)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(60)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill(signal.SIGINT)


def submit(client, prompt: str = "a red circle moving left", **fields) -> str:
    """POST a JSON job; its id (raises on anything but 202)."""
    response = client.post("/v1/videos", json={"prompt": prompt, **fields})
    if response.status_code != 202:
        raise RuntimeError(f"submit answered {response.status_code}: {response.text}")
    return response.json()["id"]


def wait_for(client, job_id: str, until=FINAL, timeout: float = 120) -> dict:
    """Poll the job until its status is in ``until``; the last status seen."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/videos/{job_id}")
        response.raise_for_status()
        job = response.json()
        if job["status"] in until or time.monotonic() > deadline:
            return job
        time.sleep(0.05)
