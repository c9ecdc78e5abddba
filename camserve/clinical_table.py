"""Clinical fields per image, read from a CSV: one reader and one lookup rule for every camserve tool.

A multimodal model takes clinical fields beside the image (``camserve.tabular``). The error analysis
(``--tabular``), the Gradio batch view and the thyroid trainer read them from the same kind of file:

    path,composition,echogenicity,margins,calcifications,sex,age
    test/malignant/00012.png,solid,hypoechoic,,micro,F,61

- UTF-8 (a spreadsheet's byte-order mark is fine), a header row, a ``path`` column and one column per
  clinical field of the model (any subset, any order). A column that is not a field of the model, a
  repeated column, a row with the wrong number of cells, an empty ``path`` or two rows for the same
  path are errors (:class:`~camserve.errors.DataError` naming the line), never silently dropped.
- An empty cell is a missing value; blank lines are skipped.
- ``path`` is a relative path with ``/`` (``\\`` is read as ``/``); ``./`` and doubled slashes are
  normalised away.

**The lookup rule** (:meth:`ClinicalTable.lookup`): the row for an image is the row whose path equals
the image's path; failing that, the one row whose path and the image's path agree on their trailing
components, one being the other's tail at a ``/`` boundary (so a bare file name finds its row, and
``malignant/00012.png`` finds ``test/malignant/00012.png``). When several rows qualify the image has no
row: a table never guesses. Paths compare case-sensitively. An image without a row is sent with every
field missing.

:meth:`ClinicalTable.rebase` re-keys a table written for another folder (e.g. ``clinical.csv`` beside
``train/ val/ test/``) to the paths inside one data folder, counting the rows of images outside it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from camserve.errors import DataError, excerpt

PATH_COLUMN = "path"


def normalise_path(text: str) -> str:
    """The canonical form of a ``path`` cell or an image path: ``/`` separators, no ``.`` or empty
    components; ``""`` for an empty path. ``..`` components are kept (they only matter to :meth:`rebase`)."""
    text = text.strip().replace("\\", "/")
    if not text:
        return ""
    norm = posixpath.normpath(text)
    return "" if norm == "." else norm


def _tails(path: str) -> Iterable[str]:
    """The proper trailing parts of a path: ``a/b/c`` gives ``b/c`` and ``c``."""
    parts = path.split("/")
    return ("/".join(parts[k:]) for k in range(1, len(parts)))


@dataclass(frozen=True)
class ClinicalTable:
    """The rows of one CSV, keyed by normalised image path.

    Attributes:
        source: The CSV file.
        sha256: Digest of its bytes (a resumed analysis must use the same file).
        columns: The clinical columns it has, in file order.
        rows: Image path to the row's non-empty fields.
        outside: Rows dropped by :meth:`rebase` because their image is outside the data folder.
    """

    source: Path
    sha256: str
    columns: tuple[str, ...]
    rows: Mapping[str, dict[str, str]]
    outside: int = 0
    _by_tail: dict[str, list[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_tail: dict[str, list[str]] = {}
        for key in self.rows:
            for tail in _tails(key):
                by_tail.setdefault(tail, []).append(key)
        object.__setattr__(self, "_by_tail", by_tail)

    @property
    def name(self) -> str:
        """The CSV's file name, for messages."""
        return self.source.name

    def candidates(self, image: str) -> list[str]:
        """The row paths the lookup rule considers for ``image``: ``[image]`` on an exact match, else
        every row path that is a tail of the image's path or has it as a tail (sorted)."""
        key = normalise_path(image)
        if not key:
            return []
        if key in self.rows:
            return [key]
        found = set(self._by_tail.get(key, ())) | {t for t in _tails(key) if t in self.rows}
        return sorted(found)

    def lookup(self, image: str) -> dict[str, str] | None:
        """The fields of ``image`` by the lookup rule; ``None`` when no row (or more than one) qualifies.

        An empty dict means the image has a row whose cells are all empty (every field missing).
        """
        found = self.candidates(image)
        return dict(self.rows[found[0]]) if len(found) == 1 else None

    def rebase(self, root: Path, data_dir: Path) -> ClinicalTable:
        """The table re-keyed from paths relative to ``root`` to paths relative to ``data_dir``.

        Rows whose image is not inside ``data_dir`` are dropped and counted in ``outside``; with
        ``root == data_dir`` only the rows pointing out of the folder (``../x.png``) are dropped.

        Raises:
            DataError: Two rows name the same image once re-keyed.
        """
        base = os.path.abspath(root)
        data = os.path.abspath(data_dir)
        rows: dict[str, dict[str, str]] = {}
        outside = 0
        for key, fields in self.rows.items():
            full = os.path.normpath(os.path.join(base, key))
            if os.path.commonpath([full, data]) != data or full == data:
                outside += 1
                continue
            rel = Path(os.path.relpath(full, data)).as_posix()
            if rel in rows:
                raise DataError(f"{self.name}: two rows are for {excerpt(rel)}")
            rows[rel] = fields
        return ClinicalTable(self.source, self.sha256, self.columns, rows, self.outside + outside)


