"""The app's settings: where the model server is and how the Gradio server is exposed.

Everything here comes from the command line or the environment, never from a page visitor: the
model server's URL is not something a visitor can type (SSRF).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from camserve.cli import DEFAULT_MANAGEMENT_URL, DEFAULT_TOKEN_FILE, DEFAULT_URL
from gradio_app.examples import ExampleSource

TOKEN_ENV = "CAMSERVE_TOKEN"
MANAGEMENT_TOKEN_ENV = "CAMSERVE_MANAGEMENT_TOKEN"
AUTH_ENV = "CAMSERVE_GRADIO_AUTH"
DEFAULT_DATA_DIR = Path("data")
DEFAULT_MAX_FILE_SIZE = "20mb"
_FILE_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*(b|kb|mb|gb)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Settings:
    """How the app reaches TorchServe and how it is served.

    Attributes:
        url: TorchServe inference API.
        management_url: TorchServe management API (lists the loaded models); ``None`` to use ``models``.
        token_file: TorchServe's ``key_file.json``, re-read when the server rejects a key.
        token: Inference key given directly (``CAMSERVE_TOKEN``); wins over ``token_file``.
        management_token: Management key given directly (``CAMSERVE_MANAGEMENT_TOKEN``).
        models: Model names to offer; empty means every model the management API lists.
        host: Interface the Gradio server binds to.
        port: Gradio server port.
        share: Open Gradio's public share link (requires ``auth``).
        auth: ``(user, password)`` protecting the page, or ``None``.
        examples: Where each model's example images come from, by model name.
        max_file_size: Largest upload Gradio accepts, e.g. ``"20mb"``.
        timeout: Seconds to wait for the model server per request.
        status_every: Seconds between the status line's checks of the model server.
    """

    url: str = DEFAULT_URL
    management_url: str | None = DEFAULT_MANAGEMENT_URL
    token_file: Path = DEFAULT_TOKEN_FILE
    token: str | None = None
    management_token: str | None = None
    models: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    auth: tuple[str, str] | None = field(default=None, repr=False)
    examples: dict[str, ExampleSource] = field(default_factory=dict)
    max_file_size: str = DEFAULT_MAX_FILE_SIZE
    timeout: float = 60.0
    status_every: float = 10.0

    def __post_init__(self) -> None:
        if self.share and self.auth is None:
            raise ValueError(share_refusal())


def share_refusal() -> str:
    """The message given when ``--share`` comes without credentials."""
    return (f"refusing to --share without a password: a share link is public. "
            f"Give --auth USER:PASS or set {AUTH_ENV}=USER:PASS.")


def parse_auth(text: str) -> tuple[str, str]:
    """``USER:PASS`` into ``(user, password)``; the password may itself contain colons.

    Raises:
        ValueError: No colon, or an empty user or password.
    """
    user, sep, password = text.partition(":")
    if not sep or not user.strip() or not password:
        raise ValueError("credentials must be USER:PASS with a non-empty user and password")
    return user.strip(), password


def auth_from_env(environ: dict[str, str] | None = None) -> tuple[str, str] | None:
    """Credentials from ``CAMSERVE_GRADIO_AUTH``, or ``None`` when it is unset or empty."""
    text = (os.environ if environ is None else environ).get(AUTH_ENV, "")
    return parse_auth(text) if text else None


def check_file_size(text: str) -> str:
    """Validate a Gradio file size such as ``20mb`` or ``500kb``."""
    if not _FILE_SIZE.match(text):
        raise ValueError(f"file size must look like 20mb, 500kb or 1gb, got {text!r}")
    return text.strip().lower()
