#!/usr/bin/env bash
# The CUDA check, as one prepared script for a lent GPU machine (the `device` tool):
# a few hundred training steps and generation on CUDA -> bench/results/<date>-gpu.json.
#   bash scripts/gpu_check.sh [--steps 300]        (under 8 minutes on an H100/H200)
# Uses .venv if there is one; else installs tinysora into a fresh one (needs PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e .
fi
# `timeout` keeps the whole check inside its 8-minute budget
exec timeout 470 .venv/bin/python scripts/gpu_check.py "$@"
