"""Screenshot an HTML report with headless Chromium (Debian package `chromium`), to look at it.

python scripts/screenshot_report.py report/index.html -o report/screenshot.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", help="the HTML file")
    parser.add_argument("-o", "--output", required=True, help="PNG to write")
    parser.add_argument("--size", default="1100,2600", help="window width,height in pixels")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("no chromium found: `apt-get install chromium`", file=sys.stderr)
        return 2
    out = Path(args.output).resolve()
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={args.size}",
        f"--screenshot={out}",
        Path(args.page).resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
