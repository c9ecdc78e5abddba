"""``python -m gradio_app``: serve the demo page in front of a running TorchServe."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from camserve.client import DEFAULT_MANAGEMENT_URL, DEFAULT_URL
from gradio_app.settings import (
    AUTH_ENV,
    DEFAULT_MAX_FILE_SIZE,
    MANAGEMENT_TOKEN_ENV,
    TOKEN_ENV,
    Settings,
    auth_from_env,
    check_file_size,
    default_examples_dir,
    parse_auth,
    share_refusal,
)

log = logging.getLogger("gradio_app")


def _auth(text: str) -> tuple[str, str]:
    try:
        return parse_auth(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _file_size(text: str) -> str:
    try:
        return check_file_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 1-65535, got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gradio_app", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--server-url", default=DEFAULT_URL, help="TorchServe inference API")
    p.add_argument("--management-url", default=DEFAULT_MANAGEMENT_URL,
                   help="TorchServe management API, to list the loaded models ('' to use --model only)")
    p.add_argument("--token-file", type=Path, default=Path("key_file.json"),
                   help=f"TorchServe's key file, re-read when a key is rejected ({TOKEN_ENV} and "
                        f"{MANAGEMENT_TOKEN_ENV} override it)")
    p.add_argument("--model", action="append", default=[], metavar="NAME",
                   help="model to offer (repeatable); default: every model the management API lists")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind; 0.0.0.0 exposes the page to the network")
    p.add_argument("--port", type=_port, default=7860, help="port of the page")
    p.add_argument("--share", action="store_true", help="open Gradio's public share link (needs --auth)")
    p.add_argument("--auth", type=_auth, metavar="USER:PASS",
                   help=f"protect the page with a login (prefer the environment variable {AUTH_ENV}: "
                        "command lines are visible to other users)")
    p.add_argument("--examples-dir", type=Path, default=default_examples_dir(),
                   help="ImageFolder tree (class folder = true label) to take example images from")
    p.add_argument("--max-file-size", type=_file_size, default=DEFAULT_MAX_FILE_SIZE, help="largest upload")
    p.add_argument("--timeout", type=_seconds, default=60.0, help="seconds to wait for the model server")
    return p


def settings_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    """Settings from parsed flags and the environment; refuses ``--share`` without credentials."""
    try:
        auth = args.auth or auth_from_env()
    except ValueError as exc:
        parser.error(f"{AUTH_ENV}: {exc}")
    if args.share and auth is None:
        parser.error(share_refusal())  # exits 2 before Gradio is even imported: no tunnel is opened
    if not args.management_url and not args.model:
        parser.error("without --management-url, name the models to offer with --model")
    return Settings(server_url=args.server_url, management_url=args.management_url or None,
                    token_file=args.token_file, token=os.environ.get(TOKEN_ENV) or None,
                    management_token=os.environ.get(MANAGEMENT_TOKEN_ENV) or None, models=tuple(args.model),
                    host=args.host, port=args.port, share=args.share, auth=auth, examples_dir=args.examples_dir,
                    max_file_size=args.max_file_size, timeout=args.timeout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from_args(args, parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    if settings.host not in ("127.0.0.1", "localhost", "::1") and settings.auth is None:
        log.warning("serving on %s without --auth: anyone on the network can use the demo", settings.host)
    from gradio_app.app import serve  # Gradio is imported only once the flags are valid

    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
