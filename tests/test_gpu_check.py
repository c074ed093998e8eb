"""scripts/gpu_check.py runs only on a lent GPU; its --smoke mode runs the same steps on the
CPU (a few training steps, generation, the JSON report) so the script itself is tested."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--smoke", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["training"]["steps"] == 4 and report["training"]["tokens_per_s"] > 0
    for key in ("sampling_bundled", "sampling_trained"):
        assert report[key][0]["s_per_sampling_step"] > 0
        assert report[key][0]["frames_shape"] == [5, 32, 32, 3]
