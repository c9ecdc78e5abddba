"""Every failure a camserve user can meet, as one small hierarchy that carries its HTTP status.

    CamserveError
    ├── RequestError            4xx: the caller sent something wrong
    │   ├── InvalidRequest      400  a field is missing, ill-typed or out of range
    │   ├── Unauthorized        401  the server refused the token
    │   ├── ModelNotFound       404  the server has no such model
    │   ├── PayloadTooLarge     413  a body, image or response exceeds a bound
    │   └── UnsupportedImage    415  the bytes are not a decodable image
    ├── ServerError             500  the server failed
    │   ├── WorkerDied          507  the model worker crashed (TorchServe restarts it)  retriable
    │   └── ServerUnavailable   503  down or overloaded                                  retriable
    │       ├── ServerUnreachable    no connection at all (refused, unknown host)
    │       └── ServerTimeout        no answer within the client's timeout
    ├── CheckpointError         a checkpoint cannot be served (raised at archive time)
    └── DataError               local input cannot be used: a data folder, CSV, mask or key file
        └── ResumeMismatch      ``--resume`` on a run made with other data or settings

The TorchServe handler maps each ``CamserveError`` to a per-request status once; clients map the
server's ``{code, type, message}`` back to the same classes with :func:`from_payload`, and decide by
type (``isinstance``, or ``retriable``), never by message text. Messages name the field or file and
say what is allowed; they are bounded (:data:`MAX_MESSAGE`), and quote offending values only through
:func:`excerpt`.
"""

from __future__ import annotations

from typing import Any

MAX_MESSAGE = 300  # characters; also bounds every error body the server answers
EXCERPT = 40  # characters of an offending value quoted back


def excerpt(value: Any, limit: int = EXCERPT) -> str:
    """A short, quoted excerpt of a value for an error message (never the whole value), ASCII-escaped so
    control and direction-changing characters cannot disguise a message.

    >>> excerpt("x" * 100, 8)
    "'xxxxxxxx'... (100 characters)"
    """
    if isinstance(value, (bytes, bytearray)):
        size, unit, head = len(value), "bytes", bytes(value[:limit]).decode("utf-8", "replace")
    else:
        try:
            text = value if isinstance(value, str) else str(value)
        except ValueError:  # e.g. an int over Python's 4300-digit conversion limit
            text = f"<{type(value).__name__} too large to show>"
        size, unit, head = len(text), "characters", text[:limit]
    return ascii(head) if size <= limit else f"{ascii(head)}... ({size} {unit})"


class CamserveError(Exception):
    """Base class; ``status`` is the HTTP status the error is answered with.

    Subclasses set their status and retriability in the class statement:
    ``class WorkerDied(ServerError, status=507, retriable=True)``.

    Attributes:
        message: What went wrong and what to do, at most :data:`MAX_MESSAGE` characters.
        retriable: Whether sending the same request again later may succeed.
    """

    status = 500
    retriable = False

    def __init_subclass__(cls, status: int | None = None, retriable: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if retriable is not None:
            cls.retriable = retriable

    def __init__(self, message: str) -> None:
        message = str(message)
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 3] + "..."
        super().__init__(message)
        self.message = message

    def to_payload(self) -> dict[str, Any]:
        """The JSON error body every camserve component answers with."""
        return {"code": self.status, "type": type(self).__name__, "message": self.message}


class RequestError(CamserveError, status=400):
    """The request is at fault; other requests in the same batch are unaffected."""


class InvalidRequest(RequestError, status=400):
    """A field is missing, ill-typed or out of range; the message names it and what is allowed."""


class Unauthorized(RequestError, status=401):
    """The server refused the token (TorchServe answers a bad key with 400 ``InvalidKeyException``)."""


class ModelNotFound(RequestError, status=404):
    """The server serves no model of that name."""


class PayloadTooLarge(RequestError, status=413):
    """A body, an image (bytes or pixels), a JSON field or the answer would exceed its bound."""


class UnsupportedImage(RequestError, status=415):
    """The bytes are not an image camserve can decode (or their metadata is corrupt)."""


class ServerError(CamserveError, status=500):
    """The server failed on this request; the details are in its log, never in the answer."""


class WorkerDied(ServerError, status=507, retriable=True):
    """TorchServe lost the model worker while it held the request; it restarts the worker."""


class ServerUnavailable(ServerError, status=503, retriable=True):
    """The server is down, overloaded or restarting."""


class ServerUnreachable(ServerUnavailable):
    """No connection could be made (refused, reset before an answer, unknown host)."""


class ServerTimeout(ServerUnavailable):
    """The server took the request but did not answer within the client's timeout."""


class CheckpointError(CamserveError, status=500):
    """A checkpoint that cannot be served; the message says what to do about it."""


class DataError(CamserveError, status=400):
    """Local input that cannot be used: a data folder, a clinical CSV, a mask, a key file."""


class ResumeMismatch(DataError):
    """A run cannot resume: its log was written with other data, model or settings."""


ALL_ERRORS: tuple[type[CamserveError], ...] = (
    CamserveError, RequestError, InvalidRequest, Unauthorized, ModelNotFound, PayloadTooLarge, UnsupportedImage,
    ServerError, WorkerDied, ServerUnavailable, ServerUnreachable, ServerTimeout, CheckpointError, DataError,
    ResumeMismatch)
_BY_NAME: dict[str, type[CamserveError]] = {cls.__name__: cls for cls in ALL_ERRORS}
_BY_STATUS: dict[int, type[CamserveError]] = {
    400: InvalidRequest, 401: Unauthorized, 403: Unauthorized, 404: ModelNotFound,
    413: PayloadTooLarge, 415: UnsupportedImage, 503: ServerUnavailable, 504: ServerTimeout, 507: WorkerDied,
}
# TorchServe's own error types that say more than their status.
_TORCHSERVE_TYPES: dict[str, type[CamserveError]] = {
    "InvalidKeyException": Unauthorized,  # a bad token answers 400, not 401
    "ModelNotFoundException": ModelNotFound,
}


def from_payload(status: int, payload: Any) -> CamserveError:
    """Rebuild the exception a server answered, from its status and body.

    Args:
        status: HTTP status of the response.
        payload: The decoded JSON body (camserve's or TorchServe's own error shape), or its text.

    Returns:
        The matching ``CamserveError`` subclass instance; ``to_payload`` of it gives the body back.
    """
    body = payload if isinstance(payload, dict) else {}
    message = str(body.get("message") or payload or "").strip() or _empty_body_message(status)
    kind = str(body.get("type", ""))
    if kind in _TORCHSERVE_TYPES:
        cls = _TORCHSERVE_TYPES[kind]
        return cls(f"the server refused the token: {message}" if cls is Unauthorized else message)
    if kind in _BY_NAME:
        return _BY_NAME[kind](message)
    cls = _BY_STATUS.get(status) or (RequestError if 400 <= status < 500 else ServerError)
    return cls(message)


def _empty_body_message(status: int) -> str:
    if status == 413:  # TorchServe's frontend refuses a body over max_request_size with no body at all
        return "the request is larger than the server's max_request_size"
    return f"HTTP {status} with an empty body"
