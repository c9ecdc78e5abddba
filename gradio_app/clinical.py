"""The clinical data of a multimodal model, as plain data: schema -> form fields -> request fields.

A model with a tabular schema (``ModelInfo.tabular``, parsed by ``camserve.tabular``) takes clinical
fields beside the image. The form has one field per feature: a dropdown of the categories for a
categorical feature (with a "missing" choice unless it is required), a number for a numeric one
(empty = missing). What is left empty is not sent, which the server reads as missing; which values are
allowed is the server's to say, so its rules live in one place.

A batch takes its fields from a CSV: a ``path`` column (the image's file name, or its path inside the
zip or folder) and one column per feature; an empty cell, or an image without a row, is missing.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from camserve.errors import CheckpointError
from camserve.tabular import TabularSchema
from gradio_app.client import UserError

MISSING_LABEL = "(missing)"  # the dropdown choice that sends nothing
PATH_COLUMN = "path"
MAX_TABLE_BYTES = 5 * 2**20


@dataclass(frozen=True)
class FormField:
    """One clinical field of the form.

    Attributes:
        name: The feature's name, sent as the field name.
        numeric: A number input (else a dropdown of ``categories``).
        required: The server refuses a request without it.
        categories: The allowed values of a categorical feature.
    """

    name: str
    numeric: bool
    required: bool = False
    categories: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.name} (required)" if self.required else self.name

    @property
    def choices(self) -> list[tuple[str, str]]:
        """Dropdown choices as ``(shown, value)``; the missing choice has the empty value."""
        return ([] if self.required else [(MISSING_LABEL, "")]) + [(c, c) for c in self.categories]

    @property
    def empty(self) -> str | None:
        """The field's initial value, which means missing: the missing choice, or nothing at all."""
        return None if self.numeric or self.required else ""


def form_fields(schema: Mapping[str, Any] | None) -> list[FormField]:
    """The form of a model's tabular schema, in schema order; empty for an image-only model.

    Raises:
        UserError: The schema is malformed (the server would not have loaded such a model).
    """
    if not schema:
        return []
    try:
        parsed = TabularSchema.from_dict(schema)
    except CheckpointError as exc:
        raise UserError(f"The model's clinical schema is unusable: {exc.message}") from exc
    return [FormField(f.name, f.type == "numeric", f.required, f.categories) for f in parsed.features]


def is_missing(value: Any) -> bool:
    """``None``, blank text or NaN: a value that is not sent."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or isinstance(value, float) and math.isnan(value)


def request_fields(fields: Sequence[FormField], values: Sequence[Any]) -> dict[str, Any]:
    """The clinical fields to send, from one value per form field (in form order); missing ones are left out.

    Values beyond the form are ignored; fields without a value are missing.
    """
    return {f.name: v.strip() if isinstance(v, str) else v
            for f, v in zip(fields, values, strict=False) if not is_missing(v)}


def encode(fields: Mapping[str, Any]) -> str | None:
    """The request's ``clinical`` field: one JSON object (no clash with option names such as ``label``);
    ``None`` (not sent) when there is nothing to send."""
    return json.dumps(dict(fields), allow_nan=False) if fields else None


def summary(fields: Mapping[str, Any]) -> str:
    """``"age=61, sex=F"``, or ``""`` when nothing is sent."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


def batch_note(fields: Sequence[FormField]) -> str:
    """What the batch view says about a model's clinical data (empty for an image-only model)."""
    if not fields:
        return ""
    required = [f.name for f in fields if f.required]
    needs = f" ({', '.join(required)} required)" if required else ""
    return (f"This model also takes clinical data{needs}. Add a CSV with a `{PATH_COLUMN}` column (the image's "
            f"file name, or its path inside the zip) and one column per field: "
            f"{', '.join(f'`{f.name}`' for f in fields)}. Empty cells, and images without a row, are sent as "
            "missing.")


def check_required(fields: Sequence[FormField], table: ClinicalTable | None) -> None:
    """Refuse a batch without a CSV when the model requires a field: every image would fail.

    Raises:
        UserError: Naming the required fields.
    """
    required = [f.name for f in fields if f.required]
    if table is None and required:
        raise UserError(f"This model requires {', '.join(required)} for every image: add a CSV with a "
                        f"'{PATH_COLUMN}' column and one column per clinical field.")


@dataclass(frozen=True)
class ClinicalTable:
    """Clinical fields per image, read from a CSV.

    Attributes:
        name: The CSV's file name, for messages.
        rows: Image path to its non-missing fields.
    """

    name: str
    rows: dict[str, dict[str, str]]

    def lookup(self, image: str) -> dict[str, str]:
        """The fields of an image: by its path, else by its file name when that is unambiguous; ``{}`` if none."""
        if image in self.rows:
            return self.rows[image]
        base = PurePosixPath(image).name
        matches = [row for path, row in self.rows.items() if PurePosixPath(path).name == base]
        return matches[0] if len(matches) == 1 else {}

    def coverage(self, images: Sequence[str]) -> str:
        """One Markdown line: how many images had a row."""
        found = sum(bool(self.lookup(i)) for i in images)
        rest = "; the rest were sent with missing values" if found < len(images) else ""
        return f"Clinical data from {self.name} for {found} of {len(images)} image(s){rest}."


def read_table(path: Path, fields: Sequence[FormField]) -> ClinicalTable:
    """Read a batch's clinical CSV against the model's form.

    Raises:
        UserError: The model takes no clinical data, or the file is not a CSV with a ``path`` column and
            feature columns (naming the offending column or row).
    """
    if not fields:
        raise UserError("This model takes no clinical data: remove the CSV.")
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise UserError(f"{path.name} is over {MAX_TABLE_BYTES // 2**20} MiB.")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets write a BOM
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = [c.strip() for c in reader.fieldnames or []]
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path.name} is not a UTF-8 CSV file.") from exc
    names = [f.name for f in fields]
    if PATH_COLUMN not in columns:
        raise UserError(f"{path.name} needs a '{PATH_COLUMN}' column (the image's file name), got: "
                        f"{', '.join(columns) or 'no header'}.")
    unknown = [c for c in columns if c not in (PATH_COLUMN, *names)]
    if unknown:
        raise UserError(f"{path.name}: unknown column '{unknown[0]}'; this model takes: {', '.join(names)}.")
    table: dict[str, dict[str, str]] = {}
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in row.items()}
        image = PurePosixPath(row.pop(PATH_COLUMN).replace("\\", "/")).as_posix()
        if image in ("", "."):
            raise UserError(f"{path.name}, line {line}: the '{PATH_COLUMN}' cell is empty.")
        if image in table:
            raise UserError(f"{path.name}, line {line}: {image} appears twice.")
        table[image] = {k: v for k, v in row.items() if k in names and not is_missing(v)}
    return ClinicalTable(path.name, table)
