"""Example cases for the explain view, taken from each model's own test split.

:func:`demo_sources` is the one place that knows where the demo data lives (``make model`` writes it);
any other model gets examples from ``--examples NAME=DIR``. An example carries what a visitor would
otherwise type: the true label (its class folder), a region mask when the data set has one at the same
relative path, and a multimodal model's clinical values from the data set's CSV.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from camserve.clinical_table import read_table
from camserve.errors import CamserveError
from camserve.folders import walk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExampleSource:
    """Where one model's examples come from.

    Attributes:
        images: An ImageFolder test split (class folder = true label).
        masks: A tree with a region mask at each image's relative path, or ``None``.
        mask_name: What the masks outline, for the page ("lung mask").
        clinical: A clinical CSV whose ``path`` column is relative to ``clinical_root``, or ``None``.
        clinical_root: The folder the CSV's paths start from.
        description: One line on what the images are, for the page's intro.
    """

    images: Path
    masks: Path | None = None
    mask_name: str = "region mask"
    clinical: Path | None = None
    clinical_root: Path | None = None
    description: str = ""


def demo_sources(data_dir: Path) -> dict[str, ExampleSource]:
    """The demo models' test splits under ``data_dir``, by served model name."""
    chest, thyroid = data_dir / "phantoms", data_dir / "thyroid"
    return {
        "chest_phantom": ExampleSource(
            chest / "test", masks=chest / "masks" / "lungs" / "test", mask_name="lung mask",
            description="Synthetic frontal chest radiographs (phantoms drawn by a program, not patients)."),
        "thyroid_phantom": ExampleSource(
            thyroid / "test", clinical=thyroid / "clinical.csv", clinical_root=thyroid,
            description="Synthetic thyroid ultrasound images with clinical records (drawn by a program, "
                        "not patients)."),
    }


@dataclass(frozen=True)
class Example:
    """One example case.

    Attributes:
        image: The image file.
        label: Its true class (the class folder's name).
        mask: Its region mask, or ``None``.
        clinical: Its clinical fields as written in the CSV (empty cells left out).
    """

    image: Path
    label: str
    mask: Path | None = None
    clinical: dict[str, str] = field(default_factory=dict)

    def caption(self) -> str:
        """``"COVID"``, or ``"malignant · age 61, sex F"`` with a few clinical values."""
        shown = ", ".join(f"{k} {v}" for k, v in list(self.clinical.items())[-2:])
        return f"{self.label} · {shown}" if shown else self.label


def pick_examples(source: ExampleSource | None, features: Sequence[str] = (), per_class: int = 2) -> list[Example]:
    """The first ``per_class`` images (by path) of each class folder of ``source``; none if it is absent.

    Args:
        source: Where the examples are, or ``None``.
        features: The model's clinical fields (their CSV columns); empty for an image-only model.
        per_class: Examples per class.
    """
    if source is None or not source.images.is_dir():
        return []
    by_class: dict[str, list[str]] = {}
    for rel in walk(source.images, images_only=True).files:
        folder, _, name = rel.rpartition("/")
        if folder and "/" not in folder and len(by_class.setdefault(folder, [])) < per_class:
            by_class[folder].append(rel)
    clinical = _clinical_rows(source, features)
    picked = []
    for folder in sorted(by_class):
        for rel in by_class[folder]:
            image = source.images / rel
            mask = None if source.masks is None else source.masks / rel
            picked.append(Example(image, folder, mask if mask is not None and mask.is_file() else None,
                                  clinical(image)))
    return picked


def _clinical_rows(source: ExampleSource, features: Sequence[str]) -> Callable[[Path], dict[str, str]]:
    """A lookup from an example image to its clinical fields (``{}`` without a CSV or a row)."""
    if source.clinical is None or not features:
        return lambda image: {}
    root = source.clinical_root or source.clinical.parent
    try:
        table = read_table(source.clinical, features)
    except CamserveError as exc:
        log.warning("examples without clinical values: %s", exc.message)
        return lambda image: {}

    def lookup(image: Path) -> dict[str, str]:
        return table.lookup(Path(os.path.relpath(image, root)).as_posix()) or {}
    return lookup
