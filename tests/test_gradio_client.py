"""The app's plain functions (no Gradio): the connection, explaining and drawing, the batch, messages."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camserve import errors
from camserve.clinical_table import ClinicalTable
from camserve.render import from_data_url
from camserve.schema import CAM_METHODS, ClassScore, ErrorInfo, ExplainResponse, ModelInfo, Prediction
from gradio_app import batch as batch_ops
from gradio_app import explain as explain_ops
from gradio_app.client import DOWN, Connection, message_for, scrub
from gradio_app.examples import Example, ExampleSource, demo_sources, pick_examples
from gradio_app.explain import ask, verdict, view
from gradio_app.render import DISPLAY_SIDE
from gradio_app.settings import Settings
from gradio_app.texts import default_method
from gradio_app.uploads import BatchItem
from tests.gradio_support import chest_tree, forwarding, thyroid_tree
from tests.harness import CLASSES, SCHEMA, free_port, png_bytes

MODEL = "tiny"


def connect(server, **overrides) -> Connection:
    options = {"token_file": server.key_file, "timeout": 30, **overrides}
    return Connection(Settings(url=server.url, management_url=server.management_url, **options))


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def conn(server) -> Connection:
    return connect(server)


# --- against the real server -------------------------------------------------------------------------

@pytest.mark.integration
def test_status_lists_models_and_classes(conn):
    status = conn.status()
    assert status.ok, status.message
    assert MODEL in status.models and status.message == f"Serving {', '.join(status.models)}."
    assert conn.classes(MODEL) == CLASSES


@pytest.mark.integration
def test_ask_gets_every_class_from_one_request_and_draws_at_display_size(conn, server):
    image = Image.open(io.BytesIO(png_bytes((96, 72), seed=1)))
    answer = ask(conn, MODEL, image)
    direct = server.client().explain(MODEL, png_bytes((96, 72), seed=1), target="all")
    assert [m.label for m in answer.shown.maps] == CLASSES
    for m, ref in zip(answer.shown.maps, direct.maps, strict=True):
        assert m.cam_max == pytest.approx(ref.cam_max, rel=1e-6)
        assert m.probability == pytest.approx(direct.probabilities[m.label], abs=1e-6)
    assert answer.shown.image.size == (DISPLAY_SIDE, 384)  # upscaled, aspect kept
    v = view(answer, None, "jet", 0.5, False)
    pred = answer.response.prediction.label
    assert [(role, m.label) for role, m in v.maps] == [("Predicted", pred)]
    heat, over = v.pictures[0]
    assert heat.size == over.size == (DISPLAY_SIDE, 384)
    assert np.abs(pixels(over) - pixels(answer.shown.image)).mean() > 5  # the heatmap is blended in
    assert [caption.split(" · ")[0] for _, caption in v.every_class] == CLASSES
    chosen = view(answer, "COVID", "jet", 0.5, False)
    assert chosen.maps[0] == ("Explained", answer.shown.get("COVID")) or pred == "COVID"


@pytest.mark.integration
def test_a_wrong_label_shows_the_predicted_and_the_true_map(conn):
    data = png_bytes((64, 64), seed=2)
    pred = ask(conn, MODEL, data).response.prediction.label
    true = next(c for c in CLASSES if c != pred)
    answer = ask(conn, MODEL, data, label=true)
    v = view(answer, None, "hot", 0.4, True)
    assert [(role, m.label) for role, m in v.maps] == [("Predicted", pred), ("True class", true)]
    assert verdict(answer.response).startswith(f"Wrong: {true} misread as {pred}, ")
    assert 'class="verdict wrong"' in explain_ops.verdict_html(answer.response)
    assert f"True class: {true}</b>" in v.colorbar and "Same scale for every class" in v.colorbar


@pytest.mark.integration
def test_a_model_with_too_many_classes_for_one_answer_gets_the_maps_it_shows(conn, monkeypatch):
    monkeypatch.setattr(explain_ops, "MAX_TARGETS", 2)  # tiny's 3 classes are now "too many"
    data = png_bytes((64, 64), seed=4)
    pred = ask(conn, MODEL, data).response.prediction.label
    true = next(c for c in CLASSES if c != pred)
    answer = ask(conn, MODEL, data, label=true)
    assert sorted(m.label for m in answer.shown.maps) == sorted([pred, true])


@pytest.mark.integration
def test_the_method_and_faithfulness_are_asked_for_and_shown(conn):
    answer = ask(conn, MODEL, png_bytes(seed=6), method="layercam", faithfulness=True)
    m = view(answer, None, "jet", 0.5, False).maps[0][1]
    f = m.explanation.faithfulness
    assert m.explanation.method == "layercam" and f is not None
    assert explain_ops.faithfulness_text(m) == (
        f"Faithfulness of the {m.label} map: keeping only what it highlights leaves a confidence of "
        f"{f.masked_confidence:.1%} of {f.confidence:.1%} (average drop {f.average_drop:.2f}, lower is better); "
        f"removing its top 20% drops the confidence by {f.deletion_drop:.0%} (higher is better).")
    assert explain_ops.details(answer, m).startswith(f"LayerCAM of **{m.label}** · model tiny (resnet18, layer ")
    plain = ask(conn, MODEL, png_bytes(seed=6)).shown.maps[0]
    assert plain.explanation.method == "gradcam" and explain_ops.faithfulness_text(plain) == ""


def test_the_method_list_and_the_models_default():
    assert [v for _, v in explain_ops.method_choices()] == list(CAM_METHODS)
    info = ModelInfo("m", "1", "resnet18", "layer4", ["a", "b"], 64, cam_method="layercam")
    assert default_method(info) == "layercam" and default_method(None) == "gradcam"


@pytest.mark.integration
def test_mask_gives_the_focus_score_and_its_chance_level(conn):
    mask = Image.new("L", (96, 72))
    mask.paste(255, (0, 0, 48, 72))  # left half
    answer = ask(conn, MODEL, png_bytes(seed=2), mask=mask, target="Viral_Pneumonia")
    m = view(answer, "Viral_Pneumonia", "jet", 0.5, False).maps[0][1]
    assert m.label == "Viral_Pneumonia" and answer.mask_share == pytest.approx(0.5)
    assert explain_ops.focus_text(m, answer.mask_share) == (
        f"{m.explanation.focus_score:.3f} (the mask covers 50% of the image)")


@pytest.mark.integration
@pytest.mark.parametrize(("colormap", "alpha"), [("hot", 0.3), ("viridis", 0.8)])
def test_local_drawing_matches_the_servers(conn, server, colormap, alpha):
    data = png_bytes((700, 420), seed=3)  # larger than the display size: no upscaling on either side
    answer = ask(conn, MODEL, data)
    pred = answer.response.prediction.label
    remote = server.client().explain(MODEL, data, colormap=colormap, alpha=alpha, image_format="png",
                                     max_side=DISPLAY_SIDE).explanation
    heat, overlay = answer.shown.render(answer.shown.get(pred), colormap, alpha)
    for local, url in ((heat, remote.heatmap), (overlay, remote.overlay)):
        diff = np.abs(pixels(local) - pixels(from_data_url(url)))
        assert local.size == (512, 307)
        # the response's cam is rounded to 5 decimals: a rare colour level differs by a few units
        assert diff.max() <= 8 and diff.mean() < 0.05, (diff.max(), diff.mean())


@pytest.mark.integration
def test_batch_labels_from_folders_and_csv_results_table_and_csv(conn, server, tmp_path):
    images = [png_bytes((64, 64), seed=10 + i) for i in range(4)]
    direct = server.client()
    preds = [direct.explain(MODEL, d, explain="none").prediction for d in images]
    wrong = next(c for c in CLASSES if c != preds[0].label)
    items = [BatchItem.of(f"{wrong}/a.png", images[0], wrong), BatchItem.of("b.png", images[1]),
             BatchItem.of(f"{preds[2].label.lower()}/c.png", images[2], preds[2].label.lower()),
             BatchItem.of("d.png", images[3]), BatchItem.of("broken.png", b"not an image")]
    table = ClinicalTable(Path("labels.csv"), "", ("label",), {"b.png": {"label": preds[1].label}})
    masks = {"b.png": BatchItem.of("b.png", _png(Image.new("L", (64, 64), 255)))}
    done: list[tuple[int, int]] = []
    results = batch_ops.explain_batch(conn, MODEL, items, classes=CLASSES, table=table, masks=masks,
                                      progress=lambda d, n: done.append((d, n)))
    assert sorted(done) == [(k, 5) for k in range(1, 6)]
    ordered = batch_ops.sort_results(results)
    assert [(r.name, r.correct) for r in ordered[:1]] == [(f"{wrong}/a.png", False)]  # errors first
    assert sorted(r.name for r in ordered[1:4] if r.correct) == ["b.png", f"{preds[2].label.lower()}/c.png"]
    assert [r.confidence for r in ordered[1:4]] == sorted((r.confidence for r in ordered[1:4]), reverse=True)
    assert ordered[-1].name == "broken.png" and ordered[-1].error.startswith("This file is not an image")
    rows = {r[0]: r for r in batch_ops.table(ordered)}
    assert rows["b.png"][1:5] == [preds[1].label, preds[1].label, round(preds[1].confidence, 3), "yes"]
    assert rows["b.png"][5] == pytest.approx(1.0)  # the whole image is inside its mask
    assert rows[f"{wrong}/a.png"][4] == "no" and rows["d.png"][1] == "" and rows["d.png"][5] is None
    assert rows[f"{preds[2].label.lower()}/c.png"][1] == preds[2].label  # folder name matched to the class
    assert ordered[0].caption() == f"✗ {wrong}→{preds[0].label} {preds[0].confidence:.0%}"
    first = ordered[0].thumbnail
    assert max(first.size) == batch_ops.THUMB_SIDE and pixels(first)[0, 0].tolist() == [220, 38, 38]
    lines = list(csv.reader(io.StringIO(batch_ops.to_csv(ordered, CLASSES))))
    assert lines[0] == [*batch_ops.COLUMNS, "p_COVID", "p_Normal", "p_Viral_Pneumonia"]
    assert len(lines) == 6 and lines[-1][:6] == ["broken.png", "", "", "", "", ""]
    assert lines[-1][6].startswith("This file is not an image") and lines[-1][7:] == ["", "", ""]
    assert lines[1][0] == ordered[0].name and float(lines[1][7 + CLASSES.index(preds[0].label)]) == pytest.approx(
        preds[0].confidence, abs=1e-6)
    summary = batch_ops.summary(ordered)
    assert "**5 image(s)**, 4 explained, 3 with a known label." in summary and "**1 failed**" in summary


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# --- failures: server down, bad key, rotated key; the status follows the last call ---------------------

def _assert_clean(message: str, *secrets: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message
    assert "http" not in message and "127.0.0.1" not in message and "make " not in message
    for secret in secrets:
        assert secret not in message


def test_server_down_gives_a_visitors_message(tmp_path):
    port = free_port()
    conn = Connection(Settings(url=f"http://127.0.0.1:{port}", management_url=f"http://127.0.0.1:{port}",
                               token_file=tmp_path / "missing.json", timeout=5))
    status = conn.status()
    assert not status.ok and status.models == [] and status.message == DOWN
    _assert_clean(status.message, str(port))
    with pytest.raises(errors.ServerUnreachable) as caught:
        ask(conn, MODEL, png_bytes())
    assert conn.message(caught.value) == DOWN
    with pytest.raises(errors.ServerUnreachable):
        batch_ops.explain_batch(conn, MODEL, [BatchItem.of("a.png", png_bytes())], classes=CLASSES)


@pytest.mark.integration
def test_health_follows_the_last_call(server):
    port = free_port()
    conn = Connection(Settings(url=f"http://127.0.0.1:{port}", management_url=server.management_url,
                               token_file=server.key_file, timeout=10))
    ping = (lambda c: c.ping())
    with forwarding(port, server.url):
        assert conn.status().ok and conn.health.ok
    with pytest.raises(errors.ServerUnreachable):
        conn.call(ping)
    assert not conn.health.ok and conn.health.message == DOWN
    with forwarding(port, server.url):
        assert conn.call(ping) == "Healthy"
        assert conn.health.ok and conn.health.message.startswith("Serving ")


@pytest.mark.integration
def test_bad_token_gives_a_message_without_the_key(server, tmp_path):
    conn = connect(server, token="wrong-key-123", token_file=tmp_path / "missing.json")
    status = conn.status()
    assert not status.ok and "refused this app's access key" in status.message
    with pytest.raises(errors.Unauthorized) as caught:
        ask(conn, MODEL, png_bytes())
    _assert_clean(conn.message(caught.value), "wrong-key-123")


@pytest.mark.integration
def test_rotated_key_is_reread_from_the_key_file(server, tmp_path):
    key_file = tmp_path / "key_file.json"
    keys = json.loads(server.key_file.read_text())
    stale = {kind: {**entry, "key": "stale"} for kind, entry in keys.items()}
    key_file.write_text(json.dumps(stale))
    conn = connect(server, token_file=key_file)
    conn.client()  # built with the stale keys
    key_file.write_text(json.dumps(keys))  # TorchServe "rotated" them
    assert conn.call(lambda c: c.ping()) == "Healthy"
    assert conn.status().ok


# --- pure functions -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("exc", "expected"), [
    (errors.ServerTimeout("x"), "The model server did not answer within 7 s. Try again in a moment."),
    (errors.ServerUnreachable("x"), DOWN),
    (errors.WorkerDied("x"), "The model stopped while working on this request and is restarting. Try again in a "
                             "few seconds."),
    (errors.ServerUnavailable("x"), "The model server is busy. Try again in a moment."),
    (errors.ModelNotFound("x"), "The model server does not serve this model any more. Reload the page."),
    (errors.UnsupportedImage("x"), "This file is not an image the model can read: use a PNG, JPEG, BMP, TIFF, GIF "
                                   "or WebP file."),
    (errors.PayloadTooLarge("field 'data' has 20 bytes"), "Too large: field 'data' has 20 bytes."),
    (errors.InvalidRequest("clinical field 'age' is required"),
     "The model could not take this request: clinical field 'age' is required"),
    (errors.DataError("Upload an image first."), "Upload an image first."),
    (errors.ServerError("x"), "The model server failed on this request. Try again; if it keeps failing, tell "
                              "whoever runs this demo."),
    (errors.CamserveError("x"), "The model server gave an unexpected answer."),
    (KeyError("x"), "Something went wrong in the app; the details are in its log."),
])
def test_messages_are_chosen_by_type(exc, expected):
    assert message_for(exc, timeout=7) == expected
    # the same types as the server's answers rebuild them: status and body, not message text
    if isinstance(exc, errors.CamserveError) and type(exc) is not errors.CamserveError:
        assert message_for(errors.from_payload(exc.status, exc.to_payload()), timeout=7) == expected


def _response(probs: dict[str, float], true: str | None) -> ExplainResponse:
    names = list(probs)
    pred = max(names, key=probs.get)
    error = None if true is None else ErrorInfo(true, names.index(true), true == pred,
                                                None if true == pred else f"{true}_as_{pred}", probs[true], 0.0, 1.0)
    return ExplainResponse(ModelInfo("m", "1", "resnet18", "layer4", names, 64),
                           Prediction(pred, names.index(pred), probs[pred]),
                           [ClassScore(n, names.index(n), p) for n, p in probs.items()], probs, None, error)


@pytest.mark.parametrize(("true", "expected", "kind"), [
    ("COVID", "Wrong: COVID misread as Normal, 86% confident", "wrong"),
    ("Normal", "Correct: Normal, 86% confident", "right"),
    (None, "Predicted Normal, 86% confident (no true label given)", "none"),
])
def test_verdict(true, expected, kind):
    response = _response({"COVID": 0.1, "Normal": 0.86, "Viral_Pneumonia": 0.04}, true)
    assert verdict(response) == expected
    assert explain_ops.verdict_html(response) == f'<div class="verdict {kind}" role="status">{expected}</div>'


def test_examples_follow_each_data_set(tmp_path):
    chest = pick_examples(chest_tree(tmp_path / "chest"))
    assert [(e.label, e.image.name, e.mask.name) for e in chest] == [(c, f"{k}.png", f"{k}.png") for c in CLASSES
                                                                     for k in range(2)]
    assert chest[0].mask == tmp_path / "chest/masks/lungs/test/COVID/0.png" and chest[0].caption() == "COVID"
    thyroid = pick_examples(thyroid_tree(tmp_path / "thyroid"), [f["name"] for f in SCHEMA["features"]], 1)
    assert [(e.label, e.clinical) for e in thyroid] == [
        ("benign", {"composition": "cystic", "sex": "F", "age": "37"}),
        ("malignant", {"composition": "solid", "sex": "F", "age": "61"})]
    assert thyroid[0].mask is None and thyroid[0].caption() == "benign · sex F, age 37"
    assert pick_examples(None) == [] and pick_examples(ExampleSource(tmp_path / "missing")) == []
    demo = demo_sources(Path("data"))
    assert demo["chest_phantom"].masks == Path("data/phantoms/masks/lungs/test")
    assert demo["thyroid_phantom"].clinical_root == Path("data/thyroid")


class _Judge:
    """A stand-in connection whose model gets exactly the images named in ``wrong`` wrong."""

    def __init__(self, wrong: set[str]) -> None:
        self.wrong, self.asked = wrong, []

    def call(self, fn):
        return fn(self)

    def explain(self, model, data, label=None, **options):
        name = data.decode()
        self.asked.append(name)
        probs = {"COVID": 0.5, "Normal": 0.5}
        return _response(probs, label) if name not in self.wrong else _response(
            {"COVID": 0.9 if label == "Normal" else 0.1, "Normal": 0.1 if label == "Normal" else 0.9}, label)


def test_a_misread_example_is_added_when_the_first_ones_are_all_right(tmp_path):
    def example(name: str) -> Example:
        (tmp_path / name).write_bytes(name.encode())
        return Example(tmp_path / name, "COVID")
    first, candidates = [example("a"), example("b")], [example("a"), example("b"), example("c"), example("d")]
    judge = _Judge({"d"})
    assert explain_ops.with_a_misread_one(judge, "m", first, candidates) == [*first, candidates[3]]
    assert sorted(judge.asked) == ["a", "b", "c", "d"]
    assert explain_ops.with_a_misread_one(_Judge({"b", "d"}), "m", first, candidates) == first
    assert explain_ops.with_a_misread_one(_Judge(set()), "m", first, candidates) == first


def test_sort_results_puts_confident_errors_first():
    probs = [({"COVID": 0.6, "Normal": 0.4}, "COVID"), ({"COVID": 0.3, "Normal": 0.7}, "COVID"),
             ({"COVID": 0.9, "Normal": 0.1}, "Normal"), ({"COVID": 0.2, "Normal": 0.8}, None)]
    results = [batch_ops.BatchResult(f"{i}.png", t, _response(p, t)) for i, (p, t) in enumerate(probs)]
    failed = batch_ops.BatchResult("x.png", error="not an image")
    ordered = batch_ops.sort_results([failed, *results])
    assert [r.name for r in ordered] == ["2.png", "1.png", "3.png", "0.png", "x.png"]
    assert batch_ops.gallery_label(ordered).startswith("Errors first")
    assert batch_ops.gallery_label(ordered[2:3]).startswith("By confidence (no true labels")


def test_scrub_removes_urls_tokens_and_newlines():
    text = "failed at http://127.0.0.1:8080/predictions/x with key abc123\nTraceback: 10.0.0.1:8081"
    assert scrub(text, ["abc123"]) == "failed at the server with key *** Traceback: the server"
