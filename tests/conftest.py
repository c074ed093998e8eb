"""Shared test fixtures."""

import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """The machine has 2 cores shared with other jobs; oversubscribed torch threads make the
    tiny models in these tests several times slower, so use one thread and restore it after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def at_one_thread(fn, *args):
    """``fn(*args)`` with torch at one thread (the session fixtures' tiny training runs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def wait_until(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll ``condition()`` every ``interval`` seconds until it returns something truthy
    (returned); fail the test with ``what`` (and the last value) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what} (last: {value!r})")
        time.sleep(interval)


def kill_seed() -> int:
    """The seed of a test's kill moments: ``TINYSORA_KILL_SEED`` (to draw a failure's
    moments again), else a fresh one each run."""
    return int(os.environ.get("TINYSORA_KILL_SEED") or random.randrange(2**32))


def kill_note(plan: list[tuple], outcomes: list[str], seed: int) -> str:
    """The kills and the seed, for a failure message."""
    kills = "; ".join(f"{m} -> {o}" for m, o in zip(plan, outcomes, strict=True))
    return f"kills {kills} (TINYSORA_KILL_SEED={seed} draws them again)"


def kill_plan(rng, kills: int, span_s: float, jitter_s: float = 0.02) -> list[tuple]:
    """Moments to SIGKILL a process at, in order: ("write", writes to let pass, seconds into
    the next) or ("time", seconds after its start, up to ``span_s``); the first drawn is a
    mid-write one. Values are rounded so that a failure message shows them plainly."""

    def write():
        return ("write", rng.randrange(3), round(rng.uniform(0, jitter_s), 4))

    plan = [write()]
    for _ in range(kills - 1):
        plan.append(write() if rng.random() < 0.5 else ("time", round(rng.uniform(0, span_s), 2)))
    rng.shuffle(plan)
    return plan


def run_and_kill(args, env, log, moment: tuple, writing, timeout: float = 600) -> str:
    """Run ``args`` (output appended to the file ``log``) and SIGKILL it at ``moment`` (of
    ``kill_plan``; ``writing()`` names the writes in progress: their temporary files):
    "killed", or "ended" when it finished first."""
    with open(log, "a") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        if moment[0] == "time":
            process.wait(timeout=moment[1])
            return "ended"
        _, let_pass, into = moment
        seen: set[str] = set()

        def next_write():
            if process.poll() is not None:
                return "ended"
            seen.update(writing())
            return len(seen) > let_pass and "writing"

        if wait_until(next_write, timeout, "a write to kill", interval=0.001) == "ended":
            return "ended"
        time.sleep(into)
        return "killed"
    except subprocess.TimeoutExpired:
        return "killed"
    finally:
        process.kill()  # SIGKILL (nothing when it has ended)
        process.wait(timeout=60)


