"""The clinical form and the batch CSV of a multimodal model: plain functions, then the app against the
session's TorchServe, whose ``fusion`` model (tests/assets/fusion_net.py) reads an image and a clinical
table (``SCHEMA``) and has one logit."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import gradio_client
import pytest

from camserve.errors import DataError
from gradio_app import batch as batch_ops
from gradio_app import clinical, form
from gradio_app.client import Connection
from gradio_app.clinical import MISSING_LABEL, FormField
from gradio_app.settings import Settings
from gradio_app.uploads import BatchItem
from tests.gradio_support import api, demo_settings, launched
from tests.harness import CLINICAL, SCHEMA, red_left_blue_right

MODEL = "fusion"
NAMES = [f["name"] for f in SCHEMA["features"]]
# /explain's outputs as gradio_client returns them (the answer's State is not one).
OUTPUTS = ("banner", "overlay", "overlay_true", "colorbar", "heatmap", "focus", "details", "every_class", "scores",
           "original", "status")


# --- plain functions ----------------------------------------------------------------------------------

def test_form_follows_the_schema():
    fields = clinical.form_fields(SCHEMA)
    assert [f.name for f in fields] == NAMES
    assert [f.numeric for f in fields] == [False] * 5 + [True]
    composition, age = fields[0], fields[5]
    assert composition.label == "composition" and not composition.required
    assert composition.choices == [(MISSING_LABEL, ""), ("cystic", "cystic"), ("mixed", "mixed"), ("solid", "solid")]
    assert composition.empty == ""  # starts on the missing choice
    assert age.label == "age (required)" and age.required and age.empty == ""  # an empty text box
    required_sex = clinical.form_fields({"features": [{"name": "sex", "type": "categorical", "categories": ["F", "M"],
                                                       "required": True}]})[0]
    assert required_sex.choices == [("F", "F"), ("M", "M")] and required_sex.empty is None  # no missing choice
    assert clinical.form_fields(None) == [] and clinical.form_fields({}) == []
    with pytest.raises(DataError, match="'type' must be"):
        clinical.form_fields({"features": [{"name": "a", "type": "text"}]})


def test_request_fields_leave_out_what_is_missing():
    fields = clinical.form_fields(SCHEMA)
    values = ["solid", "", None, "  micro ", "F", " 61 "]
    assert clinical.request_fields(fields, values) == {"composition": "solid", "calcifications": "micro",
                                                       "sex": "F", "age": "61"}
    assert clinical.request_fields(fields, ["", "", "", "", "", math.nan]) == {}
    assert clinical.request_fields(fields, ["mixed"]) == {"composition": "mixed"}  # the rest: missing
    assert clinical.request_fields(fields[:1], ["mixed", "x", "y"]) == {"composition": "mixed"}
    sent = clinical.encode({"age": 61.0, "label": "F"})  # one JSON object: a field named like an option is safe
    assert json.loads(sent) == {"age": 61.0, "label": "F"} and clinical.encode({}) is None
    assert clinical.summary({"sex": "F", "age": 61.0}) == "sex=F, age=61"


def test_slots_are_named_after_the_fields_of_every_known_model():
    thyroid = clinical.form_fields(SCHEMA)
    other = [FormField("age", True), FormField("age", False, categories=("young", "old")), FormField("bmi", True),
             FormField("2nd-visit", False, categories=("y",))]
    slots = form.plan([thyroid, [], other])
    assert [s.name for s in slots] == [*NAMES, "age_2", "bmi", "field_2nd_visit"]
    assert form.assign(other, slots) == [5, 6, 7, 8]  # "age" (numeric) is shared with the thyroid form
    generic = form.plan([[], []])  # no form known at start (server down): generic slots in order
    assert [s.name for s in generic] == [f"field_{i + 1}" for i in range(form.SPARE_SLOTS)]
    assert form.assign(thyroid, generic) == list(range(6))
    assert form.assign([FormField("x", True)] * (form.SPARE_SLOTS + 1), generic)[-1] is None
    assert "x cannot be entered" in form.note([FormField("x", True)] * (form.SPARE_SLOTS + 1), generic)


def test_form_values_updates_and_example_filling():
    thyroid = clinical.form_fields(SCHEMA)
    with gr.Blocks():
        named = form.ClinicalForm(form.plan([thyroid]), thyroid)
        generic = form.ClinicalForm(form.plan([]), [])
    assert named.names == NAMES
    assert named.values(thyroid, ["solid", "", "", "micro", "F", "61"]) == ["solid", "", "", "micro", "F", "61"]
    assert named.filled(thyroid, {"composition": "solid", "age": "61"}) == ["solid", "", "", "", "", "61"]
    assert [i.label for i in named.inputs] == [*NAMES[:5], "age (required)"]  # set up once, for its field
    assert named.inputs[0].choices == [(MISSING_LABEL, ""), ("cystic", "cystic"), ("mixed", "mixed"),
                                       ("solid", "solid")]
    # another model's form only shows or hides a field's own input: its value stays
    assert form.entry_props(thyroid, named.slots, update=True) == [{"visible": True}] * 6
    assert form.entry_props(thyroid[:2], named.slots, update=True) == [{"visible": True}] * 2 + [{"visible": False}] * 4
    box, note, *inputs = named.updates([])
    assert not box.visible and not any(i.visible for i in inputs)
    required_composition = [FormField("composition", False, True, ("cystic", "mixed", "solid"))]
    assert form.entry_props(required_composition, named.slots, update=True)[0] == {
        "visible": True, "value": None, "label": "composition (required)",
        "choices": [("cystic", "cystic"), ("mixed", "mixed"), ("solid", "solid")]}

    assert generic.names[:3] == ["field_1_choice", "field_1_number", "field_2_choice"]
    values = [None] * len(generic.names)
    values[generic.names.index("field_1_choice")] = "solid"
    values[generic.names.index("field_6_number")] = "61"
    assert generic.values(thyroid, values) == ["solid", None, None, None, None, "61"]
    _, _, *inputs = generic.updates(thyroid)
    shown = [(n, i.label) for n, i in zip(generic.names, inputs, strict=True) if i.visible]
    assert shown == [("field_1_choice", "composition"), ("field_2_choice", "echogenicity"),
                     ("field_3_choice", "margins"), ("field_4_choice", "calcifications"),
                     ("field_5_choice", "sex"), ("field_6_number", "age (required)")]


def test_explain_keeps_its_api_with_named_optional_clinical_parameters():
    def fn(image, model, *slots):
        return image, model, slots
    wrapped = form.with_parameters(fn, ["composition", "age"])
    params = __import__("inspect").signature(wrapped).parameters
    assert list(params) == ["image", "model", "composition", "age"]
    assert params["age"].default is None
    assert wrapped("img", "m", "a", "61") == ("img", "m", ("a", "61"))


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_batch_csv_gives_labels_and_clinical_fields(tmp_path):
    fields = clinical.form_fields(SCHEMA)
    table = clinical.read_batch_csv(_csv(tmp_path / "t.csv", "\ufeffpath,label,age,sex,calcifications\n"
                                                             "COVID/a.png,malignant,61,F,\nb.png,, 40 ,,micro\n"),
                                    fields)
    assert clinical.row_of(table, "COVID/a.png", fields) == clinical.Row("malignant", {"age": "61", "sex": "F"})
    assert clinical.row_of(table, "a.png", fields).label == "malignant"  # by the file name's tail
    assert clinical.row_of(table, "zip/b.png", fields) == clinical.Row(None, {"age": "40", "calcifications": "micro"})
    assert clinical.row_of(table, "c.png", fields) is None and clinical.row_of(None, "a.png", fields) is None
    assert clinical.coverage(table, ["COVID/a.png", "b.png", "c.png"]) == (
        "Rows from t.csv for 2 of 3 image(s); the rest have no row.")
    labels_only = clinical.read_batch_csv(_csv(tmp_path / "l.csv", "path,label\nx.png,Normal\n"), [])
    assert clinical.row_of(labels_only, "x.png", []) == clinical.Row("Normal", {})
    for text, match in [("image,age\na.png,1\n", "needs a 'path' column"),
                        ("path,weight\na.png,70\n", "column 'weight' is not a clinical field"),
                        ("path,age\na.png,1\na.png,2\n", "lines 2 and 3 are both for 'a.png'")]:
        with pytest.raises(DataError, match=match):
            clinical.read_batch_csv(_csv(tmp_path / "bad.csv", text), fields)
    with pytest.raises(DataError, match="requires age for every image"):
        clinical.check_required(fields, None)
    clinical.check_required(fields, table)
    clinical.check_required(fields[:5], None)  # nothing required: missing values are fine
    assert "`path` column" in clinical.batch_note(fields) and "(age required)" in clinical.batch_note(fields)
    assert "`label` column" in clinical.batch_note([])


# --- against the session's TorchServe -----------------------------------------------------------------

@pytest.fixture(scope="module")
def app_url(server, tmp_path_factory) -> Iterator[str]:
    with launched(demo_settings(server, tmp_path_factory.mktemp("demo"))) as url:
        yield url


@pytest.fixture()
def image(tmp_path) -> Path:
    path = tmp_path / "nodule.png"
    path.write_bytes(red_left_blue_right(64))
    return path


def explain(client: gradio_client.Client, image: Path, **kwargs) -> dict:
    out = client.predict(image=gradio_client.handle_file(str(image)), model=MODEL, api_name="/explain", **kwargs)
    return dict(zip(OUTPUTS, out, strict=True))


def malignant(scores: dict) -> float:
    return next(c["confidence"] for c in scores["confidences"] if c["label"] == "malignant")


def logit(p: float) -> float:
    """The model's logit: the random fusion model is confident, so probabilities differ in the 4th decimal."""
    return math.log(p / (1 - p))


