"""A non-editable install (the wheel) finds its bundled model from any directory.

Slow (``make test-slow``): it builds the wheel, makes a fresh venv, installs the pinned
torch and the wheel into it with pip (from the package registries), then runs
``tinysora generate`` from an empty directory outside the checkout.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"

pytestmark = pytest.mark.slow


def run(*cmd, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, (cmd, res.stdout[-2000:], res.stderr[-2000:])
    return res


def test_wheel_install_generates_from_any_directory(tmp_path):
    wheels, venv, elsewhere = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheels, REPO, cwd=tmp_path)
    (wheel,) = wheels.glob("tinysora-*.whl")
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
    run(*pip, TORCH, cwd=tmp_path)
    run(*pip, wheel, cwd=tmp_path)
    cmd = [venv / "bin" / "tinysora", "generate", "a red circle moving left", "-o", "x.npy"]
    res = run(*cmd, "--steps", "2", cwd=elsewhere)
    out = Path(res.stdout.strip().splitlines()[-1])
    assert out == elsewhere / "x.npy"
    assert np.load(out).shape == (17, 64, 64, 3)
    where = run(venv / "bin" / "python", "-c", _WHERE, cwd=elsewhere).stdout.strip()
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert where == str(venv / "lib" / python / "site-packages" / "tinysora" / "weights")


_WHERE = "from tinysora.io.checkpoint import resolve_model_dir; print(resolve_model_dir())"
