"""The app's connection to TorchServe, and the one place server errors become short user messages.

Plain Python, no Gradio: the app, the tests and a notebook use the same functions.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from camserve.client import Client, read_token
from camserve.errors import CamserveError, ModelNotFound, RequestError, ServerError, ServerUnavailable, Unauthorized
from camserve.imaging import blank_png
from camserve.schema import ModelInfo
from gradio_app.settings import TOKEN_ENV, Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_HOST_PORT = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b|\blocalhost:\d+\b", re.IGNORECASE)
MAX_MESSAGE = 240


class UserError(Exception):
    """A failure to show a page visitor as is: short, no stack trace, no URL, no token."""


@dataclass(frozen=True)
class ServerStatus:
    """What the status line says: reachable or not, and the models offered."""

    ok: bool
    message: str
    models: list[str]


class Connection:
    """A camserve ``Client`` built from :class:`Settings`, rebuilt when the server rejects its key.

    TorchServe rotates its keys (``token_expiration_min``) and writes new ones to ``key_file.json``, so a
    rejected key triggers one re-read of the key file and one retry. Safe to share between threads.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._info: dict[str, ModelInfo] = {}
        self._keys: set[str] = set()  # every key used so far, scrubbed from messages

    def client(self) -> Client:
        """The current client, building it (and reading the keys) when needed."""
        with self._lock:
            if self._client is None:
                inference, management = self._tokens()
                self._keys.update(k for k in (inference, management) if k)
                s = self.settings
                self._client = Client(s.server_url, inference, s.management_url, management, s.timeout)
            return self._client

    def call(self, fn: Callable[[Client], T]) -> T:
        """Run ``fn`` with the client; on a rejected key, re-read the key file and retry once.

        Raises:
            CamserveError: Whatever the server or the transport answered.
        """
        client = self.client()
        try:
            return fn(client)
        except Unauthorized:
            log.info("the model server rejected the key; re-reading %s", self.settings.token_file)
            with self._lock:
                if self._client is client:
                    self._client = None
            return fn(self.client())

    def run(self, fn: Callable[[Client], T]) -> T:
        """Like :meth:`call`, with every camserve error turned into a :class:`UserError`."""
        try:
            return self.call(fn)
        except CamserveError as exc:
            raise UserError(self.friendly(exc)) from exc

    def models(self) -> list[str]:
        """The models to offer: ``settings.models``, else every model the management API lists."""
        if self.settings.models:
            return list(self.settings.models)
        return self.run(lambda c: c.models())

    def describe(self, model: str) -> ModelInfo:
        """A model's description: classes, tabular schema... (cached until the next :meth:`status`)."""
        if model not in self._info:
            self._info[model] = self.run(lambda c: _describe(c, model))
        return self._info[model]

    def classes(self, model: str) -> list[str]:
        """A model's class names, in head order."""
        return list(self.describe(model).classes)

    def status(self) -> ServerStatus:
        """Ping the server and list its models; never raises."""
        self._info.clear()
        try:
            self.run(lambda c: c.ping())
            models = self.models()
        except UserError as exc:
            return ServerStatus(False, str(exc), [])
        if not models:
            return ServerStatus(False, "The model server is up but serves no model.", [])
        names = ", ".join(models)
        return ServerStatus(True, f"Connected to the model server: {len(models)} model(s) ({names}).", models)

    def friendly(self, exc: BaseException) -> str:
        """A short message for a visitor, with URLs and keys scrubbed."""
        return scrub(describe_error(exc, self._has_token()), sorted(self._keys))

    def _tokens(self) -> tuple[str | None, str | None]:
        s = self.settings
        inference = s.token or _read_key(s.token_file, "inference")
        management = s.management_token or _read_key(s.token_file, "management")
        return inference, management

    def _has_token(self) -> bool:
        return any(self._tokens())


def _describe(client: Client, model: str) -> ModelInfo:
    """``Client.describe``, falling back to a prediction-only request (which any image model answers)
    when the model's description is unavailable (e.g. the management API refuses or lacks it)."""
    try:
        return client.describe(model)
    except (ServerUnavailable, Unauthorized):
        raise
    except CamserveError as exc:
        log.info("describe(%s) failed (%.200s); asking with a prediction-only request", model, exc)
        return client.explain(model, blank_png(), explain="none").model


def _read_key(path: Path, kind: str) -> str | None:
    try:
        return read_token(path, kind)
    except CamserveError:
        return None  # no key file yet: try without a key, the server says if it needs one


def describe_error(exc: BaseException, has_token: bool = True) -> str:
    """The user message for one failure (before scrubbing)."""
    if isinstance(exc, ServerUnavailable):
        text = exc.message
        if "did not answer within" in text:
            return f"The model server is slow: it {text.removeprefix('the model server ')}. Try again."
        if "not reachable" in text:
            return "The model server is not reachable. Start TorchServe (make serve), then press Reconnect."
        return "The model server is busy or its worker failed. Try again in a moment."
    if isinstance(exc, Unauthorized):
        if not has_token:
            return (f"The model server needs an access key and none was found: start TorchServe from this "
                    f"directory (key_file.json) or set {TOKEN_ENV}.")
        return "The model server refused the access key (TorchServe rotates its keys): restart the app."
    if isinstance(exc, ModelNotFound):
        return "The model server does not serve this model (any more): press Reconnect."
    if isinstance(exc, RequestError):
        return f"The model server rejected the request: {exc.message}"
    if isinstance(exc, ServerError):
        return "The model server failed on this request. Try again; if it persists, check its log."
    if isinstance(exc, CamserveError):
        return "The model server gave an unexpected answer."
    return "Something went wrong in the app; the details are in its log."


def scrub(message: str, secrets: Sequence[str] = ()) -> str:
    """One line, at most ``MAX_MESSAGE`` characters, without URLs, host:port pairs or ``secrets``."""
    for secret in secrets:
        message = message.replace(secret, "***")
    message = _HOST_PORT.sub("the server", _URL.sub("the server", message))
    line = " ".join(message.split())
    return line if len(line) <= MAX_MESSAGE else line[:MAX_MESSAGE - 1] + "…"
