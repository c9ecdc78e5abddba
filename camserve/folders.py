"""ImageFolder trees on disk: which files are images, a walk that stays inside its root, class folders,
and file digests. One home for what the trainer, the analysis script, the CAM evaluation and the Gradio
batch view all need.

The walk never follows a link out of the tree or back into it: a linked directory is never entered (a
``COVID/loop -> ..`` would otherwise list the tree again and again), and a linked file is taken only
when it resolves to a file inside the root that the walk does not list already. Everything left out
is reported with the reason, never dropped silently.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})


def is_image_name(name: str) -> bool:
    """Whether a file name has one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def is_hidden(parts: Sequence[str]) -> bool:
    """Whether any component of a relative path is hidden (starts with a dot)."""
    return any(p.startswith(".") for p in parts)


@dataclass(frozen=True)
class Skipped:
    """A path the walk left out: ``rel`` is its POSIX path under the root."""

    rel: str
    reason: str


@dataclass
class Walk:
    """The files under a root (sorted POSIX paths relative to it) and what was left out."""

    files: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def walk(root: Path, images_only: bool = False) -> Walk:
    """Every non-hidden file under ``root`` in a stable order, staying inside ``root``.

    Args:
        root: The tree's top directory.
        images_only: Keep only files named like images (others are skipped silently: they are not
            part of an image tree, e.g. a README).

    Returns:
        The files, and the links that were not followed.
    """
    top = root.resolve()
    result = Walk()
    seen: set[Path] = set()
    linked: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for d in sorted(dirnames):
            if not d.startswith(".") and (here / d).is_symlink():
                result.skipped.append(Skipped(_rel(here / d, root), "a linked folder is not entered"))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (here / d).is_symlink())
        for name in sorted(filenames):
            if name.startswith(".") or (images_only and not is_image_name(name)):
                continue
            path = here / name
            rel = _rel(path, root)
            if path.is_symlink():
                linked.append((rel, path))
                continue
            seen.add(path.resolve())
            result.files.append(rel)
    for rel, path in linked:  # after the walk, so a link to a file listed anyway is recognised
        target = path.resolve()
        if not target.is_file() or not target.is_relative_to(top):
            result.skipped.append(Skipped(rel, "a link to a file outside the folder is not followed"))
        elif target in seen:
            result.skipped.append(Skipped(rel, "a link to a file already listed is not counted twice"))
        else:
            seen.add(target)
            result.files.append(rel)
    result.files.sort()
    return result


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def match_class(folder: str | None, classes: Sequence[str]) -> str | None:
    """The class a folder name stands for: the exact name, else a unique case-insensitive match."""
    if folder is None:
        return None
    if folder in classes:
        return folder
    folded = [c for c in classes if c.lower() == folder.lower()]
    return folded[0] if len(folded) == 1 else None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a text's UTF-8 bytes (e.g. a sorted file list)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
