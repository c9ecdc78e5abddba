"""Explain one image through the server (:func:`ask`) and shape the answer for display (:func:`view`).

No Gradio here. The server is asked for every class's map at once (``target=all``, from one forward)
and for no pictures (``images=none``): the app draws them itself (``gradio_app.render``), so a change of
class, colormap, opacity or scale needs no new request.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from camserve.errors import CamserveError, DataError
from camserve.schema import CAM_METHODS, MAX_TARGETS, ExplainResponse
from gradio_app import clinical as clinical_data
from gradio_app.client import Connection
from gradio_app.examples import Example
from gradio_app.render import ImageInput, Map, Shown, as_rgb, colorbar, display_image, encode

log = logging.getLogger(__name__)
AUTO = "auto"  # the class to explain: the predicted one
NO_LABEL = "(unknown)"  # the true label: not given
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM", "hirescam": "HiResCAM",
                "layercam": "LayerCAM", "layercam-fusion": "LayerCAM (fused layers)"}


@dataclass(frozen=True)
class Answer:
    """The server's answer for one image, ready to draw.

    Attributes:
        response: The server's response (its ``maps`` hold every class asked for).
        shown: The image at display size and the maps.
        clinical: The clinical fields sent, as ``"age=61, sex=F"`` (empty when none).
        mask_share: The share of the image inside the mask, or ``None`` without a mask.
    """

    response: ExplainResponse
    shown: Shown
    clinical: str = ""
    mask_share: float | None = None


def ask(conn: Connection, model: str, image: ImageInput | None, *, mask: ImageInput | None = None,
        target: str | None = AUTO, label: str | None = None, method: str = "gradcam",
        faithfulness: bool = False, clinical: Mapping[str, Any] | None = None) -> Answer:
    """Send one image to the server and keep what the view needs.

    Args:
        conn: The connection to TorchServe.
        model: Model name.
        image: A PIL image or encoded image bytes.
        mask: Optional region-of-interest mask (white inside) for the focus score.
        target: The class to explain first, ``"auto"`` (or ``None``) for the predicted one.
        label: True class, for the verdict and its map; ``None`` or ``"(unknown)"`` when not known.
        method: One of ``camserve.schema.CAM_METHODS``.
        faithfulness: Also measure how much the prediction depends on the map (one extra pass).
        clinical: A multimodal model's clinical fields (``gradio_app.clinical.request_fields``).

    Raises:
        CamserveError: No image, an unreadable one, or whatever the server answered.
    """
    if image is None:
        raise DataError("Upload an image first (or pick an example).")
    original = as_rgb(image)  # the server's decoder: an unreadable file is named here, before any request
    mask_image = None if mask is None else as_rgb(mask)
    target = None if target in (None, "", AUTO) else target
    label = None if label in (None, "", NO_LABEL) else label
    classes = conn.classes(model)
    options = {"label": label, "explain": method, "images": "none", "faithfulness": "true" if faithfulness else None,
               "clinical": clinical_data.encode(clinical or {})}
    data, mask_data = encode(image), None if mask is None else encode(mask)
    first = "all" if len(classes) <= MAX_TARGETS else target
    response = conn.call(lambda c: c.explain(model, data, mask_data, target=first, **options))
    maps = response.maps
    # The maps on display must be there: a model with too many classes for "all" gets them one by one.
    for needed in dict.fromkeys((target or response.prediction.label, label)):
        if needed is not None and needed not in {m.target.label for m in maps}:
            maps = maps + conn.call(lambda c, t=needed: c.explain(model, data, mask_data, target=t, **options)).maps
    shown = Shown(display_image(original), tuple(Map.of(e, response.probabilities) for e in maps))
    return Answer(response, shown, clinical_data.summary(clinical or {}),
                  None if mask_image is None else mask_share(mask_image))


def misread(conn: Connection, model: str, candidates: Sequence[Example], workers: int = 4) -> list[bool | None]:
    """Whether the model gets each example wrong (prediction-only requests, a few in flight); ``None``
    where it cannot tell (the request failed)."""
    def wrong(e: Example) -> bool | None:
        try:
            r = conn.call(lambda c: c.explain(model, e.image.read_bytes(), label=e.label, explain="none",
                                              images="none", clinical=clinical_data.encode(e.clinical)))
        except (CamserveError, OSError) as exc:
            log.info("cannot check example %s: %s", e.image, exc)
            return None
        return None if r.error is None else not r.error.correct
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(wrong, candidates))


def with_a_misread_one(conn: Connection, model: str, examples: list[Example], candidates: Sequence[Example]
                       ) -> list[Example]:
    """The examples, plus the first candidate the model gets wrong when none of them is (a demo should
    show what a wrong answer looks like); unchanged when the server cannot say."""
    if any(misread(conn, model, examples)):
        return examples
    rest = [c for c in candidates if c not in examples]
    found = next((c for c, wrong in zip(rest, misread(conn, model, rest), strict=True) if wrong), None)
    return examples if found is None else [*examples, found]


def mask_share(mask: Image.Image) -> float:
    """The share of the image inside a mask (white = inside, as the server reads it)."""
    return float((np.asarray(mask.convert("L")) >= 128).mean())


@dataclass(frozen=True)
class View:
    """Everything the explain view shows for one answer and one set of display controls.

    Attributes:
        maps: ``(role, map)`` of each map on display: the explained class, then the true class when
            it differs (a wrong answer shows both).
        pictures: ``(heatmap, overlay)`` of each map on display.
        every_class: ``(overlay, caption)`` of every class, for the side-by-side comparison.
        colorbar: The colour bar's HTML.
    """

    maps: list[tuple[str, Map]]
    pictures: list[tuple[Image.Image, Image.Image]]
    every_class: list[tuple[Image.Image, str]]
    colorbar: str


def view(answer: Answer, target: str | None, colormap: str, alpha: float, same_scale: bool) -> View:
    """Draw an answer: the explained class (the chosen one, else the predicted one) and, when a true
    label is given and differs, the true class beside it; every class for comparison."""
    shown, response = answer.shown, answer.response
    first = shown.get(target or "") or shown.get(response.prediction.label) or shown.maps[0]
    role = "Predicted" if first.label == response.prediction.label else "Explained"
    maps = [(role, first)]
    true = shown.get(response.error.true_label) if response.error is not None else None
    if true is not None and true.label != first.label:
        maps.append(("True class", true))
    pictures = [shown.render(m, colormap, alpha, same_scale) for _, m in maps]
    every = [(shown.render(m, colormap, alpha, same_scale)[1], f"{m.label} · {m.probability:.0%} · max {m.cam_max:.3g}")
             for m in shown.maps] if len(shown.maps) > 1 else []
    return View(maps, pictures, every, colorbar(colormap, shown, maps, same_scale))


def verdict(response: ExplainResponse) -> str:
    """"Correct: Normal, 86% confident", "Wrong: COVID misread as Normal, 86% confident", or the prediction."""
    pred = response.prediction
    confident = f"{pred.confidence:.0%} confident"
    if response.error is None:
        return f"Predicted {pred.label}, {confident} (no true label given)"
    if response.error.correct:
        return f"Correct: {pred.label}, {confident}"
    return f"Wrong: {response.error.true_label} misread as {pred.label}, {confident}"


def verdict_html(response: ExplainResponse) -> str:
    """The verdict as a coloured banner: green when right, red when wrong, neutral without a label."""
    kind = "none" if response.error is None else "right" if response.error.correct else "wrong"
    return f'<div class="verdict {kind}" role="status">{html.escape(verdict(response))}</div>'


def message_html(message: str) -> str:
    """A failure, in the banner's place."""
    return f'<div class="verdict failed" role="alert">{html.escape(message)}</div>'


