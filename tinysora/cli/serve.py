"""``tinysora serve``: the web page and HTTP API."""

from __future__ import annotations

import argparse
import os
import sys

from tinysora.cli.common import ALLOW_PICKLE_HELP, DEVICE_HELP


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


def add_parsers(sub) -> None:
    """``serve``, its limits defaulting to ``ServeConfig``'s."""
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
