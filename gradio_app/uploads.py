"""The batch view's upload: loose files, zips or folders of an ImageFolder tree (class folder = label).

Nothing is read into memory up front: a zip's directory is checked first (each member's and the total
uncompressed size, before anything is extracted) and a member is read only when its request is sent.
Entries that are not read (paths leaving the zip, hidden files, macOS metadata, non-images, sizes over
a bound) are listed with the reason, never dropped silently.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath

from camserve.errors import DataError
from camserve.folders import Skipped, is_hidden, is_image_name, walk
from camserve.imaging import MAX_IMAGE_BYTES

MAX_IMAGES = 500
MAX_MEMBER_BYTES = MAX_IMAGE_BYTES  # the largest image the server takes
MAX_TOTAL_BYTES = 1 << 30  # uncompressed images in one batch


@dataclass(frozen=True)
class BatchItem:
    """One image to explain, read only when needed.

    Attributes:
        name: Its path inside the upload (``COVID/a.png``) or its file name.
        read: Returns its bytes.
        label: Its class folder's name, when there is one.
    """

    name: str
    read: Callable[[], bytes]
    label: str | None = None

    @classmethod
    def of(cls, name: str, data: bytes, label: str | None = None) -> BatchItem:
        """An item whose bytes are already in memory."""
        return cls(name, lambda: data, label)


@dataclass
class Collected:
    """The images of an upload, and what was left out (``Skipped.rel`` is the path inside the upload)."""

    items: list[BatchItem] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    total_bytes: int = 0

    def add(self, item: BatchItem, size: int) -> None:
        """Take an image unless a bound says no (then it is listed as skipped)."""
        if size > MAX_MEMBER_BYTES:
            self.skipped.append(Skipped(item.name, f"over {MAX_MEMBER_BYTES >> 20} MiB"))
        elif len(self.items) >= MAX_IMAGES:
            self.skipped.append(Skipped(item.name, f"over the {MAX_IMAGES}-image limit of a batch"))
        elif self.total_bytes + size > MAX_TOTAL_BYTES:
            self.skipped.append(Skipped(item.name, f"over the batch's {MAX_TOTAL_BYTES >> 20} MiB in all"))
        else:
            self.items.append(item)
            self.total_bytes += size


def collect(paths: Iterable[str | Path]) -> Collected:
    """Items from image files, zips of an ImageFolder tree and folders, in the order given.

    Raises:
        DataError: No image found.
    """
    found = Collected()
    for path in map(Path, paths):
        if path.is_dir():
            read_folder(path, found)
        elif path.suffix.lower() == ".zip":
            read_zip(path, found)
        elif is_image_name(path.name):
            found.add(BatchItem(path.name, path.read_bytes), path.stat().st_size)
        else:
            found.skipped.append(Skipped(path.name, "not an image or a zip"))
    if not found.items:
        why = "; ".join(f"{s.rel}: {s.reason}" for s in found.skipped[:3])
        raise DataError("No images found: upload PNG/JPEG files, or a zip of class folders with images"
                        + (f" (skipped {why})." if why else "."))
    return found


def read_folder(root: Path, found: Collected) -> None:
    """Every image under ``root`` (links never followed out of it); the parent folder names the label."""
    tree = walk(root, images_only=True)
    found.skipped += tree.skipped
    for rel in tree.files:
        folder = PurePosixPath(rel).parent.name or None
        found.add(BatchItem(rel, (root / rel).read_bytes, folder), (root / rel).stat().st_size)


def read_zip(path: Path, found: Collected) -> None:
    """Every image of a zip, checked on its directory and read lazily; the parent folder names the label.

    Raises:
        DataError: Not a zip file.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = sorted(zf.infolist(), key=lambda i: i.filename)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path.name} is not a valid zip file.") from exc
    for info in infos:
        name = info.filename
        reason = _unsafe(name)
        if info.is_dir():
            continue
        if reason:
            found.skipped.append(Skipped(name, reason))
        elif not is_image_name(name):
            found.skipped.append(Skipped(name, "not an image file name"))
        else:
            folder = PurePosixPath(name).parent.name or None
            found.add(BatchItem(name, partial(read_member, path, info), folder), info.file_size)


def _unsafe(name: str) -> str:
    """Why a zip entry is not read, or ``""``."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        return "its path leaves the zip (absolute or with ..)"
    if "__MACOSX" in parts:
        return "macOS metadata"
    if is_hidden(parts):
        return "a hidden file"
    return ""


def read_member(path: Path, info: zipfile.ZipInfo) -> bytes:
    """One member's bytes, never more than its declared size nor ``MAX_MEMBER_BYTES``.

    Raises:
        DataError: The member cannot be read (corrupt, encrypted) or is larger than it declares.
    """
    try:
        with zipfile.ZipFile(path) as zf, zf.open(info) as member:
            data = member.read(MAX_MEMBER_BYTES + 1)
    except (zipfile.BadZipFile, RuntimeError, OSError, EOFError, NotImplementedError) as exc:
        raise DataError(f"{info.filename}: cannot be read from the zip ({type(exc).__name__})") from exc
    if len(data) > MAX_MEMBER_BYTES:
        raise DataError(f"{info.filename}: over {MAX_MEMBER_BYTES >> 20} MiB once extracted")
    return data


def skipped_text(skipped: Sequence[Skipped], most: int = 10) -> str:
    """Markdown: what was left out and why (the first ``most``, then a count)."""
    if not skipped:
        return ""
    lines = [f"- `{s.rel[:80]}`: {s.reason}" for s in skipped[:most]]
    more = f"\n- … and {len(skipped) - most} more" if len(skipped) > most else ""
    return f"**{len(skipped)} file(s) skipped:**\n" + "\n".join(lines) + more
