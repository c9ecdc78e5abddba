"""The Gradio shell: ``build_app(settings)`` lays out the page and wires events to plain functions.

All logic lives in ``client``, ``explain``, ``render``, ``batch``, ``clinical`` and ``examples`` (the
clinical form's widgets in ``form``); the only thing this module adds is turning a ``UserError`` (or
anything unexpected) into ``gr.Error``, in one place.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from camserve.schema import COLORMAPS, DEFAULT_ALPHA
from gradio_app import batch as batch_ops
from gradio_app import clinical, form
from gradio_app.client import Connection, ServerStatus, UserError
from gradio_app.examples import pick_examples
from gradio_app.explain import AUTO, NO_LABEL, explain
from gradio_app.render import Shown
from gradio_app.settings import Settings

log = logging.getLogger(__name__)
SERVER_CONCURRENCY = 8  # events that only wait on TorchServe: let them overlap (Gradio's default is 1)
# System fonts: the default themes fetch Google Fonts, which an offline machine waits on.
THEME = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
# PNG, not Gradio's lossy WebP default; no "share" button (it uploads the image to Hugging Face).
OUTPUT_IMAGE: dict[str, Any] = {"format": "png", "interactive": False, "height": 280,
                                "buttons": ["download", "fullscreen"]}
CSS = "#status {min-height: 2em} #status p {margin: 0.3em 0}"
INTRO = ("Upload a chest X-ray (or pick an example), press **Explain**: the model's top classes, and "
         "where it looked (Grad-CAM). Research demo on synthetic data: not for diagnosis.")


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show a ``UserError`` as a Gradio error; log anything else and show a generic message."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            log.info("%s: %s", fn.__name__, exc)
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise gr.Error("Something went wrong in the app; the details are in its log.",
                           print_exception=False) from None
    return wrapper


def status_line(status: ServerStatus) -> str:
    """The status line's Markdown (plain text marks: emoji fonts are missing on some machines)."""
    if status.ok:
        return f"**Server up.** {status.message}"
    return f"**Server down.** {status.message} The page works again once it is up: press **Reconnect**."


