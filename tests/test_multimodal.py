"""Custom model classes with a tabular branch and single-logit binary heads."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from camserve.errors import CheckpointError, InvalidRequest
from camserve.explainer import Explainer
from camserve.tabular import TabularSchema
from scripts import archive
from tests.harness import (
    ASSETS,
    CLINICAL,
    SCHEMA,
    fusion_checkpoint,
    red_left_blue_right,
    signed_checkpoint,
)

ONE_NUMBER = {"features": [{"name": "x", "type": "numeric", "mean": 0.0, "std": 1.0}]}


def explain(explainer: Explainer, image: bytes, **fields) -> object:
    row = {"data": image, **{k: str(v).encode() for k, v in fields.items()}}
    result = explainer.handle([row])[0]
    if isinstance(result, Exception):
        raise result
    return result


def left_right_mass(cam: list[list[float]]) -> tuple[float, float]:
    arr = np.asarray(cam)
    half = arr.shape[1] // 2
    return float(arr[:, :half].sum()), float(arr[:, half:].sum())


def test_single_logit_maps_have_the_right_sign(tmp_path: Path) -> None:
    ex = Explainer.from_checkpoint(signed_checkpoint(tmp_path), "signed",
                                   model_file=str(ASSETS / "signed_net.py"), target_layer="features")
    img = red_left_blue_right()
    pos = explain(ex, img, target="malignant")
    neg = explain(ex, img, target="benign")
    assert ex.spec.single_logit and pos.prediction.label in ("benign", "malignant")
    left, right = left_right_mass(pos.explanation.cam)
    assert left > 0 and right == 0, "class 1 (+logit) evidence is the red left half"
    left, right = left_right_mass(neg.explanation.cam)
    assert right > 0 and left == 0, "class 0 (-logit) evidence is the blue right half, not the +logit map"
    assert pos.probabilities["malignant"] == pytest.approx(1 - pos.probabilities["benign"])


def test_tabular_field_alone_moves_the_probability(tmp_path: Path) -> None:
    ex = Explainer.from_checkpoint(fusion_checkpoint(tmp_path), "fusion", model_file=str(ASSETS / "fusion_net.py"))
    img = red_left_blue_right()
    base = explain(ex, img, **CLINICAL)
    moved = explain(ex, img, **{**CLINICAL, "calcifications": "none"})
    assert abs(base.probabilities["malignant"] - moved.probabilities["malignant"]) > 1e-3
    # The explained pass predicts with the tabular context (same probabilities as prediction-only).
    alone = explain(ex, img, explain="none", **CLINICAL)
    assert alone.probabilities == pytest.approx(base.probabilities, abs=1e-6)
    missing = explain(ex, img, **{k: v for k, v in CLINICAL.items() if k != "margins"})
    assert missing.prediction.label in ("benign", "malignant")
    assert base.model.tabular == SCHEMA | {"features": [
        {**f, "required": f.get("required", False)} for f in SCHEMA["features"]]}


@pytest.mark.parametrize("fields,match", [
    ({"weight": "70"}, "unknown field 'weight'"),
    ({"age": ""}, "clinical field 'age' is required"),
    ({"age": "old"}, "clinical field 'age' must be a finite number, got 'old'"),
    ({"sex": "X"}, "clinical field 'sex': 'X' is not allowed; use one of F, M"),
])
def test_request_time_schema_errors(tmp_path: Path, fields: dict, match: str) -> None:
    ex = Explainer.from_checkpoint(fusion_checkpoint(tmp_path), "fusion", model_file=str(ASSETS / "fusion_net.py"))
    with pytest.raises(InvalidRequest, match=match):
        explain(ex, red_left_blue_right(), **{**CLINICAL, **fields})


def test_clinical_as_json_object_and_refused_by_image_only_models(tmp_path: Path, tiny_checkpoint: Path) -> None:
    import base64
    ex = Explainer.from_checkpoint(fusion_checkpoint(tmp_path), "fusion", model_file=str(ASSETS / "fusion_net.py"))
    img = red_left_blue_right()
    body = {"data": base64.b64encode(img).decode(), "clinical": CLINICAL}
    via_json = ex.handle([{"body": body}])[0]
    assert via_json.probabilities == explain(ex, img, **CLINICAL).probabilities
    plain = Explainer.from_checkpoint(tiny_checkpoint, "tiny")
    assert isinstance(plain.handle([{"body": {**body}}])[0], InvalidRequest)


@pytest.mark.parametrize("schema,match", [
    ({"features": []}, "non-empty 'features'"),
    ({"features": [{"name": "a", "type": "text"}]}, "'type' must be 'numeric' or 'categorical'"),
    ({"features": [{"name": "a", "type": "numeric", "std": 0}]}, "'std' must be > 0"),
    ({"features": [{"name": "a", "type": "categorical", "categories": []}]}, "'categories' must be"),
    ({"features": [{"name": "a", "type": "numeric"}, {"name": "a", "type": "numeric"}]}, "unique"),
])
def test_schema_errors_at_archive_time(tmp_path: Path, schema: dict, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        TabularSchema.from_dict(schema)


def test_archive_time_errors_for_custom_models(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = fusion_checkpoint(tmp_path)
    store = str(tmp_path / "store")
    wrong_width = tmp_path / "wrong.json"
    wrong_width.write_text(json.dumps(ONE_NUMBER))
    two_classes = tmp_path / "two.py"
    two_classes.write_text((ASSETS / "fusion_net.py").read_text() + "\n\nclass Other(nn.Module):\n    pass\n")
    cases = [
        (["--model-file", str(ASSETS / "fusion_net.py"), "--tabular-schema", str(wrong_width)],
         "tabular of width 2 from the schema) fails on zero inputs"),
        (["--model-file", str(two_classes)], "exactly one nn.Module class, found 2"),
        (["--model-file", str(ASSETS / "fusion_net.py"), "--classes", "a,b,c"], "3 class names"),
    ]
    for flags, match in cases:
        assert archive.main([str(ckpt), "--name", "f", "--model-store", store, *flags]) == 2
        assert match in capsys.readouterr().err


@pytest.mark.integration
def test_multimodal_model_serves_through_torchserve(tmp_path: Path, server) -> None:
    ckpt = fusion_checkpoint(tmp_path)  # the session store's ``fusion``, rebuilt the same way
    local = Explainer.from_checkpoint(ckpt, "fusion", model_file=str(ASSETS / "fusion_net.py"))
    img = red_left_blue_right()
    client = server.client()
    served = client.explain("fusion", img, label="malignant", **CLINICAL)
    as_object = client.explain("fusion", img, clinical=CLINICAL)
    as_json_fields = client._call("POST", f"{server.url}/predictions/fusion", client._headers,
                                  json={"data": base64.b64encode(img).decode(), "label": "malignant", **CLINICAL})
    with pytest.raises(InvalidRequest, match="clinical field 'age' is required"):
        client.explain("fusion", img, **{k: v for k, v in CLINICAL.items() if k != "age"})
    assert client.describe("fusion").tabular["features"][5]["name"] == "age"
    assert as_json_fields["probabilities"] == pytest.approx(served.probabilities, abs=1e-9)
    expected = explain(local, img, label="malignant", **CLINICAL)
    assert served.probabilities == pytest.approx(expected.probabilities, abs=1e-6)
    assert served.error.true_label == "malignant" and served.model.layer == "cnn.layer4"
    assert as_object.probabilities == served.probabilities
