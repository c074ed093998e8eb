"""``tinysora world``, ``generate``, ``export`` and ``vae``: the video commands."""

from __future__ import annotations

import argparse
import sys

from tinysora.cli.common import (
    ALLOW_PICKLE_HELP,
    DEVICE_HELP,
    MODEL_HELP,
    CliError,
    existing_dir,
    existing_file,
    float_in,
    fps,
    nonnegative_int,
    output_dir,
    positive_int,
    seed,
    video_output,
)
from tinysora.diffusion import SAMPLER_NAMES


def _cmd_world(args: argparse.Namespace) -> None:
    from tinysora.io.video import write_video
    from tinysora.worlds.shapes import check_size, parse_caption, render, sample_scene

    check_size(args.height, args.width, args.frames)
    if args.caption is not None:
        scene = parse_caption(args.caption, seed=args.seed)
    else:
        scene = sample_scene(args.seed)
    out = args.output if args.output is not None else f"outputs/world_{args.seed}.mp4"
    frames = render(scene, args.height, args.width, args.frames)
    path = write_video(out, frames, fps=args.fps)
    size = f"{args.frames} frames, {args.height}x{args.width}, {args.fps:g} fps"
    print(f"wrote {path.resolve()} ({size})")
    print(scene.caption)


def _cmd_generate(args: argparse.Namespace) -> None:
    import time

    t0 = time.perf_counter()
    import torch

    from tinysora.io.video import check_output_path
    from tinysora.pipeline import TextToVideoPipeline, check_conditioning, export_to_video

    out = args.output or f"outputs/generate_{args.seed}.mp4"
    suffix = check_output_path(out)  # a bad name fails now, not after sampling
    if args.narrate is not None and suffix not in (".mp4", ".mov", ".mkv"):
        raise CliError(f"--narrate needs an .mp4, .mov or .mkv output (a sound track), got {out}")
    if (args.voice or args.voice_text or args.voice_model) and args.narrate is None:
        raise CliError("--voice, --voice-text and --voice-model go with --narrate TEXT")
    if args.voice_text and not args.voice:
        raise CliError("--voice-text is the transcript of --voice REF.wav; give the clip too")
    conditioning = (args.image, args.first, args.last, args.video, args.strength, args.extend)
    check_conditioning(*conditioning, args.loop)
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


def _cmd_export(args: argparse.Namespace) -> None:
    from tinysora.train.dit import export_checkpoint

    if args.merge_lora:
        from tinysora.train.lora import export_merged

        path = export_merged(args.run, args.output, step=args.step)
    else:
        path = export_checkpoint(args.run, args.output, step=args.step)
    print(path.resolve())


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