class Handlers:
    """The event functions: thin calls into the plain modules, with ``UserError`` shown as ``gr.Error``.

    Args:
        conn: The connection to TorchServe, shared by every visitor.
        fallback_labels: True-label choices while the model's classes are unknown (the examples' classes).
    """

    def __init__(self, conn: Connection, fallback_labels: list[str]) -> None:
        self.conn = conn
        self.fallback_labels = fallback_labels

    @user_errors
    def explain(self, image, model, target, colormap, alpha, mask, label, *slots) -> tuple:
        """One image; ``slots`` are the clinical form's values (``form.ClinicalForm.inputs``)."""
        model = model or self.first_model()
        fields = {}
        if not all(map(clinical.is_missing, slots)):  # an image-only model's form is empty: no lookup
            form_fields = clinical.form_fields(self.conn.describe(model).tabular)
            fields = clinical.request_fields(form_fields, form.values(form_fields, slots))
        view = explain(self.conn, model, image, mask=mask, target=target, label=label, colormap=colormap,
                       alpha=alpha, clinical=fields)
        return view.outputs()

    @user_errors
    def rerender(self, shown: Shown | None, colormap: str, alpha: float) -> tuple:
        """New heatmap and overlay from the cached map: no request to the server."""
        if shown is None:
            return gr.skip(), gr.skip()
        return shown.render(colormap, alpha)

    def load(self, model: str | None) -> tuple:
        """On page load: status line and model list, probed for this visitor (classes follow the model)."""
        return self._probe(model)[:2]

    def refresh(self, model: str | None, target: str, label: str) -> tuple:
        """Reconnect: status, models, and the classes of the (new) current model."""
        status, model_update, model = self._probe(model)
        return status, model_update, *self.class_choices(model, target, label)

    def class_choices(self, model: str | None, target: str, label: str) -> tuple:
        """Class lists of a model, keeping the visitor's choices where they are still valid."""
        names = self.classes_or_empty(model) if model else []
        targets, labels = [AUTO, *names], [NO_LABEL, *(names or self.fallback_labels)]
        return (gr.Dropdown(choices=targets, value=target if target in targets else AUTO),
                gr.Dropdown(choices=labels, value=label if label in labels else NO_LABEL))

    def clinical_form(self, model: str | None) -> tuple:
        """The clinical form (and the batch view's CSV upload) of a model: hidden when it has none."""
        fields = self.fields_or_empty(model) if model else []
        return *form.updates(fields), *form.batch_updates(fields)

    @user_errors
    def batch(self, paths, model, colormap, alpha, clinical_csv=None,
              progress=gr.Progress()) -> tuple:  # noqa: B008 (Gradio injects it)
        if not paths:
            raise UserError("Add some images or a zip first.")
        items = batch_ops.collect(paths)
        model = model or self.first_model()
        fields = clinical.form_fields(self.conn.describe(model).tabular)
        table = clinical.read_table(Path(clinical_csv), fields) if clinical_csv else None
        clinical.check_required(fields, table)
        progress((0, len(items)), desc="Explaining")
        results = batch_ops.explain_batch(self.conn, model, items, classes=self.conn.classes(model),
                                          colormap=colormap, alpha=alpha, clinical=table,
                                          progress=lambda done, n: progress((done, n), desc="Explaining"))
        ordered = batch_ops.sort_results(results)
        text = batch_ops.summary(ordered)
        if table is not None:
            text += "\n\n" + table.coverage([i.name for i in items])
        return text, batch_ops.gallery(ordered)

    def first_model(self) -> str:
        """The model to use when none is selected yet (the server was down when the page was built)."""
        models = self.conn.models()
        if not models:
            raise UserError("The model server serves no model.")
        return models[0]

    def fields_or_empty(self, model: str) -> list[clinical.FormField]:
        """The clinical form of a model; none when it cannot be described (the request then says why)."""
        try:
            return clinical.form_fields(self.conn.describe(model).tabular)
        except UserError as exc:
            log.warning("cannot read the clinical schema of %s: %s", model, exc)
            return []

    def classes_or_empty(self, model: str) -> list[str]:
        try:
            return self.conn.classes(model)
        except UserError as exc:
            log.warning("cannot read the classes of %s: %s", model, exc)
            return []

    def _probe(self, model: str | None) -> tuple[str, gr.Dropdown, str | None]:
        st = self.conn.status()
        model = model if model in st.models else (st.models[0] if st.models else None)
        return status_line(st), gr.Dropdown(choices=st.models, value=model, visible=len(st.models) > 1), model


