"""Against a real TorchServe: token auth on, loopback, dynamic batching, per-request errors."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch
from PIL import Image

from camserve.errors import InvalidRequest, PayloadTooLarge, Unauthorized, UnsupportedImage
from camserve.explainer import Explainer
from camserve.render import from_data_url
from tests.harness import CLASSES, png_bytes

pytestmark = pytest.mark.integration


def auth(server, kind: str = "inference") -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token(kind)}"}


def test_prediction_with_and_without_label(server, tiny_checkpoint: Path) -> None:
    client = server.client()
    img = png_bytes(seed=5)
    plain = client.explain("tiny", img)
    labelled = client.explain("tiny", img, label="Viral_Pneumonia", colormap="hot", alpha=0.3)
    assert plain.error is None and labelled.error is not None
    local = Explainer.from_checkpoint(tiny_checkpoint, "tiny").handle([{"body": img}])[0]
    assert plain.prediction.label == local.prediction.label
    assert plain.probabilities == pytest.approx(local.probabilities, abs=1e-6)
    assert plain.explanation.cam == local.explanation.cam
    err = labelled.error
    p_true = labelled.probabilities["Viral_Pneumonia"]
    assert err.true_probability == pytest.approx(p_true)
    assert err.loss == pytest.approx(-torch.log(torch.tensor(p_true)).item(), rel=1e-5)
    assert err.correct == (labelled.prediction.label == "Viral_Pneumonia")
    assert err.pair == (None if err.correct else f"Viral_Pneumonia_as_{labelled.prediction.label}")
    assert labelled.explanation.heatmap != plain.explanation.heatmap, "colormap changes the heatmap"


def test_json_body_and_explanations_route(server) -> None:
    img = png_bytes(seed=6)
    body = {"data": base64.b64encode(img).decode(), "topk": 2, "explain": "none"}
    resp = requests.post(f"{server.url}/predictions/tiny", json=body, headers=auth(server), timeout=60)
    assert resp.status_code == 200 and resp.json()["explanation"] is None and len(resp.json()["topk"]) == 2
    exp = server.client().explanation("tiny", img, target="Normal")
    assert exp.target.label == "Normal" and exp.overlay.startswith("data:image/jpeg;base64,")
    assert exp.heatmap.startswith("data:image/png;base64,")
    assert from_data_url(exp.heatmap).size == from_data_url(exp.overlay).size == (96, 72)


@pytest.mark.parametrize("images,image_format,parts", [
    ("both", "png", ("image/png", "image/png")), ("overlay", "webp", (None, "image/webp")),
    ("heatmap", "jpeg", ("image/png", None)), ("none", "png", (None, None))])
def test_images_and_image_format_choose_what_comes_back(server, images: str, image_format: str,
                                                        parts: tuple) -> None:
    exp = server.client().explain("tiny", png_bytes(seed=7), images=images, image_format=image_format).explanation
    got = tuple(None if url is None else url[len("data:"):url.index(";")] for url in (exp.heatmap, exp.overlay))
    assert got == parts and len(exp.cam) == 2, "the map itself always comes back"
    if exp.heatmap is not None:
        heat = Image.open(io.BytesIO(base64.b64decode(exp.heatmap.partition("base64,")[2])))
        assert heat.mode == "P", "the heatmap is a palette PNG: the colormap is its palette"


def test_concurrent_burst_is_batched_and_each_gets_its_own_target(server, tiny_checkpoint: Path) -> None:
    client = server.client()
    jobs = [(png_bytes(seed=i), CLASSES[i % 3]) for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda job: client.explain("tiny", job[0], target=job[1]), jobs))
    local = Explainer.from_checkpoint(tiny_checkpoint, "tiny")
    for (img, target), answer in zip(jobs, answers, strict=True):
        assert answer.explanation.target.label == target
        alone = local.handle([{"data": img, "target": target.encode()}])[0]
        assert torch.allclose(torch.tensor(answer.explanation.cam), torch.tensor(alone.explanation.cam), atol=1e-4)
    assert max(a.timing_ms["batch_size"] for a in answers) > 1, "TorchServe should have batched the burst"


def test_bad_inputs_get_4xx_and_the_worker_survives(server) -> None:
    client = server.client()
    good = png_bytes()
    cases = [
        (lambda: client.explain("tiny", b"definitely not an image"), UnsupportedImage, "field 'data'"),
        (lambda: client.explain("tiny", good, target="Flu"), InvalidRequest, "unknown class 'Flu'"),
        (lambda: client.explain("tiny", good, alpha=7), InvalidRequest, "alpha"),
        (lambda: client.explain("tiny", good, mask=b"junk"), UnsupportedImage, "field 'mask'"),
        (lambda: client.explain("tiny", good, max_side=100000), InvalidRequest, "max_side"),
    ]
    with ThreadPoolExecutor(len(cases) + 2) as pool:
        futures = [pool.submit(call) for call, _, _ in cases] + [pool.submit(client.explain, "tiny", good)] * 2
    for future, (_, cls, text) in zip(futures, cases, strict=False):
        with pytest.raises(cls, match=text):
            future.result()
    assert all(f.result().prediction.label in CLASSES for f in futures[len(cases):])
    too_big = b"\0" * (33554432 + 10)
    with pytest.raises(PayloadTooLarge):
        client.explain("tiny", too_big)
    assert client.ping() == "Healthy" and client.explain("tiny", good).prediction.label in CLASSES


def test_token_is_required(server) -> None:
    img = png_bytes()
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        resp = requests.post(f"{server.url}/predictions/tiny", data=img, headers=headers, timeout=30)
        assert resp.status_code == 400 and resp.json()["type"] == "InvalidKeyException"
    from camserve.client import Client
    with pytest.raises(Unauthorized):
        Client(server.url, token="wrong").explain("tiny", img)
    assert requests.get(f"{server.url}/ping", timeout=10).status_code == 400


def test_registering_models_over_http_is_off(server) -> None:
    resp = requests.post(f"{server.management_url}/models", params={"url": "https://example.com/evil.mar"},
                         headers=auth(server, "management"), timeout=30)
    assert resp.status_code >= 400
    listed = requests.get(f"{server.management_url}/models", headers=auth(server, "management"), timeout=30)
    assert [m["modelName"] for m in listed.json()["models"]] == ["fusion", "signed", "tiny"]
    assert server.client().models() == ["fusion", "signed", "tiny"]


def test_every_port_is_loopback(server) -> None:
    config = (server.workdir / "config.properties").read_text()
    for line in config.splitlines():
        if "_address=" in line:
            assert "127.0.0.1" in line, line
    key_file = json.loads(server.key_file.read_text())
    assert {"management", "inference", "API"} <= set(key_file)
    assert oct(server.key_file.stat().st_mode & 0o777) == "0o600"
