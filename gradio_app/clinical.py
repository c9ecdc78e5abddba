"""The clinical data of a multimodal model, as plain data: schema -> form fields -> request fields.

A model with a tabular schema (``ModelInfo.tabular``, parsed by ``camserve.tabular``) takes clinical
fields beside the image. The form has one field per feature: a dropdown of the categories for a
categorical feature (with a "missing" choice unless it is required), a text box for a numeric one
(empty = missing). What is left empty is not sent, which the server reads as missing; which values are
allowed (a number, a category) is the server's to say, so its rules live in one place.

A batch takes its true labels and fields from one CSV (``camserve.clinical_table``'s format): a ``path``
column (the image's file name, or its path inside the zip or folder), an optional ``label`` column and
one column per feature; an empty cell, or an image without a row, is missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from camserve.clinical_table import PATH_COLUMN, ClinicalTable, read_table
from camserve.errors import CheckpointError, DataError
from camserve.tabular import TabularSchema

MISSING_LABEL = "(missing)"  # the dropdown choice that sends nothing
LABEL_COLUMN = "label"
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
        """The field's initial value, which means missing: empty text, the missing choice, or no choice."""
        return None if self.required and not self.numeric else ""


def form_fields(schema: Mapping[str, Any] | None) -> list[FormField]:
    """The form of a model's tabular schema, in schema order; empty for an image-only model.

    Raises:
        DataError: The schema is malformed (the server would not have loaded such a model).
    """
    if not schema:
        return []
    try:
        parsed = TabularSchema.from_dict(schema)
    except CheckpointError as exc:
        raise DataError(f"The model's clinical schema is unusable: {exc.message}") from exc
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
    """What the batch view says about its optional CSV (labels, and a multimodal model's clinical data)."""
    text = (f"Optional CSV: a `{PATH_COLUMN}` column (the image's file name, or its path inside the zip) and a "
            f"`{LABEL_COLUMN}` column (the true class; a class folder's name gives it too)")
    if not fields:
        return text + "."
    required = [f.name for f in fields if f.required]
    needs = f" ({', '.join(required)} required)" if required else ""
    return (f"{text}, plus this model's clinical data{needs}, one column per field: "
            f"{', '.join(f'`{f.name}`' for f in fields)}. Empty cells, and images without a row, are sent as missing.")


def check_required(fields: Sequence[FormField], table: ClinicalTable | None) -> None:
    """Refuse a batch without a CSV when the model requires a field: every image would fail.

    Raises:
        DataError: Naming the required fields.
    """
    required = [f.name for f in fields if f.required]
    if table is None and required:
        raise DataError(f"This model requires {', '.join(required)} for every image: add a CSV with a "
                        f"'{PATH_COLUMN}' column and one column per clinical field.")


def read_batch_csv(path: Path, fields: Sequence[FormField]) -> ClinicalTable:
    """A batch's CSV: labels and clinical fields by image path.

    Raises:
        DataError: Not such a CSV (naming the offending column or line), or over ``MAX_TABLE_BYTES``.
    """
    names = [f.name for f in fields]
    return read_table(path, [*names, *([] if LABEL_COLUMN in names else [LABEL_COLUMN])], MAX_TABLE_BYTES)


@dataclass(frozen=True)
class Row:
    """One image's row of a batch CSV: its true label (``None`` if not given) and its clinical fields."""

    label: str | None
    fields: dict[str, str]


def row_of(table: ClinicalTable | None, image: str, fields: Sequence[FormField]) -> Row | None:
    """The row of ``image`` by the table's lookup rule; ``None`` without a table or a row."""
    found = None if table is None else table.lookup(image)
    if found is None:
        return None
    names = {f.name for f in fields}
    label = found.get(LABEL_COLUMN) if LABEL_COLUMN not in names else None
    return Row(label, {k: v for k, v in found.items() if k in names})


def coverage(table: ClinicalTable, images: Sequence[str]) -> str:
    """One Markdown line: how many images had a row."""
    found = sum(table.lookup(i) is not None for i in images)
    rest = "; the rest have no row" if found < len(images) else ""
    return f"Rows from {table.name} for {found} of {len(images)} image(s){rest}."
