"""Screenshot of the web page (``tinysora serve``) with a clip from the bundled model,
for the README: the app runs in-process under uvicorn, Chromium (Debian's) drives it.

    python scripts/serve_screenshot.py --out docs/serve.png
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time

import uvicorn
from playwright.sync_api import sync_playwright

from tinysora.serve.app import create_app
from tinysora.serve.config import ServeConfig

PROMPTS = (  # (prompt, narration or "")
    ("a small green triangle moving right on a navy background", ""),
    ("a large red circle bouncing on a black background", "A large red circle bounces."),
)
START_TIMEOUT_S = 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/serve.png")
    parser.add_argument("--model", help="model directory (default: bundled weights/)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        app = create_app(ServeConfig(model=args.model, data_dir=data))
        server = uvicorn.Server(uvicorn.Config(app, port=7869, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not start within {START_TIMEOUT_S} s")
            time.sleep(0.1)
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 960, "height": 1280})
            page.goto("http://127.0.0.1:7869/")
            for prompt, narration in PROMPTS:
                page.fill("#prompt", prompt)
                page.fill("#narrate", narration)
                page.select_option("#num_frames", "33")
                page.click("#generate")
                page.wait_for_function(  # this job done and its clip playing
                    "prompt => { const v = document.getElementById('player');"
                    " return document.getElementById('current-title').textContent === prompt"
                    " && document.getElementById('status-line').textContent.startsWith('done')"
                    " && !v.hidden && !v.paused && v.currentTime > 0.5; }",
                    arg=prompt,
                    timeout=120_000,
                )
            page.screenshot(path=args.out, full_page=True)
            browser.close()
        server.should_exit = True
        thread.join()
    print(args.out)


if __name__ == "__main__":
    main()
