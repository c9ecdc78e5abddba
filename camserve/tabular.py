"""Tabular (clinical) features of multimodal models: a schema packed in the .mar, and its encoding.

Schema file (JSON), as passed to ``scripts/archive.py --tabular-schema``::

    {"features": [
        {"name": "age", "type": "numeric", "mean": 50.0, "std": 15.0, "required": false},
        {"name": "sex", "type": "categorical", "categories": ["F", "M"], "required": false}]}

Encoding (a value plus a missing-value flag per feature, the usual scheme for tabular branches): a
numeric feature gives two values,
``(x - mean) / std`` and a missing flag; a categorical one gives a one-hot over its categories and a
missing flag. A missing value encodes as zeros with its flag set to 1. The vector's layout follows the
schema's feature order; ``TabularSchema.width`` is its length.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from camserve.errors import CheckpointError, InvalidRequest, excerpt

MISSING = (None, "", "NA", "N/A", "nan", "NaN", "null")


@dataclass(frozen=True)
class Feature:
    name: str
    type: str  # "numeric" or "categorical"
    mean: float = 0.0
    std: float = 1.0
    categories: tuple[str, ...] = ()
    required: bool = False

    @property
    def width(self) -> int:
        return 2 if self.type == "numeric" else len(self.categories) + 1

    def to_dict(self) -> dict[str, Any]:
        base = {"name": self.name, "type": self.type, "required": self.required}
        if self.type == "numeric":
            return {**base, "mean": self.mean, "std": self.std}
        return {**base, "categories": list(self.categories)}


@dataclass(frozen=True)
class TabularSchema:
    features: tuple[Feature, ...]

    @property
    def width(self) -> int:
        return sum(f.width for f in self.features)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def to_dict(self) -> dict[str, Any]:
        return {"features": [f.to_dict() for f in self.features]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TabularSchema:
        """Parse and check a schema; raises ``CheckpointError`` (archive time) on any problem."""
        items = data.get("features") if isinstance(data, Mapping) else None
        if not isinstance(items, list) or not items:
            raise CheckpointError("the tabular schema needs a non-empty 'features' list")
        features = [_feature(i, item) for i, item in enumerate(items)]
        names = [f.name for f in features]
        if len(set(names)) != len(names):
            raise CheckpointError(f"tabular feature names must be unique, got {names}")
        return cls(tuple(features))

    def encode(self, values: Mapping[str, Any]) -> torch.Tensor:
        """Encode one request's fields; raises ``InvalidRequest`` naming the field.

        Args:
            values: Feature name to value (text from forms, or JSON scalars); absent means missing.
        """
        unknown = sorted(set(values) - set(self.names))
        if unknown:
            raise InvalidRequest(f"unknown clinical field {excerpt(unknown[0])}; this model takes: "
                                 f"{', '.join(self.names)}")
        out: list[float] = []
        for f in self.features:
            value = values.get(f.name)
            missing = value in MISSING or (isinstance(value, float) and math.isnan(value))
            if missing and f.required:
                raise InvalidRequest(f"clinical field '{f.name}' is required")
            out.extend(_encode_one(f, None if missing else value))
        return torch.tensor(out, dtype=torch.float32)


def _feature(i: int, item: Any) -> Feature:
    if not isinstance(item, Mapping) or not str(item.get("name", "")).strip():
        raise CheckpointError(f"tabular feature #{i} needs a 'name'")
    name, kind = str(item["name"]), item.get("type")
    required = bool(item.get("required", False))
    if kind == "numeric":
        std = float(item.get("std", 1.0))
        if not std > 0:
            raise CheckpointError(f"tabular feature '{name}': 'std' must be > 0, got {std}")
        return Feature(name, "numeric", mean=float(item.get("mean", 0.0)), std=std, required=required)
    if kind == "categorical":
        cats = item.get("categories")
        if not isinstance(cats, list) or not cats or len(set(map(str, cats))) != len(cats):
            raise CheckpointError(f"tabular feature '{name}': 'categories' must be a non-empty list of unique values")
        return Feature(name, "categorical", categories=tuple(map(str, cats)), required=required)
    raise CheckpointError(f"tabular feature '{name}': 'type' must be 'numeric' or 'categorical', got {kind!r}")


def _encode_one(f: Feature, value: Any) -> list[float]:
    if f.type == "numeric":
        if value is None:
            return [0.0, 1.0]
        try:
            number = math.nan if isinstance(value, bool) or len(str(value)) > 64 else float(str(value).strip())
        except (ValueError, OverflowError):
            number = math.nan
        if not math.isfinite(number):
            raise InvalidRequest(f"clinical field '{f.name}' must be a finite number, got {excerpt(value)}")
        return [(number - f.mean) / f.std, 0.0]
    onehot = [0.0] * len(f.categories)
    if value is None:
        return onehot + [1.0]
    text = str(value).strip()
    matches = [i for i, c in enumerate(f.categories) if c == text] or \
              [i for i, c in enumerate(f.categories) if c.lower() == text.lower()]
    if not matches:
        allowed = ", ".join(f.categories)
        raise InvalidRequest(f"clinical field '{f.name}': {excerpt(text)} is not allowed; use one of {allowed}")
    onehot[matches[0]] = 1.0
    return onehot + [0.0]
