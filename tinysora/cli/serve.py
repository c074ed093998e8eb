"""``tinysora serve``: the web page and HTTP API."""

from __future__ import annotations

import argparse
import os
import sys

from tinysora.cli.common import (
    ALLOW_PICKLE_HELP,
    DEVICE_HELP,
    MODEL_HELP,
    CliError,
    int_in,
    output_dir,
    positive_float,
    positive_int,
)

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


def _check_address(host: str, port: int) -> None:
    """Fail in one line now if uvicorn could not listen on host:port (it would print a
    traceback after loading the model)."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise CliError(f"--host {host!r} is not an address of this machine ({e})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as e:
            raise CliError(
                f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or --host"
            ) from None


def _check_store(data_dir: str) -> None:
    """A --data-dir whose job database is unreadable fails in one line now."""
    import sqlite3
    from pathlib import Path

    from tinysora.serve.store import JobStore

    path = Path(data_dir) / "jobs.sqlite3"
    try:
        JobStore(path).close()
    except (sqlite3.Error, OSError) as e:
        raise CliError(
            f"--data-dir {data_dir}: cannot open the job store '{path}' ({e}); "
            "move it away or pick another --data-dir"
        ) from None


def _cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from tinysora.pipeline import TextToVideoPipeline
    from tinysora.serve.app import create_app
    from tinysora.serve.config import ServeConfig

    _check_address(args.host, args.port)
    _check_store(args.data_dir)

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
    # loaded here, not at the app's startup: a bad model is one line, not a traceback
    pipe = TextToVideoPipeline.from_pretrained(args.model, allow_pickle=args.allow_pickle)
    pipe.to(args.device)
    print(f"tinysora: serving on http://{args.host}:{args.port}/", file=sys.stderr)
    app = create_app(cfg, pipe)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


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
    serve.add_argument("--port", type=int_in(0, 65535), default=7860, help="port (default 7860)")
    serve.add_argument("--model", help=MODEL_HELP)
    serve.add_argument(
        "--data-dir",
        type=output_dir,
        default=defaults.data_dir,
        help="jobs.sqlite3, videos/, uploads/",
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
            "--" + name.replace("_", "-"),
            type=positive_int,
            default=value,
            help=f"{text} ({value})",
        )
    serve.add_argument(
        "--max-upload-mb",
        type=positive_float,
        default=defaults.max_upload_mb,
        help=f"per uploaded file ({defaults.max_upload_mb:g})",
    )
    serve.add_argument(
        "--voice-model", help="speech model for narration and /v1/speech (default: weights/voice)"
    )
    serve.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="uvicorn's")
    serve.set_defaults(func=_cmd_serve)
