"""Example images for the explain view, taken from an ImageFolder tree (class folder = true label).

With the phantom data set (``scripts/make_phantoms.py``) the lung mask of ``ROOT/../masks/lungs/
SPLIT/CLASS/ID.png`` is offered with each example, so the focus score is filled in too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gradio_app.batch import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Example:
    image: Path
    label: str
    mask: Path | None = None

    def row(self) -> list[str | None]:
        """The ``gr.Examples`` row: image, true label, mask."""
        return [str(self.image), self.label, None if self.mask is None else str(self.mask)]


def pick_examples(root: Path | None, per_class: int = 2) -> list[Example]:
    """The first ``per_class`` images (by name) of each class folder under ``root``; none if it is absent."""
    if root is None or not root.is_dir():
        return []
    picked = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:per_class]
        picked += [Example(p, folder.name, lung_mask(p, root)) for p in images]
    return picked


def lung_mask(image: Path, root: Path) -> Path | None:
    """``ROOT/../masks/lungs/<ROOT's name>/<class>/<file>`` if that file exists."""
    mask = root.parent / "masks" / "lungs" / root.name / image.relative_to(root)
    return mask if mask.is_file() else None
