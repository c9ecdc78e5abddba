"""One request can never hurt another: a corpus of named bad inputs, poison rows in a batch, and
property-based fuzzing of the parser, the decoder and the batch pipeline."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from camserve.errors import MAX_MESSAGE, CamserveError, PayloadTooLarge, RequestError, ServerError
from camserve.explainer import Explainer
from camserve.imaging import decode_image
from camserve.parsing import OPTION_FIELDS, parse_options, split_request
from camserve.schema import ExplainResponse
from handlers.camserve_handler import CamserveHandler
from scripts import archive
from tests.corpus import BAD, EXIF_STRUCT_ERROR, GOOD, ODD, Case, deep_json, encoded, smooth
from tests.harness import CLASSES, MockContext, unpack_mar

MAX_ERROR_BODY = 600  # bytes: {code, type, message} with a message of at most MAX_MESSAGE characters


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    tmp = tmp_path_factory.mktemp("mar")
    assert archive.main([str(tiny_checkpoint), "--name", "tiny", "--model-store", str(tmp)]) == 0
    return unpack_mar(tmp / "tiny.mar", tmp / "dir")


@pytest.fixture(scope="module")
def handler(model_dir: Path) -> CamserveHandler:
    h = CamserveHandler()
    h.initialize(MockContext(model_dir))
    return h


@pytest.fixture(scope="module")
def explainer(tiny_checkpoint: Path) -> Explainer:
    return Explainer.from_checkpoint(tiny_checkpoint, "tiny")


def handle(handler: CamserveHandler, model_dir: Path, rows: list[dict[str, Any]],
           headers: list[dict[str, str]] | None = None) -> tuple[list[dict[str, Any]], MockContext]:
    ctx = MockContext(model_dir, headers)
    out = handler.handle(rows, ctx)
    assert len(out) == len(rows)
    return [json.loads(o) for o in out], ctx


def good_row() -> dict[str, Any]:
    return {"data": bytearray(GOOD)}


def check_error(body: dict[str, Any], case: Case) -> None:
    assert set(body) == {"code", "type", "message"}, body
    assert body["code"] == case.status, (case.name, body)
    assert case.message in body["message"], (case.name, body["message"])
    assert len(body["message"]) <= MAX_MESSAGE and len(json.dumps(body)) <= MAX_ERROR_BODY, case.name


def same_answer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two answers to the same request: same prediction and map, probabilities within float noise."""
    return (a["prediction"]["index"] == b["prediction"]["index"]
            and a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)
            and np.allclose(a["explanation"]["cam"], b["explanation"]["cam"], atol=1e-4))


# --- the corpus through the handler ---------------------------------------------------------------------

def test_the_corpus_has_at_least_60_named_bad_inputs() -> None:
    assert len(BAD) >= 60 and len({c.name for c in BAD + ODD}) == len(BAD + ODD)


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.name)
def test_a_bad_row_fails_alone_between_two_good_ones(handler: CamserveHandler, model_dir: Path, case: Case) -> None:
    headers = [{}, {"explain": "True"} if case.route == "explanations" else dict(case.headers), {}]
    out, ctx = handle(handler, model_dir, [good_row(), case.row(), good_row()], headers)
    check_error(out[1], case)
    assert set(ctx.status) == {1} and ctx.status[1][0] == case.status
    assert same_answer(out[0], out[2]), "the good rows are answered as if alone"


@pytest.mark.parametrize("case", ODD, ids=lambda c: c.name)
def test_odd_but_valid_rows_are_answered(handler: CamserveHandler, model_dir: Path, case: Case) -> None:
    out, ctx = handle(handler, model_dir, [case.row(), good_row()], [dict(case.headers), {}])
    assert ctx.status == {} and out[0]["prediction"]["label"] in CLASSES and "prediction" in out[1]


def test_a_batch_of_8_with_4_poison_rows_answers_4_errors_and_4_correct_predictions(
        handler: CamserveHandler, model_dir: Path) -> None:
    poison = [
        {"data": bytearray(GOOD), "target": bytearray("\u00b2".encode())},
        {"data": bytearray(GOOD), "target": bytearray(b"7" * 5000)},
        {"data": bytearray(GOOD), "clinical": bytearray(deep_json(100000).encode())},
        {"data": bytearray(encoded(smooth(), "JPEG", exif=EXIF_STRUCT_ERROR))},
    ]
    goods = [{"data": bytearray(encoded(smooth((40 + 9 * i, 64))))} for i in range(4)]
    rows = [goods[0], poison[0], goods[1], poison[1], poison[2], goods[2], poison[3], goods[3]]
    headers = [{"describe": "True"} if i == 0 else {} for i in range(8)]  # a client-sent control header
    out, ctx = handle(handler, model_dir, rows, headers)
    assert sorted(ctx.status) == [1, 3, 4, 6] and {s for s, _ in ctx.status.values()} <= {400, 413, 415}
    alone = [handle(handler, model_dir, [g])[0][0] for g in goods]
    for got, single in zip([out[0], out[2], out[5], out[7]], alone, strict=True):
        assert same_answer(got, single) and got["timing_ms"]["batch_size"] == 4


