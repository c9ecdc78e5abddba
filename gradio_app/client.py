"""The app's connection to TorchServe, and the one place a failure becomes a short message for a visitor.

Plain Python, no Gradio: the app, the tests and a notebook use the same functions. Failures are the
``camserve.errors`` tree; :func:`message_for` picks the visitor's wording by type, never by text.
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
from camserve.errors import (
    CamserveError,
    DataError,
    ModelNotFound,
    PayloadTooLarge,
    RequestError,
    ServerError,
    ServerTimeout,
    ServerUnavailable,
    ServerUnreachable,
    Unauthorized,
    UnsupportedImage,
    WorkerDied,
)
from camserve.imaging import blank_png
from camserve.schema import ModelInfo
from gradio_app.settings import TOKEN_ENV, Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_HOST_PORT = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b|\blocalhost:\d+\b", re.IGNORECASE)
MAX_MESSAGE = 240
DOWN = "The model server is not reachable at the moment; this page works again as soon as it is back."


@dataclass(frozen=True)
class ServerStatus:
    """What the status line says: reachable or not, and the models offered."""

    ok: bool
    message: str
    models: list[str]


class Connection:
    """A camserve ``Client`` built from :class:`Settings`, rebuilt when the server rejects its key.

    TorchServe rotates its keys (``token_expiration_min``) and writes new ones to ``key_file.json``, so a
    rejected key triggers one re-read of the key file and one retry. Every call also updates
    :attr:`health`, so the status line follows the last call. Safe to share between threads.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._info: dict[str, ModelInfo] = {}
        self._keys: set[str] = set()  # every key used so far, scrubbed from messages
        self._models: list[str] = []
        self.health = ServerStatus(False, "Not checked yet.", [])

    def client(self) -> Client:
        """The current client, building it (and reading the keys) when needed."""
        with self._lock:
            if self._client is None:
                inference, management = self._tokens()
                self._keys.update(k for k in (inference, management) if k)
                s = self.settings
                self._client = Client(s.url, inference, s.management_url, management, s.timeout)
            return self._client

    def call(self, fn: Callable[[Client], T]) -> T:
        """Run ``fn`` with the client; on a rejected key, re-read the key file and retry once.

        Raises:
            CamserveError: Whatever the server or the transport answered.
        """
        try:
            result = self._call(fn)
        except CamserveError as exc:
            if isinstance(exc, (ServerUnavailable, Unauthorized)):
                self._set_health(False, self.message(exc))
            raise
        if not self.health.ok:  # back up: it may have restarted with other models
            self._info.clear()
            self._set_health(True)
        return result

    def _call(self, fn: Callable[[Client], T]) -> T:
        client = self.client()
        try:
            return fn(client)
        except Unauthorized:
            log.info("the model server rejected the key; re-reading %s", self.settings.token_file)
            with self._lock:
                if self._client is client:
                    self._client = None
            return fn(self.client())

    def models(self) -> list[str]:
        """The models to offer: ``settings.models``, else every model the management API lists."""
        if self.settings.models:
            return list(self.settings.models)
        return self.call(lambda c: c.models())

    def describe(self, model: str) -> ModelInfo:
        """A model's description: classes, tabular schema... (cached until the server comes back from down)."""
        if model not in self._info:
            self._info[model] = self.call(lambda c: _describe(c, model))
        return self._info[model]

    def classes(self, model: str) -> list[str]:
        """A model's class names, in head order."""
        return list(self.describe(model).classes)

    def status(self) -> ServerStatus:
        """Ping the server and list its models; never raises."""
        try:
            self.call(lambda c: c.ping())
            self._models = self.models()
        except CamserveError as exc:
            self._set_health(False, self.message(exc))
            return self.health
        if not self._models:
            self._set_health(False, "The model server is up but serves no model.")
        else:
            self._set_health(True)
        return self.health

    def _set_health(self, ok: bool, message: str = "") -> None:
        if ok:
            message = f"Serving {', '.join(self._models)}." if self._models else ""
        self.health = ServerStatus(ok, message, list(self._models) if ok else [])

    def message(self, exc: BaseException) -> str:
        """A short message for a visitor, with URLs and keys scrubbed."""
        return scrub(message_for(exc, self.settings.timeout, self._has_token()), sorted(self._keys))

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
        return client.explain(model, blank_png(), explain="none", images="none").model


def _read_key(path: Path, kind: str) -> str | None:
    try:
        return read_token(path, kind)
    except CamserveError:
        return None  # no key file yet: try without a key, the server says if it needs one


def message_for(exc: BaseException, timeout: float = 60.0, has_token: bool = True) -> str:
    """The visitor's message for one failure (before scrubbing), chosen by the failure's type.

    Args:
        exc: The failure.
        timeout: The client's timeout in seconds, quoted for a :class:`ServerTimeout`.
        has_token: Whether the app found an access key (a refused request then means a stale key).
    """
    if isinstance(exc, ServerTimeout):
        return f"The model server did not answer within {timeout:g} s. Try again in a moment."
    if isinstance(exc, ServerUnreachable):
        return DOWN
    if isinstance(exc, WorkerDied):
        return "The model stopped while working on this request and is restarting. Try again in a few seconds."
    if isinstance(exc, ServerUnavailable):
        return "The model server is busy. Try again in a moment."
    if isinstance(exc, Unauthorized):
        if not has_token:
            log.warning("no access key: start TorchServe in this directory (key_file.json) or set %s", TOKEN_ENV)
        return "The model server refused this app's access key. Whoever runs this demo needs to restart the app."
    if isinstance(exc, ModelNotFound):
        return "The model server does not serve this model any more. Reload the page."
    if isinstance(exc, UnsupportedImage):
        return "This file is not an image the model can read: use a PNG, JPEG, BMP, TIFF, GIF or WebP file."
    if isinstance(exc, PayloadTooLarge):
        return f"Too large: {exc.message}."
    if isinstance(exc, RequestError):
        return f"The model could not take this request: {exc.message}"
    if isinstance(exc, DataError):
        return exc.message
    if isinstance(exc, ServerError):
        return "The model server failed on this request. Try again; if it keeps failing, tell whoever runs this demo."
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
