"""The clinical form of a multimodal model: plain functions, then the app against a real TorchServe.

The server serves ``thyroid`` (``tests/assets/fusion_net.py``: image + tabular, one logit) beside the
image-only ``tiny``, on its own model store.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Iterator
from pathlib import Path

import gradio_client
import pytest

from camserve.errors import InvalidRequest
from gradio_app import batch as batch_ops
from gradio_app import clinical, form
from gradio_app.client import Connection, UserError
from gradio_app.clinical import MISSING_LABEL, FormField
from gradio_app.settings import Settings
from scripts import archive
from tests.harness import torchserve
from tests.test_gradio_app import api, launched
from tests.test_multimodal import ASSETS, CLINICAL, SCHEMA, fusion_checkpoint, red_left_blue_right

MODEL = "thyroid"
NAMES = [f["name"] for f in SCHEMA["features"]]


# --- plain functions ----------------------------------------------------------------------------------

def test_form_follows_the_schema():
    fields = clinical.form_fields(SCHEMA)
    assert [f.name for f in fields] == NAMES
    assert [f.numeric for f in fields] == [False] * 5 + [True]
    composition, age = fields[0], fields[5]
    assert composition.label == "composition" and not composition.required
    assert composition.choices == [(MISSING_LABEL, ""), ("cystic", "cystic"), ("mixed", "mixed"), ("solid", "solid")]
    assert composition.empty == ""  # starts on the missing choice
    assert age.label == "age (required)" and age.required and age.empty is None
    required_sex = clinical.form_fields({"features": [{"name": "sex", "type": "categorical", "categories": ["F", "M"],
                                                       "required": True}]})[0]
    assert required_sex.choices == [("F", "F"), ("M", "M")] and required_sex.empty is None  # no missing choice
    assert clinical.form_fields(None) == [] and clinical.form_fields({}) == []
    with pytest.raises(UserError, match="'type' must be"):
        clinical.form_fields({"features": [{"name": "a", "type": "text"}]})


def test_request_fields_leave_out_what_is_missing():
    fields = clinical.form_fields(SCHEMA)
    values = ["solid", "", None, "  micro ", "F", 61.0]
    assert clinical.request_fields(fields, values) == {"composition": "solid", "calcifications": "micro",
                                                       "sex": "F", "age": 61.0}
    assert clinical.request_fields(fields, ["", "", "", "", "", math.nan]) == {}
    assert clinical.request_fields(fields, ["mixed"]) == {"composition": "mixed"}  # the rest: missing
    assert clinical.request_fields(fields[:1], ["mixed", "x", "y"]) == {"composition": "mixed"}
    sent = clinical.encode({"age": 61.0, "label": "F"})  # one JSON object: a field named like an option is safe
    assert json.loads(sent) == {"age": 61.0, "label": "F"} and clinical.encode({}) is None
    assert clinical.summary({"sex": "F", "age": 61.0}) == "sex=F, age=61"


def test_form_slots_map_to_fields_in_schema_order():
    fields = clinical.form_fields(SCHEMA)
    choices = ["solid", "hypoechoic", "irregular", "micro", "F", "stale"] + ["junk"] * (form.MAX_FIELDS - 6)
    numbers = [7.0] * 5 + [61.0] + [8.0] * (form.MAX_FIELDS - 6)
    assert form.values(fields, [*choices, *numbers]) == ["solid", "hypoechoic", "irregular", "micro", "F", 61.0]
    numeric_first = [FormField("x", True), FormField("y", False, categories=("a",))]
    assert form.values(numeric_first, [*choices, *numbers]) == [7.0, "hypoechoic"]


def test_form_updates_show_one_input_per_field_and_hide_the_rest():
    fields = clinical.form_fields(SCHEMA)
    box, note, *slots = form.updates(fields)
    choices, numbers = slots[:form.MAX_FIELDS], slots[form.MAX_FIELDS:]
    assert box.visible and note.visible and "clinical data" in note.value
    assert [c.label for c in choices if c.visible] == NAMES[:5]
    assert [n.label for n in numbers if n.visible] == ["age (required)"] and numbers[5].visible
    assert not choices[5].visible and not any(s.visible for s in choices[6:] + numbers[6:])
    assert choices[0].value == "" and ("(missing)", "") in choices[0].choices
    box, note, *slots = form.updates([])
    assert not box.visible and not note.visible and not any(s.visible for s in slots)
    many = [FormField(f"f{i}", True) for i in range(form.MAX_FIELDS + 2)]
    assert "f12, f13 are sent as missing" in form.updates(many)[1].value


def test_explain_keeps_its_api_with_named_optional_slots():
    def fn(image, model, *slots):
        return image, model, slots
    wrapped = form.with_form_parameters(fn)
    params = inspect.signature(wrapped).parameters
    assert list(params)[:4] == ["image", "model", "choice_1", "choice_2"] and list(params)[-1] == "number_12"
    assert all(params[n].default is None for n in form.parameter_names())
    assert wrapped("img", "m", "a", 1.0) == ("img", "m", ("a", 1.0))


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_clinical_csv(tmp_path):
    fields = clinical.form_fields(SCHEMA)
    table = clinical.read_table(_csv(tmp_path / "t.csv", "\ufeffpath,age,sex,calcifications\n"
                                                         "COVID/a.png,61,F,\nb.png, 40 ,,micro\n"), fields)
    assert table.lookup("COVID/a.png") == {"age": "61", "sex": "F"}
    assert table.lookup("a.png") == {"age": "61", "sex": "F"}  # by file name when unambiguous
    assert table.lookup("zip/b.png") == {"age": "40", "calcifications": "micro"}
    assert table.lookup("c.png") == {}
    assert table.coverage(["COVID/a.png", "b.png", "c.png"]) == (
        "Clinical data from t.csv for 2 of 3 image(s); the rest were sent with missing values.")
    for text, match in [("image,age\na.png,1\n", "needs a 'path' column"),
                        ("path,weight\na.png,70\n", "unknown column 'weight'; this model takes: composition"),
                        ("path,age\na.png,1\na.png,2\n", "line 3: a.png appears twice"),
                        ("path,age\n,1\n", "line 2: the 'path' cell is empty")]:
        with pytest.raises(UserError, match=match):
            clinical.read_table(_csv(tmp_path / "bad.csv", text), fields)
    with pytest.raises(UserError, match="takes no clinical data"):
        clinical.read_table(tmp_path / "t.csv", [])
    with pytest.raises(UserError, match="requires age for every image"):
        clinical.check_required(fields, None)
    clinical.check_required(fields, table)
    clinical.check_required(fields[:5], None)  # nothing required: missing values are fine
    assert "`path` column" in clinical.batch_note(fields) and "(age required)" in clinical.batch_note(fields)
    assert clinical.batch_note([]) == ""


# --- against a real TorchServe serving the multimodal model --------------------------------------------

@pytest.fixture(scope="module")
def mm_server(tmp_path_factory, tiny_checkpoint):
    tmp = tmp_path_factory.mktemp("clinical")
    store = tmp / "store"
    assert archive.main([str(fusion_checkpoint(tmp)), "--name", MODEL, "--model-store", str(store),
                         "--model-file", str(ASSETS / "fusion_net.py")]) == 0
    assert archive.main([str(tiny_checkpoint), "--name", "tiny", "--model-store", str(store)]) == 0
    with torchserve(store, tmp / "ts") as server:
        yield server


@pytest.fixture(scope="module")
def mm_app(mm_server) -> Iterator[str]:
    settings = Settings(server_url=mm_server.url, management_url=mm_server.management_url,
                        token_file=mm_server.key_file, timeout=30)
    with launched(settings) as url:
        yield url


@pytest.fixture()
def image(tmp_path) -> Path:
    path = tmp_path / "nodule.png"
    path.write_bytes(red_left_blue_right(64))
    return path


def form_of(client: gradio_client.Client, model: str) -> tuple[dict, dict[str, str]]:
    """The app's form for a model: its note's update (the accordion is not an API output), and each shown
    field's name to its ``/explain`` parameter."""
    note, *slots = client.predict(model, api_name="/clinical_form")[:1 + 2 * form.MAX_FIELDS]
    params = {}
    for name, update in zip(form.parameter_names(), slots, strict=True):
        if update.get("visible"):
            params[update["label"].removesuffix(" (required)")] = name
    return note, params


