"""Errors as a small hierarchy that carries its HTTP status.

    CamserveError
    ├── RequestError            4xx: the caller sent something wrong
    │   ├── InvalidRequest      400  a field is missing, ill-typed or out of range
    │   ├── Unauthorized        401  the server refused the token
    │   ├── ModelNotFound       404  the server has no such model
    │   ├── PayloadTooLarge     413  a body, image or response exceeds a bound
    │   └── UnsupportedImage    415  the bytes are not a decodable image
    ├── ServerError             5xx: the server failed or is not there
    │   └── ServerUnavailable   503  down, overloaded, timed out
    └── CheckpointError         a checkpoint cannot be served (raised at archive time)

The TorchServe handler maps each ``RequestError`` to a per-request status once; clients map the
server's ``{code, type, message}`` back to the same classes with :func:`from_payload`.
"""

from __future__ import annotations

from typing import Any


class CamserveError(Exception):
    """Base class; ``status`` is the HTTP status the error is answered with."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_payload(self) -> dict[str, Any]:
        """The JSON error body every camserve component answers with."""
        return {"code": self.status, "type": type(self).__name__, "message": self.message}


class RequestError(CamserveError):
    """The request is at fault; other requests in the same batch are unaffected."""

    status = 400


class InvalidRequest(RequestError):
    status = 400


class Unauthorized(RequestError):
    status = 401


class ModelNotFound(RequestError):
    status = 404


class PayloadTooLarge(RequestError):
    status = 413


class UnsupportedImage(RequestError):
    status = 415


class ServerError(CamserveError):
    status = 500


class ServerUnavailable(ServerError):
    status = 503


class CheckpointError(CamserveError):
    """A checkpoint that cannot be served; the message says what to do about it."""

    status = 500


_BY_NAME: dict[str, type[CamserveError]] = {
    cls.__name__: cls
    for cls in (InvalidRequest, Unauthorized, ModelNotFound, PayloadTooLarge, UnsupportedImage,
                ServerError, ServerUnavailable)
}
_BY_STATUS: dict[int, type[CamserveError]] = {
    400: InvalidRequest, 401: Unauthorized, 403: Unauthorized, 404: ModelNotFound,
    413: PayloadTooLarge, 415: UnsupportedImage, 503: ServerUnavailable, 504: ServerUnavailable,
}


def from_payload(status: int, payload: Any) -> CamserveError:
    """Rebuild the exception a server answered, from its status and JSON body.

    Args:
        status: HTTP status of the response.
        payload: The decoded JSON body (camserve's or TorchServe's own error shape), or anything else.

    Returns:
        The matching ``CamserveError`` subclass instance.
    """
    body = payload if isinstance(payload, dict) else {}
    message = str(body.get("message") or payload or f"HTTP {status}")[:500]
    kind = str(body.get("type", ""))
    if kind == "InvalidKeyException":  # TorchServe answers a bad token with 400, not 401
        return Unauthorized(f"the server refused the token: {message}")
    if kind in _BY_NAME:
        return _BY_NAME[kind](message)
    cls = _BY_STATUS.get(status) or (RequestError if 400 <= status < 500 else ServerError)
    return cls(message)
