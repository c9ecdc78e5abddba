"""Explain one image through the server and shape the result for display (no Gradio here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from camserve.errors import CamserveError
from camserve.render import from_data_url
from camserve.schema import DEFAULT_ALPHA, DEFAULT_MAX_SIDE, ExplainResponse
from gradio_app import clinical as clinical_data
from gradio_app.client import Connection, UserError, scrub
from gradio_app.render import ImageInput, Shown, as_rgb, encode

AUTO = "auto"  # the class to explain: the predicted one
NO_LABEL = "(unknown)"  # the true label: not given


@dataclass(frozen=True)
class ExplainView:
    """Everything the explain view shows for one image.

    Attributes:
        scores: Top-k class name to probability (for ``gr.Label``).
        original: The image at display size (as decoded by the server: EXIF applied, RGB).
        heatmap: The colour-mapped Grad-CAM.
        overlay: Heatmap blended on the image.
        focus: Share of the heatmap inside the mask, or ``None`` without a mask.
        verdict: "Correct (...)", "COVID misread as Normal, 86% confident" or the prediction alone.
        details: Which class is explained, by which model, how fast.
        shown: What a re-render with another colormap or alpha needs.
        response: The server's response.
    """

    scores: dict[str, float]
    original: Image.Image
    heatmap: Image.Image
    overlay: Image.Image
    focus: float | None
    verdict: str
    details: str
    shown: Shown
    response: ExplainResponse

    def outputs(self) -> tuple:
        """The values of the explain view's outputs, in display order."""
        return (self.scores, self.original, self.heatmap, self.overlay, self.focus, self.verdict,
                self.details, self.shown)


def explain(conn: Connection, model: str, image: ImageInput, *, mask: ImageInput | None = None,
            target: str | None = AUTO, label: str | None = None, colormap: str = "jet",
            alpha: float = DEFAULT_ALPHA, max_side: int = DEFAULT_MAX_SIDE,
            clinical: Mapping[str, Any] | None = None) -> ExplainView:
    """Send one image to the server and return what to display.

    Args:
        conn: The connection to TorchServe.
        model: Model name.
        image: A PIL image (e.g. from ``gr.Image(type="pil")``) or encoded image bytes.
        mask: Optional region-of-interest mask (white inside) for the focus score.
        target: Class to explain, ``"auto"`` (or ``None``) for the predicted one.
        label: True class, for the verdict; ``None`` or ``"(unknown)"`` when not known.
        colormap: One of ``camserve.schema.COLORMAPS``.
        alpha: Heatmap weight in the overlay.
        max_side: Longest side of the returned images.
        clinical: A multimodal model's clinical fields (``gradio_app.clinical.request_fields``); a field
            left out is missing.

    Raises:
        UserError: The server is down, slow, refused the key or rejected the request.
    """
    if image is None:
        raise UserError("Upload an image first (or pick an example).")
    try:
        original = as_rgb(image)
    except CamserveError as exc:  # camserve's decoder names the problem: not an image, too large...
        raise UserError(scrub(exc.message)) from exc
    data, mask_data = encode(image), None if mask is None else encode(mask)
    options = {"target": None if target in (None, "", AUTO) else target,
               "label": None if label in (None, "", NO_LABEL) else label,
               "colormap": colormap, "alpha": alpha, "max_side": max_side,
               "clinical": clinical_data.encode(clinical or {})}
    response = conn.run(lambda c: c.explain(model, data, mask_data, **options))
    exp = response.explanation
    if exp is None:
        raise UserError("The model server returned no explanation.")
    shown = Shown.of(original, exp.cam, max_side)
    return ExplainView(
        scores={c.label: c.probability for c in response.topk},
        original=shown.image,
        heatmap=from_data_url(exp.heatmap),
        overlay=from_data_url(exp.overlay),
        focus=None if exp.focus_score is None else round(exp.focus_score, 3),
        verdict=verdict(response),
        details=details(response, clinical_data.summary(clinical or {})),
        shown=shown,
        response=response,
    )


def verdict(response: ExplainResponse) -> str:
    """"Correct (Normal, 86% confident)", "COVID misread as Normal, 86% confident", or the prediction."""
    pred = response.prediction
    confident = f"{pred.confidence:.0%} confident"
    if response.error is None:
        return f"Predicted {pred.label}, {confident} (no true label given)"
    if response.error.correct:
        return f"Correct ({pred.label}, {confident})"
    return f"{response.error.true_label} misread as {pred.label}, {confident}"


def details(response: ExplainResponse, clinical: str = "") -> str:
    """One line: the explained class, the model, the clinical fields sent (if any) and the server time."""
    m, exp = response.model, response.explanation
    target = exp.target.label if exp is not None else response.prediction.label
    ms = sum(v for k, v in response.timing_ms.items() if k != "batch_size")
    sent = "" if m.tabular is None else f" · clinical data: {clinical or 'all missing'}"
    return f"Grad-CAM of **{target}** · model {m.name} ({m.arch}, layer {m.layer}){sent} · {ms:.0f} ms on the server"
