"""Every subcommand answers a bad value with one line (exit 2) before any model loads.

Most cases run ``tinysora.cli.main`` in this process (fast); a few run the real
``python -m tinysora`` in parallel processes, each with a deadline. Any traceback, any
exit code other than 2, or more than one line on stderr fails. A new subcommand fails
``test_every_subcommand_is_walked`` until it has a case here.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tinysora.cli import build_parser, main

TIMEOUT = 60
UNWRITABLE = Path("/proc/self")  # not writable, even for root

# a recipe problem, as `train MODEL --config RECIPE` meets it
RECIPES = {
    "unknown-key": ("bogus = 1\n", "bogus"),
    "wrong-type": ('[train]\nsteps = "many"\n', "steps"),
}


def cases(tmp: Path) -> list[tuple[list[str], str]]:
    """(argv, a word the one-line error must contain), for every subcommand. ``tmp``
    holds a file (``file.txt``), folders (``dir``, ``made.mp4``) and a clip (``in.npy``)."""
    f, d, clip = str(tmp / "file.txt"), str(tmp / "dir"), str(tmp / "in.npy")
    bad_out = f + "/x.mp4"  # an existing file used as a folder
    found = [
        (["world", "--frames", "0"], "--frames"),
        (["world", "--fps", "nan"], "--fps"),
        (["world", "--seed", "-1"], "--seed"),
        (["world", "a red circle", "-o", bad_out], "is a file, not a folder"),
        (["world", "-o", str(UNWRITABLE / "x.mp4")], "not writable"),
        (["world", "-o", "x.mp5"], ".mp5"),
        (["world", "-o", str(tmp / "made.mp4")], "a folder with that name"),
        (["generate", "x", "--steps", "0"], "--steps"),
        (["generate", "x", "--frames", "-3"], "--frames"),
        (["generate", "x", "--guidance", "nan"], "--guidance"),
        (["generate", "x", "--guidance", "inf"], "--guidance"),
        (["generate", "x", "--sampler", "foo"], "--sampler"),
        (["generate", "x", "--width", "0"], "--width"),
        (["generate", "x", "--fps", "-8"], "--fps"),
        (["generate", "x", "--seed", "x"], "--seed"),
        (["generate", "x", "--strength", "1.5"], "--strength"),
        (["generate", "x", "--image", "none.png"], "none.png"),
        (["generate", "x", "--video", clip], "video and strength go together"),
        (["generate", "x", "-o", bad_out], "is a file, not a folder"),
        (["generate", "x", "-o", "x.wav"], ".wav"),
        (["generate", "x", "--model", "no-such-model"], "default"),
        (["generate", "x", "-o", "x.gif", "--narrate", "hi"], ".mp4, .mov or .mkv"),
        (["export", "none", "-o", "m"], "none"),
        (["export", d, "-o", f], "is a file"),
        (["export", d, "-o", "m", "--step", "-1"], "--step"),
        (["vae", "roundtrip", "none.mp4", "-o", "x.mp4"], "none.mp4"),
        (["vae", "roundtrip", clip, "-o", "x.txt"], ".txt"),
        (["train", "dit", "--config", "none.toml", "--out", "run"], "none.toml"),
        (["train", "dit", "--config", f, "--out", f], "is a file"),
        (["train", "lora", "--out", "run", "--rank", "0"], "--rank"),
        (["train", "vae", "--out", "run"], "needs --config"),
        (["prepare", "none", "--out", "cache"], "none"),
        (["prepare", f, "--out", "cache"], "is a file"),
        (["prepare", d, "--out", "cache"], "no captions"),
        (["prepare", d, "--out", "cache", "--size", "64"], "--size"),
        (["prepare", d, "--out", "cache", "--frames", "0"], "--frames"),
        (["prepare", d, "--out", "cache", "--fps", "0"], "--fps"),
        (["eval", "adherence", "--n", "0"], "--n"),
        (["eval", "adherence", "--sampler", "ddim"], "--sampler"),
        (["eval", "adherence", "--groups", "nope"], "nope"),
        (["eval", "dynamics", "--json", "x.txt"], ".json"),
        (["eval", "tasks", "--tasks", "teleport"], "teleport"),
        (["eval", "tasks", "--long-frames", "0"], "--long-frames"),
        (["eval", "vae", "--n", "-2"], "--n"),
        (["eval", "voice", "--corpus", "none"], "none"),
        (["eval", "all", "--html", f], "is a file"),
        (["eval", "all", "--html", "h", "--log", "none.jsonl"], "none.jsonl"),
        (["serve", "--port", "70000"], "--port"),
        (["serve", "--max-steps", "0"], "--max-steps"),
        (["serve", "--max-upload-mb", "nan"], "--max-upload-mb"),
        (["serve", "--log-level", "loud"], "--log-level"),
        (["serve", "--data-dir", f], "is a file"),
        (["serve", "--host", "192.0.2.1", "--port", "0"], "cannot listen"),  # not ours
        (["bench", "--frobnicate"], "--frobnicate"),
        (["bench", "--repeats", "0"], "--repeats"),
        (["bench", "--threads", "-1"], "--threads"),
        (["bench", "--frames", "0"], "--frames"),
        (["bench", "--json", bad_out], "is a file"),
        (["voice", "corpus", "--out", "c", "--jobs", "0"], "--jobs"),
        (["voice", "corpus", "--out", "c", "--hours", "-1"], "--hours"),
        (["voice", "corpus", "--out", "c", "--test-per-voice", "1", "-1"], "--test-per-voice"),
        (["voice", "convert", "none.wav", "--ref", f, "-o", "o.wav"], "none.wav"),
        (["voice", "convert", f, "--ref", f, "-o", "o.mp3"], ".wav, .flac or .ogg"),
        (["speak", "hi", "-o", "x.mp3"], ".wav, .flac or .ogg"),
        (["speak", "hi", "-o", "x.wav", "--ref", "none.wav"], "none.wav"),
        (["speak", "hi", "-o", "x.wav", "--speed", "nan"], "--speed"),
        (["speak", "hi", "-o", "x.wav", "--top-k", "-1"], "--top-k"),
        (["speak", "hi", "-o", "x.wav", "--speed", "9"], "speed must be in"),  # model unloaded
        (["speak", "hi", "-o", "x.wav", "--top-p", "1.5"], "top_p must be in"),
        (["speak", "hi", "-o", bad_out[:-4] + ".wav"], "is a file, not a folder"),
    ]
    # (lora's recipe is a DiTRecipe too; importing peft would take seconds)
    for model in ("vae", "dit", "voice", "voice-content", "voice-gpt"):
        for name, (_, needle) in RECIPES.items():
            recipe = str(tmp / f"{name}.toml")
            found.append((["train", model, "--config", recipe, "--out", "run"], needle))
    return found


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A working folder with a file, a folder and a clip in it; the test checks that
    nothing else appears."""
    import numpy as np

    (tmp_path / "file.txt").write_text("keep me\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "made.mp4").mkdir()
    np.save(tmp_path / "in.npy", np.zeros((5, 32, 32, 3), np.uint8))
    for name, (text, _) in RECIPES.items():
        (tmp_path / f"{name}.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_one_line(code: int, err: str, needle: str, argv: list[str]) -> None:
    assert code == 2, (argv, err)
    assert "Traceback" not in err, (argv, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, (argv, err)
    assert lines[0].startswith("tinysora: error: "), (argv, lines[0])
    assert needle in lines[0], (argv, needle, lines[0])


def test_every_bad_value_is_one_line(sandbox, capsys):
    before = sorted(sandbox.rglob("*"))
    for argv, needle in cases(sandbox):
        code = main(argv)
        assert_one_line(code, capsys.readouterr().err, needle, argv)
    assert sorted(sandbox.rglob("*")) == before  # nothing loaded, nothing written
    assert (sandbox / "file.txt").read_text() == "keep me\n"


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path}
    return {leaf for name, p in subs[0].choices.items() for leaf in _leaves(p, (*path, name))}


def test_every_subcommand_is_walked(tmp_path):
    walked = set()
    for argv, _ in cases(tmp_path):
        walked |= {tuple(argv[:2]), tuple(argv[:1])}
    missing = _leaves(build_parser()) - walked
    assert not missing, f"subcommands with no bad-value case: {sorted(missing)}"
    trained = {argv[1] for argv, _ in cases(tmp_path) if argv[0] == "train"}
    choices = next(a.choices for a in build_parser()._actions if a.dest == "command")
    model = next(a for a in choices["train"]._actions if a.dest == "model")
    assert trained == set(model.choices)


def test_serve_on_a_busy_port_or_a_bad_store(sandbox, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        assert_one_line(main(["serve", "--port", port]), capsys.readouterr().err, port, [])
    store = sandbox / "store"
    store.mkdir()
    (store / "jobs.sqlite3").write_text("not a database")
    argv = ["serve", "--port", "0", "--data-dir", str(store)]
    assert_one_line(main(argv), capsys.readouterr().err, "jobs.sqlite3", argv)


REAL = [  # argparse's errors: no torch is imported
    ["generate", "x", "--sampler", "foo"],
    ["generate", "x", "--steps", "0"],
    ["world", "-o", "file.txt/x.mp4"],
    ["speak", "hi", "-o", "x.mp3"],
]


def test_real_processes(sandbox):
    """As the console script runs them (in parallel): one line, no traceback, exit 2."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tinysora", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in REAL
    ]
    try:
        for argv, proc in zip(REAL, procs, strict=True):
            _, err = proc.communicate(timeout=TIMEOUT)
            assert_one_line(proc.returncode, err, "", argv)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
