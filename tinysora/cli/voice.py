"""``tinysora voice corpus``, ``voice convert`` and ``speak``: the speech commands."""

from __future__ import annotations

import argparse

from tinysora.cli.common import (
    AUDIO_SUFFIXES,
    CliError,
    existing_file,
    float_in,
    nonnegative_int,
    output_dir,
    output_file,
    positive_float,
    positive_int,
    seed,
)

VOICE_MODELS = ("voice", "voice-content", "voice-gpt")  # `tinysora train MODEL`


def train_voice_model(args: argparse.Namespace) -> None:
    """``tinysora train voice|voice-content|voice-gpt`` (the checks common to all are in train)."""
    if args.model == "voice":
        from tinysora.train.voice_sovits import train_voice

        train_voice(args.config, args.out, resume=args.resume, device=args.device, init=args.init)
    elif args.model == "voice-content":
        from tinysora.train.voice_content import train_voice_content

        train_voice_content(args.config, args.out, resume=args.resume)
    else:
        from tinysora.train.voice_gpt import train_voice_gpt

        train_voice_gpt(
            args.config, args.out, resume=args.resume, device=args.device, init=args.init
        )


def _cmd_voice_corpus(args: argparse.Namespace) -> None:
    from tinysora.voice.corpus import build_corpus

    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
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

    vc = VoiceConverter.from_pretrained(args.model)
    wav = vc(args.source, args.ref, text=args.text, seed=args.seed)
    path = vc.save(wav, args.output)
    print(f"wrote {path.resolve()} ({len(wav) / vc.sample_rate:.2f} s, {vc.sample_rate} Hz)")


def _cmd_speak(args: argparse.Namespace) -> None:
    from tinysora.voice.speech import SpeechConfig, SpeechPipeline

    if args.ref_text and not args.ref:
        raise CliError("--ref-text is the transcript of --ref REF.wav; give the clip too")
    knobs = {
        "top_k": args.top_k,
        "top_p": args.top_p,
        "temperature": args.temperature,
        "speed": args.speed,
        "repetition_penalty": args.repetition_penalty,
    }
    SpeechConfig().given(**knobs)  # each given knob's range, before the models load
    tts = SpeechPipeline.from_pretrained(args.model)
    out = tts(args.text, ref_audio=args.ref, ref_text=args.ref_text, seed=args.seed, **knobs)
    path = tts.save(out.audio, args.output)
    print(
        f"wrote {path.resolve()} ({out.seconds:.2f} s, {out.sample_rate} Hz, "
        f"{len(out.pieces)} piece(s))"
    )


def _audio_output(parser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        type=output_file(*AUDIO_SUFFIXES),
        required=True,
        help="output .wav / .flac / .ogg",
    )


def add_parsers(sub) -> None:
    """The speech commands."""
    voice = sub.add_parser("voice", help="speech tools (GPT-SoVITS-style voice)")
    voice_sub = voice.add_subparsers(dest="voice_command", metavar="COMMAND", required=True)
    corpus = voice_sub.add_parser(
        "corpus",
        help="make a speech corpus offline with espeak-ng, flite and festival",
        description="Needs: apt-get install espeak-ng flite festival festvox-kallpc16k "
        "festvox-kdlpc16k festvox-us-slt-hts. Resumes an interrupted run in the same --out.",
    )
    corpus.add_argument("--out", type=output_dir, required=True, help="corpus directory")
    corpus.add_argument(
        "--hours", type=positive_float, default=3.0, help="hours of training speech"
    )
    corpus.add_argument("--engines", default="espeak,flite,festival", help="comma-separated")
    corpus.add_argument("--seed", type=seed, default=0)
    corpus.add_argument(
        "--jobs", type=positive_int, default=2, help="synthesizer processes at once"
    )
    corpus.add_argument(
        "--test-per-voice",
        type=nonnegative_int,
        nargs=2,
        default=[4, 24],
        metavar=("SEEN", "UNSEEN"),
        help="held-out sentences per train voice and per unseen voice (default 4 24)",
    )
    corpus.set_defaults(func=_cmd_voice_corpus)
    conv = voice_sub.add_parser("convert", help="say SOURCE's words in REF's voice")
    conv.add_argument("source", type=existing_file, help="speech to convert (any audio file)")
    conv.add_argument(
        "--ref", type=existing_file, required=True, help="3-10 s clip of the target voice"
    )
    _audio_output(conv)
    conv.add_argument("--model", help="voice model directory (default: bundled weights/voice)")
    conv.add_argument("--text", help="SOURCE's transcript (optional: helps the words)")
    conv.add_argument("--seed", type=seed, default=0)
    conv.set_defaults(func=_cmd_voice_convert)

    speak = sub.add_parser(
        "speak",
        help="say TEXT in the voice of a 3-10 s reference clip (zero-shot text-to-speech)",
        description="Text -> phonemes -> GPT -> semantic codes -> SoVITS -> waveform, in REF's "
        "voice. Long text is cut at sentence boundaries and joined with pauses.",
    )
    speak.add_argument("text", help="what to say (up to 2000 characters)")
    speak.add_argument(
        "--ref",
        type=existing_file,
        help="3-10 s clip of the voice to speak in (default: the model's default voice)",
    )
    speak.add_argument("--ref-text", help="REF's transcript (optional: a better prompt)")
    _audio_output(speak)
    speak.add_argument("--model", help="speech model directory (default: bundled weights/voice)")
    speak.add_argument("--seed", type=seed, default=0)
    # a knob left out takes the model's default (its speech.json: voice.speech.SpeechConfig)
    default = "(default: the model's, from its speech.json)"
    speak.add_argument("--speed", type=float_in(), help=f"0.5-2.0 {default}")
    speak.add_argument("--top-k", type=nonnegative_int, help=f"0 = off {default}")
    speak.add_argument("--top-p", type=float_in(), help=default)
    speak.add_argument("--temperature", type=float_in(), help=default)
    speak.add_argument("--repetition-penalty", type=float_in(), help=default)
    speak.set_defaults(func=_cmd_speak)
