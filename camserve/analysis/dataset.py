"""The ImageFolder tree to analyse: one folder per class, every file accounted for.

Every non-hidden file under the data directory becomes either an :class:`Item` to send or a
:class:`Failure` saying why not (outside any class folder, or in a folder the model has no class for).
Non-image files are not filtered by extension here: they are decoded and reported like corrupt images.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class Item:
    """One file to send: ``rel`` is its POSIX path under the data dir, ``label`` the model's class name."""

    rel: str
    path: Path
    label: str
    mask: Path | None = None


@dataclass(frozen=True)
class Failure:
    """A file that got no prediction (or no heatmap), and why. ``stage``: scan, label, read, decode,
    request or gradcam."""

    rel: str
    stage: str
    reason: str


@dataclass(frozen=True)
class Scan:
    items: list[Item]
    failures: list[Failure]
    unknown_folders: list[str]  # class folders the model has no class for
    masks_found: int


def match_class(folder: str, classes: Sequence[str]) -> str | None:
    """The model class a folder stands for: exact name, else a unique case-insensitive match."""
    if folder in classes:
        return folder
    folded = [c for c in classes if c.lower() == folder.lower()]
    return folded[0] if len(folded) == 1 else None


def _files(root: Path) -> Iterable[Path]:
    """Every non-hidden file under ``root``, in a stable order (hidden dirs are not entered)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def find_mask(masks_dir: Path | None, rel: str) -> Path | None:
    """The mask mirroring ``rel``: the same relative path, else the same stem with any extension."""
    if masks_dir is None:
        return None
    exact = masks_dir / rel
    if exact.is_file():
        return exact
    rel_path = PurePosixPath(rel)
    parent = masks_dir / rel_path.parent
    if parent.is_dir():
        same_stem = sorted(p for p in parent.glob(f"{glob_escape(rel_path.stem)}.*") if p.is_file())
        if same_stem:
            return same_stem[0]
    return None


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def scan(data_dir: Path, classes: Sequence[str], masks_dir: Path | None = None) -> Scan:
    """List the tree against the model's classes (sorted by relative path)."""
    items: list[Item] = []
    failures: list[Failure] = []
    unknown: set[str] = set()
    for path in _files(data_dir):
        rel = path.relative_to(data_dir).as_posix()
        parts = rel.split("/")
        if len(parts) < 2:
            failures.append(Failure(rel, "scan", "not inside a class folder (expected DATA_DIR/CLASS/image)"))
            continue
        label = match_class(parts[0], classes)
        if label is None:
            unknown.add(parts[0])
            failures.append(Failure(rel, "label", f"folder {parts[0]!r} is not a class of the served model "
                                                  f"(classes: {', '.join(classes)})"))
            continue
        items.append(Item(rel, path, label, find_mask(masks_dir, rel)))
    found = sum(item.mask is not None for item in items)
    return Scan(items, failures, sorted(unknown), found)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_component(text: str, limit: int = 80) -> str:
    """One file-name component from untrusted text (file stems, class names sent by the server):
    only ``[A-Za-z0-9._-]``, no leading dots (so never ``..``), at most ``limit`` characters."""
    cleaned = _UNSAFE.sub("_", text)[:limit].strip("._")
    return cleaned or "x"


def safe_stems(rels: Sequence[str]) -> dict[str, str]:
    """A unique, safe file stem for each relative path; colliding stems get a short hash of the path."""
    stems = {rel: safe_component(PurePosixPath(rel).stem) for rel in rels}
    seen: dict[str, int] = {}
    for stem in stems.values():
        seen[stem] = seen.get(stem, 0) + 1
    return {rel: stem if seen[stem] == 1 else f"{stem}_{hashlib.sha1(rel.encode()).hexdigest()[:8]}"
            for rel, stem in stems.items()}
