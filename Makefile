# tinysora: `make demo` and `make test` work on a fresh machine (Python 3.11, CPU).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch this project is pinned to (pip finds it on this kind of machine).
TORCH := torch==2.13.0
DEMO_PROMPT ?= a large red circle bouncing on a navy background
DEMO_NARRATION ?= A large red circle bounces on a navy background.

.PHONY: demo test test-slow test-browser lint bench bench-quick bench-serve detector-accuracy clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Installed stamps: re-run pip when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# Generates a narrated clip with the bundled models (weights/) and prints its path last.
demo: $(VENV)/.installed
	$(BIN)/tinysora generate "$(DEMO_PROMPT)" --narrate "$(DEMO_NARRATION)" -o outputs/demo.mp4

# The voice tests make a small corpus with the espeak-ng and flite synthesizers
# (installed when missing). Phonemes need no system package (the espeakng-loader wheel).
# Test files run in one process per core (pytest-xdist), each torch at one thread.
VOICE_APT := espeak-ng flite
test: $(VENV)/.installed-dev
	@command -v espeak-ng >/dev/null && command -v flite >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(VOICE_APT); }
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n auto --dist loadfile -m "not slow and not browser"

$(VENV)/.installed-browser: $(VENV)/.installed-dev
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,browser]'
	touch $@

# The web page in Debian's Chromium (installed here when missing; Playwright's own
# browser download is not used).
test-browser: $(VENV)/.installed-browser
	@command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }
	$(BIN)/pytest -q -m browser

$(VENV)/.installed-voice-eval: $(VENV)/.installed-dev
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,voice-eval]'
	touch $@

# Slow tests: long runs, two-node torchrun, `tinysora eval voice` with its offline judges.
VOICE_APT_ALL := $(VOICE_APT) festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
test-slow: $(VENV)/.installed-voice-eval
	@command -v espeak-ng >/dev/null && command -v flite >/dev/null && command -v text2wave \
		>/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install \
		-y -qq --no-install-recommends $(VOICE_APT_ALL); }
	$(BIN)/pytest -q -m slow

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[bench]'
	touch $@

# Speed / MFU / side by side with diffusers -> bench/results/<date>-full.json (minutes).
bench: $(VENV)/.installed-bench
	$(BIN)/tinysora bench

bench-quick: $(VENV)/.installed-bench
	$(BIN)/tinysora bench --quick

# `tinysora serve` under load: status requests/s, submit -> first progress, memory over
# 100 jobs -> bench/results/<date>-serve.json (a few minutes).
bench-serve: $(VENV)/.installed-dev
	$(BIN)/python -m tinysora.bench.serve

detector-accuracy: $(VENV)/.installed
	$(BIN)/python scripts/detector_accuracy.py --json outputs/detector_accuracy.json

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
