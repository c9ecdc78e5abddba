"""The Gradio shell: ``build_app(settings)`` lays out the page and wires its events to ``events.Events``.

All logic lives in plain modules (``client``, ``explain``, ``render``, ``batch``, ``uploads``,
``clinical``, ``examples``); ``events`` turns their results, and every failure, into outputs.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from camserve.schema import COLORMAPS, DEFAULT_ALPHA
from gradio_app import batch as batch_ops
from gradio_app import clinical, form
from gradio_app.client import Connection
from gradio_app.events import Events, ExampleView, Page
from gradio_app.explain import AUTO, NO_LABEL, method_choices
from gradio_app.settings import Settings
from gradio_app.texts import PROMPT, default_method, intro, status_line

log = logging.getLogger(__name__)
SERVER_CONCURRENCY = 8  # events that only wait on TorchServe: let them overlap (Gradio's default is 1)
# System fonts: the default themes fetch Google Fonts, which an offline machine waits on.
THEME = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
# PNG, not Gradio's lossy WebP default; no "share" button (it uploads the image to Hugging Face).
PICTURE: dict[str, Any] = {"format": "png", "interactive": False, "buttons": ["download", "fullscreen"]}
CSS_FILE = Path(__file__).with_name("page.css")
JS_FILE = Path(__file__).with_name("page.js")


def image_upload(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` input that hands the event the uploaded file's bytes instead of decoding it first.

    Gradio's own decoding fails before the event runs (every output then shows "Error"); this way the
    app decodes with the server's decoder and says in one message what is wrong with the file. (The
    instance's ``preprocess`` is replaced: a subclass would make Gradio write a stub file beside this one.)
    """
    image = gr.Image(type="pil", image_mode=None, **kwargs)
    decode = image.preprocess

    def preprocess(payload: Any) -> Any:
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return Path(payload.path).read_bytes()
        return decode(payload)

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image


def build_app(settings: Settings, connection: Connection | None = None) -> gr.Blocks:
    """The demo page. Probes the server once to fill the model lists; starts even when it is down."""
    conn = connection or Connection(settings)
    status = conn.status()
    page = Page()
    on = Events(conn, settings, page)
    first = status.models[0] if status.models else None
    info, fields = on.info(first), on.fields(first)
    slots = form.plan(on.fields(m) for m in status.models)
    examples = on.example_view(first)  # the first model's; the others' are read in the background
    threading.Thread(target=lambda: [on.examples(m) for m in status.models[1:]], daemon=True).start()
    classes = [] if info is None else list(info.classes)
    c = page.c

    with gr.Blocks(title="camserve: what the model sees", analytics_enabled=False) as demo:
        source = settings.examples.get(first or "")
        c["intro"] = gr.Markdown(intro(first, info, source.description if source else ""), elem_id="intro")
        c["status"] = gr.Markdown(status_line(status), elem_id="status")
        with gr.Row(elem_id="controls"):
            # Custom values are let through to the events, which check them against the server's own list:
            # an API client's session keeps the choices the page was built with.
            c["model"] = gr.Dropdown(status.models, value=first, label="Model", visible=len(status.models) > 1,
                                     elem_id="model", allow_custom_value=True)
            c["colormap"] = gr.Dropdown(list(COLORMAPS), value="jet", label="Colormap", elem_id="colormap")
            c["alpha"] = gr.Slider(0.0, 1.0, value=DEFAULT_ALPHA, step=0.05, label="Heatmap opacity (alpha)",
                                   elem_id="alpha")
        with gr.Tab("Explain", elem_id="tab-explain"):
            explain_tab(c, classes, default_method(info), examples)
            page.form = form.ClinicalForm(slots, fields)
            with gr.Accordion("Every class side by side", open=True, elem_id="every-class-box"):
                c["every_class"] = gr.Gallery(label="Every class (same colormap, opacity and scale choice)",
                                              elem_id="every-class", columns=4, height="auto", format="jpeg",
                                              object_fit="contain", allow_preview=True, buttons=["download"])
            with gr.Accordion("Original and heatmap", open=False):
                with gr.Row():
                    c["original"] = gr.Image(label="Original (at display size)", elem_id="original",
                                             alt_text="the image as the model received it", **PICTURE)
                    c["heatmap"] = gr.Image(label="Heatmap", elem_id="heatmap", alt_text="heat map", **PICTURE)
            c["details"] = gr.Markdown(elem_id="details")
        c["answer"] = gr.State(None)  # the last answer, for re-drawing without the server
        c["known_models"] = gr.State(status.models)
        with gr.Tab("Batch", elem_id="tab-batch"):
            batch_tab(c, fields)
        timer = gr.Timer(settings.status_every)
    wire(demo, on, page, timer)
    return demo


