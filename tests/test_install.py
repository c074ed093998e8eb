"""A non-editable install (the wheel) carries every bundled model file and, from any
directory, generates, speaks and narrates.

Slow (``make test-slow``): it builds the wheel, makes a fresh venv, installs the pinned
torch and the wheel into it with pip (from the package registries), then runs
``tinysora generate``, ``tinysora speak`` and ``tinysora generate --narrate`` from an
empty directory outside the checkout.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"

pytestmark = pytest.mark.slow


def run(*cmd, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, (cmd, res.stdout[-2000:], res.stderr[-2000:])
    return res


def bundled_files() -> set[str]:
    """Every file of weights/ that git tracks, as it should sit in the wheel."""
    res = run("git", "ls-files", "weights", cwd=REPO, timeout=60)
    return {f"tinysora/{line}" for line in res.stdout.split()}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(the wheel, the venv's bin/, an empty directory outside the checkout)."""
    tmp = tmp_path_factory.mktemp("install")
    wheels, venv, elsewhere = tmp / "wheels", tmp / "venv", tmp / "elsewhere"
    elsewhere.mkdir()
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheels, REPO, cwd=tmp)
    (wheel,) = wheels.glob("tinysora-*.whl")
    run(sys.executable, "-m", "venv", venv, cwd=tmp)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
    run(*pip, TORCH, cwd=tmp)
    run(*pip, wheel, cwd=tmp)
    return wheel, venv / "bin", elsewhere


def test_the_wheel_carries_every_bundled_file(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = bundled_files() - names
    assert not missing, f"the wheel lacks {sorted(missing)}"
    assert "tinysora/weights/voice/default_voice.wav" in names


def test_wheel_install_generates_from_any_directory(installed):
    _, bin_, elsewhere = installed
    cmd = [bin_ / "tinysora", "generate", "a red circle moving left", "-o", "x.npy"]
    res = run(*cmd, "--steps", "2", cwd=elsewhere)
    out = Path(res.stdout.strip().splitlines()[-1])
    assert out == elsewhere / "x.npy"
    assert np.load(out).shape == (17, 64, 64, 3)
    where = run(bin_ / "python", "-c", _WHERE, cwd=elsewhere).stdout.strip()
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert where == str(bin_.parent / "lib" / python / "site-packages" / "tinysora" / "weights")


def test_wheel_install_speaks_and_narrates_from_any_directory(installed):
    """The default voice, the phonemes (the wheel's espeak-ng) and the voice models all
    come from site-packages: nothing of the checkout is on the path."""
    _, bin_, elsewhere = installed
    speak = [bin_ / "tinysora", "speak", "Hello there, this is a test.", "-o", "h.wav"]
    res = run(*speak, cwd=elsewhere)
    assert str(elsewhere / "h.wav") in res.stdout
    audio, rate = sf.read(elsewhere / "h.wav")
    assert rate == 16000 and 1.0 < len(audio) / rate < 6.0 and np.abs(audio).max() > 0.05
    cmd = [bin_ / "tinysora", "generate", "a red circle moving left", "-o", "n.mp4"]
    res = run(*cmd, "--steps", "2", "--narrate", "A red circle moves left.", cwd=elsewhere)
    out = Path(res.stdout.strip().splitlines()[-1])
    with av.open(str(out)) as container:
        kinds = sorted(s.type for s in container.streams)
    assert kinds == ["audio", "video"]


_WHERE = "from tinysora.io.checkpoint import resolve_model_dir; print(resolve_model_dir())"
