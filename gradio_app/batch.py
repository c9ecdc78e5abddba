"""Explain many images: loose files, a zip or a folder of an ImageFolder tree (class folder = label).

Images go to the server a few at a time so that TorchServe can batch them; results come back sorted
for review: errors first (most confident first) when labels are known, then by confidence.
"""

from __future__ import annotations

import logging
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from camserve.errors import CamserveError, RequestError
from camserve.imaging import MAX_IMAGE_BYTES
from camserve.render import from_data_url
from camserve.schema import DEFAULT_ALPHA, ExplainResponse
from gradio_app import clinical as clinical_data
from gradio_app.client import Connection, UserError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
MAX_IMAGES = 500
BATCH_MAX_SIDE = 256  # gallery thumbnails: small responses
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BatchItem:
    """One image to explain; ``label`` is its folder name, when there is one."""

    name: str
    data: bytes
    label: str | None = None


@dataclass(frozen=True)
class BatchResult:
    """The server's answer for one item, or the reason it failed."""

    item: BatchItem
    response: ExplainResponse | None = None
    error: str | None = None

    @property
    def correct(self) -> bool | None:
        """Whether the prediction matches the label; ``None`` when unlabelled or failed."""
        if self.response is None or self.response.error is None:
            return None
        return self.response.error.correct

    @property
    def confidence(self) -> float:
        return 0.0 if self.response is None else self.response.prediction.confidence

    def overlay(self) -> Image.Image | None:
        exp = None if self.response is None else self.response.explanation
        return None if exp is None else from_data_url(exp.overlay)

    def caption(self) -> str:
        """``"✗ true COVID · pred Normal · 86% · x.png"`` (no mark and no true class when unlabelled)."""
        name = PurePosixPath(self.item.name).name
        if self.response is None:
            return f"{name}: failed"
        pred = f"pred {self.response.prediction.label} · {self.confidence:.0%} · {name}"
        if self.correct is None:
            return pred
        return f"{'✓' if self.correct else '✗'} true {self.response.error.true_label} · {pred}"