@pytest.mark.integration
def test_api_parameters_are_named_after_the_clinical_fields(app_url, tmp_path):
    client = api(app_url, tmp_path)
    params = [p["parameter_name"] for p in client.view_api(print_info=False, return_format="dict")
              ["named_endpoints"]["/explain"]["parameters"]]
    assert params[:10] == ["image", "model", "target", "label", "method", "faithful", "mask", "colormap", "alpha",
                           "same_scale"]
    assert params[10:] == NAMES


@pytest.mark.integration
def test_one_clinical_field_alone_moves_the_probability(app_url, server, image, tmp_path):
    client = api(app_url, tmp_path)
    direct = server.client()

    def through_app(fields: dict) -> tuple[float, str]:
        out = explain(client, image, **fields)
        return malignant(out["scores"]), out["details"]

    base, details = through_app(CLINICAL)
    assert "clinical data: composition=solid" in details and "age=61" in details
    for change in ({"calcifications": "none"}, {"age": "30"}):
        moved, _ = through_app({**CLINICAL, **change})
        assert abs(logit(moved) - logit(base)) > 0.1, change
        # the app sent the form's values as the same fields a direct request sends
        expected = direct.explain(MODEL, image.read_bytes(), **{**CLINICAL, **change}).probabilities["malignant"]
        assert moved == pytest.approx(expected, abs=1e-6)
    assert base == pytest.approx(direct.explain(MODEL, image.read_bytes(), **CLINICAL).probabilities["malignant"],
                                 abs=1e-6)
    # an optional field left on "(missing)" is not sent: same as a direct request without it
    no_margins = {k: v for k, v in CLINICAL.items() if k != "margins"}
    expected = direct.explain(MODEL, image.read_bytes(), **no_margins).probabilities["malignant"]
    assert through_app({**no_margins, "margins": ""})[0] == pytest.approx(expected, abs=1e-6)


