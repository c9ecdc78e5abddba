"""The ImageFolder tree to analyse: one folder per class, every file accounted for.

The tree is listed with :func:`camserve.folders.walk`, which never follows a link out of the folder
or back into it. Every non-hidden file becomes either an :class:`Item` to send or a :class:`Failure`
saying why not (a link that was not followed, outside any class folder, or in a folder the model has
no class for). Non-image files are not filtered by extension here: they are decoded and reported like
corrupt images.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from camserve.folders import match_class, sha256_text, walk


@dataclass(frozen=True)
class Item:
    """One file to send.

    Attributes:
        rel: Its POSIX path under the data folder.
        path: The file.
        label: The model's class name its folder stands for.
        mask: Its region-of-interest mask (``--masks-dir``), if any.
        lesion: Its lesion mask (``--lesion-masks``), if any.
    """

    rel: str
    path: Path
    label: str
    mask: Path | None = None
    lesion: Path | None = None


@dataclass(frozen=True)
class Failure:
    """A file that got no prediction (or no map), and why. ``stage``: link, scan, label, read, decode,
    request or gradcam."""

    rel: str
    stage: str
    reason: str


@dataclass(frozen=True)
class Scan:
    """The listed tree.

    Attributes:
        items: The files to send, sorted by path.
        failures: The files that cannot be sent, and the links that were not followed.
        unknown_folders: Class folders the model has no class for.
        masks_found: Items with a region-of-interest mask.
        file_list_sha256: SHA-256 of every listed path (items and failures), sorted, one per line.
    """

    items: list[Item]
    failures: list[Failure]
    unknown_folders: list[str]
    masks_found: int
    file_list_sha256: str = ""


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


def scan(data_dir: Path, classes: Sequence[str], masks_dir: Path | None = None,
         lesions_dir: Path | None = None) -> Scan:
    """List the tree against the model's classes (sorted by relative path)."""
    listed = walk(data_dir)
    items: list[Item] = []
    failures = [Failure(s.rel, "link", s.reason) for s in listed.skipped]
    unknown: set[str] = set()
    for rel in listed.files:
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
        items.append(Item(rel, data_dir / rel, label, find_mask(masks_dir, rel), find_mask(lesions_dir, rel)))
    found = sum(item.mask is not None for item in items)
    digest = sha256_text("\n".join(sorted([*listed.files, *(s.rel for s in listed.skipped)])))
    return Scan(items, failures, sorted(unknown), found, digest)


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