def focus_text(m: Map, share: float | None) -> str:
    """``"0.62 (the mask covers 35% of the image)"``; empty without a mask or a score."""
    score = m.explanation.focus_score
    if score is None:
        return ""
    return f"{score:.3f}" + ("" if share is None else f" (the mask covers {share:.0%} of the image)")


def faithfulness_text(m: Map) -> str:
    """One sentence on the map's faithfulness, or ``""`` when it was not measured."""
    f = m.explanation.faithfulness
    if f is None:
        return ""
    return (f"Faithfulness of the {m.label} map: keeping only what it highlights leaves a confidence of "
            f"{f.masked_confidence:.1%} of {f.confidence:.1%} (average drop {f.average_drop:.2f}, lower is better); "
            f"removing its top {f.deletion_fraction:.0%} drops the confidence by {f.deletion_drop:.0%} "
            "(higher is better).")


def details(answer: Answer, m: Map) -> str:
    """One line: the method and class explained, the model, the clinical fields sent, the server time."""
    r = answer.response
    info, method = r.model, m.explanation.method
    name = METHOD_NAMES.get(method, method)
    ms = sum(v for k, v in r.timing_ms.items() if k != "batch_size")
    sent = "" if info.tabular is None else f" · clinical data: {answer.clinical or 'all missing'}"
    return (f"{name} of **{m.label}** · model {info.name} ({info.arch}, layer {info.layer}){sent} · "
            f"{ms:.0f} ms on the server")


def method_choices() -> list[tuple[str, str]]:
    """The method dropdown's ``(shown, value)`` choices."""
    return [(METHOD_NAMES[m], m) for m in CAM_METHODS]
