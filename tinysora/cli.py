"""The ``tinysora`` command: a thin argparse layer over the library (no logic here)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from tinysora import __version__
from tinysora.errors import UserError

EXIT_USAGE = 2
DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda when there is a GPU, else cpu)"
ALLOW_PICKLE_HELP = "diffusers-format models: also load .bin / .pt weights (weights_only)"


class CliError(UserError):
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
    size = f"{args.frames} frames, {args.height}x{args.width}, {args.fps:g} fps"
    print(f"wrote {path.resolve()} ({size})")
    print(scene.caption)


def _cmd_train(args: argparse.Namespace) -> None:
    if args.model in ("vae", "voice", "voice-content", "voice-gpt") and args.data:
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
        elif args.model == "voice":
            from tinysora.train.voice import train_voice

            train_voice(args.config, args.out, resume=args.resume, device=args.device,
                        init=args.init)  # fmt: skip
        elif args.model == "voice-content":
            from tinysora.train.voice_content import train_voice_content

            train_voice_content(args.config, args.out, resume=args.resume)
        elif args.model == "voice-gpt":
            from tinysora.train.voice_gpt import train_voice_gpt

            train_voice_gpt(args.config, args.out, resume=args.resume, device=args.device,
                            init=args.init)  # fmt: skip
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


def _cmd_prepare(args: argparse.Namespace) -> None:
    import logging
    from pathlib import Path

    from tinysora.data.cache import prepare
    from tinysora.data.folder import FolderConfig

    logging.basicConfig(format="tinysora: %(message)s", level=logging.WARNING)
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise CliError(f"--size must look like 64x64 (height x width), got {args.size!r}") from None
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


def _cmd_export(args: argparse.Namespace) -> None:
    from tinysora.train.dit import export_checkpoint

    if args.merge_lora:
        from tinysora.train.lora import export_merged

        path = export_merged(args.run, args.output, step=args.step)
    else:
        path = export_checkpoint(args.run, args.output, step=args.step)
    print(path.resolve())


def _cmd_eval(args: argparse.Namespace) -> None:
    import importlib

    module = "report" if args.eval_command == "all" else args.eval_command
    if module == "voice" and args.tts:
        module = "voice_tts"
    importlib.import_module(f"tinysora.eval.{module}").run(args)


def _cmd_bench(args: argparse.Namespace) -> None:
    from tinysora.bench import run

    # the bench's own parser is built only here: it imports torch (slow for `tinysora --help`)
    parser = argparse.ArgumentParser(
        prog="tinysora bench", description="speed, MFU and the side by side with diffusers"
    )
    run.add_arguments(parser)
    run.run(parser.parse_args(args.bench_args))


def _cmd_vae_roundtrip(args: argparse.Namespace) -> None:
    from tinysora.io.checkpoint import load_pretrained, resolve_model_dir
    from tinysora.io.video import read_video, write_video
    from tinysora.nn.metrics import psnr
    from tinysora.vae.model import VideoVAE, reconstruct

    frames, fps = read_video(args.input)
    t, h, w, _ = frames.shape
    if h % 8 or w % 8:
        raise CliError(
            f"'{args.input}' is {h}x{w}; the VAE needs height and width divisible by 8 "
            "(crop or resize the video first)"
        )
    from tinysora.device import resolve_device

    vae = load_pretrained(VideoVAE, resolve_model_dir(args.model, "vae"))
    vae.to(resolve_device(args.device))
    out = reconstruct(vae, frames)
    path = write_video(args.output, out, fps=fps)
    print(f"PSNR {psnr(out, frames):.2f} dB over {t} frames of {h}x{w}")
    print(path.resolve())


def _cmd_generate(args: argparse.Namespace) -> None:
    import time

    t0 = time.perf_counter()
    import torch

    from tinysora.io.video import check_output_path
    from tinysora.pipeline import TextToVideoPipeline, export_to_video

    out = args.output or f"outputs/generate_{args.seed}.mp4"
    suffix = check_output_path(out)  # a bad name fails now, not after sampling
    if args.narrate is not None and suffix not in (".mp4", ".mov", ".mkv"):
        raise CliError(f"--narrate needs an .mp4, .mov or .mkv output (a sound track), got {out}")
    if (args.voice or args.voice_text or args.voice_model) and args.narrate is None:
        raise CliError("--voice, --voice-text and --voice-model go with --narrate TEXT")
    if args.voice_text and not args.voice:
        raise CliError("--voice-text is the transcript of --voice REF.wav; give the clip too")
    pipe = TextToVideoPipeline.from_pretrained(args.model, allow_pickle=args.allow_pickle)
    if args.lora:
        pipe.load_lora(args.lora, args.lora_scale)
    pipe.to(args.device)
    t_load = time.perf_counter() - t0
    fps = args.fps or pipe.config.fps
    frames, window, speech = args.frames, args.window, None
    if args.narrate is not None:  # speech first: the clip is extended to its length
        from tinysora.pipeline import narrated_length
        from tinysora.voice.speech import SpeechPipeline

        tts = SpeechPipeline.from_pretrained(args.voice_model)
        speech = tts(args.narrate, ref_audio=args.voice, ref_text=args.voice_text, seed=args.seed)
        frames, grown = narrated_length(speech.seconds, fps, args.frames)
        window = window or grown
    video = pipe(
        args.prompt,
        negative_prompt=args.negative_prompt,
        num_frames=frames,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        generator=torch.Generator().manual_seed(args.seed),
        sampler=args.sampler,
        image=args.image,
        first_image=args.first,
        last_image=args.last,
        video=args.video,
        strength=args.strength,
        extend=args.extend,
        window=window,
        loop=args.loop,
    )
    sound = {} if speech is None else {"audio": speech.audio, "audio_rate": speech.sample_rate}
    path = export_to_video(video.frames, out, fps=fps, **sound)
    t_total = time.perf_counter() - t0
    print(f"load {t_load:.1f} s, generate + write {t_total - t_load:.1f} s", file=sys.stderr)
    print(path.resolve())


def _cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from tinysora.serve.app import create_app
    from tinysora.serve.config import ServeConfig

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(
            f"tinysora: warning: serving on {args.host} lets anyone who can reach this "
            "machine queue jobs; set --api-key KEY (or TINYSORA_API_KEY)",
            file=sys.stderr,
        )
    cfg = ServeConfig(
        model=args.model,
        data_dir=args.data_dir,
        device=args.device,
        allow_pickle=args.allow_pickle,
        api_key=args.api_key,
        max_queue=args.max_queue,
        max_frames=args.max_frames,
        max_side=args.max_side,
        max_steps=args.max_steps,
        max_prompt_chars=args.max_prompt_chars,
        max_upload_mb=args.max_upload_mb,
        voice_model=args.voice_model,
        max_narration_chars=args.max_narration_chars,
        max_speech_chars=args.max_speech_chars,
    )
    print(f"tinysora: serving on http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn.run(create_app(cfg), host=args.host, port=args.port, log_level=args.log_level)


def _add_serve_parser(sub) -> None:
    from tinysora.serve.config import ServeConfig

    defaults = ServeConfig()
    serve = sub.add_parser(
        "serve",
        help="web page + HTTP API with a persistent job queue",
        description="Serve the pipeline: a web page at / and a JSON API under /v1 "
        "(OpenAPI at /openapi.json). Jobs live in SQLite under --data-dir and survive "
        "restarts; they run one at a time.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    serve.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    serve.add_argument("--model", help="model directory (default: bundled weights/)")
    serve.add_argument(
        "--data-dir", default=defaults.data_dir, help="jobs.sqlite3, videos/, uploads/"
    )
    serve.add_argument("--device", help=DEVICE_HELP)
    serve.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    serve.add_argument(
        "--api-key",
        default=os.environ.get("TINYSORA_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $TINYSORA_API_KEY)",
    )
    for name, text in (
        ("max_queue", "waiting jobs before 429"),
        ("max_frames", "frames per video"),
        ("max_side", "height / width"),
        ("max_steps", "sampling steps"),
        ("max_prompt_chars", "prompt length"),
        ("max_narration_chars", "a video's narration"),
        ("max_speech_chars", "POST /v1/speech text"),
    ):
        value = getattr(defaults, name)
        serve.add_argument(
            "--" + name.replace("_", "-"), type=int, default=value, help=f"{text} ({value})"
        )
    serve.add_argument(
        "--max-upload-mb",
        type=float,
        default=defaults.max_upload_mb,
        help=f"per uploaded file ({defaults.max_upload_mb:g})",
    )
    serve.add_argument(
        "--voice-model", help="speech model for narration and /v1/speech (default: weights/voice)"
    )
    serve.add_argument("--log-level", default="info", help="uvicorn's (info, warning, ...)")
    serve.set_defaults(func=_cmd_serve)


def _add_eval_parsers(sub) -> None:
    ev = sub.add_parser("eval", help="measure quality (reports as text and JSON)")
    ev_sub = ev.add_subparsers(dest="eval_command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, generates: bool) -> argparse.ArgumentParser:
        p = ev_sub.add_parser(name, help=help_text)
        p.set_defaults(func=_cmd_eval)
        p.add_argument("--json", help="also write the full report here")
        p.add_argument("--device", help=DEVICE_HELP)
        if generates:
            p.add_argument("--model", help="model directory (default: bundled weights/)")
            p.add_argument("--frames", type=int, default=17, help="frames per clip (default 17)")
            p.add_argument("--height", type=int, default=64, help="height (default 64)")
            p.add_argument("--width", type=int, default=64, help="width (default 64)")
            p.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
            p.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
            p.add_argument("--sampler", help="euler, heun or dpmpp_2m (default: the model's)")
            p.add_argument("--lora", help="a LoRA adapter to load into the model")
            p.add_argument("--lora-scale", type=float, default=1.0, help="adapter strength")
            p.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
        return p

    p = command("adherence", "prompt adherence of generations, judged by the detector", True)
    p.add_argument("--n", type=int, default=200, help="prompts per group (default 200)")
    p.add_argument("--groups", nargs="+", default=["single", "two", "held_out", "paraphrased"])
    p = command("dynamics", "motion smoothness, temporal consistency, object permanence", True)
    p.add_argument("--n", type=int, default=100, help="scenes per group (default 100)")
    p.add_argument("--truth", action="store_true", help="judge ground-truth renders instead")
    p = command("tasks", "conditioning tasks: image-to-video, extension, interpolation, ...", True)
    p.add_argument("--n", type=int, default=50, help="scenes per task (default 50)")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=["image_to_video", "extension", "interpolation", "loop", "editing"],
        help="which tasks (default: all five)",
    )
    p.add_argument(
        "--long-frames",
        type=int,
        default=129,
        help="extension: length of the extended clip, generated --frames at a time (default 129)",
    )
    p = command("vae", "VAE reconstruction quality, compression, speed and memory", False)
    p.add_argument("--model", help="VAE directory (default: bundled weights/vae)")
    p.add_argument("--n", type=int, default=200, help="clips per quality set (default 200)")
    p.add_argument("--_probe", type=int, help=argparse.SUPPRESS)
    p = command("voice", "the voice model: resynthesis + conversion (or --tts), judged offline",
                False)  # fmt: skip
    p.add_argument("--model", help="voice model directory (default: bundled weights/voice)")
    p.add_argument("--corpus", default="runs/voice/corpus", help="a tinysora voice corpus")
    p.add_argument("--n", type=int, help="held-out sentences (default 50; --tts 100)")
    p.add_argument(
        "--tts",
        action="store_true",
        help="zero-shot text-to-speech: held-out sentences in the unseen voices, against the "
        "corpus engines' own audio (WER, similarity, DNSMOS, duration, RTF, first audio)",
    )
    p = command("all", "every evaluation on one static HTML page (+ JSON)", True)
    p.add_argument("--html", required=True, help="output directory for index.html and images")
    p.add_argument("--n", type=int, default=50, help="prompts / clips per measurement")
    p.add_argument("--log", help="a training log.jsonl to plot the learning curve from")
    p.add_argument(
        "--long-frames", type=int, default=129, help="conditioning tasks: extension length"
    )


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
        description="Render a Shapes World clip (see docs/WORLD.md). With CAPTION, the "
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

    gen = sub.add_parser("generate", help="generate a video from a prompt")
    gen.add_argument("prompt", help="e.g. 'a small red circle moving left on a black background'")
    gen.add_argument("-o", "--output", help="output .mp4/.gif/.png/.npy (default outputs/)")
    gen.add_argument("--frames", type=int, default=17, help="frame count (1 + 4k; default 17)")
    gen.add_argument("--height", type=int, default=64, help="multiple of 16 in 32..512")
    gen.add_argument("--width", type=int, default=64, help="multiple of 16 in 32..512")
    gen.add_argument("--fps", type=float, help="frames per second (default: the model's)")
    gen.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    gen.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    gen.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same video)")
    gen.add_argument("--sampler", help="euler, heun or dpmpp_2m (default: the model's)")
    gen.add_argument("--negative-prompt", help="what to steer away from")
    gen.add_argument("--model", help="model directory (default: bundled weights/)")
    gen.add_argument("--lora", help="a LoRA adapter directory (`tinysora train lora`)")
    gen.add_argument("--lora-scale", type=float, default=1.0, help="adapter strength (1)")
    gen.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    gen.add_argument("--image", help="image-to-video: this image is frame 0")
    gen.add_argument("--first", help="keyframe: the first frame (with --last: interpolation)")
    gen.add_argument("--last", help="keyframe: the last frame")
    gen.add_argument("--video", help="video to re-generate under the prompt (with --strength)")
    gen.add_argument(
        "--strength", type=float, help="SDEdit noise level in (0, 1]: low keeps more of --video"
    )
    gen.add_argument("--extend", type=int, help="continue --video by this many frames")
    gen.add_argument(
        "--window", type=int, help="frames per generation window for long clips (e.g. 17)"
    )
    gen.add_argument("--loop", action="store_true", help="make the clip end where it starts")
    gen.add_argument(
        "--narrate",
        help="a voice-over to speak (mp4/mov/mkv get an AAC track); the clip is extended to "
        "the speech's length, never cut (past 17 frames or --frames: window by window)",
    )
    gen.add_argument("--voice", help="narration: a 3-10 s clip of the voice (default: bundled)")
    gen.add_argument("--voice-text", help="narration: the --voice clip's transcript (optional)")
    gen.add_argument("--voice-model", help="narration: speech model (default: weights/voice)")
    gen.add_argument("--device", help=DEVICE_HELP)
    gen.set_defaults(func=_cmd_generate)

    train = sub.add_parser("train", help="train a model from a recipe (TOML)")
    train.add_argument(
        "model",
        choices=["vae", "dit", "lora", "voice", "voice-content", "voice-gpt"],
        help="what to train",
    )
    train.add_argument("--config", help="recipe, e.g. configs/vae_shapes.toml (lora: optional)")
    train.add_argument("--out", required=True, help="run directory (checkpoints, log, model)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--data", help="dit: a cache of your own clips (`tinysora prepare`)")
    train.add_argument(
        "--init",
        help="dit, lora: start from this model directory's DiT; voice: from this run's "
        "latest checkpoint (generator + discriminators; codebooks from --config's content); "
        "voice-gpt: from this run's latest EMA weights",
    )
    train.add_argument("--rank", type=int, default=8, help="lora: adapter rank (default 8)")
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
    prep.add_argument("data", help="folder of videos with captions")
    prep.add_argument("--out", required=True, help="cache directory to write (or continue)")
    prep.add_argument("--vae", help="VAE directory (default: the bundled model's)")
    prep.add_argument("--fps", type=float, default=8.0, help="frames per second (default 8)")
    prep.add_argument("--frames", type=int, default=17, help="frames per clip, 1 + 4k (17)")
    prep.add_argument("--size", default="64x64", help="HxW, multiples of 16 (default 64x64)")
    prep.add_argument(
        "--packing", action="store_true", help="keep each file's size (for Patch n' Pack)"
    )
    prep.add_argument("--shard-clips", type=int, default=64, help="clips per shard (64)")
    prep.add_argument("--device", help=DEVICE_HELP)
    prep.set_defaults(func=_cmd_prepare)

    export = sub.add_parser("export", help="export a DiT run's checkpoint as a model directory")
    export.add_argument("run", help="run directory of `tinysora train dit`")
    export.add_argument("-o", "--output", required=True, help="model directory to write")
    export.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    export.add_argument(
        "--merge-lora", action="store_true", help="a LoRA run: merge its adapter into the model"
    )
    export.set_defaults(func=_cmd_export)

    _add_serve_parser(sub)
    _add_eval_parsers(sub)

    bench = sub.add_parser(
        "bench",
        help="speed, MFU, side by side with diffusers (`tinysora bench --help`)",
        add_help=False,
    )
    bench.set_defaults(func=_cmd_bench)

    vae = sub.add_parser("vae", help="video VAE tools")
    vae_sub = vae.add_subparsers(dest="vae_command", metavar="COMMAND", required=True)
    rt = vae_sub.add_parser("roundtrip", help="encode and decode a video, report PSNR")
    rt.add_argument("input", help="video (.mp4/.gif/.npy/...) with H, W divisible by 8")
    rt.add_argument("-o", "--output", required=True, help="reconstruction (.mp4/.gif/.npy)")
    rt.add_argument("--model", help="VAE directory (default: bundled weights/vae)")
    rt.add_argument("--device", help=DEVICE_HELP)
    rt.set_defaults(func=_cmd_vae_roundtrip)

    voice = sub.add_parser("voice", help="speech tools (GPT-SoVITS-style voice)")
    voice_sub = voice.add_subparsers(dest="voice_command", metavar="COMMAND", required=True)
    corpus = voice_sub.add_parser(
        "corpus",
        help="make a speech corpus offline with espeak-ng, flite and festival",
        description="Needs: apt-get install espeak-ng flite festival festvox-kallpc16k "
        "festvox-kdlpc16k festvox-us-slt-hts. Resumes an interrupted run in the same --out.",
    )
    corpus.add_argument("--out", required=True, help="corpus directory")
    corpus.add_argument("--hours", type=float, default=3.0, help="hours of training speech")
    corpus.add_argument("--engines", default="espeak,flite,festival", help="comma-separated")
    corpus.add_argument("--seed", type=int, default=0)
    corpus.add_argument("--jobs", type=int, default=2, help="synthesizer processes at once")
    corpus.add_argument(
        "--test-per-voice",
        type=int,
        nargs=2,
        default=[4, 24],
        metavar=("SEEN", "UNSEEN"),
        help="held-out sentences per train voice and per unseen voice (default 4 24)",
    )
    corpus.set_defaults(func=_cmd_voice_corpus)
    conv = voice_sub.add_parser("convert", help="say SOURCE's words in REF's voice")
    conv.add_argument("source", help="speech to convert (any audio file)")
    conv.add_argument("--ref", required=True, help="3-10 s clip of the target voice")
    conv.add_argument("-o", "--output", required=True, help="output .wav / .flac / .ogg")
    conv.add_argument("--model", help="voice model directory (default: bundled weights/voice)")
    conv.add_argument("--text", help="SOURCE's transcript (optional: helps the words)")
    conv.add_argument("--seed", type=int, default=0)
    conv.set_defaults(func=_cmd_voice_convert)

    speak = sub.add_parser(
        "speak",
        help="say TEXT in the voice of a 3-10 s reference clip (zero-shot text-to-speech)",
        description="Text -> phonemes -> GPT -> semantic codes -> SoVITS -> waveform, in REF's "
        "voice. Long text is cut at sentence boundaries and joined with pauses.",
    )
    speak.add_argument("text", help="what to say (up to 2000 characters)")
    speak.add_argument(
        "--ref", help="3-10 s clip of the voice to speak in (default: the model's default voice)"
    )
    speak.add_argument("--ref-text", help="REF's transcript (optional: a better prompt)")
    speak.add_argument("-o", "--output", required=True, help="output .wav / .flac / .ogg")
    speak.add_argument("--model", help="speech model directory (default: bundled weights/voice)")
    speak.add_argument("--seed", type=int, default=0)
    speak.add_argument("--speed", type=float, default=1.0, help="0.5-2.0 (default 1)")
    speak.add_argument("--top-k", type=int, default=1, help="(default 1: greedy codes)")
    speak.add_argument("--top-p", type=float, default=1.0, help="(default 1.0)")
    speak.add_argument("--temperature", type=float, default=1.0, help="(default 1.0)")
    speak.add_argument("--repetition-penalty", type=float, default=1.0, help="(default 1.0)")
    speak.set_defaults(func=_cmd_speak)
    return parser


def _cmd_voice_corpus(args: argparse.Namespace) -> None:
    from tinysora.voice.corpus import build_corpus

    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    if args.jobs < 1:
        raise CliError(f"--jobs must be >= 1, got {args.jobs}")
    if min(args.test_per_voice) < 0:
        raise CliError(f"--test-per-voice must be >= 0, got {args.test_per_voice}")
    summary = build_corpus(
        args.out, args.hours, engines, args.seed, args.jobs, tuple(args.test_per_voice)
    )
    hours = summary["hours"]
    print(
        f"{args.out}: {summary['voices']['train']} train voices + {summary['voices']['unseen']} "
        f"unseen; {hours['train']:.2f} h train, {hours['test_seen']:.2f} h held-out sentences, "
        f"{hours['test_unseen']:.2f} h unseen voices; {summary['failed']} failed"
    )


def _cmd_voice_convert(args: argparse.Namespace) -> None:
    from tinysora.voice.convert import VoiceConverter

    if not args.output:
        raise CliError("-o/--output is empty; give a file name such as out.wav")
    vc = VoiceConverter.from_pretrained(args.model)
    wav = vc(args.source, args.ref, text=args.text, seed=args.seed)
    path = vc.save(wav, args.output)
    print(f"wrote {path.resolve()} ({len(wav) / vc.sample_rate:.2f} s, {vc.sample_rate} Hz)")


def _cmd_speak(args: argparse.Namespace) -> None:
    from pathlib import Path

    from tinysora.voice.speech import SpeechPipeline

    if Path(args.output).suffix.lower() not in (".wav", ".flac", ".ogg"):
        raise CliError(f"-o {args.output!r}: use a .wav, .flac or .ogg name")
    if args.ref_text and not args.ref:
        raise CliError("--ref-text is the transcript of --ref REF.wav; give the clip too")
    tts = SpeechPipeline.from_pretrained(args.model)
    out = tts(args.text, ref_audio=args.ref, ref_text=args.ref_text, top_k=args.top_k,
              top_p=args.top_p, temperature=args.temperature, speed=args.speed,
              repetition_penalty=args.repetition_penalty, seed=args.seed)  # fmt: skip
    path = tts.save(out.audio, args.output)
    print(f"wrote {path.resolve()} ({out.seconds:.2f} s, {out.sample_rate} Hz, "
          f"{len(out.pieces)} piece(s))")  # fmt: skip


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (sizes rounded, inputs resized) as one line, without a source path."""
    print(f"tinysora: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _one_line_warning
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
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


if __name__ == "__main__":
    sys.exit(main())
