"""``python -m gradio_app``: serve the demo page in front of a running TorchServe."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from camserve import cli
from gradio_app.examples import ExampleSource, demo_sources
from gradio_app.settings import (
    AUTH_ENV,
    DEFAULT_DATA_DIR,
    DEFAULT_MAX_FILE_SIZE,
    MANAGEMENT_TOKEN_ENV,
    TOKEN_ENV,
    Settings,
    auth_from_env,
    check_file_size,
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


def _examples(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise argparse.ArgumentTypeError(f"must be MODEL=FOLDER, got {text!r}")
    return name.strip(), Path(folder.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gradio_app", description=__doc__)
    cli.add_server_args(p, management=True)
    p.add_argument("--model", action="append", default=[], metavar="NAME",
                   help="model to offer (repeatable); default: every model the management API lists "
                        "(give --management-url '' to use these alone)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind; 0.0.0.0 exposes the page to the network (default: %(default)s)")
    p.add_argument("--port", type=cli.port, default=7860, help="port of the page (default: %(default)s)")
    p.add_argument("--share", action="store_true", help="open Gradio's public share link (needs --auth)")
    p.add_argument("--auth", type=_auth, metavar="USER:PASS",
                   help=f"protect the page with a login (prefer the environment variable {AUTH_ENV}: "
                        "command lines are visible to other users)")
    cli.add_data_dir(p, DEFAULT_DATA_DIR, help="the demo data (make model), for the demo models' examples")
    p.add_argument("--examples", type=_examples, action="append", default=[], metavar="MODEL=FOLDER",
                   help="another model's examples: an ImageFolder test split (class folder = true label)")
    p.add_argument("--max-file-size", type=_file_size, default=DEFAULT_MAX_FILE_SIZE,
                   help="largest upload (default: %(default)s)")
    p.add_argument("--status-every", type=cli.positive_float, default=10.0, metavar="SECONDS",
                   help="how often the page re-checks the model server (default: %(default)s)")
    p.epilog = (f"The keys can also come from {TOKEN_ENV} and {MANAGEMENT_TOKEN_ENV}; the key file is re-read "
                "when the server rejects a key.")
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
    examples = {**demo_sources(args.data_dir), **{name: ExampleSource(folder) for name, folder in args.examples}}
    return Settings(url=args.url, management_url=args.management_url or None,
                    token_file=args.token_file, token=os.environ.get(TOKEN_ENV) or None,
                    management_token=os.environ.get(MANAGEMENT_TOKEN_ENV) or None, models=tuple(args.model),
                    host=args.host, port=args.port, share=args.share, auth=auth, examples=examples,
                    max_file_size=args.max_file_size, timeout=args.timeout, status_every=args.status_every)


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