@pytest.mark.integration
def test_a_missing_required_field_is_one_clear_message(app_url, image, tmp_path):
    client = api(app_url, tmp_path)
    for fields in ({k: v for k, v in CLINICAL.items() if k != "age"}, {}):
        out = explain(client, image, **fields)
        assert out["banner"] == ('<div class="verdict failed" role="alert">The model could not take this request: '
                                 "clinical field &#x27;age&#x27; is required</div>")
        assert out["overlay"] is None and not out["scores"]


@pytest.mark.integration
def test_batch_takes_labels_and_clinical_fields_from_a_csv(server, tmp_path):
    conn = Connection(Settings(url=server.url, management_url=server.management_url, token_file=server.key_file,
                               timeout=30))
    img = red_left_blue_right(64)
    fields = clinical.form_fields(conn.describe(MODEL).tabular)
    items = [BatchItem.of(name, img) for name in ("nodules/a.png", "b.png", "c.png")]
    table = clinical.read_batch_csv(_csv(tmp_path / "t.csv", "path,label,calcifications,age,sex\n"
                                                             "a.png,benign,micro,61,F\nb.png,,none,61,\n"), fields)
    results = batch_ops.explain_batch(conn, MODEL, items, classes=conn.classes(MODEL), table=table, fields=fields)
    direct = server.client()
    for result, sent in zip(results[:2], ({"calcifications": "micro", "age": "61", "sex": "F"},
                                          {"calcifications": "none", "age": "61"}), strict=True):
        expected = direct.explain(MODEL, img, **sent).probabilities
        assert result.response.probabilities == pytest.approx(expected, abs=1e-6)
    assert results[0].label == "benign" and results[1].label is None
    p0, p1 = (r.response.probabilities["malignant"] for r in results[:2])
    assert abs(logit(p0) - logit(p1)) > 0.1  # same image, different rows
    assert results[2].response is None and "clinical field 'age' is required" in results[2].error  # no row


@pytest.mark.integration
def test_batch_through_the_app_requires_the_csv_when_a_field_is_required(app_url, tmp_path):
    paths = []
    for name in ("a.png", "b.png"):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(red_left_blue_right(64))
    csv_path = _csv(tmp_path / "clinical.csv", "path,age\na.png,61\nb.png,30\n")
    client = api(app_url, tmp_path)
    files = [gradio_client.handle_file(str(p)) for p in paths]
    summary, gallery, table, csv_file, _ = client.predict(
        files, MODEL, "gradcam", "jet", 0.5, gradio_client.handle_file(str(csv_path)), None, api_name="/batch")
    assert "**2 image(s)**, 2 explained" in summary and "Rows from clinical.csv for 2 of 2" in summary
    assert len(gallery["value"]) == 2 and sorted(r[0] for r in table["data"]) == ["a.png", "b.png"]
    summary, gallery, *_ = client.predict(files, MODEL, "gradcam", "jet", 0.5, None, None, api_name="/batch")
    assert "requires age for every image" in summary and not gallery
