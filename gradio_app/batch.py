"""Explain many images and shape the results for review: a gallery, a table and a CSV. No Gradio here.

Images go to the server a few at a time so that TorchServe can batch them, each asking only for its
map (``images=none``); the app draws the thumbnails. A true label comes from the image's row in the
batch CSV, else from its class folder. Results are sorted for review: errors first (most confident
first) when labels are known, then by confidence; failed images last.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps

from camserve.clinical_table import ClinicalTable
from camserve.errors import CamserveError, DataError, RequestError
from camserve.folders import match_class
from camserve.schema import DEFAULT_ALPHA, ExplainResponse
from gradio_app import clinical as clinical_data
from gradio_app.client import Connection
from gradio_app.render import Map, Shown, as_rgb, display_image
from gradio_app.uploads import BatchItem

THUMB_SIDE = 224
FRAME = 6  # px of the coloured frame that marks a right (green) or wrong (red) thumbnail
COLUMNS = ("file", "true", "predicted", "confidence", "correct", "focus", "note")
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BatchResult:
    """One image's outcome.

    Attributes:
        name: Its path inside the upload.
        label: Its true class (from the CSV or its folder), or ``None``.
        response: The server's answer, or ``None`` when it failed.
        error: Why it failed.
        thumbnail: Its overlay, framed green (right) or red (wrong).
    """

    name: str
    label: str | None = None
    response: ExplainResponse | None = None
    error: str | None = None
    thumbnail: Image.Image | None = None

    @property
    def correct(self) -> bool | None:
        """Whether the prediction matches the label; ``None`` when unlabelled or failed."""
        if self.response is None or self.response.error is None:
            return None
        return self.response.error.correct

    @property
    def confidence(self) -> float:
        return 0.0 if self.response is None else self.response.prediction.confidence

    @property
    def focus(self) -> float | None:
        exp = None if self.response is None else self.response.explanation
        return None if exp is None else exp.focus_score

    def caption(self) -> str:
        """Short enough not to be cut: ``"✗ COVID→Normal 86%"``, ``"✓ Normal 86%"``, ``"Normal 86%"``."""
        if self.response is None:
            return f"failed: {PurePosixPath(self.name).name}"
        pred = f"{self.response.prediction.label} {self.confidence:.0%}"
        if self.correct is None:
            return pred
        return f"✓ {pred}" if self.correct else f"✗ {self.label}→{pred}"

    def row(self) -> list:
        """The table's row (:data:`COLUMNS`)."""
        if self.response is None:
            return [self.name, self.label or "", "", None, "", None, self.error or ""]
        focus = None if self.focus is None else round(self.focus, 3)
        correct = {True: "yes", False: "no", None: ""}[self.correct]
        return [self.name, self.label or "", self.response.prediction.label, round(self.confidence, 3), correct,
                focus, ""]


def explain_batch(conn: Connection, model: str, items: Sequence[BatchItem], *, classes: Sequence[str],
                  table: ClinicalTable | None = None, fields: Sequence[clinical_data.FormField] = (),
                  masks: dict[str, BatchItem] | None = None, method: str = "gradcam", colormap: str = "jet",
                  alpha: float = DEFAULT_ALPHA, workers: int = 4,
                  progress: Progress | None = None) -> list[BatchResult]:
    """Explain every item (``workers`` requests in flight), results in input order.

    Labels that are not classes of the model count as unlabelled. An image the server (or the app's
    decoder) rejects becomes a failed result; a server that is down or refuses the key stops the batch.

    Raises:
        CamserveError: The server is unreachable, timed out or refused the key.
    """
    mask_table = _path_table(masks or {})

    def one(item: BatchItem) -> BatchResult:
        row = clinical_data.row_of(table, item.name, fields)
        label = match_class((row.label if row is not None else None) or item.label, classes)
        sent = clinical_data.encode({} if row is None else row.fields)
        mask_item = _find(mask_table, masks or {}, item.name)
        try:
            data = item.read()
            image = as_rgb(data)
            mask = None if mask_item is None else mask_item.read()
            resp = conn.call(lambda c: c.explain(model, data, mask, label=label, explain=method, images="none",
                                                 clinical=sent))
        except (RequestError, DataError) as exc:
            return BatchResult(item.name, label, error=conn.message(exc))
        return BatchResult(item.name, label, resp, thumbnail=thumbnail(image, resp, colormap, alpha))

    results: list[BatchResult | None] = [None] * len(items)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(one, item): i for i, item in enumerate(items)}
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                results[futures[future]] = future.result()
                if progress is not None:
                    progress(done, len(items))
        except CamserveError:
            pool.shutdown(cancel_futures=True)
            raise
    return [r for r in results if r is not None]


