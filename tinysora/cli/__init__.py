"""The ``tinysora`` command: a thin argparse layer over the library (no logic here).

One module per area (``video``, ``train``, ``serve``, ``voice``); each adds its
subcommands with ``add_parsers(sub)`` and imports the library only inside its
commands, so ``tinysora --help`` and ``tinysora world`` load no torch.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from tinysora import __version__
from tinysora.cli import serve, train, video, voice
from tinysora.cli.common import EXIT_USAGE, ArgumentParser
from tinysora.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="tinysora",
        description="tinysora: a Sora-style text-to-video system that runs on a CPU.",
    )
    parser.add_argument("--version", action="version", version=f"tinysora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for area in (video, train, serve, voice):
        area.add_parsers(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (sizes rounded, inputs resized) as one line, without a source path."""
    print(f"tinysora: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (2: a one-line error, from argparse too)."""
    warnings.showwarning = _one_line_warning
    try:
        return _run(build_parser(), argv)
    except SystemExit as e:  # argparse's usage errors, --help and --version
        return int(e.code or 0)


def _run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":  # the bench parses its own options
        args.bench_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if getattr(args, "device", None):  # a missing GPU fails before any loading
            from tinysora.device import resolve_device

            resolve_device(args.device)
        args.func(args)
    except UserError as e:
        print(f"tinysora: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0
