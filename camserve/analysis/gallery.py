"""The pictures of a report: error cards, the ``gradcam_errors/`` panels, the ``figures/misclassified/``
thumbnails and the thumbnails of the browse-by-cell view, all drawn here from the images on disk and
the maps the server sent (as numbers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from camserve.analysis import cards as K
from camserve.analysis.dataset import Item, safe_component
from camserve.analysis.html_parts import MAX_PER_CELL, Card, Picture, Thumb
from camserve.analysis.localisation import focus
from camserve.analysis.results import FAITHFULNESS, Analysis
from camserve.errors import CamserveError
from camserve.imaging import decode_image, decode_mask
from camserve.schema import DEFAULT_MAX_SIDE, Explanation

BROWSE_SIDE = 96  # thumbnails of the browse-by-cell view (JPEG)


@dataclass(frozen=True)
class Style:
    """How maps are drawn and what the run had."""

    method: str = "gradcam"
    colormap: str = "jet"
    alpha: float = 0.5
    visualize: bool = False
    top_k: int = 20
    tabular: bool = False  # the model takes clinical fields: cards list them
    maps_requested: bool = False  # --gradcam: a card without maps had its request fail


def panel_name(method: str) -> str:
    """The suffix of a ``gradcam_errors/`` file: ``gradcam``, ``gradcampp``, ``layercam``..."""
    return safe_component(method.replace("+", "p"))


def _masks(item: Item, size: tuple[int, int]) -> K.Masks:
    def one(path: Path | None) -> np.ndarray | None:
        if path is None:
            return None
        try:
            return decode_mask(path.read_bytes(), size)
        except (OSError, CamserveError):
            return None
    return K.Masks(one(item.mask), one(item.lesion))


def _picture(title: str, image: Image.Image, alt: str) -> Picture:
    """Small images as PNG (exact pixels), larger ones as JPEG (a report of many cards stays small)."""
    if max(image.size) <= 256:
        return Picture(title, K.encode(image, "PNG"), alt, "image/png")
    return Picture(title, K.encode(image, "JPEG"), alt, "image/jpeg")


def _facts(an: Analysis, i: int, maps: Sequence[Explanation], masks: K.Masks) -> list[tuple[str, str]]:
    true, pred = an.classes[an.y_true[i]], an.classes[an.y_pred[i]]
    facts = [("p(true class)", f"{an.probs[i, an.y_true[i]]:.3f}")]
    if np.isfinite(an.focus[i]):
        facts.append((f"focus in the mask, {pred} map", f"{an.focus[i]:.3f}"))
    if maps and masks.roi is not None:
        local = focus(maps[1].cam, masks.roi)
        facts.append((f"focus in the mask, {true} map", "n/a" if local is None else f"{local:.3f}"))
    if np.isfinite(an.hit[i]):
        facts.append((f"pointing game on the lesion, {pred} map", "hit" if an.hit[i] else "miss"))
    if np.isfinite(an.lesion_focus[i]):
        facts.append((f"focus in the lesion, {pred} map", f"{an.lesion_focus[i]:.3f}"))
    for name, exp in zip((pred, true), maps, strict=False):
        facts.append((f"raw map maximum (cam_max), {name}", f"{exp.cam_max:.4g}"))
    if np.isfinite(an.faithfulness[i]).any():
        facts += [(k.replace("_", " "), f"{an.faithfulness[i, j]:.3f}") for j, k in enumerate(FAITHFULNESS)]
    return facts


def error_gallery(an: Analysis, items: Mapping[str, Item], out: Path, stems: Mapping[str, str],
                  maps: Mapping[str, Sequence[Explanation]], style: Style,
                  clinical: Mapping[str, Mapping[str, str]] | None = None) -> tuple[list[Card], dict[str, str]]:
    """Cards of the ``top_k`` most confident errors (with their two maps when ``maps`` has them), their
    ``gradcam_errors/TRUE_as_PRED/*.png`` panels, and with ``visualize`` a thumbnail of every error in
    ``figures/misclassified/``.

    Returns:
        The cards, and each panel's path relative to ``out`` by image.
    """
    cards: list[Card] = []
    files: dict[str, str] = {}
    for rank, i in enumerate(an.errors_by_confidence()):
        if rank >= style.top_k and not style.visualize:
            break
        rel, conf = an.rels[i], float(an.confidence[i])
        image = decode_image(items[rel].path.read_bytes(), field=rel)
        pair = safe_component(an.pair(i))
        if style.visualize:
            target = out / "figures" / "misclassified" / pair / f"{stems[rel]}_conf{conf:.2f}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            K.thumbnail(image).save(target)
        if rank >= style.top_k:
            continue
        true, pred = an.classes[an.y_true[i]], an.classes[an.y_pred[i]]
        masks = _masks(items[rel], image.size)
        two = list(maps.get(rel, ()))
        if two:
            full = K.card_images(image, two, masks, style.colormap, style.alpha, DEFAULT_MAX_SIDE)
            titles = ("image", f"{style.method}: predicted {pred}", f"{style.method}: true {true}")
            target = out / "gradcam_errors" / pair / f"{stems[rel]}_conf{conf:.2f}_{panel_name(style.method)}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            K.panel(list(zip(titles, full, strict=True)), K.caption(true, pred, conf)).save(target)
            files[rel] = target.relative_to(out).as_posix()
            shown = K.card_images(image, two, masks, style.colormap, style.alpha, K.CARD_SIDE)
            pictures = [_picture(t, im, f"{t}, {rel}") for t, im in zip(titles, shown, strict=True)]
            note = ""
        else:
            pictures = [_picture("image", masks.outline(K.thumbnail(image)), rel)]
            note = ("The map request failed (see failures.csv)." if style.maps_requested
                    else "Maps not requested: run with --gradcam.")
        cards.append(Card(rel, true, pred, conf, pictures, _facts(an, i, two, masks),
                          (clinical or {}).get(rel, {}) if style.tabular else None, note))
    return cards, files


def browse_thumbs(an: Analysis, items: Mapping[str, Item]) -> list[Thumb]:
    """Thumbnails for the browse-by-cell view: per confusion-matrix cell, the images it will show
    (errors most confident first, correct ones least confident first, at most ``MAX_PER_CELL``)."""
    cells: dict[tuple[int, int], list[int]] = {}
    for i in range(an.n):
        cells.setdefault((int(an.y_true[i]), int(an.y_pred[i])), []).append(i)
    chosen: list[int] = []
    for (t, p), idx in cells.items():
        sign = -1.0 if t != p else 1.0
        chosen += sorted(idx, key=lambda j: (sign * float(an.confidence[j]), an.rels[j]))[:MAX_PER_CELL]
    thumbs = []
    for i in sorted(chosen):
        rel = an.rels[i]
        image = K.thumbnail(decode_image(items[rel].path.read_bytes(), field=rel), BROWSE_SIDE)
        thumbs.append(Thumb(rel, int(an.y_true[i]), int(an.y_pred[i]), float(an.confidence[i]),
                            K.encode(image, "JPEG")))
    return thumbs
