"""Clinical fields of the analysed images, for multimodal models: ``analyze_errors.py --tabular CSV``.

The CSV (UTF-8, a header row) has a ``path`` column and one column per clinical field of the served
model's schema (any subset, in any order); one row per image::

    path,composition,echogenicity,margins,calcifications,sex,age
    malignant/00012.png,solid,hypoechoic,,micro,F,61

``path`` is the image's path relative to ``--data-dir`` (forward slashes), or relative to
``--tabular-root`` when given: ``make_thyroid_phantoms.py`` writes one ``clinical.csv`` for its
train/val/test tree, keyed ``test/malignant/00012.png``, used with ``--data-dir DATA/test
--tabular-root DATA``. An empty cell is a missing value. An image without a row is sent with every
field missing (the server then answers as for any request without them: a model with a required field
rejects it, and the image is listed in failures.csv). Rows of images outside the data directory are
ignored and counted. A column that is not a field of the model is an error, not silently dropped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class ClinicalError(ValueError):
    """The CSV cannot be used with this model and data directory."""


@dataclass(frozen=True)
class ClinicalTable:
    """The rows of one CSV, keyed by image path relative to the data directory.

    Attributes:
        source: The CSV file.
        sha256: Its digest (a resumed run must use the same file).
        columns: The clinical columns it has.
        rows: Relative image path to its non-empty fields.
        outside: Rows naming an image outside the data directory (ignored).
    """

    source: Path
    sha256: str
    columns: tuple[str, ...]
    rows: dict[str, dict[str, str]]
    outside: int

    def fields(self, rel: str) -> dict[str, str] | None:
        """The fields of the image at ``rel``, or ``None`` when the CSV has no row for it."""
        return self.rows.get(rel)


def load_table(path: Path, data_dir: Path, feature_names: Sequence[str], root: Path | None = None
               ) -> ClinicalTable:
    """Read and check a clinical CSV against the model's features.

    Args:
        path: The CSV.
        data_dir: The analysed ImageFolder tree.
        feature_names: The served model's clinical fields.
        root: The folder the ``path`` column is relative to (default: ``data_dir``).

    Raises:
        ClinicalError: Unreadable file, no ``path`` column, an unknown column, a ragged row, an empty
            or duplicate path.
    """
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")  # spreadsheets often save a byte-order mark
    except (OSError, UnicodeDecodeError) as exc:
        raise ClinicalError(f"cannot read the clinical CSV {path}: {exc}") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader, [])]
    if "path" not in header:
        raise ClinicalError(f"{path}: the header needs a 'path' column (the image path relative to the "
                            f"data directory), found: {', '.join(header) or 'nothing'}")
    unknown = [h for h in header if h != "path" and h not in feature_names]
    if unknown or len(set(header)) != len(header):
        problem = f"column {unknown[0]!r} is not a clinical field of the model" if unknown else "repeated columns"
        raise ClinicalError(f"{path}: {problem}; allowed columns: path, {', '.join(feature_names)}")
    base = os.path.normpath(os.path.abspath(root or data_dir))
    data = os.path.normpath(os.path.abspath(data_dir))
    rows: dict[str, dict[str, str]] = {}
    lines: dict[str, int] = {}
    outside = 0
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise ClinicalError(f"{path} line {line}: {len(cells)} cells for {len(header)} columns")
        row = dict(zip(header, (c.strip() for c in cells), strict=True))
        name = row.pop("path").replace("\\", "/")
        if not name:
            raise ClinicalError(f"{path} line {line}: empty 'path'")
        full = os.path.normpath(os.path.join(base, name))
        if os.path.commonpath([full, data]) != data or full == data:
            outside += 1
            continue
        rel = Path(os.path.relpath(full, data)).as_posix()
        if rel in rows:
            raise ClinicalError(f"{path}: lines {lines[rel]} and {line} are both for {rel!r}")
        rows[rel], lines[rel] = {k: v for k, v in row.items() if v}, line
    return ClinicalTable(path, hashlib.sha256(raw).hexdigest(), tuple(h for h in header if h != "path"),
                         rows, outside)
