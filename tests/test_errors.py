"""The error tree: every class survives the trip to JSON and back, messages are bounded, and foreign
bodies (TorchServe's own, empty ones) map to the right class."""

from __future__ import annotations

import json

import pytest

from camserve import errors
from camserve.errors import (
    ALL_ERRORS,
    MAX_MESSAGE,
    CamserveError,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    RequestError,
    ServerError,
    ServerTimeout,
    ServerUnavailable,
    ServerUnreachable,
    Unauthorized,
    WorkerDied,
    excerpt,
    from_payload,
)


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_every_error_round_trips_through_its_json_body(cls: type[CamserveError]) -> None:
    sent = cls("field 'x': something went wrong")
    body = json.loads(json.dumps(sent.to_payload()))
    assert body == {"code": cls.status, "type": cls.__name__, "message": sent.message}
    back = from_payload(body["code"], body)
    assert type(back) is cls and back.message == sent.message and back.to_payload() == body


def test_status_and_retriability_are_part_of_the_class() -> None:
    assert [c.status for c in (InvalidRequest, Unauthorized, ModelNotFound, PayloadTooLarge)] == [400, 401, 404, 413]
    assert WorkerDied.status == 507 and ServerUnavailable.status == ServerTimeout.status == 503
    assert {c.__name__ for c in ALL_ERRORS if c.retriable} == {"WorkerDied", "ServerUnavailable",
                                                              "ServerUnreachable", "ServerTimeout"}
    assert issubclass(ServerUnreachable, ServerUnavailable) and issubclass(ServerTimeout, ServerUnavailable)
    assert not issubclass(WorkerDied, RequestError) and issubclass(WorkerDied, ServerError)


@pytest.mark.parametrize("status,body,cls,message", [
    (400, {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed"}, Unauthorized,
     "the server refused the token: Token Authorization failed"),
    (404, {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: x"}, ModelNotFound,
     "Model not found: x"),
    (413, "", PayloadTooLarge, "the request is larger than the server's max_request_size"),
    (507, {"code": 507, "type": "InternalServerException", "message": "Worker died."}, WorkerDied, "Worker died."),
    (503, {"code": 503, "type": "ServiceUnavailableException", "message": "busy"}, ServerUnavailable, "busy"),
    (502, "<html>bad gateway</html>", ServerError, "<html>bad gateway</html>"),
    (418, None, RequestError, "HTTP 418 with an empty body"),
])
def test_foreign_bodies_map_to_the_right_class(status: int, body: object, cls: type, message: str) -> None:
    got = from_payload(status, body)
    assert type(got) is cls and got.message == message


def test_messages_are_bounded_and_values_only_quoted_as_excerpts() -> None:
    assert len(InvalidRequest("x" * 10_000).message) == MAX_MESSAGE
    assert excerpt("short") == "'short'"
    assert excerpt("y" * 1000) == f"{'y' * errors.EXCERPT!r}... (1000 characters)"
    assert excerpt(b"\xff\xfe" + b"a" * 100, 4) == "'\\ufffd\\ufffdaa'... (102 bytes)"
    assert excerpt(10 ** 5000).startswith("'<int too large to show>'")
    assert excerpt("line\nbreak") == "'line\\nbreak'", "control characters are escaped"
