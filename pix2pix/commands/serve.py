"""``pix2pix serve``: the HTTP service (FastAPI on uvicorn) over a folder of model folders."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from pix2pix.commands.common import UsageError


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("serve", help="serve generators over HTTP")
    parser.add_argument("--models", default=None, help="models folder (PIX2PIX_MODELS_DIR)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=None,
        help="seconds the requests in flight get to finish on SIGTERM, after which they are "
        "answered 503 with Retry-After (default: PIX2PIX_DRAIN_TIMEOUT_S, 7)",
    )
    parser.add_argument("--keep-alive", type=int, default=75, help="idle keep-alive seconds")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    import uvicorn

    # Flags win over the environment; the app reads its settings from PIX2PIX_* variables.
    if args.models is not None:
        os.environ["PIX2PIX_MODELS_DIR"] = str(args.models)
    from app.main import create_app
    from app.settings import Settings

    settings = Settings()
    if args.graceful_timeout is not None:
        if args.graceful_timeout <= 0:
            raise UsageError(f"--graceful-timeout must be positive, not {args.graceful_timeout}")
        settings = settings.model_copy(update={"drain_timeout_s": args.graceful_timeout})
    if not Path(settings.models_dir).is_dir():
        raise UsageError(f"models directory {settings.models_dir} does not exist")
    print(f"serving models from {settings.models_dir} at http://{args.host}:{args.port}")
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level="info",
        # A second past the service's own deadline, by which it has answered every request.
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s) + 1,
        # Longer than uvicorn's 5 s, so a client reusing a connection is not cut off while
        # a busy CPU delays its next request.
        timeout_keep_alive=args.keep_alive,
    )
    return 0
