"""The TorchServe handler with a mock context: no server, real core."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from handlers.camserve_handler import CamserveHandler
from scripts import archive
from tests.harness import CLASSES, MockContext, png_bytes, unpack_mar


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    tmp = tmp_path_factory.mktemp("mar")
    assert archive.main([str(tiny_checkpoint), "--name", "tiny", "--model-store", str(tmp)]) == 0
    return unpack_mar(tmp / "tiny.mar", tmp / "dir")


@pytest.fixture(scope="module")
def handler(model_dir: Path) -> CamserveHandler:
    h = CamserveHandler()
    h.initialize(MockContext(model_dir))
    return h


def run(handler: CamserveHandler, model_dir: Path, rows: list[dict[str, Any]],
        headers: list[dict[str, str]] | None = None) -> tuple[list[dict], MockContext]:
    ctx = MockContext(model_dir, headers)
    out = handler.handle(rows, ctx)
    assert len(out) == len(rows) and all(isinstance(o, str) for o in out)
    assert "\n" not in "".join(out), "responses are compact JSON"
    assert set(ctx.content_types.values()) == {"application/json"}
    return [json.loads(o) for o in out], ctx


def test_batch_with_bad_rows_fails_only_those(handler: CamserveHandler, model_dir: Path) -> None:
    good = bytearray(png_bytes())
    rows = [{"body": good}, {"data": bytearray(b"not an image")}, {"data": good, "alpha": bytearray(b"2")},
            {"data": good, "label": bytearray(b"Normal"), "target": bytearray(b"COVID")}]
    out, ctx = run(handler, model_dir, rows)
    assert ctx.status == {1: (415, "UnsupportedImage"), 2: (400, "InvalidRequest")}
    assert out[1] == {"code": 415, "type": "UnsupportedImage", "message": out[1]["message"]}
    assert "alpha" in out[2]["message"]
    assert out[0]["model"]["classes"] == CLASSES and out[0]["explanation"]["method"] == "gradcam"
    assert "error" not in out[0]
    assert out[3]["explanation"]["target"] == {"label": "COVID", "index": 0}
    assert out[3]["error"]["true_label"] == "Normal" and out[3]["timing_ms"]["batch_size"] == 2
    assert sum(out[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert [t["probability"] for t in out[0]["topk"]] == sorted(out[0]["probabilities"].values(), reverse=True)


def test_explanations_route_answers_the_explanation_alone(handler: CamserveHandler, model_dir: Path) -> None:
    img = bytearray(png_bytes())
    out, ctx = run(handler, model_dir, [{"body": img}, {"data": img, "explain": bytearray(b"none")}, {"body": img}],
                   headers=[{"explain": "True"}, {"explain": "True"}, {}])
    assert set(out[0]) == {"method", "target", "cam", "cam_max", "heatmap", "overlay", "focus_score", "faithfulness"}
    assert ctx.status == {1: (400, "InvalidRequest")} and "explain" in out[1]["message"]
    assert "prediction" in out[2]


def test_oversized_response_is_413_not_a_dead_worker(handler: CamserveHandler, model_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler, "max_response_bytes", 2000)
    out, ctx = run(handler, model_dir, [{"body": bytearray(png_bytes())}])
    assert ctx.status[0][0] == 413 and "max_side" in out[0]["message"]


def test_unexpected_failure_answers_every_request(handler: CamserveHandler, model_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(_rows: list) -> list:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(handler.explainer, "handle", boom)
    out, ctx = run(handler, model_dir, [{"body": bytearray(png_bytes())}] * 2)
    assert ctx.status == {0: (500, "ServerError"), 1: (500, "ServerError")}
    assert "CUDA" not in out[0]["message"], "internal details stay in the server log"
