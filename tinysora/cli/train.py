"""``tinysora train``, ``prepare``, ``eval`` and ``bench``: the commands that learn and measure."""

from __future__ import annotations

import argparse

from tinysora.cli.common import (
    ALLOW_PICKLE_HELP,
    DEVICE_HELP,
    MODEL_HELP,
    ArgumentParser,
    CliError,
    existing_dir,
    existing_file,
    float_in,
    fps,
    output_dir,
    output_file,
    positive_int,
)
from tinysora.cli.voice import VOICE_MODELS, train_voice_model
from tinysora.diffusion import SAMPLER_NAMES


def _cmd_train(args: argparse.Namespace) -> None:
    if (args.model == "vae" or args.model in VOICE_MODELS) and args.data:
        raise CliError("--data is for `tinysora train dit` and `train lora`")
    if args.model in ("vae", "voice-content") and args.init:
        raise CliError("--init is for `tinysora train dit`, `lora`, `voice` and `voice-gpt`")
    if args.model == "lora" and not (args.data and args.init):
        raise CliError("train lora needs --init MODEL_DIR and --data CACHE")
    if args.model != "lora" and not args.config:
        raise CliError(f"train {args.model} needs --config RECIPE")
    try:
        if args.model == "lora":
            from tinysora.train.lora import train_lora

            train_lora(
                args.init, args.data, args.out, args.rank, args.config, args.resume, args.device
            )
        elif args.model in VOICE_MODELS:
            train_voice_model(args)
        elif args.model == "vae":
            from tinysora.train.vae import train_vae

            train_vae(args.config, args.out, resume=args.resume, device=args.device)
        else:
            from tinysora.train.dit import train_dit

            train_dit(
                args.config,
                args.out,
                resume=args.resume,
                data=args.data,
                init=args.init,
                device=args.device,
            )
    except FileExistsError as e:
        raise CliError(str(e)) from None


def _size(text: str) -> tuple[int, int]:
    """``--size HxW`` -> (height, width), both >= 1 (the folder config checks the rest)."""
    try:
        height, width = (positive_int(v) for v in text.lower().split("x"))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected HxW such as 64x64, got {text!r}") from None
    return height, width


def _cmd_prepare(args: argparse.Namespace) -> None:
    import logging
    from pathlib import Path

    from tinysora.data.cache import prepare
    from tinysora.data.folder import FolderConfig

    logging.basicConfig(format="tinysora: %(message)s", level=logging.WARNING)
    height, width = args.size
    folder = FolderConfig(
        fps=args.fps, frames=args.frames, height=height, width=width, native_size=args.packing
    )
    report = prepare(
        args.data,
        args.out,
        folder,
        vae_dir=args.vae,
        shard_clips=args.shard_clips,
        device=args.device,
    )
    print(report.line())
    print(Path(args.out).resolve())


def _cmd_eval(args: argparse.Namespace) -> None:
    import importlib

    module = "report" if args.eval_command == "all" else args.eval_command
    if module == "voice" and args.tts:
        module = "voice_tts"
    importlib.import_module(f"tinysora.eval.{module}").run(args)


def _cmd_bench(args: argparse.Namespace) -> None:
    from tinysora.bench import run

    # the bench's own parser is built only here: it imports torch (slow for `tinysora --help`)
    parser = ArgumentParser(
        prog="tinysora bench", description="speed, MFU and the side by side with diffusers"
    )
    run.add_arguments(parser)
    run.run(parser.parse_args(args.bench_args))


