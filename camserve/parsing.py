"""Turning one request into image bytes and validated options.

A request arrives (from TorchServe, or any other server reusing the core) as a dict:

- raw image bytes: ``{"body": bytes}`` (no options possible: query strings never reach a handler);
- JSON: ``{"body": {"data": "<base64>", "mask": "<base64>", ...options}}`` (TorchServe decodes JSON
  bodies itself; one it cannot decode arrives as bytes and is parsed here, with bounds);
- multipart form data: one key per field, every value bytes: ``{"data": ..., "alpha": b"0.3", ...}``.

Multimodal models also take clinical fields: named by their schema as multipart or JSON fields, or as
one object ``clinical`` (a JSON object in a multipart field, or nested in a JSON body).

Nothing here trusts its input: numbers are read only from short ASCII text, JSON only below a size and
nesting bound, option values must be scalars, and every message quotes at most a short excerpt of the
offending value. Every problem raises a ``RequestError`` whose message names the field and what is
allowed.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from camserve.errors import InvalidRequest, PayloadTooLarge, excerpt
from camserve.schema import (
    COLORMAPS,
    DEFAULT_ALPHA,
    DEFAULT_IMAGE_FORMAT,
    DEFAULT_MAX_SIDE,
    EXPLAIN_METHODS,
    IMAGE_FORMATS,
    IMAGE_SETS,
    MAX_MAX_SIDE,
    MAX_TARGETS,
    ExplainOptions,
)

OPTION_FIELDS = ("target", "label", "topk", "explain", "colormap", "alpha", "max_side", "images",
                 "image_format", "faithfulness")
FILE_FIELDS = ("data", "mask")
MIN_MAX_SIDE = 16
MAX_JSON_BYTES = 64 * 1024  # a ``clinical`` object, or a JSON body TorchServe could not decode
MAX_JSON_DEPTH = 8
MAX_TEXT = 4096  # characters of one option or clinical field
_INT = re.compile(r"[+-]?[0-9]{1,9}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]{1,20}(?:\.[0-9]{0,20})?|\.[0-9]{1,20})(?:[eE][+-]?[0-9]{1,3})?")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
Scalar = str | int | float | bool | None


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
        clinical_names: The model's tabular feature names (accepted as fields by name).
    """
    if not isinstance(row, Mapping):
        raise InvalidRequest("the request must be image bytes, multipart form data or a JSON object")
    if "body" in row and len(row) == 1:
        body = row["body"]
        if isinstance(body, Mapping):
            return _from_mapping(body, clinical_names, json_body=True)
        if isinstance(body, (bytes, bytearray)):
            if body.lstrip()[:1] in (b"{", b"["):  # JSON that TorchServe could not decode: no image starts so
                return _from_mapping(_json_object("body", bytes(body), limit=None), clinical_names, json_body=True)
            return RawRequest(image=bytes(body), mask=None, fields={})
        raise InvalidRequest("the request body must be image bytes, multipart form data or a JSON object")
    return _from_mapping(row, clinical_names, json_body=False)


def _from_mapping(parts: Mapping[str, Any], clinical_names: Sequence[str], json_body: bool) -> RawRequest:
    """A multipart row (every value bytes or text) or a decoded JSON body (base64 images, JSON scalars)."""
    fields: dict[str, Any] = {}
    clinical: dict[str, Any] = {}
    for name, value in parts.items():
        name = str(name)
        if name in FILE_FIELDS:
            continue
        if name == "clinical":
            clinical.update(_clinical_object(value))
        elif name in clinical_names:
            clinical[name] = _scalar(name, value)
        elif name in OPTION_FIELDS:
            fields[name] = _scalar(name, value)
        else:
            allowed = FILE_FIELDS + OPTION_FIELDS + (("clinical", *clinical_names) if clinical_names else ())
            raise InvalidRequest(f"unknown field {excerpt(name)}; allowed fields: {', '.join(allowed)}")
    where = "JSON field 'data' (base64)" if json_body else "form field named 'data'"
    if "data" not in parts:
        raise InvalidRequest(f"missing field 'data': send the image in a {where}")
    image = _file("data", parts["data"], json_body)
    mask = parts.get("mask")
    return RawRequest(image=image, mask=None if mask in (None, "", b"") else _file("mask", mask, json_body),
                      fields=fields, clinical=clinical)