def build_app(settings: Settings, connection: Connection | None = None) -> gr.Blocks:
    """The demo page. Probes the server once to fill the model and class lists; starts even when it is down."""
    conn = connection or Connection(settings)
    status = conn.status()
    examples = pick_examples(settings.examples_dir)
    on = Handlers(conn, sorted({e.label for e in examples}))
    classes = on.classes_or_empty(status.models[0]) if status.ok else []
    fields = on.fields_or_empty(status.models[0]) if status.ok else []

    with gr.Blocks(title="camserve: what the model sees", analytics_enabled=False) as demo:
        gr.Markdown(f"## What the model sees\n{INTRO}")
        with gr.Row(equal_height=True):
            status_md = gr.Markdown(status_line(status), elem_id="status")
            reconnect = gr.Button("Reconnect", size="sm", scale=0, min_width=120)
        with gr.Row():
            model = gr.Dropdown(status.models, value=status.models[0] if status.models else None, label="Model",
                                visible=len(status.models) > 1)
            colormap = gr.Dropdown(list(COLORMAPS), value="jet", label="Colormap")
            alpha = gr.Slider(0.0, 1.0, value=DEFAULT_ALPHA, step=0.05, label="Heatmap opacity (alpha)")

        with gr.Tab("Explain"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(type="pil", image_mode=None, sources=["upload", "webcam", "clipboard"],
                                     label="Image", elem_id="image")
                    target = gr.Dropdown([AUTO, *classes], value=AUTO, label="Class to explain",
                                         info="auto = the predicted class")
                    label = gr.Dropdown([NO_LABEL, *(classes or on.fallback_labels)], value=NO_LABEL,
                                        label="True label (optional)", info="gives the verdict: correct or misread")
                    mask = gr.Image(type="pil", image_mode=None, sources=["upload", "clipboard"], height=160,
                                    label="Region mask (optional)")
                    clinical_form = form.ClinicalForm(fields)
                    run = gr.Button("Explain", variant="primary", elem_id="explain")
                with gr.Column(scale=2):
                    scores = gr.Label(num_top_classes=5, label="Top classes", elem_id="scores")
                    with gr.Row():
                        original = gr.Image(label="Original", elem_id="original", **OUTPUT_IMAGE)
                        heatmap = gr.Image(label="Heatmap", elem_id="heatmap", **OUTPUT_IMAGE)
                        overlay = gr.Image(label="Overlay", elem_id="overlay", **OUTPUT_IMAGE)
                    with gr.Row():
                        focus = gr.Number(label="Focus score (heatmap share inside the mask)", precision=3,
                                          interactive=False)
                        verdict = gr.Textbox(label="Verdict", interactive=False, elem_id="verdict")
                    details = gr.Markdown()
            if examples:
                gr.Examples([e.row() for e in examples], inputs=[image, label, mask],
                            label="Examples from the test set (with their true label and lung mask)")
        shown = gr.State(None)  # the last explanation, for re-rendering without the server

        with gr.Tab("Batch"):
            files = gr.File(file_count="multiple", file_types=["image", ".zip"],
                            label="Images, or a zip of class folders (folder name = true label)")
            batch_note = gr.Markdown(clinical.batch_note(fields), visible=bool(fields))
            clinical_csv = gr.File(file_types=[".csv"], label="Clinical data (CSV, optional)", visible=bool(fields))
            run_batch = gr.Button("Explain all", variant="primary")
            batch_summary = gr.Markdown()
            gallery = gr.Gallery(label="Errors first, then by confidence", columns=5, format="png",
                                 object_fit="contain", height="auto", buttons=["download", "fullscreen"])

        run.click(form.with_form_parameters(on.explain),
                  [image, model, target, colormap, alpha, mask, label, *clinical_form.inputs],
                  [scores, original, heatmap, overlay, focus, verdict, details, shown],
                  api_name="explain", concurrency_limit=SERVER_CONCURRENCY)
        for trigger, name in ((colormap, "rerender"), (alpha, None)):
            trigger.change(on.rerender, [shown, colormap, alpha], [heatmap, overlay], api_name=name,
                           api_visibility="public" if name else "private", show_progress="hidden",
                           trigger_mode="always_last")
        reconnect.click(on.refresh, [model, target, label], [status_md, model, target, label],
                        api_name="reconnect", concurrency_limit=SERVER_CONCURRENCY)
        demo.load(on.load, model, [status_md, model], api_visibility="private", concurrency_limit=SERVER_CONCURRENCY)
        model.change(on.class_choices, [model, target, label], [target, label], api_visibility="private",
                     concurrency_limit=SERVER_CONCURRENCY)
        model.change(on.clinical_form, model, [*clinical_form.outputs, batch_note, clinical_csv],
                     api_name="clinical_form", concurrency_limit=SERVER_CONCURRENCY)
        run_batch.click(on.batch, [files, model, colormap, alpha, clinical_csv], [batch_summary, gallery],
                        api_name="batch", concurrency_limit=2)
    return demo


def launch_kwargs(settings: Settings) -> dict[str, Any]:
    """``Blocks.launch`` arguments: the safe defaults of REFERENCE.md, from the settings."""
    return {
        "server_name": settings.host,
        "server_port": settings.port,
        "share": settings.share,
        "auth": settings.auth,
        "auth_message": "camserve demo: sign in" if settings.auth else None,
        "max_file_size": settings.max_file_size,
        "show_error": False,  # gr.Error messages are shown anyway; other exceptions stay in the log
        "allowed_paths": [],  # example images are copied into Gradio's cache; nothing else is served
        "run_history": False,  # Gradio 6's run history keeps inputs (patient images): off, like flagging
        "footer_links": ["api", "gradio", "settings"],
        "enable_monitoring": False,
        "mcp_server": False,
        "ssr_mode": False,
        "theme": THEME,
        "css": CSS,
    }


def serve(settings: Settings, **overrides: Any) -> gr.Blocks:
    """Build the app and launch it (blocks unless ``prevent_thread_lock=True`` is passed)."""
    if settings.share and settings.auth is None:  # Settings refuses this too; never open a public link
        raise ValueError("refusing to share without auth")
    demo = build_app(settings)
    demo.queue(max_size=64)
    demo.launch(**{**launch_kwargs(settings), **overrides})
    return demo