def explain_args(image: Path) -> tuple:
    return gradio_client.handle_file(str(image)), MODEL, "auto", "jet", 0.5, None, "(unknown)"


def malignant(scores: dict) -> float:
    return next(c["confidence"] for c in scores["confidences"] if c["label"] == "malignant")


def logit(p: float) -> float:
    """The model's logit: the random fusion model is confident, so probabilities differ in the 4th decimal."""
    return math.log(p / (1 - p))


@pytest.mark.integration
def test_form_appears_for_the_multimodal_model_only(mm_app, tmp_path):
    client = api(mm_app, tmp_path)
    note, params = form_of(client, MODEL)
    assert note["visible"] is True and "clinical data" in note["value"]
    assert list(params) == NAMES  # one input per feature, in schema order
    assert params["age"] == "number_6" and params["composition"] == "choice_1"
    note, params = form_of(client, "tiny")
    assert note["visible"] is False and params == {}
    # the form is regenerated by the model dropdown's change event
    model_id = next(c["id"] for c in client.config["components"] if c["props"].get("label") == "Model")
    dep = next(d for d in client.config["dependencies"] if d.get("api_name") == "clinical_form")
    assert [model_id, "change"] in dep["targets"]


@pytest.mark.integration
def test_one_clinical_field_alone_moves_the_probability(mm_app, mm_server, image, tmp_path):
    client = api(mm_app, tmp_path)
    _, params = form_of(client, MODEL)
    direct = mm_server.client()

    def through_app(fields: dict) -> tuple[float, str]:
        kwargs = {params[k]: float(v) if k == "age" else v for k, v in fields.items()}
        out = client.predict(*explain_args(image), **kwargs, api_name="/explain")
        return malignant(out[0]), out[6]

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
def test_missing_required_field_gives_a_clear_error(mm_app, image, tmp_path):
    client = api(mm_app, tmp_path)
    _, params = form_of(client, MODEL)
    without_age = {params[k]: v for k, v in CLINICAL.items() if k != "age"}
    with pytest.raises(gradio_client.exceptions.AppError, match="clinical field 'age' is required") as caught:
        client.predict(*explain_args(image), **without_age, api_name="/explain")
    assert "Traceback" not in str(caught.value) and "http" not in str(caught.value)
    with pytest.raises(gradio_client.exceptions.AppError, match="clinical field 'age' is required"):
        client.predict(*explain_args(image), api_name="/explain")  # the whole form left empty