def _file(name: str, value: Any, json_body: bool) -> bytes:
    if json_body:
        return _b64(name, value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):  # a text part: the client sent the file as text
        return value.encode("utf-8", "surrogateescape")
    raise InvalidRequest(f"field '{name}' must be a file (image bytes)")


def _scalar(name: str, value: Any) -> Scalar:
    """One option or clinical value: text (from bytes, stripped) or a JSON scalar; never a container."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) > MAX_TEXT:
            raise InvalidRequest(f"field '{name}' is {len(value)} bytes long; the limit is {MAX_TEXT}")
        try:
            return bytes(value).decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"field '{name}' is not UTF-8 text") from exc
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise InvalidRequest(f"field '{name}' is {len(value)} characters long; the limit is {MAX_TEXT}")
        return value.strip()
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise InvalidRequest(f"field '{name}' must be a single value, got a {type(value).__name__}")


def _json_object(name: str, raw: bytes | str, limit: int | None = MAX_JSON_BYTES) -> dict[str, Any]:
    """Parse a JSON object with bounded size and nesting (checked before ``json.loads`` recurses)."""
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    if limit is not None and len(data) > limit:
        raise PayloadTooLarge(f"field '{name}' is {len(data)} bytes of JSON; the limit is {limit}")
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise InvalidRequest(f"field '{name}': JSON nested {depth}+ levels deep; the limit is {MAX_JSON_DEPTH}")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        what = "the request body" if name == "body" else f"field '{name}'"
        raise InvalidRequest(f"{what} is not valid JSON ({str(exc)[:80]})") from exc
    if not isinstance(value, dict):
        raise InvalidRequest(f"field '{name}' must be a JSON object, got a {type(value).__name__}")
    return value


def json_depth(data: bytes, stop: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of JSON text, counting brackets outside strings; stops counting past ``stop``."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop:
                    return deepest
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _clinical_object(value: Any) -> dict[str, Scalar]:
    if isinstance(value, (bytes, bytearray, str)):
        value = _json_object("clinical", bytes(value) if isinstance(value, bytearray) else value)
    if not isinstance(value, Mapping):
        raise InvalidRequest("field 'clinical' must be a JSON object of clinical field names to values")
    if len(value) > 256:
        raise InvalidRequest(f"field 'clinical' has {len(value)} entries; the limit is 256")
    return {str(k)[:MAX_TEXT]: _scalar(f"clinical.{str(k)[:40]}", v) for k, v in value.items()}


def _b64(name: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise InvalidRequest(f"field '{name}' must be a base64 string, got {type(value).__name__}")
    _, sep, payload = value.partition("base64,")
    try:
        return base64.b64decode(payload if sep else value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"field '{name}' is not valid base64 ({str(exc)[:80]})") from exc


def parse_options(fields: Mapping[str, Any], class_names: Sequence[str],
                  default_method: str = "gradcam") -> ExplainOptions:
    """Validate option fields against a model's classes.

    Args:
        fields: Option name to value (text from forms, or JSON scalars).
        class_names: The model's classes, for ``target`` and ``label``.
        default_method: The model's CAM method when the request names none.
    """
    def get(name: str) -> Any:
        value = fields.get(name)
        return None if value is None or value == "" else value

    label = get("label")
    return ExplainOptions(
        targets=parse_targets(get("target"), class_names),
        label=None if label is None else class_index("label", label, class_names),
        topk=None if get("topk") is None else min(_int("topk", get("topk"), 1, None), len(class_names)),
        explain=_choice("explain", get("explain") or default_method, EXPLAIN_METHODS),
        colormap=_choice("colormap", get("colormap") or "jet", COLORMAPS),
        alpha=DEFAULT_ALPHA if get("alpha") is None else _unit_float("alpha", get("alpha")),
        max_side=(DEFAULT_MAX_SIDE if get("max_side") is None
                  else _int("max_side", get("max_side"), MIN_MAX_SIDE, MAX_MAX_SIDE)),
        images=_choice("images", get("images") or "both", IMAGE_SETS),
        image_format=_choice("image_format", get("image_format") or DEFAULT_IMAGE_FORMAT, IMAGE_FORMATS),
        faithfulness=False if get("faithfulness") is None else _bool("faithfulness", get("faithfulness")),
    )


def parse_targets(value: Any, class_names: Sequence[str]) -> tuple[int, ...]:
    """``auto`` (or absent): the predicted class; ``all``; one class; or a comma list, in order, no repeats."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return ()
    if isinstance(value, str) and value.strip().lower() == "all":
        if len(class_names) > MAX_TARGETS:
            raise InvalidRequest(f"field 'target': 'all' would explain {len(class_names)} classes; "
                                 f"the limit is {MAX_TARGETS}: list the classes instead")
        return tuple(range(len(class_names)))
    items = value.split(",") if isinstance(value, str) else [value]
    if len(items) > MAX_TARGETS:
        raise InvalidRequest(f"field 'target' lists {len(items)} classes; the limit is {MAX_TARGETS}")
    indices = [class_index("target", item, class_names) for item in items]
    if len(set(indices)) != len(indices):
        raise InvalidRequest("field 'target' names a class twice")
    return tuple(indices)


