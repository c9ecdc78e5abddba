"""What the page says, as plain functions of the app's state: status line, intro, notes and labels."""

from __future__ import annotations

from camserve.clinical_table import ClinicalTable
from camserve.schema import CAM_METHODS, ModelInfo
from gradio_app import batch as batch_ops
from gradio_app import clinical, uploads
from gradio_app.client import ServerStatus
from gradio_app.examples import Example

PROMPT = '<div class="verdict prompt">Pick an example or upload an image, then press <b>Explain</b>.</div>'


def status_line(status: ServerStatus) -> str:
    """The status line's Markdown, for a visitor (plain text marks: emoji fonts are missing on some machines)."""
    return f"**Model server up.** {status.message}" if status.ok else f"**Model server down.** {status.message}"


def intro(model: str | None, info: ModelInfo | None, description: str = "") -> str:
    """The page's heading and first lines, for the selected model (nothing model-specific without one)."""
    head = "## What the model sees\n"
    if model is None or info is None:
        return head + "The model server is not reachable yet; this page fills in once it is."
    text = (f"Upload an image (or pick an example below) and press **Explain**: the model **{model}** gives its "
            f"top classes ({', '.join(info.classes)}) and a heat map of where it looked.")
    if info.tabular:
        text += " It also reads clinical data: fill in the form under the options."
    return head + " ".join(p for p in (text, description, "Research demo: not for diagnosis.") if p)


def default_method(info: ModelInfo | None) -> str:
    """The model's own CAM method (its archive's default), else Grad-CAM."""
    return info.cam_method if info is not None and info.cam_method in CAM_METHODS else "gradcam"


def focus_info(mask_name: str | None) -> str:
    """What the focus score measures, and which mask the examples give (when they give one)."""
    given = f" (white = inside; the examples give the {mask_name})" if mask_name else " (white = inside)"
    return (f"Share of the map inside the region mask{given}: 1 = all inside; about the mask's share of the "
            "image = no better than chance.")


def batch_summary(results: list[batch_ops.BatchResult], found: uploads.Collected,
                  table: ClinicalTable | None) -> str:
    text = batch_ops.summary(results)
    if table is not None:
        text += "\n\n" + clinical.coverage(table, [i.name for i in found.items])
    skipped = uploads.skipped_text(found.skipped)
    return text + (f"\n\n{skipped}" if skipped else "")


def examples_label(examples: list[Example]) -> str:
    """The examples' label: what a click fills in."""
    extras = (["clinical values"] if any(e.clinical for e in examples) else []) + (
        ["mask"] if any(e.mask for e in examples) else [])
    return "**Examples** from the test set: a click fills in the image, its true label" + "".join(
        f", its {x}" for x in extras) + "."