def collect(paths: Iterable[str | Path]) -> list[BatchItem]:
    """Items from image files, zips of an ImageFolder tree and folders, in the order given.

    Raises:
        UserError: No image found, or more than ``MAX_IMAGES``.
    """
    items: list[BatchItem] = []
    for path in map(Path, paths):
        if path.is_dir():
            items += read_folder(path)
        elif path.suffix.lower() == ".zip":
            items += read_zip(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            items.append(BatchItem(path.name, path.read_bytes()))
        if len(items) > MAX_IMAGES:
            raise UserError(f"Too many images: at most {MAX_IMAGES} per batch.")
    if not items:
        raise UserError("No images found: upload PNG/JPEG files, or a zip of class folders with images.")
    return items


def read_folder(root: Path) -> list[BatchItem]:
    """Every image under ``root``; the parent folder's name is the label (none at the top level)."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and _visible(p.parts))
    return [BatchItem(str(p.relative_to(root)), p.read_bytes(), None if p.parent == root else p.parent.name)
            for p in files[:MAX_IMAGES + 1]]


def read_zip(path: Path) -> list[BatchItem]:
    """Every image in a zip, read in memory (nothing extracted); the parent folder's name is the label.

    Raises:
        UserError: Not a zip, or a member larger than the server accepts.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = sorted((i for i in zf.infolist() if _is_image_member(i)), key=lambda i: i.filename)
            if len(infos) > MAX_IMAGES:
                raise UserError(f"Too many images in {path.name}: at most {MAX_IMAGES} per batch.")
            big = next((i for i in infos if i.file_size > MAX_IMAGE_BYTES), None)
            if big is not None:
                raise UserError(f"{big.filename} is over {MAX_IMAGE_BYTES // 2**20} MiB.")
            return [BatchItem(i.filename, zf.read(i), PurePosixPath(i.filename).parent.name or None)
                    for i in infos]
    except zipfile.BadZipFile as exc:
        raise UserError(f"{path.name} is not a valid zip file.") from exc


def _is_image_member(info: zipfile.ZipInfo) -> bool:
    parts = PurePosixPath(info.filename).parts
    return (not info.is_dir() and PurePosixPath(info.filename).suffix.lower() in IMAGE_SUFFIXES
            and _visible(parts) and "__MACOSX" not in parts)


def _visible(parts: Sequence[str]) -> bool:
    return not any(p.startswith(".") for p in parts)


def match_label(folder: str | None, classes: Sequence[str]) -> str | None:
    """The model's class a folder name stands for (exact, else case-insensitive), or ``None``."""
    if folder is None:
        return None
    if folder in classes:
        return folder
    folded = [c for c in classes if c.lower() == folder.lower()]
    return folded[0] if len(folded) == 1 else None


def explain_batch(conn: Connection, model: str, items: Sequence[BatchItem], *, classes: Sequence[str],
                  colormap: str = "jet", alpha: float = DEFAULT_ALPHA, max_side: int = BATCH_MAX_SIDE,
                  workers: int = 4, progress: Progress | None = None,
                  clinical: clinical_data.ClinicalTable | None = None) -> list[BatchResult]:
    """Explain every item (``workers`` requests in flight, so TorchServe can batch them), in input order.

    Folder names that are not classes of the model count as unlabelled. An image the server rejects
    becomes a failed result; a server that is down or refuses the key stops the whole batch. A
    multimodal model gets each image's row of ``clinical``; without one, its fields are all missing.

    Raises:
        UserError: The server is unreachable or refused the key.
    """
    labels = [match_label(item.label, classes) for item in items]
    results: list[BatchResult | None] = [None] * len(items)

    def one(i: int) -> BatchResult:
        item = items[i]
        fields = clinical_data.encode({} if clinical is None else clinical.lookup(item.name))
        try:
            resp = conn.call(lambda c: c.explain(model, item.data, label=labels[i], colormap=colormap,
                                                 alpha=alpha, max_side=max_side, clinical=fields))
        except RequestError as exc:
            return BatchResult(item, error=conn.friendly(exc))
        return BatchResult(item, resp)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(one, i): i for i in range(len(items))}
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                results[futures[future]] = future.result()
                if progress is not None:
                    progress(done, len(items))
        except CamserveError as exc:
            pool.shutdown(cancel_futures=True)
            raise UserError(conn.friendly(exc)) from exc
    return [r for r in results if r is not None]


def sort_results(results: Iterable[BatchResult]) -> list[BatchResult]:
    """Errors first, then the rest, each by confidence (highest first); failed images last."""
    def key(r: BatchResult) -> tuple[int, float]:
        group = 2 if r.response is None else 0 if r.correct is False else 1
        return group, -r.confidence
    return sorted(results, key=key)


def gallery(results: Iterable[BatchResult]) -> list[tuple[Image.Image, str]]:
    """``(overlay, caption)`` pairs for the results that have an overlay, in the given order."""
    return [(img, r.caption()) for r in results if (img := r.overlay()) is not None]


def summary(results: Sequence[BatchResult]) -> str:
    """A few Markdown lines: counts, accuracy when labels are known, confusions, failures."""
    ok = [r for r in results if r.response is not None]
    judged = [r for r in ok if r.correct is not None]
    lines = [f"**{len(results)} image(s)**, {len(ok)} explained, {len(judged)} with a known label."]
    if judged:
        right = sum(bool(r.correct) for r in judged)
        lines.append(f"Accuracy **{right / len(judged):.0%}** ({right}/{len(judged)}).")
        pairs = Counter(f"{r.response.error.true_label} → {r.response.prediction.label}"
                        for r in judged if r.correct is False)
        if pairs:
            lines.append("Confusions: " + ", ".join(f"{p} ×{n}" for p, n in pairs.most_common(5)) + ".")
    failed = [r for r in results if r.response is None]
    if failed:
        lines.append(f"**{len(failed)} failed:**\n" + "\n".join(f"- {r.item.name}: {r.error}" for r in failed[:20]))
    return "\n\n".join(lines)