def kill_runs(plan: list[tuple], args_for, env, log, writing, run: Path, timeout: float = 600):
    """``run_and_kill`` at each moment of ``plan``; ``args_for(resume)`` is the command
    (``resume`` once ``run`` exists). When every attempt ended before its kill (the
    machine ran faster than the plan's span assumed, and a finished run resumes with no
    writes left), the run starts over and is killed inside its first write, so at least
    one kill lands; that moment is appended to ``plan`` (the failure note shows it)."""
    outcomes = [
        run_and_kill(args_for(run.exists()), env, log, moment, writing, timeout) for moment in plan
    ]
    if "killed" not in outcomes:
        shutil.rmtree(run, ignore_errors=True)
        plan.append(("write", 0, 0.0))
        outcomes.append(run_and_kill(args_for(False), env, log, plan[-1], writing, timeout))
    return outcomes


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A small speech corpus (espeak-ng + flite voices, ~40 s of training speech, one
    held-out sentence per voice); skipped where the synthesizers are missing."""
    import shutil

    if shutil.which("espeak-ng") is None or shutil.which("flite") is None:
        pytest.skip("make test installs espeak-ng and flite")
    from tinysora.voice.corpus import build_corpus

    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, hours=0.012, engines=("espeak", "flite"), test_per_voice=(1, 1))
    return out


TINY_CONTENT_RECIPE = """
mfcc_units = 20
feature_units = 30
codec_steps = {codec_steps}
probe_utterances = 20
probe_steps = 10
refine_steps = 5
refine_crop_frames = 160
phone_ctc = 1.0
speaker_adversarial = 0.5
[data]
corpus = "{corpus}"
crop_frames = 100
batch_size = 4
kmeans_frames = 3000
[model]
dim = 64
layers = 2
heads = 2
feature_layer = 2
[codec]
dim = 64
code_dim = 32
codebook_size = 64
[train]
steps = {steps}
warmup_steps = 5
checkpoint_every = 5
log_every = 5
tensorboard = false
"""


@pytest.fixture(scope="session")
def tiny_content(tiny_corpus, tmp_path_factory):
    """A content model trained for a few steps on ``tiny_corpus``: its run directory."""
    from tinysora.train.voice_content import train_voice_content

    run = tmp_path_factory.mktemp("content")
    recipe = run / "recipe.toml"
    recipe.write_text(TINY_CONTENT_RECIPE.format(corpus=tiny_corpus, steps=20, codec_steps=20))
    at_one_thread(train_voice_content, recipe, run / "run")
    return run / "run"


TINY_MODEL = dict(hidden=32, inter=16, gin=16, posterior_layers=2, flow_couplings=2,
                  flow_wn_layers=2, code_layers=1, phone_layers=1, post_layers=1,
                  dec_initial=32, segment_frames=8, disc_channels=4)  # fmt: skip
VOICE_RECIPE = """
val_utterances = 2
[data]
corpus = "{corpus}"
content = "{content}"
batch_size = 2
max_frames = 100
[model]
{model}
[train]
steps = {steps}
warmup_steps = 2
lr = 2e-4
betas = [0.8, 0.99]
bf16 = false
checkpoint_every = {every}
eval_every = {every}
log_every = 2
tensorboard = false
"""


def voice_recipe(path, corpus, content, steps: int, every: int):
    """A tiny SoVITS recipe (``TINY_MODEL``) written to ``path``."""
    model = "\n".join(f"{k} = {v}" for k, v in TINY_MODEL.items())
    path.write_text(VOICE_RECIPE.format(corpus=corpus, content=content, model=model,
                                        steps=steps, every=every))  # fmt: skip
    return path


@pytest.fixture(scope="session")
def tiny_voice_model(tiny_corpus, tiny_content, tmp_path_factory):
    """A tiny SoVITS model trained for two steps: its model directory."""
    from tinysora.train.voice_sovits import train_voice

    tmp = tmp_path_factory.mktemp("voice")
    recipe = voice_recipe(tmp / "r.toml", tiny_corpus, tiny_content / "content", 2, 2)
    return at_one_thread(train_voice, recipe, tmp / "run")


GPT_RECIPE = """
val_batches = 1
[data]
corpus = "{corpus}"
voice = "{voice}"
batch_size = 2
max_codes = 120
align_iterations = 1
align_steps = 5
[model]
dim = 32
layers = 2
heads = 2
dropout = 0.0
max_advance = 2
[train]
steps = {steps}
warmup_steps = 1
checkpoint_every = 2
eval_every = 4
log_every = 2
tensorboard = false
"""


@pytest.fixture(scope="session")
def tiny_tts(tiny_corpus, tiny_voice_model, tmp_path_factory):
    """A tiny GPT stage trained for four steps on ``tiny_voice_model``'s codes: the run
    directory (its model/ is a whole text-to-speech model)."""
    from tinysora.train.voice_gpt import train_voice_gpt

    tmp = tmp_path_factory.mktemp("gpt")
    recipe = tmp / "gpt.toml"
    recipe.write_text(GPT_RECIPE.format(corpus=tiny_corpus, voice=tiny_voice_model, steps=4))
    at_one_thread(train_voice_gpt, recipe, tmp / "run")
    return tmp / "run"


def reference_wav(corpus, path, seconds: float = 6.0):
    """A ``seconds`` reference clip of one voice of a tiny corpus's held-out list, written
    to ``path``: (path, the voice's name, the rows used)."""
    import numpy as np
    import soundfile

    from tinysora.voice.corpus import read_list

    rows = read_list(corpus / "test_seen.list")
    voice = rows[0][1]
    mine = [r for r in rows + read_list(corpus / "train.list") if r[1] == voice]
    wav = np.concatenate([soundfile.read(str(r[0]), dtype="float32")[0] for r in mine[:8]])
    assert len(wav) >= seconds * 16000, "the tiny corpus has too little speech of one voice"
    soundfile.write(str(path), wav[: int(seconds * 16000)], 16000)
    return path, voice, mine
