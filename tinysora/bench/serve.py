"""Serving benchmark: a real ``tinysora serve`` process on loopback, the bundled model.

    python -m tinysora.bench.serve --json bench/results/<date>-serve.json

Measures (each in the report):

* ``status_rps``: ``GET /v1/videos/{id}`` requests/s from ``clients`` threads while a
  job runs (the server shares the machine's cores with the job and with the clients);
* ``first_progress_s``: submit -> the first progress the API reports (> 0), median of
  ``repeats`` jobs; ``submit_s``: the POST's own latency;
* ``memory``: the server's RSS after every 10 of ``jobs`` finished jobs, and its growth
  from the first reading (after a warm-up job) to the last: flat means no job leaves
  memory behind.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from tinysora.serve.process import ServerProcess, submit, wait_for

JOB = {"prompt": "a small red circle moving left on a black background", "num_frames": 17}


def status_rps(client, job_id: str, clients: int, seconds: float) -> float:
    """GET /v1/videos/{id} from ``clients`` threads for ``seconds``; requests/s."""
    stop = time.perf_counter() + seconds
    counts = [0] * clients

    def hammer(k: int) -> None:
        while time.perf_counter() < stop:
            client.get(f"/v1/videos/{job_id}").raise_for_status()
            counts[k] += 1

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def first_progress(client) -> tuple[float, float]:
    """Seconds from POST to its 202, and from POST to the first progress > 0."""
    start = time.perf_counter()
    job_id = submit(client, **JOB)
    accepted = time.perf_counter() - start
    while client.get(f"/v1/videos/{job_id}").json()["progress"] == 0:
        time.sleep(0.002)
    seen = time.perf_counter() - start
    wait_for(client, job_id)
    return accepted, seen


def measure(
    model: str | None, jobs: int = 100, repeats: int = 5, clients: int = 4, threads: int = 2
) -> dict:
    with tempfile.TemporaryDirectory() as data:
        args = ("--max-queue", "256")
        server = ServerProcess(model and Path(model), Path(data), *args, threads=threads)
        with server, server.client() as client:
            wait_for(client, submit(client, **JOB))  # warm-up
            long = submit(client, **{**JOB, "num_frames": 65, "num_inference_steps": 60})
            wait_for(client, long, until=("running",))
            rps = status_rps(client, long, clients, 3.0)
            client.delete(f"/v1/videos/{long}")  # cancel it (or delete it, if it finished)
            timings = [first_progress(client) for _ in range(repeats)]
            rss = [{"jobs": 0, "rss_mb": round(server.rss_mb(), 1)}]
            for done in range(1, jobs + 1):
                wait_for(client, submit(client, **{**JOB, "num_frames": 9}))
                if done % 10 == 0:
                    rss.append({"jobs": done, "rss_mb": round(server.rss_mb(), 1)})
    return {
        "name": "serve",
        "date": time.strftime("%Y-%m-%d"),
        "model": model or "bundled",
        "server_threads": threads,
        "job": JOB,
        "status_rps": round(rps, 1),
        "status_clients": clients,
        "submit_s": round(statistics.median(t[0] for t in timings), 4),
        "first_progress_s": round(statistics.median(t[1] for t in timings), 4),
        "memory": rss,
        "rss_growth_mb": round(rss[-1]["rss_mb"] - rss[0]["rss_mb"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: bundled weights/)")
    parser.add_argument("--jobs", type=int, default=100, help="jobs of the memory reading")
    parser.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    parser.add_argument("--json", help="report path (default bench/results/<date>-serve.json)")
    args = parser.parse_args()
    report = measure(args.model, jobs=args.jobs, threads=args.threads)
    path = Path(args.json or f"bench/results/{report['date']}-serve.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "memory"}, indent=1))
    print(path)


if __name__ == "__main__":
    main()