def test_a_row_that_breaks_the_forward_fails_alone(handler: CamserveHandler, model_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose forward raises is re-run row by row: only the culprit answers 500."""
    model = handler.explainer.model
    original = model.forward

    def fragile(x: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        if (x.flatten(2).std(2).amax(1) < 1e-3).any():  # a uniform image "breaks" this model
            raise RuntimeError("device-side assert triggered")
        return original(x, *extra)

    monkeypatch.setattr(model, "forward", fragile)
    flat = {"data": bytearray(encoded(Image.new("RGB", (32, 32), (90, 90, 90))))}
    out, ctx = handle(handler, model_dir, [good_row(), flat, good_row()])
    assert ctx.status == {1: (500, "ServerError")} and "device" not in out[1]["message"]
    assert same_answer(out[0], out[2])


# --- property-based fuzzing -----------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=40), st.binary(max_size=40))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8),
                                                                                          inner, max_size=3),
                      max_leaves=8)
names = st.sampled_from([*OPTION_FIELDS, "data", "mask", "clinical", "body", "x"]) | st.text(max_size=12)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_request_errors(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except RequestError as exc:
        assert len(exc.message) <= MAX_MESSAGE


@FUZZ
@given(st.dictionaries(names, values, max_size=6))
def test_any_multipart_row_raises_only_request_errors(row: dict[str, Any]) -> None:
    def parse() -> None:
        raw = split_request(row, ("age", "sex"))
        parse_options(raw.fields, CLASSES)
    only_request_errors(parse)


@FUZZ
@given(st.dictionaries(names, values, max_size=6))
def test_any_json_body_raises_only_request_errors(body: dict[str, Any]) -> None:
    only_request_errors(lambda: parse_options(split_request({"body": body}).fields, CLASSES))


@FUZZ
@given(st.binary(max_size=2000))
def test_any_bytes_decode_or_raise_only_request_errors(data: bytes) -> None:
    only_request_errors(decode_image, data)


def valid_images() -> list[bytes]:
    img = smooth((48, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    return [encoded(img, "PNG"), encoded(img, "JPEG", exif=exif.tobytes()), encoded(img, "GIF"),
            encoded(img, "TIFF"), encoded(img, "WEBP"), encoded(img, "BMP")]


@FUZZ
@given(st.sampled_from(valid_images()), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                 min_size=1, max_size=6), st.integers(0, 4000))
def test_mutated_images_decode_or_raise_only_request_errors(image: bytes, flips: list[tuple[int, int]],
                                                           cut: int) -> None:
    data = bytearray(image)
    for pos, byte in flips:
        data[pos % len(data)] = byte
    only_request_errors(decode_image, bytes(data[: len(data) - cut % len(data)]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.just("good"), st.dictionaries(names, values, max_size=4)), min_size=1, max_size=6))
def test_good_rows_in_a_fuzzed_batch_equal_their_single_answers(explainer: Explainer, kinds: list[Any]) -> None:
    rows = [{"data": bytearray(GOOD), "label": b"Normal"} if k == "good" else k for k in kinds]
    results = explainer.handle(rows)
    single = explainer.handle([{"data": bytearray(GOOD), "label": b"Normal"}])[0]
    assert isinstance(single, ExplainResponse)
    for kind, result in zip(kinds, results, strict=True):
        assert isinstance(result, (ExplainResponse, CamserveError))
        if isinstance(result, CamserveError):
            assert not isinstance(result, ServerError), result.message
            assert len(result.message) <= MAX_MESSAGE
        if kind == "good":
            assert isinstance(result, ExplainResponse)
            assert result.probabilities == pytest.approx(single.probabilities, abs=1e-6)
            assert result.explanation is not None and single.explanation is not None
            assert np.allclose(result.explanation.cam, single.explanation.cam, atol=1e-4)


# --- the corpus against a real TorchServe, in one burst -------------------------------------------------

def send(server: Any, case: Case, timeout: float = 60.0) -> requests.Response:
    headers = {"Authorization": f"Bearer {server.token()}", **case.headers}
    url = f"{server.url}/{case.route}/tiny"
    if case.fields is not None:
        texts = {k: v.decode() for k, v in case.fields.items() if k not in ("data", "mask") and _utf8(v)}
        files = {k: (k, v, "application/octet-stream") for k, v in case.fields.items() if k not in texts}
        return requests.post(url, headers=headers, data=texts, files=files or None, timeout=timeout)
    if case.raw is not None:
        return requests.post(url, headers=headers, data=case.raw, timeout=timeout)
    text = case.json_body if isinstance(case.json_body, str) else json.dumps(case.json_body)
    return requests.post(url, headers={**headers, "Content-Type": case.content_type}, data=text.encode(),
                         timeout=timeout)


def _utf8(value: bytes) -> bool:
    try:
        value.decode()
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.integration
def test_the_whole_corpus_in_one_burst_against_torchserve(server: Any, explainer: Explainer) -> None:
    before = sorted(int(w["pid"]) for w in server.workers("tiny"))
    good = Case("good", 200, fields={"data": GOOD, "label": b"Normal"})
    burst = [*BAD, *ODD, *([good] * 16)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda c: send(server, c), burst))
    expected = explainer.handle([{"data": bytearray(GOOD), "label": b"Normal"}])[0]
    assert isinstance(expected, ExplainResponse)
    wrong = []
    for case, resp in zip(burst, answers, strict=True):
        if resp.status_code != case.status:
            wrong.append(f"{case.name}: {resp.status_code} {resp.text[:120]}")
        elif case.status != 200:
            check_error(resp.json(), case)
        elif case is good:
            assert resp.json()["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    assert not wrong, "\n".join(wrong)
    assert sorted(int(w["pid"]) for w in server.workers("tiny")) == before, "no bad input may cost the worker its life"


@pytest.mark.integration
def test_an_oversized_body_gets_torchservers_413_and_the_client_names_it(server: Any) -> None:
    with pytest.raises(PayloadTooLarge, match="max_request_size"):
        server.client().explain("tiny", b"\x89PNG" + b"\0" * (40 * 1024 * 1024))