def _path_table(files: dict[str, BatchItem]) -> ClinicalTable:
    """Mask paths as a table, so that masks are matched to images by the CSV's one lookup rule."""
    return ClinicalTable(Path("masks"), "", (), {name: {} for name in files})


def _find(table: ClinicalTable, files: dict[str, BatchItem], image: str) -> BatchItem | None:
    found = table.candidates(image)
    return files[found[0]] if len(found) == 1 and found[0] in files else None


def thumbnail(image: Image.Image, response: ExplainResponse, colormap: str, alpha: float) -> Image.Image | None:
    """The overlay of the predicted class, framed green when right, red when wrong."""
    exp = response.explanation
    if exp is None:
        return None
    shown = Shown(display_image(image, THUMB_SIDE - 2 * FRAME), (Map.of(exp, response.probabilities),))
    _, overlay = shown.render(shown.maps[0], colormap, alpha)
    correct = None if response.error is None else response.error.correct
    if correct is None:
        return overlay
    return ImageOps.expand(overlay, FRAME, fill=(22, 163, 74) if correct else (220, 38, 38))


def sort_results(results: Sequence[BatchResult]) -> list[BatchResult]:
    """Errors first, then the rest, each by confidence (highest first); failed images last."""
    def key(r: BatchResult) -> tuple[int, float]:
        group = 2 if r.response is None else 0 if r.correct is False else 1
        return group, -r.confidence
    return sorted(results, key=key)


def gallery(results: Sequence[BatchResult]) -> list[tuple[Image.Image, str]]:
    """``(thumbnail, caption)`` pairs for the results that have one, in the given order."""
    return [(r.thumbnail, r.caption()) for r in results if r.thumbnail is not None]


def gallery_label(results: Sequence[BatchResult]) -> str:
    """What the gallery's order is: errors first only when some labels are known."""
    if any(r.correct is not None for r in results):
        return "Errors first (red frame), then correct ones (green), each by confidence"
    return "By confidence (no true labels: add class folders or a CSV with a label column)"


def table(results: Sequence[BatchResult]) -> list[list]:
    """The table's rows, in the given order."""
    return [r.row() for r in results]


def to_csv(results: Sequence[BatchResult], classes: Sequence[str]) -> str:
    """The table as CSV text, with every class's probability."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*COLUMNS, *(f"p_{c}" for c in classes)])
    for r in results:
        probs = {} if r.response is None else r.response.probabilities
        writer.writerow([*("" if v is None else v for v in r.row()),
                         *(f"{probs[c]:.6f}" if c in probs else "" for c in classes)])
    return buf.getvalue()


def summary(results: Sequence[BatchResult]) -> str:
    """A few Markdown lines: counts, accuracy when labels are known, confusions, failures."""
    ok = [r for r in results if r.response is not None]
    judged = [r for r in ok if r.correct is not None]
    lines = [f"**{len(results)} image(s)**, {len(ok)} explained, {len(judged)} with a known label."]
    if judged:
        right = sum(bool(r.correct) for r in judged)
        lines.append(f"Accuracy **{right / len(judged):.0%}** ({right}/{len(judged)}).")
        pairs = Counter(f"{r.label} → {r.response.prediction.label}" for r in judged
                        if r.correct is False and r.response is not None)
        if pairs:
            lines.append("Confusions: " + ", ".join(f"{p} ×{n}" for p, n in pairs.most_common(5)) + ".")
    failed = [r for r in results if r.response is None]
    if failed:
        lines.append(f"**{len(failed)} failed** (see the table's note column).")
    return "\n\n".join(lines)
