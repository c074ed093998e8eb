"""End-to-end tests of the ``tinysora`` console script, run as real subprocesses."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinysora.io.video import read_video
from tinysora.worlds.shapes import (
    BACKGROUNDS,
    COLORS,
    MOTIONS,
    SHAPES,
    SIZES,
    parse_caption,
    render,
    sample_scene,
)

CAPTION = "a small red circle moving left on a black background"
MODULE = [sys.executable, "-m", "tinysora.cli"]
TIMEOUT = 120

_OBJECT = rf"a ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) ({'|'.join(MOTIONS)})"
CANONICAL = re.compile(rf"{_OBJECT}( and {_OBJECT})? on a ({'|'.join(BACKGROUNDS)}) background")


def installed_script() -> Path | None:
    """The ``tinysora`` console script next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "tinysora"
    if beside.is_file():
        return beside
    found = shutil.which("tinysora")
    return Path(found) if found else None


def run(*args: object, cwd: Path, launcher: list[str] | None = None):
    cmd = [*(launcher or MODULE), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert lines, "no output"
    return lines[-1]


def assert_ok(result) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- help


def test_help_mentions_world(tmp_path):
    result = run("--help", cwd=tmp_path)
    assert_ok(result)
    assert "world" in result.stdout
    assert "usage: tinysora" in result.stdout


def test_world_help(tmp_path):
    result = run("world", "--help", cwd=tmp_path)
    assert_ok(result)
    for option in ("--seed", "--frames", "--height", "--width", "--fps", "--output"):
        assert option in result.stdout


def test_version(tmp_path):
    from tinysora import __version__

    result = run("--version", cwd=tmp_path)
    assert_ok(result)
    assert result.stdout.strip() == f"tinysora {__version__}"


def test_no_command_prints_help_and_exits_2(tmp_path):
    result = run(cwd=tmp_path)
    assert result.returncode == 2
    assert "world" in result.stdout


# ----------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("how", ["module", "script"])
def test_world_caption_to_mp4(tmp_path, how):
    launcher = MODULE
    if how == "script":
        script = installed_script()
        if script is None:
            pytest.skip("the tinysora console script is not installed")
        launcher = [str(script)]
    result = run("world", CAPTION, "-o", "OUT.mp4", cwd=tmp_path, launcher=launcher)
    assert_ok(result)
    out = tmp_path / "OUT.mp4"
    assert out.is_file()
    assert last_line(result.stdout) == CAPTION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OUT.mp4"]  # no temp files left

    frames, fps = read_video(out)
    assert frames.shape == (17, 64, 64, 3)
    assert frames.dtype == np.uint8
    assert fps == pytest.approx(8.0)
    first = frames[0].astype(int)
    black = np.array(BACKGROUNDS["black"])
    # background: the corners are far from a small object; H.264 is lossy, so allow a little
    for corner in (first[0, 0], first[0, -1], first[-1, 0], first[-1, -1]):
        assert np.abs(corner - black).max() <= 8, corner
    assert np.median(np.abs(first - black).max(axis=-1)) <= 4
    r, g, b = first[..., 0], first[..., 1], first[..., 2]
    reddish = (r > 150) & (g < 100) & (b < 100)
    assert reddish.sum() >= 20  # a small circle: extent 0.2 * 64 ~ 13 px across


def test_world_seed_to_gif(tmp_path):
    seed = 2_000_005
    result = run(
        "world",
        "--seed",
        seed,
        "--frames",
        9,
        "--height",
        48,
        "--width",
        96,
        "-o",
        "x.gif",
        cwd=tmp_path,
    )
    assert_ok(result)
    scene = sample_scene(seed)
    assert last_line(result.stdout) == scene.caption
    frames, _ = read_video(tmp_path / "x.gif")
    assert frames.shape == (9, 48, 96, 3)
    # GIF is palette-quantized: close to, not equal to, the rendered clip
    expected = render(scene, 48, 96, 9).astype(int)
    assert np.abs(frames.astype(int) - expected).mean() < 4


def test_world_npy_is_bit_identical_to_render(tmp_path):
    result = run("world", CAPTION, "-o", "x.npy", cwd=tmp_path)
    assert_ok(result)
    assert last_line(result.stdout) == CAPTION
    saved = np.load(tmp_path / "x.npy", allow_pickle=False)
    expected = render(parse_caption(CAPTION, seed=0), 64, 64, 17)
    assert saved.dtype == np.uint8
    assert saved.shape == (17, 64, 64, 3)
    assert np.array_equal(saved, expected)


def test_partial_caption_prints_canonical_caption(tmp_path):
    result = run("world", "a green square", "--seed", 7, "-o", "x.npy", cwd=tmp_path)
    assert_ok(result)
    printed = last_line(result.stdout)
    assert CANONICAL.fullmatch(printed), printed
    assert re.search(r" on a \w+ background$", printed)
    assert " green square " in printed
    scene = parse_caption("a green square", seed=7)
    assert printed == scene.caption
    # the printed caption pins everything down: re-parsing it gives the same clip
    saved = np.load(tmp_path / "x.npy", allow_pickle=False)
    assert np.array_equal(saved, render(parse_caption(printed, seed=7)))


def test_world_does_not_import_torch(tmp_path):
    code = (
        "import sys; from tinysora.cli import main; "
        "rc = main(['world', 'a red circle', '--frames', '1', '-o', 'x.npy']); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert_ok(result)
    assert np.load(tmp_path / "x.npy").shape == (1, 64, 64, 3)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["a blue elephant"], "elephant"),
        ([CAPTION, "--height", "60"], "height 60"),
        ([CAPTION, "--width", "600"], "width 600"),
        ([CAPTION, "--height", "24"], "height 24"),
        ([CAPTION, "--frames", "0"], "--frames"),
        (["a red circle and a red square"], "red"),
        (["a red circle and a blue square and a green triangle"], "2 objects"),
        ([CAPTION, "--fps", "0"], "fps"),
        (["--seed", "-1"], "seed"),
    ],
    ids=[
        "unknown-word",
        "height-60",
        "width-600",
        "height-24",
        "frames-0",
        "same-color",
        "three-objects",
        "fps-0",
        "negative-seed",
    ],
)
def test_bad_input_is_one_line_error(tmp_path, args, needle):
    result = run("world", *args, "-o", "out.mp4", cwd=tmp_path)
    assert_one_line_error(result, needle)
    assert not (tmp_path / "out.mp4").exists()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_one_line_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me\n")
    result = run("world", CAPTION, "-o", blocker / "x.mp4", cwd=tmp_path)
    assert_one_line_error(result, "file.txt")
    assert blocker.read_text() == "keep me\n"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_unsupported_suffix_is_one_line_error(tmp_path):
    result = run("world", CAPTION, "-o", "x.xyz", cwd=tmp_path)
    assert_one_line_error(result, ".xyz")
    assert list(tmp_path.iterdir()) == []


def assert_one_line_error(result, needle: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tinysora: error:"), lines[0]
    assert len(lines[0]) > len("tinysora: error: ")
    assert needle in lines[0], lines[0]
