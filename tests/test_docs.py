"""The README and docs/*.md run as written: every ```bash and ```python block is executed
in a fresh temporary directory (the checkout's configs/, scripts/ and weights/ linked in,
as when a reader runs it from the checkout's root), and what it names with ``-o`` exists
afterwards.

A block is marked by the line before it: ``<!-- test: slow -->`` runs it with the slow
tests, ``<!-- skip-test: REASON -->`` never (hours of training, a model to download).
``console`` / ``text`` / ``toml`` blocks are shown, not run (command synopses with
``[OPTIONS]``, torchrun, the server's flags)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
RUN = ("bash", "python")
SHOWN = ("console", "text", "toml")
CHECKOUT = ("configs", "scripts", "weights")  # what blocks read, linked into their directory
README_MAX_LINES = 250
FAST_TIMEOUT_S = 180
SLOW_TIMEOUT_S = 600

FENCE = re.compile(r"^```(\S*)\s*$")
MARK = re.compile(r"^<!--\s*(?:test:\s*(?P<slow>slow)|skip-test:\s*(?P<reason>\S.*?))\s*-->$")
OUTPUT = re.compile(r"(?:^|\s)(?:-o|--out)\s+([\w./-]+)")
LINK = re.compile(r"\]\(([^)\s#]*)(?:#([^)\s]*))?\)")
HEADING = re.compile(r"^#+\s+(.*)$", re.M)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    mark: str  # "fast", "slow" or "skip"

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of one markdown page, with the mark of the line before each."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```"), None)
        if end is None:
            raise AssertionError(f"{page.name}:{i + 1}: a code block is never closed")
        mark = MARK.match(lines[i - 1].strip()) if i else None
        kind = "fast" if mark is None else ("slow" if mark["slow"] else "skip")
        code = "\n".join(lines[i + 1 : end]) + "\n"
        found.append(Block(page, i + 1, fence.group(1), code, kind))
        i = end + 1
    return found


ALL = [b for page in PAGES for b in blocks(page)]
RUNNABLE = [b for b in ALL if b.lang in RUN]


def run_block(block: Block, directory: Path, timeout: int) -> None:
    for name in CHECKOUT:
        (directory / name).symlink_to(ROOT / name)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("TINYSORA_MODEL", None)  # the bundled model, as for a reader
    if block.lang == "python":
        script = directory / "snippet.py"
        script.write_text(block.code)
        command = [sys.executable, str(script)]
    else:
        command = ["bash", "-euo", "pipefail", "-c", block.code]
    try:
        proc = subprocess.run(
            command, cwd=directory, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.name} ran past {timeout} s:\n{block.code}")
    assert proc.returncode == 0, (
        f"{block.name} exited {proc.returncode}:\n{block.code}\n--- stderr:\n{proc.stderr[-3000:]}"
    )
    assert "Traceback" not in proc.stderr, f"{block.name}:\n{proc.stderr[-3000:]}"
    if block.lang == "bash":
        for path in OUTPUT.findall(block.code):
            assert (directory / path).exists(), f"{block.name} did not write {path}"


@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.mark == "fast"], ids=lambda b: b.name)
def test_block_runs(block, tmp_path):
    run_block(block, tmp_path, FAST_TIMEOUT_S)


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.mark == "slow"], ids=lambda b: b.name)
def test_slow_block_runs(block, tmp_path):
    run_block(block, tmp_path, SLOW_TIMEOUT_S)


def test_every_block_says_how_it_is_tested():
    """A block is run, or shown on purpose: no fence without a language, no mark on a block
    that is not run, and every skip gives its reason."""
    assert len(RUNNABLE) >= 10, "the docs lost their examples"
    for block in ALL:
        assert block.lang in RUN + SHOWN, f"{block.name}: fence it as one of {RUN + SHOWN}"
        if block.mark != "fast":
            assert block.lang in RUN, f"{block.name}: a test mark on a block that is not run"
    for page in PAGES:
        text = page.read_text()
        marks = len(re.findall(r"^\s*<!--\s*(?:test:|skip-test:)", text, re.M))
        assert marks == sum(b.page == page and b.mark != "fast" for b in ALL), (
            f"{page.name}: a test mark that is not on the line before a block, or is misspelt"
        )


def test_readme_starts_with_the_two_commands_and_stays_short():
    lines = README.read_text().splitlines()
    assert lines[2].startswith("    make demo") and lines[3].startswith("    make test")
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    return {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in HEADING.findall(text)
    }


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_local_links_point_at_files_and_headings(page):
    for target, anchor in LINK.findall(page.read_text()):
        if "://" in target:
            continue
        path = page.parent / target if target else page
        assert path.exists(), f"{page.name} links to missing {target}"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page.name} links to missing {target}#{anchor}"