@pytest.mark.integration
def test_batch_takes_clinical_fields_from_a_csv(mm_server, tmp_path):
    conn = Connection(Settings(server_url=mm_server.url, management_url=mm_server.management_url,
                               token_file=mm_server.key_file, timeout=30))
    img = red_left_blue_right(64)
    items = [batch_ops.BatchItem(name, img) for name in ("nodules/a.png", "b.png", "c.png")]
    table = clinical.read_table(_csv(tmp_path / "t.csv", "path,calcifications,age,sex\n"
                                                         "a.png,micro,61,F\nb.png,none,61,\n"),
                                clinical.form_fields(conn.describe(MODEL).tabular))
    results = batch_ops.explain_batch(conn, MODEL, items, classes=conn.classes(MODEL), clinical=table)
    direct = mm_server.client()
    for result, fields in zip(results[:2], ({"calcifications": "micro", "age": "61", "sex": "F"},
                                            {"calcifications": "none", "age": "61"}), strict=True):
        expected = direct.explain(MODEL, img, **fields).probabilities
        assert result.response.probabilities == pytest.approx(expected, abs=1e-6)
    p0, p1 = (r.response.probabilities["malignant"] for r in results[:2])
    assert abs(logit(p0) - logit(p1)) > 0.1  # same image, different rows
    assert results[2].response is None and "clinical field 'age' is required" in results[2].error  # no row
    with pytest.raises(InvalidRequest):  # (the server's rule the failed item reports)
        direct.explain(MODEL, img)


@pytest.mark.integration
def test_batch_through_the_app_with_and_without_csv(mm_app, tmp_path):
    paths = []
    for name in ("a.png", "b.png"):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(red_left_blue_right(64))
    csv_path = _csv(tmp_path / "clinical.csv", "path,age\na.png,61\nb.png,30\n")
    client = api(mm_app, tmp_path)
    files = [gradio_client.handle_file(str(p)) for p in paths]
    summary, gallery = client.predict(files, MODEL, "jet", 0.5, gradio_client.handle_file(str(csv_path)),
                                      api_name="/batch")
    assert "**2 image(s)**, 2 explained" in summary and "Clinical data from clinical.csv for 2 of 2" in summary
    assert len(gallery) == 2
    with pytest.raises(gradio_client.exceptions.AppError, match="requires age for every image"):
        client.predict(files, MODEL, "jet", 0.5, api_name="/batch")