def parse_table(raw: bytes, source: Path, feature_names: Sequence[str]) -> ClinicalTable:
    """Parse a clinical CSV's bytes against the model's clinical fields.

    Args:
        raw: The file's bytes.
        source: Where they came from (named in messages).
        feature_names: The model's clinical fields, the only columns allowed besides ``path``.

    Raises:
        DataError: Not UTF-8 text, no ``path`` column, an unknown or repeated column, a ragged row, an
            empty or duplicate path.
    """
    name = source.name
    try:
        text = raw.decode("utf-8-sig")  # spreadsheets often save a byte-order mark
        lines = list(_rows(text))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{name} is not a UTF-8 CSV file ({type(exc).__name__})") from exc
    header = [h.strip() for h in lines[0][1]] if lines else []
    if PATH_COLUMN not in header:
        found = ", ".join(excerpt(h, 20) for h in header[:8]) or "nothing"
        raise DataError(f"{name}: the header needs a {PATH_COLUMN!r} column (the image path), found: {found}")
    unknown = [h for h in header if h != PATH_COLUMN and h not in feature_names]
    if unknown or len(set(header)) != len(header):
        problem = (f"column {excerpt(unknown[0])} is not a clinical field of the model" if unknown
                   else "repeated columns")
        raise DataError(f"{name}: {problem}; allowed columns: {PATH_COLUMN}, {', '.join(feature_names)}")
    rows: dict[str, dict[str, str]] = {}
    first_line: dict[str, int] = {}
    for line, cells in lines[1:]:
        if len(cells) != len(header):
            raise DataError(f"{name} line {line}: {len(cells)} cells for {len(header)} columns")
        row = dict(zip(header, (c.strip() for c in cells), strict=True))
        key = normalise_path(row.pop(PATH_COLUMN))
        if not key:
            raise DataError(f"{name} line {line}: empty {PATH_COLUMN!r}")
        if key in rows:
            raise DataError(f"{name}: lines {first_line[key]} and {line} are both for {excerpt(key)}")
        rows[key], first_line[key] = {k: v for k, v in row.items() if v}, line
    return ClinicalTable(source, hashlib.sha256(raw).hexdigest(),
                         tuple(h for h in header if h != PATH_COLUMN), rows)


def _rows(text: str) -> Iterable[tuple[int, list[str]]]:
    """``(line number, cells)`` of every non-blank CSV row, the header first."""
    reader = csv.reader(io.StringIO(text, newline=""))
    for cells in reader:
        if any(c.strip() for c in cells):
            yield reader.line_num, cells


def read_table(path: Path, feature_names: Sequence[str], max_bytes: int | None = None) -> ClinicalTable:
    """Read a clinical CSV (see the module docstring for the format).

    Args:
        path: The CSV file.
        feature_names: The model's clinical fields.
        max_bytes: Refuse a larger file without reading it (``None``: no bound).

    Raises:
        DataError: The file is missing, unreadable, too large, or not a valid table (see :func:`parse_table`).
    """
    try:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise DataError(f"{path.name} is over {max_bytes:,} bytes")
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the clinical CSV {path}: {exc.strerror or type(exc).__name__}") from exc
    return parse_table(raw, path, feature_names)