def _add_eval_parsers(sub) -> None:
    ev = sub.add_parser("eval", help="measure quality (reports as text and JSON)")
    ev_sub = ev.add_subparsers(dest="eval_command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, generates: bool) -> argparse.ArgumentParser:
        p = ev_sub.add_parser(name, help=help_text)
        p.set_defaults(func=_cmd_eval)
        p.add_argument("--json", type=output_file(".json"), help="also write the full report here")
        p.add_argument("--device", help=DEVICE_HELP)
        if generates:
            p.add_argument("--model", help=MODEL_HELP)
            p.add_argument(
                "--frames", type=positive_int, default=17, help="frames per clip (default 17)"
            )
            p.add_argument("--height", type=positive_int, default=64, help="height (default 64)")
            p.add_argument("--width", type=positive_int, default=64, help="width (default 64)")
            p.add_argument(
                "--steps", type=positive_int, help="sampling steps (default: the model's)"
            )
            p.add_argument("--guidance", type=float_in(0), help="guidance (default: the model's)")
            p.add_argument("--sampler", choices=SAMPLER_NAMES, help="(default: the model's)")
            p.add_argument(
                "--lora", type=existing_dir, help="a LoRA adapter to load into the model"
            )
            p.add_argument("--lora-scale", type=float_in(), default=1.0, help="adapter strength")
            p.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
        return p

    p = command("adherence", "prompt adherence of generations, judged by the detector", True)
    p.add_argument("--n", type=positive_int, default=200, help="prompts per group (default 200)")
    p.add_argument("--groups", nargs="+", default=["single", "two", "held_out", "paraphrased"])
    p = command("dynamics", "motion smoothness, temporal consistency, object permanence", True)
    p.add_argument("--n", type=positive_int, default=100, help="scenes per group (default 100)")
    p.add_argument("--truth", action="store_true", help="judge ground-truth renders instead")
    p = command("tasks", "conditioning tasks: image-to-video, extension, interpolation, ...", True)
    p.add_argument("--n", type=positive_int, default=50, help="scenes per task (default 50)")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=["image_to_video", "extension", "interpolation", "loop", "editing"],
        help="which tasks (default: all five)",
    )
    p.add_argument(
        "--long-frames",
        type=positive_int,
        default=129,
        help="extension: length of the extended clip, generated --frames at a time (default 129)",
    )
    p = command("vae", "VAE reconstruction quality, compression, speed and memory", False)
    p.add_argument("--model", help="VAE directory (default: bundled weights/vae)")
    p.add_argument("--n", type=positive_int, default=200, help="clips per quality set (200)")
    p.add_argument("--_probe", type=positive_int, help=argparse.SUPPRESS)
    p = command(
        "voice", "the voice model: resynthesis + conversion (or --tts), judged offline", False
    )
    p.add_argument("--model", help="voice model directory (default: bundled weights/voice)")
    p.add_argument(
        "--corpus", type=existing_dir, default="runs/voice/corpus", help="a tinysora voice corpus"
    )
    p.add_argument("--n", type=positive_int, help="held-out sentences (default 50; --tts 100)")
    p.add_argument(
        "--tts",
        action="store_true",
        help="zero-shot text-to-speech: held-out sentences in the unseen voices, against the "
        "corpus engines' own audio (WER, similarity, DNSMOS, duration, RTF, first audio)",
    )
    p = command("all", "every evaluation on one static HTML page (+ JSON)", True)
    p.add_argument(
        "--html", type=output_dir, required=True, help="output directory for index.html and images"
    )
    p.add_argument("--n", type=positive_int, default=50, help="prompts / clips per measurement")
    p.add_argument(
        "--log", type=existing_file, help="a training log.jsonl to plot the learning curve from"
    )
    p.add_argument(
        "--long-frames", type=positive_int, default=129, help="conditioning tasks: extension length"
    )


def add_parsers(sub) -> None:
    """The training and measuring commands."""
    train = sub.add_parser("train", help="train a model from a recipe (TOML)")
    train.add_argument(
        "model",
        choices=["vae", "dit", "lora", *VOICE_MODELS],
        help="what to train",
    )
    train.add_argument(
        "--config", type=existing_file, help="recipe, e.g. configs/vae_shapes.toml (lora: optional)"
    )
    train.add_argument(
        "--out", type=output_dir, required=True, help="run directory (checkpoints, log, model)"
    )
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument(
        "--data", type=existing_dir, help="dit: a cache of your own clips (`tinysora prepare`)"
    )
    train.add_argument(
        "--init",
        help="dit, lora: start from this model's DiT (a directory or a bundled model's name); "
        "voice: from this run's latest checkpoint (generator + discriminators; codebooks "
        "from --config's content); voice-gpt: from this run's latest EMA weights",
    )
    train.add_argument(
        "--rank", type=positive_int, default=8, help="lora: adapter rank (default 8)"
    )
    train.add_argument("--device", help=DEVICE_HELP + "; under torchrun: cuda:LOCAL_RANK")
    train.set_defaults(func=_cmd_train)

    prep = sub.add_parser(
        "prepare",
        help="encode a folder of your own videos into a training cache",
        description="Read a folder of videos / images with captions (captions.csv with "
        "path,text; captions.jsonl; or NAME.txt sidecars), resample, cut 1+4k-frame clips, "
        "encode them with the VAE and the text encoder into safetensors shards. Run it "
        "again after an interruption to continue.",
    )
    prep.add_argument("data", type=existing_dir, help="folder of videos with captions")
    prep.add_argument(
        "--out", type=output_dir, required=True, help="cache directory to write (or continue)"
    )
    prep.add_argument("--vae", help="VAE directory (default: the bundled model's)")
    prep.add_argument("--fps", type=fps, default=8.0, help="frames per second (default 8)")
    prep.add_argument(
        "--frames", type=positive_int, default=17, help="frames per clip, 1 + 4k (17)"
    )
    prep.add_argument(
        "--size", type=_size, default="64x64", help="HxW, multiples of 16 (default 64x64)"
    )
    prep.add_argument(
        "--packing", action="store_true", help="keep each file's size (for Patch n' Pack)"
    )
    prep.add_argument("--shard-clips", type=positive_int, default=64, help="clips per shard (64)")
    prep.add_argument("--device", help=DEVICE_HELP)
    prep.set_defaults(func=_cmd_prepare)

    _add_eval_parsers(sub)

    bench = sub.add_parser(
        "bench",
        help="speed, MFU, side by side with diffusers (`tinysora bench --help`)",
        add_help=False,
    )
    bench.set_defaults(func=_cmd_bench)