def add_parsers(sub) -> None:
    """The video commands, in ``tinysora --help``'s order."""
    world = sub.add_parser(
        "world",
        help="render a Shapes World clip from a caption or a seed",
        description="Render a Shapes World clip (see docs/WORLD.md). With CAPTION, the "
        "caption's scene (attributes left out are drawn from --seed); without, the scene "
        "of --seed (0..999999 train, 1000000..1099999 val, >= 2000000 test). The rendered "
        "caption is printed last.",
    )
    world.add_argument("caption", nargs="?", help="e.g. 'a small red circle moving left'")
    world.add_argument("--seed", type=seed, default=0, help="scene seed (default 0)")
    world.add_argument(
        "--frames", type=positive_int, default=17, help="frame count T >= 1 (default 17)"
    )
    world.add_argument("--height", type=positive_int, default=64, help="multiple of 8 in 32..512")
    world.add_argument("--width", type=positive_int, default=64, help="multiple of 8 in 32..512")
    world.add_argument("--fps", type=fps, default=8.0, help="frames per second (default 8)")
    world.add_argument(
        "-o",
        "--output",
        type=video_output,
        help="output .mp4/.gif/.png/.npy (default outputs/world_SEED.mp4)",
    )
    world.set_defaults(func=_cmd_world)

    gen = sub.add_parser("generate", help="generate a video from a prompt")
    gen.add_argument("prompt", help="e.g. 'a small red circle moving left on a black background'")
    gen.add_argument(
        "-o", "--output", type=video_output, help="output .mp4/.gif/.png/.npy (default outputs/)"
    )
    gen.add_argument(
        "--frames", type=positive_int, default=17, help="frame count (1 + 4k; default 17)"
    )
    gen.add_argument("--height", type=positive_int, default=64, help="multiple of 16 in 32..512")
    gen.add_argument("--width", type=positive_int, default=64, help="multiple of 16 in 32..512")
    gen.add_argument("--fps", type=fps, help="frames per second (default: the model's)")
    gen.add_argument("--steps", type=positive_int, help="sampling steps (default: the model's)")
    gen.add_argument("--guidance", type=float_in(0), help="classifier-free guidance scale >= 0")
    gen.add_argument("--seed", type=seed, default=0, help="noise seed (same seed, same video)")
    gen.add_argument("--sampler", choices=SAMPLER_NAMES, help="(default: the model's)")
    gen.add_argument("--negative-prompt", help="what to steer away from")
    gen.add_argument("--model", help=MODEL_HELP)
    gen.add_argument(
        "--lora", type=existing_dir, help="a LoRA adapter directory (`tinysora train lora`)"
    )
    gen.add_argument("--lora-scale", type=float_in(), default=1.0, help="adapter strength (1)")
    gen.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    gen.add_argument("--image", type=existing_file, help="image-to-video: this image is frame 0")
    gen.add_argument(
        "--first", type=existing_file, help="keyframe: the first frame (with --last: interpolation)"
    )
    gen.add_argument("--last", type=existing_file, help="keyframe: the last frame")
    gen.add_argument(
        "--video",
        type=existing_file,
        help="video to re-generate under the prompt (with --strength)",
    )
    gen.add_argument(
        "--strength",
        type=float_in(0, 1, open_low=True),
        help="SDEdit noise level in (0, 1]: low keeps more of --video",
    )
    gen.add_argument("--extend", type=positive_int, help="continue --video by this many frames")
    gen.add_argument(
        "--window", type=positive_int, help="frames per generation window for long clips (e.g. 17)"
    )
    gen.add_argument("--loop", action="store_true", help="make the clip end where it starts")
    gen.add_argument(
        "--narrate",
        help="a voice-over to speak (mp4/mov/mkv get an AAC track); the clip is extended to "
        "the speech's length, never cut (past 17 frames or --frames: window by window)",
    )
    gen.add_argument(
        "--voice",
        type=existing_file,
        help="narration: a 3-10 s clip of the voice (default: bundled)",
    )
    gen.add_argument("--voice-text", help="narration: the --voice clip's transcript (optional)")
    gen.add_argument("--voice-model", help="narration: speech model (default: weights/voice)")
    gen.add_argument("--device", help=DEVICE_HELP)
    gen.set_defaults(func=_cmd_generate)

    export = sub.add_parser("export", help="export a DiT run's checkpoint as a model directory")
    export.add_argument("run", type=existing_dir, help="run directory of `tinysora train dit`")
    export.add_argument(
        "-o", "--output", type=output_dir, required=True, help="model directory to write"
    )
    export.add_argument(
        "--step", type=nonnegative_int, help="checkpoint step (default: the latest)"
    )
    export.add_argument(
        "--merge-lora", action="store_true", help="a LoRA run: merge its adapter into the model"
    )
    export.set_defaults(func=_cmd_export)

    vae = sub.add_parser("vae", help="video VAE tools")
    vae_sub = vae.add_subparsers(dest="vae_command", metavar="COMMAND", required=True)
    rt = vae_sub.add_parser("roundtrip", help="encode and decode a video, report PSNR")
    rt.add_argument(
        "input", type=existing_file, help="video (.mp4/.gif/.npy/...) with H, W divisible by 8"
    )
    rt.add_argument(
        "-o", "--output", type=video_output, required=True, help="reconstruction (.mp4/.gif/.npy)"
    )
    rt.add_argument("--model", help="VAE directory (default: bundled weights/vae)")
    rt.add_argument("--device", help=DEVICE_HELP)
    rt.set_defaults(func=_cmd_vae_roundtrip)