def class_index(name: str, value: Any, class_names: Sequence[str]) -> int:
    """A class given by name (exact, else case-insensitive) or by index."""
    allowed = f"one of {', '.join(class_names)} or an index 0-{len(class_names) - 1}"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidRequest(f"field '{name}' must be a class name or index: {allowed}")
    if isinstance(value, int):
        if 0 <= value < len(class_names):
            return value
        raise InvalidRequest(f"field '{name}': class index {excerpt(value, 12)} out of range; allowed: {allowed}")
    text = value.strip()
    if text in class_names:
        return list(class_names).index(text)
    folded = [i for i, c in enumerate(class_names) if c.lower() == text.lower()]
    if len(folded) == 1:
        return folded[0]
    if _INT.fullmatch(text) and 0 <= int(text) < len(class_names):
        return int(text)
    raise InvalidRequest(f"field '{name}': unknown class {excerpt(text)}; allowed: {allowed}")


def _choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    text = value.strip().lower() if isinstance(value, str) else None
    if text is None or text not in allowed:
        raise InvalidRequest(f"field '{name}': {excerpt(value)} is not allowed; use one of {', '.join(allowed)}")
    return text


def _int(name: str, value: Any, low: int, high: int | None) -> int:
    bound = f"between {low} and {high}" if high is not None else f"at least {low}"
    if isinstance(value, bool):
        raise InvalidRequest(f"field '{name}' must be an integer {bound}, got {excerpt(value)}")
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise InvalidRequest(f"field '{name}' must be an integer {bound}, got {excerpt(value)}")
        value = int(value)
    if isinstance(value, str):
        if not _INT.fullmatch(value.strip()):
            raise InvalidRequest(f"field '{name}' must be an integer {bound}, got {excerpt(value)}")
        value = int(value.strip())
    if not isinstance(value, int) or value < low or (high is not None and value > high):
        raise InvalidRequest(f"field '{name}' must be an integer {bound}, got {excerpt(value, 12)}")
    return value


def _unit_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidRequest(f"field '{name}' must be a number in [0, 1], got {excerpt(value)}")
    if isinstance(value, str):
        if not _FLOAT.fullmatch(value.strip()):
            raise InvalidRequest(f"field '{name}' must be a number in [0, 1], got {excerpt(value)}")
        value = float(value.strip())
    number = float(value) if isinstance(value, float) or abs(value) < 2**53 else math.inf
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise InvalidRequest(f"field '{name}' must be a number in [0, 1], got {excerpt(value, 12)}")
    return number


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidRequest(f"field '{name}' must be true or false, got {excerpt(value)}")
