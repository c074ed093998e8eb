"""``tinysora serve``: a real server process on loopback, driven over HTTP with httpx.

The model is a tiny random one (tests/tiny.py), so a job takes a fraction of a second;
"long" jobs (many steps on a large grid) are the ones a test cancels or kills the server
under. Videos are decoded with PyAV (tinysora.io.video).
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from conftest import wait_until
from PIL import Image
from tiny import save_tiny_model

from tinysora.io.video import read_video, write_video
from tinysora.serve import process
from tinysora.serve.process import FINAL, submit
from tinysora.serve.process import ServerProcess as Server

LONG = {"num_frames": 65, "height": 256, "width": 256, "num_inference_steps": 100}
QUICK = {"num_frames": 9}
JOB_S = 120  # the longest wait for a job's status


def wait_for(client, job_id: str, until=FINAL) -> dict:
    """The job once its status is in ``until``; fails the test after ``JOB_S``."""
    job = process.wait_for(client, job_id, until, timeout=JOB_S)
    assert job["status"] in until, f"job {job_id} still {job['status']} after {JOB_S} s: {job}"
    return job


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    data = tmp_path_factory.mktemp("serve")
    with Server(model, data, "--max-queue", "64", "--max-upload-mb", "0.5") as s:
        yield s


def decode(content: bytes, tmp_path, name="out.mp4") -> tuple[np.ndarray, float]:
    path = tmp_path / name
    path.write_bytes(content)
    return read_video(path)


def png(color=(255, 0, 0), size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def post_video(client, path, **fields):
    """POST a multipart job with ``path`` as its video file."""
    files = {"video": (path.name, path.read_bytes(), "video/mp4")}
    return client.post("/v1/videos", data={"prompt": "a shape", **fields}, files=files)


def test_submit_poll_download_and_seek(server, tmp_path):
    with server.client() as c:
        job_id = submit(c, num_frames=9, height=48, width=80, fps=6, seed=3)
        job = wait_for(c, job_id)
        assert job["status"] == "succeeded", job
        assert job["progress"] == 1.0 and job["error"] is None
        assert job["finished_at"] >= job["created_at"]
        p = job["params"]
        assert (p["num_inference_steps"], p["seed"], p["sampler"]) == (2, 3, "euler")
        whole = c.get(f"/v1/videos/{job_id}/content")
        assert whole.status_code == 200
        assert whole.headers["content-type"] == "video/mp4"
        frames, fps = decode(whole.content, tmp_path)
        assert frames.shape == (9, 48, 80, 3) and fps == pytest.approx(6)
        part = c.get(f"/v1/videos/{job_id}/content", headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == whole.content[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{len(whole.content)}"
        again = wait_for(c, submit(c, num_frames=9, height=48, width=80, fps=6, seed=3))
        repeat, _ = decode(c.get(f"/v1/videos/{again['id']}/content").content, tmp_path, "b.mp4")
        np.testing.assert_array_equal(repeat, frames)  # same seed, same video
        listed = [j["id"] for j in c.get("/v1/videos", params={"limit": 2}).json()["data"]]
        assert listed == [again["id"], job_id]  # newest first


def test_history_pages_with_a_cursor(server):
    with server.client() as c:
        ids = [submit(c, **QUICK) for _ in range(3)]
        first = c.get("/v1/videos", params={"limit": 2}).json()
        second = c.get("/v1/videos", params={"limit": 2, "cursor": first["next_cursor"]}).json()
        assert [j["id"] for j in first["data"]] == ids[::-1][:2]
        assert second["data"][0]["id"] == ids[0]
        for job_id in ids:
            wait_for(c, job_id)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 501}, "prompt"),
        ({"num_frames": 10}, "num_frames"),
        ({"num_frames": 69}, "num_frames"),
        ({"height": 72}, "height"),
        ({"width": 512}, "width"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 101}, "num_inference_steps"),
        ({"guidance_scale": "lots"}, "guidance_scale"),
        ({"sampler": "ddim"}, "sampler"),
        ({"seed": -1}, "seed"),
        ({"fps": 0}, "fps"),
        ({"strength": 0.5}, "strength"),
        ({"extend": 8}, "extend"),
        ({"loop": "maybe"}, "loop"),
        ({"output": "/etc/passwd"}, "output"),
    ],
)
def test_a_bad_field_gets_a_422_that_names_it(server, body, field):
    with server.client() as c:
        response = c.post("/v1/videos", json={"prompt": "a red circle", **body})
    assert response.status_code == 422, response.text
    assert field in [e["loc"][-1] for e in response.json()["detail"]]


def test_bad_requests_are_refused_with_a_reason(server):
    with server.client() as c:
        missing = c.post("/v1/videos", json={"num_frames": 9})
        assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == [
            "body",
            "prompt",
        ]
        bodies = (("application/json", b"{not json", 422), ("text/plain", b"hi", 415))
        for kind, body, code in bodies:
            response = c.post("/v1/videos", content=body, headers={"content-type": kind})
            assert response.status_code == code
        assert c.get("/v1/videos/vid_nope").status_code == 404
        assert c.delete("/v1/videos/vid_nope").status_code == 404
        assert c.get("/v1/videos", params={"limit": 0}).status_code == 422
        assert c.get("/v1/videos", params={"cursor": "../x"}).status_code == 422


def test_uploads_are_checked_to_be_what_they_claim(server, tmp_path):
    with server.client() as c:
        form = {"prompt": "a red square", "num_frames": "9"}
        job = c.post("/v1/videos", data=form, files={"image": ("r.png", png(), "image/png")})
        assert job.status_code == 202, job.text
        bad = [
            ({"image": ("cat.png", b"not an image at all", "image/png")}, "image"),
            ({"image": ("r.png", png(), "video/mp4")}, "image"),
            ({"video": ("v.mp4", b"\x00" * 2000, "video/mp4")}, "video"),
            ({"script": ("x.sh", b"rm -rf /", "text/plain")}, "script"),
        ]
        for files, field in bad:
            data = {**form, "strength": "0.5"} if field == "video" else form
            response = c.post("/v1/videos", data=data, files=files)
            assert response.status_code == 422, (field, response.text)
            assert field in [e["loc"][-1] for e in response.json()["detail"]]
        big = c.post("/v1/videos", data=form, files={"image": ("big.png", b"x" * 600_000)})
        assert big.status_code == 413 and "image" in big.json()["detail"]
        job = wait_for(c, job.json()["id"])
        assert job["status"] == "succeeded" and job["params"]["image"] == "(uploaded)"
        frames, _ = decode(c.get(f"/v1/videos/{job['id']}/content").content, tmp_path)
        assert frames.shape == (9, 64, 64, 3)


def test_keyframes_and_a_loop_from_uploads(server, tmp_path):
    with server.client() as c:
        keyframes = c.post(
            "/v1/videos",
            data={"prompt": "a red square", "num_frames": "9"},
            files={
                "first_image": ("a.png", png((255, 0, 0)), "image/png"),
                "last_image": ("b.png", png((0, 0, 255), (80, 48)), "image/png"),
            },
        )
        looped = c.post(
            "/v1/videos",
            data={"prompt": "a red square", "num_frames": "9", "loop": "true"},
            files={"image": ("a.png", png(), "image/png")},
        )
        for response in (keyframes, looped):
            assert response.status_code == 202, response.text
            assert wait_for(c, response.json()["id"])["status"] == "succeeded"
        clash = c.post(
            "/v1/videos",
            data={"prompt": "x", "loop": "true"},
            files={"last_image": ("b.png", png(), "image/png")},
        )
        assert clash.status_code == 422 and clash.json()["detail"][0]["loc"][-1] == "loop"


def test_a_video_edit_keeps_the_uploaded_length(server, tmp_path):
    source = np.zeros((13, 64, 64, 3), np.uint8)
    source[:, 16:48, 16:48] = (0, 200, 0)
    write_video(tmp_path / "in.mp4", source, fps=8)
    with server.client() as c:
        response = post_video(c, tmp_path / "in.mp4", strength="0.6")
        assert response.status_code == 202, response.text
        job = wait_for(c, response.json()["id"])
        assert job["status"] == "succeeded", job
        frames, _ = decode(c.get(f"/v1/videos/{job['id']}/content").content, tmp_path)
        assert frames.shape == (13, 64, 64, 3)


def test_a_failing_job_fails_alone_with_its_message(server, tmp_path):
    write_video(tmp_path / "short.mp4", np.zeros((3, 64, 64, 3), np.uint8), fps=8)
    with server.client() as c:
        response = post_video(c, tmp_path / "short.mp4", extend="8")
        assert response.status_code == 202, response.text
        failed = wait_for(c, response.json()["id"])
        assert failed["status"] == "failed"
        assert "extend needs a video of >= 5 frames" in failed["error"]
        assert "\n" not in failed["error"]
        assert c.get(f"/v1/videos/{failed['id']}/content").status_code == 409
        assert wait_for(c, submit(c, **QUICK))["status"] == "succeeded"  # still serving


def test_cancel_a_running_and_a_queued_job_then_delete(server):
    with server.client() as c:
        running, queued = submit(c, **LONG), submit(c, **LONG)
        wait_for(c, running, until=("running",))
        job = wait_until(
            lambda: (j := c.get(f"/v1/videos/{running}").json())["progress"] > 0 and j,
            JOB_S,
            "the running job's first progress",
        )
        assert 0 < job["progress"] < 1 and job["eta_s"] > 0
        assert c.get(f"/v1/videos/{queued}").json()["status"] == "queued"
        for job_id in (queued, running):
            response = c.delete(f"/v1/videos/{job_id}")
            assert response.status_code == 200 and response.json()["status"] == "canceled"
        assert wait_for(c, running)["status"] == "canceled"
        assert c.get(f"/v1/videos/{queued}").json()["status"] == "canceled"
        assert c.get(f"/v1/videos/{running}/content").status_code == 409
        assert wait_for(c, submit(c, **QUICK))["status"] == "succeeded"
        assert c.get(f"/v1/videos/{queued}").json()["status"] == "canceled"  # never ran
        for job_id in (queued, running):
            assert c.delete(f"/v1/videos/{job_id}").json()["deleted"] is True
            assert c.get(f"/v1/videos/{job_id}").status_code == 404


def test_forty_concurrent_submissions_all_run(server, tmp_path):
    with server.client() as c, ThreadPoolExecutor(40) as pool:
        ids = list(pool.map(lambda i: submit(c, seed=i, **QUICK), range(40)))
        jobs = [wait_for(c, job_id) for job_id in ids]
        assert [j["status"] for j in jobs] == ["succeeded"] * 40
        for job_id in ids:
            frames, _ = decode(c.get(f"/v1/videos/{job_id}/content").content, tmp_path)
            assert frames.shape == (9, 64, 64, 3)


def test_a_full_queue_answers_429_and_loses_nothing(model, tmp_path):
    # bound to every interface, without a key: the server says so
    with Server(model, tmp_path, "--max-queue", "8", "--host", "0.0.0.0") as s:
        assert "--api-key" in s.log()
        with s.client() as c, ThreadPoolExecutor(40) as pool:
            body = {"prompt": "a blue star moving up", **QUICK}
            responses = list(pool.map(lambda i: c.post("/v1/videos", json=body), range(40)))
            codes = [r.status_code for r in responses]
            assert set(codes) == {202, 429} and codes.count(202) >= 8, codes
            refused = [r for r in responses if r.status_code == 429]
            assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
            accepted = {r.json()["id"] for r in responses if r.status_code == 202}
            for job_id in accepted:
                assert wait_for(c, job_id)["status"] == "succeeded"
                frames, _ = decode(c.get(f"/v1/videos/{job_id}/content").content, tmp_path)
                assert len(frames) == 9
            listed = {j["id"] for j in c.get("/v1/videos", params={"limit": 100}).json()["data"]}
            assert listed == accepted


def test_kill_9_and_restart_lose_nothing(model, tmp_path):
    import signal

    first = Server(model, tmp_path).start()
    with first.client() as c:
        done = submit(c, **QUICK)
        assert wait_for(c, done)["status"] == "succeeded"
        before = c.get(f"/v1/videos/{done}/content").content
        interrupted = submit(c, **LONG)
        waiting = [submit(c, **QUICK) for _ in range(2)]
        assert wait_for(c, interrupted, until=("running",))["status"] == "running"
    first.kill(signal.SIGKILL)

    second = Server(model, tmp_path).start()  # killed mid-job: the job runs again
    with second.client() as c:
        assert c.get(f"/v1/videos/{done}/content").content == before
        assert wait_for(c, interrupted, until=("running",))["status"] == "running"
    second.kill(signal.SIGINT)  # a clean stop also puts the running job back
    assert "Traceback" not in second.log() and "Application shutdown complete" in second.log()

    with Server(model, tmp_path) as third, third.client() as c:
        assert c.get(f"/v1/videos/{interrupted}").json()["status"] in ("queued", "running")
        assert c.delete(f"/v1/videos/{interrupted}").json()["status"] == "canceled"
        assert [wait_for(c, j)["status"] for j in waiting] == ["succeeded"] * 2
        statuses = {j["id"]: j["status"] for j in c.get("/v1/videos").json()["data"]}
        assert statuses == {done: "succeeded", interrupted: "canceled"} | {
            j: "succeeded" for j in waiting
        }


def test_an_api_key_guards_the_api_but_not_the_page(model, tmp_path):
    with Server(model, tmp_path, api_key="s3cret") as s:
        with s.client() as c:
            assert c.get("/health").json()["model_loaded"] is True
            assert wait_for(c, submit(c, **QUICK))["status"] == "succeeded"
        with httpx.Client(base_url=s.base, headers={"Authorization": "Bearer no"}) as anon:
            assert anon.get("/health").status_code == 401
            assert anon.post("/v1/videos", json={"prompt": "x"}).status_code == 401
            assert anon.get("/v1/videos").status_code == 401
            page = anon.get("/")
            assert page.status_code == 200 and "<textarea" in page.text
            assert anon.get("/app.js").headers["content-type"].startswith("text/javascript")
            spec = anon.get("/openapi.json").json()
            assert {"/v1/videos", "/v1/videos/{job_id}", "/health"} <= set(spec["paths"])
