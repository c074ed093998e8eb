"""The web page in a real browser: Playwright drives Debian's Chromium (``make
test-browser`` installs it) against a real ``tinysora serve`` process on loopback."""

from __future__ import annotations

import shutil

import pytest
from tiny import save_tiny_model

from tinysora.serve.process import ServerProcess as Server

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = save_tiny_model(tmp_path_factory.mktemp("model"))
    with Server(model, tmp_path_factory.mktemp("serve")) as s:
        yield s


@pytest.fixture(scope="module")
def page(server):
    if CHROMIUM is None:
        pytest.fail("no chromium on PATH: run `make test-browser` (it installs Debian's)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.base + "/")
        yield page
        browser.close()
        assert errors == [], errors


def generate(page, prompt: str, selects: dict, fills: dict) -> None:
    """Type a prompt, set the controls, press Generate."""
    page.fill("#prompt", prompt)
    for control, value in selects.items():
        page.select_option(f"#{control}", value)
    for control, value in fills.items():
        page.fill(f"#{control}", value)
    page.click("#generate")


def test_generate_plays_in_the_page_with_the_requested_duration(page):
    prompt = "a small red circle moving left on a black background"
    generate(page, prompt, {"num_frames": "25"}, {"fps": "10", "seed": "7"})
    # the video element plays the result: it has advanced past its start
    page.wait_for_function(
        "() => { const v = document.getElementById('player');"
        " return !v.hidden && v.readyState >= 2 && !v.paused && v.currentTime > 0; }",
        timeout=60_000,
    )
    duration = page.eval_on_selector("#player", "v => v.duration")
    assert duration == pytest.approx(25 / 10, abs=1 / 10)  # 25 frames at 10 fps
    assert page.eval_on_selector("#player", "v => [v.videoWidth, v.videoHeight]") == [64, 64]
    assert "seed 7" in page.inner_text("#status-line")
    assert page.inner_text("#history li:first-child .prompt").startswith("a small red circle")


def test_a_bad_request_shows_the_servers_reason(page):
    page.fill("#prompt", "x" * 600)
    page.click("#generate")
    page.wait_for_function("() => document.getElementById('form-error').textContent !== ''")
    assert "prompt" in page.inner_text("#form-error")


def test_cancel_and_delete_from_the_history(page):
    big = {"num_frames": "65", "width": "256", "height": "256"}
    generate(page, "a big blue square moving up", big, {"num_inference_steps": "100"})
    page.wait_for_function(
        "() => /running/.test(document.getElementById('status-line').textContent)"
    )
    page.click("#cancel")
    page.wait_for_function(
        "() => /canceled/.test(document.getElementById('status-line').textContent)"
    )
    first = page.locator("#history li").first
    first.wait_for()
    assert "canceled" in first.inner_text()
    count = page.locator("#history li").count()
    first.get_by_role("button", name="Delete").click()
    page.wait_for_function(f"() => document.querySelectorAll('#history li').length === {count - 1}")


def test_a_narrated_clip_from_the_page(page, server, tmp_path):
    """Narration typed into the page and a voice clip chosen there: the job speaks (the
    bundled speech model) and its mp4 carries an AAC track as long as the clip."""
    from pathlib import Path

    from tinysora.io.video import audio_info, video_info

    voice = Path(__file__).resolve().parents[1] / "weights" / "voice" / "default_voice.wav"
    page.fill("#narrate", "A small red circle moves to the left.")
    page.set_input_files("#voice", str(voice))
    generate(page, "a small red circle moving left", {"num_frames": "9"}, {"fps": "8"})
    page.wait_for_function(
        "() => { const v = document.getElementById('player');"
        " return !v.hidden && v.readyState >= 2 && v.duration > 9 / 8; }",  # grown to speak
        timeout=120_000,
    )
    with server.client() as c:
        job = c.get("/v1/videos", params={"limit": 1}).json()["data"][0]
        assert job["params"]["narrate"] == "A small red circle moves to the left."
        path = tmp_path / "narrated.mp4"
        path.write_bytes(c.get(f"/v1/videos/{job['id']}/content").content)
    video, audio = video_info(path), audio_info(path)
    assert audio["codec"] == "aac"
    assert abs(audio["seconds"] - video["frames"] / video["fps"]) <= 1 / video["fps"]
    page.fill("#narrate", "")
    page.set_input_files("#voice", [])
