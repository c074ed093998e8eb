"""The ``tinysora`` command: a thin argparse layer over the library (no logic here)."""

from __future__ import annotations

import argparse
import sys

from tinysora import __version__

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _cmd_world(args: argparse.Namespace) -> None:
    from tinysora.io.video import write_video
    from tinysora.worlds.shapes import check_size, parse_caption, render, sample_scene

    check_size(args.height, args.width, args.frames)
    if args.fps <= 0:
        raise CliError(f"--fps must be > 0, got {args.fps}")
    if args.seed < 0:
        raise CliError(f"--seed must be >= 0, got {args.seed}")
    if args.caption is not None:
        scene = parse_caption(args.caption, seed=args.seed)
    else:
        scene = sample_scene(args.seed)
    if args.output == "":
        raise CliError("-o/--output is empty; give a file name such as clip.mp4")
    out = args.output if args.output is not None else f"outputs/world_{args.seed}.mp4"
    frames = render(scene, args.height, args.width, args.frames)
    path = write_video(out, frames, fps=args.fps)
    print(f"wrote {path} ({args.frames} frames, {args.height}x{args.width}, {args.fps:g} fps)")
    print(scene.caption)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinysora",
        description="tinysora: a Sora-style text-to-video system that runs on a CPU.",
    )
    parser.add_argument("--version", action="version", version=f"tinysora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    world = sub.add_parser(
        "world",
        help="render a Shapes World clip from a caption or a seed",
        description="Render a Shapes World clip (see shared/WORLD.md). With CAPTION, the "
        "caption's scene (attributes left out are drawn from --seed); without, the scene "
        "of --seed (0..999999 train, 1000000..1099999 val, >= 2000000 test). The rendered "
        "caption is printed last.",
    )
    world.add_argument("caption", nargs="?", help="e.g. 'a small red circle moving left'")
    world.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    world.add_argument("--frames", type=int, default=17, help="frame count T >= 1 (default 17)")
    world.add_argument("--height", type=int, default=64, help="multiple of 8 in 32..512")
    world.add_argument("--width", type=int, default=64, help="multiple of 8 in 32..512")
    world.add_argument("--fps", type=float, default=8.0, help="frames per second (default 8)")
    world.add_argument(
        "-o", "--output", help="output .mp4/.gif/.png/.npy (default outputs/world_SEED.mp4)"
    )
    world.set_defaults(func=_cmd_world)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tinysora.io.video import VideoError
    from tinysora.worlds.shapes import WorldError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        args.func(args)
    except (CliError, WorldError, VideoError) as e:
        print(f"tinysora: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
