"""The page's event functions: thin calls into the plain modules, each returning its outputs by component.

Every failure becomes one readable message in the page (the banner, or the batch summary) and every
event that talks to the server also refreshes the status line, so it always tells the outcome of the
last call. Nothing here raises to Gradio: an output box never shows a bare "Error".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from camserve.errors import CamserveError, DataError, excerpt
from camserve.schema import DEFAULT_ALPHA, ModelInfo
from gradio_app import batch as batch_ops
from gradio_app import clinical, explain, uploads
from gradio_app.client import Connection
from gradio_app.examples import Example, pick_examples
from gradio_app.explain import AUTO, NO_LABEL, Answer
from gradio_app.files import picture, write_csv
from gradio_app.form import ClinicalForm
from gradio_app.render import as_rgb, display_image
from gradio_app.settings import Settings
from gradio_app.texts import batch_summary, default_method, examples_label, focus_info, intro, status_line

log = logging.getLogger(__name__)
EXAMPLE_SIDE = 160
EXAMPLES_PER_CLASS = 2
CANDIDATES_PER_CLASS = 10  # looked through for one the model gets wrong, when the first ones are all right


def as_thumbnail(path: Path) -> Image.Image:
    return display_image(as_rgb(path.read_bytes()), EXAMPLE_SIDE)


def _message(conn: Connection, exc: BaseException) -> str:
    if not isinstance(exc, CamserveError):
        log.exception("unexpected failure", exc_info=exc)
    else:
        log.info("%s: %s", type(exc).__name__, exc)
    return conn.message(exc)


@dataclass(frozen=True)
class ExampleView:
    """A model's examples as the page shows them: the line above, the thumbnails, the focus score's info."""

    note: str
    thumbnails: list[tuple[Image.Image, str]]
    focus_info: str


@dataclass
class Page:
    """The components the events read and write (filled in by ``app.build_app``)."""

    c: dict[str, Any] = field(default_factory=dict)
    form: ClinicalForm | None = None

    def __getattr__(self, name: str) -> Any:
        try:
            return self.c[name]
        except KeyError:
            raise AttributeError(name) from None


class Events:
    """The event functions of one page layout, shared by every visitor.

    Args:
        conn: The connection to TorchServe.
        settings: The app's settings (example sources).
        page: The page's components.
    """

    def __init__(self, conn: Connection, settings: Settings, page: Page) -> None:
        self.conn, self.settings, self.page = conn, settings, page
        self._examples: dict[str, list[Example]] = {}

    # --- model and server ----------------------------------------------------------------------------

    def info(self, model: str | None) -> ModelInfo | None:
        """A model's description, or ``None`` when it cannot be had now (the status line says why)."""
        if not model:
            return None
        try:
            return self.conn.describe(model)
        except CamserveError as exc:
            log.warning("cannot describe %s: %s", model, exc)
            return None

    def fields(self, model: str | None) -> list[clinical.FormField]:
        info = self.info(model)
        try:
            return clinical.form_fields(None if info is None else info.tabular)
        except CamserveError as exc:
            log.warning("%s: %s", model, exc)
            return []

    def examples(self, model: str | None) -> list[Example]:
        """A model's examples (read once)."""
        if not model:
            return []
        if model not in self._examples:
            source = self.settings.examples.get(model)
            names = [f.name for f in self.fields(model)]
            picked = pick_examples(source, names, EXAMPLES_PER_CLASS)
            candidates = pick_examples(source, names, CANDIDATES_PER_CLASS) if picked else []
            examples = explain.with_a_misread_one(self.conn, model, picked, candidates)
            if not self.conn.health.ok:  # read again once the server can describe the model and judge them
                return examples
            self._examples[model] = examples
        return self._examples[model]

    def select_model(self, model: str | None, target: str, label: str) -> dict:
        """Everything that follows the model: intro, class lists, examples, clinical form, batch note."""
        p = self.page
        info, fields = self.info(model), self.fields(model)
        names = [] if info is None else list(info.classes)
        source = self.settings.examples.get(model or "")
        shown = self.example_view(model)
        targets, labels = [AUTO, *names], [NO_LABEL, *names]
        out = {
            p.intro: intro(model, info, "" if source is None else source.description),
            # A value only when the current one is not a class of this model: an example picked while the
            # model changes keeps its true label.
            p.target: gr.Dropdown(choices=targets, **({} if target in targets else {"value": AUTO})),
            p.method: default_method(info),
            p.label: gr.Dropdown(choices=labels, **({} if label in labels else {"value": NO_LABEL})),
            p.examples_note: gr.Markdown(shown.note, visible=bool(shown.thumbnails)),
            p.examples: gr.Gallery(value=shown.thumbnails or None, visible=bool(shown.thumbnails)),
            p.focus: gr.Textbox(value="", info=shown.focus_info),
            p.batch_note: clinical.batch_note(fields),
            p.labels_csv: None,
            p.status: status_line(self.conn.health),
        }
        out.update(zip(p.form.outputs, p.form.updates(fields), strict=True))
        return out

    def example_view(self, model: str | None) -> ExampleView:
        """What the page shows of a model's examples."""
        examples = self.examples(model)
        source = self.settings.examples.get(model or "")
        masks = source.mask_name if source is not None and any(e.mask is not None for e in examples) else None
        return ExampleView(examples_label(examples), [(as_thumbnail(e.image), e.caption()) for e in examples],
                           focus_info(masks))

    def poll(self, model: str | None, known: list[str] | None) -> tuple:
        """The timer's check: status line, and the model list when the server's models changed."""
        status = self.conn.status()
        if not status.ok or status.models == (known or []):
            return status_line(status), gr.skip(), known
        value = model if model in status.models else status.models[0]
        return status_line(status), gr.Dropdown(choices=status.models, value=value,
                                                visible=len(status.models) > 1), status.models

    # --- explain -------------------------------------------------------------------------------------

    def explain(self, image, model=None, target=AUTO, label=NO_LABEL, method="gradcam", faithful=False, mask=None,
                colormap="jet", alpha=DEFAULT_ALPHA, same_scale=False, *form_values) -> dict:
        """Ask the server, then draw; a failure is one message in the banner and clears the outputs.

        The defaults are the API's: a client may send the image alone.
        """
        p = self.page
        try:
            model = self.served(model)
            fields = self.fields(model)
            sent = clinical.request_fields(fields, p.form.values(fields, form_values))
            answer = explain.ask(self.conn, model, image, mask=mask, target=target, label=label, method=method,
                                 faithfulness=bool(faithful), clinical=sent)
            out = self.draw(answer, target, colormap, alpha, same_scale)
        except Exception as exc:  # noqa: BLE001 (every failure is shown, the unexpected ones also logged)
            out = self.cleared(explain.message_html(_message(self.conn, exc)))
            answer = None
        scores = None if answer is None else {c.label: c.probability for c in answer.response.topk}
        original = None if answer is None else picture(answer.shown.image)
        return {**out, p.scores: scores, p.original: original, p.answer: answer,
                p.status: status_line(self.conn.health)}

    def served(self, model: str | None) -> str:
        """The model to ask: the one named if the server serves it, else (none named: the page was built
        while the server was down) the first one it serves.

        Raises:
            DataError: The server serves no such model (or none at all).
        """
        models = self.conn.models()
        if not models:
            raise DataError("The model server serves no model.")
        if model and model not in models:
            raise DataError(f"The model server does not serve {excerpt(model)}; it serves {', '.join(models)}.")
        return model or models[0]

    def redraw(self, answer: Answer | None, target, colormap, alpha, same_scale) -> dict:
        """New pictures for other controls, from the last answer: no request to the server."""
        if answer is None:
            return {}
        try:
            return self.draw(answer, target, colormap, alpha, same_scale)
        except Exception as exc:  # noqa: BLE001
            return {self.page.banner: explain.message_html(_message(self.conn, exc))}

    def draw(self, answer: Answer, target, colormap, alpha, same_scale) -> dict:
        p = self.page
        v = explain.view(answer, None if target in (None, AUTO) else target, colormap, float(alpha), bool(same_scale))
        (role, first), (heat, over) = v.maps[0], v.pictures[0]
        second = None if len(v.maps) < 2 else (v.maps[1], v.pictures[1][1])
        text = explain.details(answer, first)
        faith = explain.faithfulness_text(first)
        return {
            p.banner: explain.verdict_html(answer.response),
            p.overlay: gr.Image(picture(over), label=f"{role}: {first.label} ({first.probability:.0%})",
                                alt_text=f"{colormap} heat map of where the model looked for {first.label}, "
                                         "over the image"),
            p.overlay_true: gr.Image(None if second is None else picture(second[1]), visible=second is not None,
                                     label="" if second is None else f"True class: {second[0][1].label} "
                                                                     f"({second[0][1].probability:.0%})",
                                     alt_text="" if second is None else f"heat map for the true class "
                                                                        f"{second[0][1].label}"),
            p.colorbar: v.colorbar,
            p.heatmap: gr.Image(picture(heat), alt_text=f"{colormap} heat map for {first.label}, without the image"),
            p.focus: explain.focus_text(first, answer.mask_share),
            p.details: text + (f"\n\n{faith}" if faith else ""),
            p.every_class: v.every_class or None,
        }

    def cleared(self, banner: str) -> dict:
        p = self.page
        return {p.banner: banner, p.overlay: None, p.overlay_true: gr.Image(None, visible=False), p.colorbar: "",
                p.heatmap: None, p.focus: "", p.details: "", p.every_class: None}

    def pick_example(self, model: str | None, evt: gr.SelectData) -> tuple:
        """An example's image, true label, mask and clinical values into the inputs."""
        examples = self.examples(model)
        if not 0 <= evt.index < len(examples):
            return (gr.skip(),) * (3 + len(self.page.form.inputs))
        e = examples[evt.index]
        mask = None if e.mask is None else as_rgb(e.mask.read_bytes()).convert("L")
        values = self.page.form.filled(self.fields(model), e.clinical)
        return (as_rgb(e.image.read_bytes()), e.label, mask, *values)

    # --- batch ---------------------------------------------------------------------------------------

    def batch(self, paths, model, method, colormap, alpha, labels_csv, mask_paths,
              progress=gr.Progress()) -> dict:  # noqa: B008 (Gradio injects it)
        p = self.page
        progress(0.0, desc="Reading the upload")
        try:
            if not paths:
                raise DataError("Add some images or a zip first.")
            found = uploads.collect(paths)
            masks = {} if not mask_paths else {i.name: i for i in uploads.collect(mask_paths).items}
            model = self.served(model)
            fields = self.fields(model)
            table = clinical.read_batch_csv(Path(labels_csv), fields) if labels_csv else None
            clinical.check_required(fields, table)
            classes = self.conn.classes(model)
            progress((0, len(found.items)), desc="Explaining")
            results = batch_ops.explain_batch(
                self.conn, model, found.items, classes=classes, table=table, fields=fields, masks=masks,
                method=method, colormap=colormap, alpha=float(alpha),
                progress=lambda done, n: progress((done, n), desc="Explaining"))
        except Exception as exc:  # noqa: BLE001
            return {p.batch_summary: f"**{_message(self.conn, exc)}**", p.gallery: None, p.table: None,
                    p.table_csv: None, p.status: status_line(self.conn.health)}
        ordered = batch_ops.sort_results(results)
        return {p.batch_summary: batch_summary(ordered, found, table),
                p.gallery: gr.Gallery(batch_ops.gallery(ordered), label=batch_ops.gallery_label(ordered)),
                p.table: batch_ops.table(ordered),
                p.table_csv: write_csv(batch_ops.to_csv(ordered, classes)),
                p.status: status_line(self.conn.health)}


