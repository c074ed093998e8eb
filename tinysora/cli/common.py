"""What every command module shares: one-line errors, help strings and the ``type=``
validators that check each value while the arguments are parsed, so that a bad value
fails in one line before any model loads.

A validator takes the command-line string and returns the value, or raises
``argparse.ArgumentTypeError`` with the reason; :class:`ArgumentParser` prints that
as ``tinysora: error: generate: argument --steps: ...`` (exit 2).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from tinysora.errors import UserError

EXIT_USAGE = 2
DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda when there is a GPU, else cpu)"
MODEL_HELP = "a model directory or a bundled model's name (default: 'default', in weights/)"
ALLOW_PICKLE_HELP = "diffusers-format models: also load .bin / .pt weights (weights_only)"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64 bits


class CliError(UserError):
    """A user-facing error: printed as one line, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors, naming the subcommand and where its help is."""

    def error(self, message: str) -> None:  # type: ignore[override]
        where = self.prog.removeprefix("tinysora").strip()
        prefix = f"{where}: " if where else ""
        self.exit(EXIT_USAGE, f"tinysora: error: {prefix}{message} (see `{self.prog} -h`)\n")


def _parsed(text: str, kind: Callable, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (no upper bound when ``high`` is None)."""
    what = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"

    def check(text: str) -> int:
        value = _parsed(text, int, "an integer")
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return check


positive_int = int_in(1)
nonnegative_int = int_in(0)
seed = int_in(0, MAX_SEED)


def float_in(
    low: float | None = None, high: float | None = None, *, open_low: bool = False
) -> Callable[[str], float]:
    """A finite float in [low, high] (``open_low``: in (low, high]); a missing bound is none."""
    bounds = []
    if low is not None:
        bounds.append(f"> {low:g}" if open_low else f">= {low:g}")
    if high is not None:
        bounds.append(f"<= {high:g}")
    what = f"a finite number {' and '.join(bounds)}".strip()

    def check(text: str) -> float:
        value = _parsed(text, float, "a number")
        if (
            not math.isfinite(value)
            or (low is not None and (value <= low if open_low else value < low))
            or (high is not None and value > high)
        ):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    return check


positive_float = float_in(0, open_low=True)
fps = float_in(0, 1000, open_low=True)


def output_file(*suffixes: str) -> Callable[[str], str]:
    """A file name with one of ``suffixes`` that can be written (not a folder, its
    folder creatable and writable)."""

    def check(text: str) -> str:
        if Path(text).suffix.lower() not in suffixes:
            names = (
                f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"
                if len(suffixes) > 1
                else suffixes[0]
            )
            raise argparse.ArgumentTypeError(f"{text!r}: use a {names} name")
        return _writable(text)

    return check


def video_output(text: str) -> str:
    """A file ``tinysora.io.video.write_video`` can write (format and place)."""
    from tinysora.io.video import check_output_path

    try:
        check_output_path(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def output_dir(text: str) -> str:
    """A folder that can be written (or continued): not an existing file."""
    if Path(text).is_file():
        raise argparse.ArgumentTypeError(f"'{text}' is a file; give a folder")
    if Path(text).is_dir():
        return text
    return _writable(text)


def _writable(text: str) -> str:
    from tinysora.io.atomic import write_problem

    if not text:
        raise argparse.ArgumentTypeError("empty name; give a file or folder name")
    problem = write_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"cannot write '{text}': {problem}")
    return text


def existing_file(text: str) -> str:
    """A file that exists (an input to read)."""
    if not Path(text).is_file():
        reason = "is a folder" if Path(text).is_dir() else "does not exist"
        raise argparse.ArgumentTypeError(f"'{text}' {reason}; give a file")
    return text


def existing_dir(text: str) -> str:
    """A folder that exists (a run, a cache, a corpus)."""
    if not Path(text).is_dir():
        reason = "is a file" if Path(text).exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"folder '{text}' {reason}")
    return text