def explain_tab(c: dict[str, Any], classes: list[str], method: str, examples: ExampleView) -> None:
    """The explain view: the image and the button beside the maps, then the options."""
    with gr.Row(elem_id="explain-row"):
        with gr.Column(scale=1, min_width=260):
            c["image"] = image_upload(sources=["upload", "webcam", "clipboard"], label="Image", elem_id="image",
                                      height=300, alt_text="the image to explain")
            c["run"] = gr.Button("Explain", variant="primary", elem_id="explain")
        with gr.Column(scale=2, min_width=300):
            c["banner"] = gr.HTML(PROMPT, elem_id="banner")
            with gr.Row(elem_id="maps"):
                c["overlay"] = gr.Image(label="Overlay", elem_id="overlay", min_width=300,
                                        alt_text="heat map over the image", **PICTURE)
                c["overlay_true"] = gr.Image(label="True class", elem_id="overlay-true", visible=False,
                                             min_width=300, **PICTURE)
            c["colorbar"] = gr.HTML("", elem_id="colorbar")
            c["scores"] = gr.Label(num_top_classes=5, label="Top classes", elem_id="scores")
    c["examples_note"] = gr.Markdown(examples.note, elem_id="examples-note", visible=bool(examples.thumbnails))
    c["examples"] = gr.Gallery(examples.thumbnails or None, label="Examples from the test set", show_label=False,
                               elem_id="examples", columns=6, height="auto", allow_preview=False, object_fit="contain",
                               buttons=[], visible=bool(examples.thumbnails))
    with gr.Row(elem_id="options"):
        # Any class name is let through (the server names the classes it knows): the choices follow the
        # selected model in the page, but an API client's session keeps those of the first model.
        c["target"] = gr.Dropdown([AUTO, *classes], value=AUTO, label="Class to explain", allow_custom_value=True,
                                  info="auto = the predicted class", elem_id="target")
        c["label"] = gr.Dropdown([NO_LABEL, *classes], value=NO_LABEL, label="True label (optional)",
                                 allow_custom_value=True, elem_id="label",
                                 info="gives the verdict, and the true class's map when wrong")
        c["method"] = gr.Dropdown(method_choices(), value=method, label="Method", elem_id="method",
                                  info="the model's own by default")
        with gr.Column(min_width=220):
            c["same_scale"] = gr.Checkbox(False, label="Same scale for every class", elem_id="same-scale",
                                          info="colours comparable across classes")
            c["faithful"] = gr.Checkbox(False, label="Faithfulness check", elem_id="faithful",
                                        info="one extra model pass")
    with gr.Row(elem_id="mask-row"):
        c["mask"] = image_upload(sources=["upload", "clipboard"], height=180, elem_id="mask",
                                 label="Region mask (optional)", alt_text="the region mask")
        c["focus"] = gr.Textbox("", label="Focus score", info=examples.focus_info, interactive=False, elem_id="focus")


def batch_tab(c: dict[str, Any], fields: list[clinical.FormField]) -> None:
    """The batch view: uploads, then the gallery beside the table and its CSV."""
    with gr.Row():
        c["files"] = gr.File(file_count="multiple", file_types=["image", ".zip"], elem_id="batch-files",
                             label="Images, or a zip of class folders (folder name = true label)")
        with gr.Column():
            c["labels_csv"] = gr.File(file_types=[".csv"], label="Labels and clinical data (CSV, optional)",
                                      elem_id="batch-csv-in")
            c["masks"] = gr.File(file_count="multiple", file_types=["image", ".zip"], elem_id="batch-masks",
                                 label="Region masks (optional: images or a zip, same paths as the images)")
    c["batch_note"] = gr.Markdown(clinical.batch_note(fields), elem_id="batch-note")
    c["run_batch"] = gr.Button("Explain all", variant="primary", elem_id="explain-all")
    c["batch_summary"] = gr.Markdown(elem_id="batch-summary")
    with gr.Row(elem_id="batch-results"):
        c["gallery"] = gr.Gallery(label="Results", columns=4, format="jpeg", object_fit="contain", height=600,
                                  buttons=["download", "fullscreen"], elem_id="batch-gallery", min_width=300, scale=2)
        with gr.Column(min_width=300, scale=3):
            c["table"] = gr.Dataframe(headers=list(batch_ops.COLUMNS), interactive=False, elem_id="batch-table",
                                      datatype=["str", "str", "str", "number", "str", "number", "str"],
                                      label="Results table (click a header to sort)", max_height=600, wrap=True,
                                      column_widths=["26%", "14%", "15%", "14%", "11%", "9%", "11%"])
            c["table_csv"] = gr.File(label="Download the table (CSV)", elem_id="batch-csv", interactive=False)


