"""The Gradio app's plain functions (no Gradio), against a real TorchServe serving ``tiny``."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camserve.client import Client
from camserve.errors import CamserveError
from camserve.schema import ClassScore, ErrorInfo, ExplainResponse, ModelInfo, Prediction
from gradio_app import batch as batch_ops
from gradio_app.client import Connection, UserError, scrub
from gradio_app.explain import explain, verdict
from gradio_app.settings import Settings
from tests.conftest import CLASSES, png_bytes
from tests.harness import free_port

MODEL = "tiny"


def connect(server, **overrides) -> Connection:
    options = {"token_file": server.key_file, "timeout": 30, **overrides}
    return Connection(Settings(server_url=server.url, management_url=server.management_url, **options))


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
    assert status.models == [MODEL]
    assert conn.classes(MODEL) == CLASSES


@pytest.mark.integration
def test_explain_returns_label_and_overlay(conn):
    image = Image.open(io.BytesIO(png_bytes((96, 72), seed=1)))
    view = explain(conn, MODEL, image, label="COVID")
    pred = view.response.prediction
    assert max(view.scores, key=view.scores.get) == pred.label
    assert set(view.scores) == set(CLASSES) and sum(view.scores.values()) == pytest.approx(1.0, abs=1e-4)
    assert view.original.size == view.heatmap.size == view.overlay.size == (96, 72)
    assert np.array_equal(pixels(view.original), pixels(image))
    assert np.abs(pixels(view.overlay) - pixels(view.original)).mean() > 5  # the heatmap is blended in
    assert view.focus is None
    assert view.verdict == verdict(view.response)
    assert (pred.label == "COVID") == view.verdict.startswith("Correct")
    assert f"Grad-CAM of **{pred.label}**" in view.details


@pytest.mark.integration
def test_explain_bytes_with_mask_and_target(conn):
    mask = Image.new("L", (96, 72))
    mask.paste(255, (0, 0, 48, 72))  # left half
    view = explain(conn, MODEL, png_bytes(seed=2), mask=mask, target="Viral_Pneumonia")
    assert view.response.explanation.target.label == "Viral_Pneumonia"
    assert 0.0 <= view.focus <= 1.0
    assert "no true label" in view.verdict


@pytest.mark.integration
@pytest.mark.parametrize(("size", "colormap", "alpha"), [((96, 72), "hot", 0.3), ((700, 420), "viridis", 0.8)])
def test_local_rerender_matches_server(conn, size, colormap, alpha):
    data = png_bytes(size, seed=3)
    first = explain(conn, MODEL, data)  # jet, 0.5
    heat, overlay = first.shown.render(colormap, alpha)
    again = explain(conn, MODEL, data, colormap=colormap, alpha=alpha)
    assert heat.size == again.heatmap.size == overlay.size == again.overlay.size
    assert max(heat.size) == min(512, max(size))
    for local, remote in ((heat, again.heatmap), (overlay, again.overlay)):
        diff = np.abs(pixels(local) - pixels(remote))
        # the response's cam is rounded to 5 decimals: a rare colour level differs by a few units
        assert diff.max() <= 8 and diff.mean() < 0.05, (diff.max(), diff.mean())
    # and the re-render really changed something (the comparison above could not pass by accident)
    assert np.abs(pixels(heat) - pixels(first.heatmap)).mean() > 10


def _zip_tree(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


@pytest.mark.integration
def test_batch_from_zip_sorts_errors_first(conn, tmp_path):
    images = [png_bytes((64, 64), seed=10 + i) for i in range(6)]
    preds = [explain(conn, MODEL, d).response.prediction.label for d in images]
    wrong = [next(c for c in CLASSES if c != p) for p in preds]
    # half labelled with the prediction, half with another class; one undecodable file; one junk entry
    files = {f"{(preds if i % 2 else wrong)[i]}/img{i}.png": d for i, d in enumerate(images)}
    files |= {"COVID/broken.png": b"not an image", "__MACOSX/COVID/._img0.png": b"x", "README.txt": b"hi"}
    items = batch_ops.collect([_zip_tree(tmp_path / "tree.zip", files)])
    assert len(items) == 7 and {i.label for i in items} <= set(CLASSES)

    calls: list[tuple[int, int]] = []
    results = batch_ops.explain_batch(conn, MODEL, items, classes=CLASSES, progress=lambda d, n: calls.append((d, n)))
    assert sorted(calls) == [(k, 7) for k in range(1, 8)]
    ordered = batch_ops.sort_results(results)
    flags = [r.correct for r in ordered]
    assert flags == [False] * 3 + [True] * 3 + [None]
    assert ordered[-1].item.name == "COVID/broken.png" and "not a decodable image" in ordered[-1].error
    for group in (ordered[:3], ordered[3:6]):
        confidences = [r.confidence for r in group]
        assert confidences == sorted(confidences, reverse=True)
    pictures = batch_ops.gallery(ordered)
    assert len(pictures) == 6 and pictures[0][1].startswith("✗ true") and pictures[3][1].startswith("✓ true")
    text = batch_ops.summary(ordered)
    assert "Accuracy **50%** (3/6)" in text and "1 failed" in text and "broken.png" in text


@pytest.mark.integration
def test_classes_fall_back_to_a_prediction_when_describe_fails(server, monkeypatch):
    def no_metadata(self, model):
        raise CamserveError(f"model {model!r} has no camserve metadata")
    monkeypatch.setattr(Client, "describe", no_metadata)
    assert connect(server).classes(MODEL) == CLASSES


# --- failures: server down, bad key, rotated key ------------------------------------------------------

def _assert_clean(message: str, *secrets: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message
    assert "http" not in message and "127.0.0.1" not in message
    for secret in secrets:
        assert secret not in message


def test_server_down_gives_a_friendly_message(tmp_path):
    port = free_port()
    conn = Connection(Settings(server_url=f"http://127.0.0.1:{port}", management_url=f"http://127.0.0.1:{port}",
                               token_file=tmp_path / "missing.json", timeout=5))
    status = conn.status()
    assert not status.ok and status.models == []
    assert "not reachable" in status.message
    _assert_clean(status.message, str(port))
    with pytest.raises(UserError, match="not reachable") as caught:
        explain(conn, MODEL, png_bytes())
    _assert_clean(str(caught.value), str(port))
    items = [batch_ops.BatchItem("a.png", png_bytes())]
    with pytest.raises(UserError, match="not reachable"):
        batch_ops.explain_batch(conn, MODEL, items, classes=CLASSES)


@pytest.mark.integration
def test_bad_token_gives_a_friendly_message(server, tmp_path):
    conn = connect(server, token="wrong-key-123", token_file=tmp_path / "missing.json")
    status = conn.status()
    assert not status.ok and "refused the access key" in status.message
    with pytest.raises(UserError, match="refused the access key") as caught:
        explain(conn, MODEL, png_bytes())
    _assert_clean(str(caught.value), "wrong-key-123")


@pytest.mark.integration
def test_missing_key_file_says_how_to_get_one(server, tmp_path):
    status = connect(server, token_file=tmp_path / "missing.json").status()
    assert not status.ok and "CAMSERVE_TOKEN" in status.message


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

def _response(probs: dict[str, float], true: str | None) -> ExplainResponse:
    names = list(probs)
    pred = max(names, key=probs.get)
    error = None if true is None else ErrorInfo(true, names.index(true), true == pred,
                                                None if true == pred else f"{true}_as_{pred}", probs[true], 0.0, 1.0)
    return ExplainResponse(ModelInfo("m", "1", "resnet18", "layer4", names, 64),
                           Prediction(pred, names.index(pred), probs[pred]),
                           [ClassScore(n, names.index(n), p) for n, p in probs.items()], probs, None, error)


@pytest.mark.parametrize(("true", "expected"), [
    ("COVID", "COVID misread as Normal, 86% confident"),
    ("Normal", "Correct (Normal, 86% confident)"),
    (None, "Predicted Normal, 86% confident (no true label given)"),
])
def test_verdict(true, expected):
    assert verdict(_response({"COVID": 0.1, "Normal": 0.86, "Viral_Pneumonia": 0.04}, true)) == expected


def test_sort_results_puts_confident_errors_first():
    probs = [({"COVID": 0.6, "Normal": 0.4}, "COVID"), ({"COVID": 0.3, "Normal": 0.7}, "COVID"),
             ({"COVID": 0.9, "Normal": 0.1}, "Normal"), ({"COVID": 0.2, "Normal": 0.8}, None)]
    results = [batch_ops.BatchResult(batch_ops.BatchItem(f"{i}.png", b"", t), _response(p, t))
               for i, (p, t) in enumerate(probs)]
    failed = batch_ops.BatchResult(batch_ops.BatchItem("x.png", b""), error="not an image")
    ordered = batch_ops.sort_results([failed, *results])
    assert [r.item.name for r in ordered] == ["2.png", "1.png", "3.png", "0.png", "x.png"]


def test_match_label_and_folder(tmp_path):
    assert batch_ops.match_label("covid", CLASSES) == "COVID"
    assert batch_ops.match_label("cats", CLASSES) is None
    (tmp_path / "Normal").mkdir()
    (tmp_path / "Normal" / "a.png").write_bytes(png_bytes())
    (tmp_path / "top.png").write_bytes(png_bytes())
    items = batch_ops.collect([tmp_path])
    assert [(i.name, i.label) for i in items] == [("Normal/a.png", "Normal"), ("top.png", None)]
    with pytest.raises(UserError, match="No images"):
        batch_ops.collect([tmp_path / "Normal" / "nothing.txt"])


def test_scrub_removes_urls_tokens_and_newlines():
    text = "failed at http://127.0.0.1:8080/predictions/x with key abc123\nTraceback: 10.0.0.1:8081"
    assert scrub(text, ["abc123"]) == "failed at the server with key *** Traceback: the server"
