"""Turning one request into image bytes and validated options.

A request arrives (from TorchServe, or any other server reusing the core) as a dict:

- raw image bytes: ``{"body": bytes}`` (no options possible: query strings never reach a handler);
- JSON: ``{"body": {"data": "<base64>", "mask": "<base64>", ...options}}``;
- multipart form data: one key per field, every value bytes: ``{"data": ..., "alpha": b"0.3", ...}``.

Multimodal models also take clinical fields: named by their schema as multipart fields (or one
multipart field ``clinical`` holding a JSON object), or as a JSON object ``clinical`` in a JSON body.

Every problem raises a ``RequestError`` whose message names the field and what is allowed.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from camserve.errors import InvalidRequest
from camserve.schema import COLORMAPS, EXPLAIN_METHODS, MAX_MAX_SIDE, ExplainOptions

OPTION_FIELDS = ("target", "label", "topk", "explain", "colormap", "alpha", "max_side")
FILE_FIELDS = ("data", "mask")
MIN_MAX_SIDE = 16


@dataclass(frozen=True)
class RawRequest:
    """The undecoded parts of one request."""

    image: bytes
    mask: bytes | None
    fields: dict[str, Any]
    clinical: dict[str, Any] = field(default_factory=dict)


def split_request(row: Mapping[str, Any], clinical_names: Sequence[str] = ()) -> RawRequest:
    """Separate image, mask, option and clinical fields of one TorchServe request row.

    Args:
        row: One entry of TorchServe's batch.
        clinical_names: The model's tabular feature names (accepted as multipart fields).
    """
    if "body" in row and len(row) == 1:
        body = row["body"]
        if isinstance(body, Mapping):
            return _from_json(body, clinical_names)
        if isinstance(body, (bytes, bytearray)):
            return RawRequest(image=bytes(body), mask=None, fields={})
        raise InvalidRequest("the request body must be image bytes, multipart form data or a JSON object")
    texts = {k: _text(k, v) for k, v in row.items() if k not in FILE_FIELDS}
    clinical = {k: texts.pop(k) for k in list(texts) if k in clinical_names}
    if "clinical" in texts:
        clinical.update(_clinical_object(_json_text("clinical", texts.pop("clinical"))))
    _check_names(texts, clinical_names)
    if "data" not in row:
        raise InvalidRequest("missing field 'data': send the image in a form field named 'data'")
    mask = row.get("mask")
    return RawRequest(image=bytes(row["data"]), mask=bytes(mask) if mask else None, fields=texts, clinical=clinical)


def _from_json(body: Mapping[str, Any], clinical_names: Sequence[str]) -> RawRequest:
    fields = {k: v for k, v in body.items() if k not in FILE_FIELDS}
    clinical = _clinical_object(fields.pop("clinical", None) or {})
    _check_names(fields, clinical_names)
    if "data" not in body:
        raise InvalidRequest("missing field 'data': put the base64-encoded image in the JSON field 'data'")
    mask = body.get("mask")
    return RawRequest(image=_b64("data", body["data"]),
                      mask=_b64("mask", mask) if mask not in (None, "") else None, fields=fields, clinical=clinical)


def _check_names(fields: Mapping[str, Any], clinical_names: Sequence[str] = ()) -> None:
    unknown = sorted(set(fields) - set(OPTION_FIELDS))
    if unknown:
        allowed = FILE_FIELDS + OPTION_FIELDS + (("clinical", *clinical_names) if clinical_names else ())
        raise InvalidRequest(f"unknown field '{unknown[0][:60]}'; allowed fields: {', '.join(allowed)}")


def _json_text(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"field '{name}' must be a JSON object") from exc


def _clinical_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidRequest("field 'clinical' must be a JSON object of clinical field names to values")
    return {str(k): v for k, v in value.items()}


def _text(name: str, value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"field '{name}' is not UTF-8 text") from exc
    return str(value)


def _b64(name: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise InvalidRequest(f"field '{name}' must be a base64 string, got {type(value).__name__}")
    _, sep, payload = value.partition("base64,")
    try:
        return base64.b64decode(payload if sep else value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"field '{name}' is not valid base64 ({exc})") from exc


def parse_options(fields: Mapping[str, Any], class_names: Sequence[str]) -> ExplainOptions:
    """Validate option fields against a model's classes.

    Args:
        fields: Option name to value (text from forms, or JSON scalars).
        class_names: The model's classes, for ``target`` and ``label``.
    """
    def get(name: str) -> Any:
        value = fields.get(name)
        return None if value is None or value == "" else value

    explain = _choice("explain", get("explain") or "gradcam", EXPLAIN_METHODS)
    return ExplainOptions(
        targets=() if get("target") in (None, "auto") else (class_index("target", get("target"), class_names),),
        label=None if get("label") is None else class_index("label", get("label"), class_names),
        topk=None if get("topk") is None else min(_int("topk", get("topk"), 1, None), len(class_names)),
        explain=explain,
        colormap=_choice("colormap", get("colormap") or "jet", COLORMAPS),
        alpha=0.5 if get("alpha") is None else _unit_float("alpha", get("alpha")),
        max_side=512 if get("max_side") is None else _int("max_side", get("max_side"), MIN_MAX_SIDE, MAX_MAX_SIDE),
    )


def class_index(name: str, value: Any, class_names: Sequence[str]) -> int:
    """A class given by name (exact, else case-insensitive) or by index."""
    allowed = f"one of {', '.join(class_names)} or an index 0-{len(class_names) - 1}"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidRequest(f"field '{name}' must be a class name or index: {allowed}")
    text = str(value).strip()
    if text in class_names:
        return list(class_names).index(text)
    folded = [i for i, c in enumerate(class_names) if c.lower() == text.lower()]
    if len(folded) == 1:
        return folded[0]
    if text.lstrip("-").isdigit():
        idx = int(text)
        if 0 <= idx < len(class_names):
            return idx
    raise InvalidRequest(f"field '{name}': unknown class {text!r}; allowed: {allowed}")


def _choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    text = str(value).strip().lower()
    if text not in allowed:
        raise InvalidRequest(f"field '{name}': {value!r} is not allowed; use one of {', '.join(allowed)}")
    return text


def _int(name: str, value: Any, low: int, high: int | None) -> int:
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise InvalidRequest(f"field '{name}' must be an integer, got {value!r}")
    try:
        number = int(str(value).strip()) if not isinstance(value, float) else int(value)
    except ValueError as exc:
        raise InvalidRequest(f"field '{name}' must be an integer, got {value!r}") from exc
    if number < low or (high is not None and number > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidRequest(f"field '{name}' must be {bound}, got {number}")
    return number


def _unit_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidRequest(f"field '{name}' must be a number in [0, 1], got {value!r}")
    try:
        number = float(str(value).strip())
    except ValueError as exc:
        raise InvalidRequest(f"field '{name}' must be a number in [0, 1], got {value!r}") from exc
    if math.isnan(number) or not 0.0 <= number <= 1.0:
        raise InvalidRequest(f"field '{name}' must be in [0, 1], got {value!r}")
    return number