def wire(demo: gr.Blocks, on: Events, page: Page, timer: gr.Timer) -> None:
    """Connect the events (inside ``demo``'s context)."""
    p, fm = page, page.form
    explain_inputs = [p.image, p.model, p.target, p.label, p.method, p.faithful, p.mask, p.colormap, p.alpha,
                      p.same_scale, *fm.inputs]
    drawn = [p.banner, p.overlay, p.overlay_true, p.colorbar, p.heatmap, p.focus, p.details, p.every_class]
    model_outputs = [p.intro, p.target, p.method, p.label, p.examples_note, p.examples, p.focus, p.batch_note,
                     p.labels_csv, p.status, *fm.outputs]
    with demo:
        p.run.click(form.with_parameters(on.explain, fm.names), explain_inputs,
                    [*drawn, p.scores, p.original, p.answer, p.status], api_name="explain",
                    concurrency_limit=SERVER_CONCURRENCY)
        redraw_inputs = [p.answer, p.target, p.colormap, p.alpha, p.same_scale]
        for trigger, name in ((p.colormap.change, "redraw"), (p.alpha.change, None), (p.alpha.release, None),
                              (p.same_scale.change, None), (p.target.change, None)):
            trigger(on.redraw, redraw_inputs, drawn, api_name=name, api_visibility="public" if name else "private",
                    show_progress="hidden", trigger_mode="always_last", concurrency_limit=SERVER_CONCURRENCY)
        # The page is built for the first model; a change (by the visitor, or by the status check when the
        # server's models change) redraws everything that follows the model, the last change winning.
        p.model.change(on.select_model, [p.model, p.target, p.label], model_outputs, api_name="select_model",
                       show_progress="hidden", trigger_mode="always_last", concurrency_limit=SERVER_CONCURRENCY)
        p.examples.select(on.pick_example, [p.model], [p.image, p.label, p.mask, *fm.inputs],
                          api_visibility="private")
        timer.tick(on.poll, [p.model, p.known_models], [p.status, p.model, p.known_models], api_name="status",
                   show_progress="hidden", concurrency_limit=SERVER_CONCURRENCY)
        demo.load(on.poll, [p.model, p.known_models], [p.status, p.model, p.known_models], api_visibility="private",
                  show_progress="hidden", concurrency_limit=SERVER_CONCURRENCY)
        p.run_batch.click(on.batch, [p.files, p.model, p.method, p.colormap, p.alpha, p.labels_csv, p.masks],
                          [p.batch_summary, p.gallery, p.table, p.table_csv, p.status], api_name="batch",
                          concurrency_limit=2)


def launch_kwargs(settings: Settings) -> dict[str, Any]:
    """``Blocks.launch`` arguments: safe defaults, from the settings."""
    return {
        "server_name": settings.host,
        "server_port": settings.port,
        "share": settings.share,
        "auth": settings.auth,
        "auth_message": "camserve demo: sign in" if settings.auth else None,
        "max_file_size": settings.max_file_size,
        "show_error": False,  # failures are shown in the page by the app itself; the rest stays in the log
        "allowed_paths": [],  # example images are copied into Gradio's cache; nothing else is served
        "run_history": False,  # Gradio's run history keeps inputs (patient images): off, like flagging
        "footer_links": ["api", "gradio", "settings"],
        "enable_monitoring": False,
        "mcp_server": False,
        "ssr_mode": False,
        "quiet": True,  # no "set share=True" hint: sharing is the --share/--auth flags' business
        "theme": THEME,
        "css": CSS_FILE.read_text(),
        "js": JS_FILE.read_text(),
    }


def serve(settings: Settings, **overrides: Any) -> gr.Blocks:
    """Build the app and launch it (blocks unless ``prevent_thread_lock=True`` is passed)."""
    if settings.share and settings.auth is None:  # Settings refuses this too; never open a public link
        raise ValueError("refusing to share without auth")
    demo = build_app(settings)
    demo.queue(max_size=64)
    options = {**launch_kwargs(settings), **overrides}
    block = not options.pop("prevent_thread_lock", False)
    demo.launch(**options, prevent_thread_lock=True)
    log.info("the demo page is on %s", demo.local_url)
    if block:
        demo.block_thread()
    return demo
