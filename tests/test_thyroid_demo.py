"""The multimodal demo: synthetic thyroid phantoms whose label needs the image AND the clinical
fields, trained, archived and served through a real TorchServe, where a clinical field alone moves the
served probability."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from camserve.explainer import Explainer
from camserve.tabular import TabularSchema
from scripts.demo import build, train_thyroid
from scripts.demo import thyroid_phantoms as make_thyroid_phantoms
from scripts.demo.thyroid_phantoms import CLASSES, FEATURES, POINTS, SPLITS, THRESHOLD
from scripts.training import metrics_path
from tests.harness import torchserve

SMALL = ["--n-train", "10", "--n-val", "3", "--n-test", "3", "--size", "64"]


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- the generator


def test_generator_is_deterministic_and_self_describing(tmp_path: Path) -> None:
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert make_thyroid_phantoms.main(["--output-dir", str(tmp_path / name), "--seed", seed, *SMALL]) == 0
    a = tree_digest(tmp_path / "a")
    assert a == tree_digest(tmp_path / "b"), "same arguments must give byte-identical files"
    images = sorted(k for k in a if k.endswith(".png"))
    other = tree_digest(tmp_path / "c")
    assert sum(a[k] != other.get(k) for k in images) > len(images) // 2, "another seed, other images"

    root = tmp_path / "a"
    assert "SYNTHETIC DATA - NOT MEDICAL DATA" in (root / "README.txt").read_text()
    assert len(images) == 16 and all(k.split("/")[0] in SPLITS and k.split("/")[1] in CLASSES for k in images)
    manifest = json.loads((root / "manifest.json").read_text())
    for case in manifest["cases"]:  # the folder is the label, and the label is the score's side of the threshold
        assert case["path"].split("/")[1] == case["label"] == CLASSES[int(case["score"] >= THRESHOLD)]
    rows = read_csv(root / "clinical.csv")
    assert list(rows[0]) == ["path", *FEATURES] and sorted(r["path"] for r in rows) == images
    schema = TabularSchema.from_dict(json.loads((root / "schema.json").read_text()))
    assert schema.names == FEATURES and not any(f.required for f in schema.features)
    by_path = {c["path"]: c for c in manifest["cases"]}
    for row in rows:  # every CSV value is the case's finding, or empty where it was not reported
        case = by_path[row["path"]]
        assert all(row[f] == (str(case[f]) if case["reported"][f] else "") for f in FEATURES)
        schema.encode({k: v for k, v in row.items() if k != "path"})


def _mean_points(cases: list, field: str) -> float:
    if field == "age":
        return float(np.mean([make_thyroid_phantoms.AGE_POINTS_PER_YEAR * (c.age - make_thyroid_phantoms.AGE_PIVOT)
                              for c in cases]))
    return float(np.mean([POINTS[field][getattr(c, field)] for c in cases]))


def _accuracy(cases: list, known: Callable[[object, str], bool]) -> float:
    """Accuracy of thresholding the expected score when only the findings ``known(case, field)`` are seen."""
    means = {f: _mean_points(cases, f) for f in FEATURES}
    hits = 0
    for c in cases:
        score = 0.0
        for f in FEATURES:
            if not known(c, f):
                score += means[f]
            elif f == "age":
                score += make_thyroid_phantoms.AGE_POINTS_PER_YEAR * (c.age - make_thyroid_phantoms.AGE_PIVOT)
            else:
                score += POINTS[f][getattr(c, f)]
        hits += (score >= THRESHOLD) == (c.label == "malignant")
    return hits / len(cases)


def test_label_needs_both_modalities() -> None:
    cases = [c for c, _ in make_thyroid_phantoms.plan({"train": 4000, "val": 0, "test": 0}, 3, 0.1, 0.5)]
    both = _accuracy(cases, lambda c, f: c.reported[f] or f in ("echogenicity", "margins", "calcifications"))
    tabular = _accuracy(cases, lambda c, f: c.reported[f])
    image = _accuracy(cases, lambda c, f: f in ("echogenicity", "margins", "calcifications"))
    assert both > 0.88, both
    assert tabular < both - 0.07 and image < both - 0.07, (both, tabular, image)
    hidden = np.mean([not c.reported["calcifications"] for c in cases])
    missing = np.mean([not c.reported["age"] for c in cases])
    assert abs(hidden - 0.5) < 0.03 and abs(missing - 0.1) < 0.02
    assert 0.35 < np.mean([c.label == "malignant" for c in cases]) < 0.65


def test_the_image_shows_calcifications_and_echogenicity() -> None:
    cases = [c for c, _ in make_thyroid_phantoms.plan({"train": 12, "val": 0, "test": 0}, 0, 0.1, 0.5)]

    def render(case, **change) -> np.ndarray:
        return make_thyroid_phantoms.render(dataclasses.replace(case, **change), 96,
                                            np.random.default_rng([7, case.index]))
    solid = [c for c in cases if c.echogenicity != "anechoic"]
    bright = {kind: sum(int((render(c, calcifications=kind)[8:] >= 250).sum()) for c in solid)
              for kind in ("none", "micro")}
    assert bright["micro"] > bright["none"] + 4 * len(solid), bright
    centre = [(render(c, echogenicity="hypoechoic", calcifications="none").mean(),
               render(c, echogenicity="hyperechoic", calcifications="none").mean()) for c in solid]
    assert all(hypo < hyper for hypo, hyper in centre)


# ---------------------------------------------------------------- train, archive, serve


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("thyroid")
    argv = ["thyroid", "--data-dir", str(root / "data"), "--checkpoint", str(root / "thyroid.pt"),
            "--model-store", str(root / "store"), "--n-train", "24", "--n-val", "8", "--n-test", "8",
            "--size", "64", "--input-size", "64", "--epochs", "1", "--threads", "1"]
    assert build.main(argv) == 0
    return root, argv


def test_build_is_cached_and_the_checkpoint_describes_itself(built, capsys: pytest.CaptureFixture) -> None:
    root, argv = built
    capsys.readouterr()
    assert build.main(argv) == 0
    steps = json.loads(capsys.readouterr().out)["steps"]
    assert all("kept" in s for s in steps), steps
    ckpt = torch.load(root / "thyroid.pt", weights_only=True)
    assert ckpt["class_names"] == ["benign", "malignant"] and ckpt["target_layer"] == "cnn.layer3"
    assert ckpt["tabular"] == TabularSchema.from_dict(json.loads((root / "data" / "schema.json").read_text())).to_dict()
    assert ckpt["model_args"]["tabular_width"] == TabularSchema.from_dict(ckpt["tabular"]).width
    metrics = json.loads(metrics_path(root / "thyroid.pt").read_text())
    assert {"accuracy", "accuracy_tabular_missing", "accuracy_image_blank"} <= set(metrics["test"])


@pytest.mark.integration
def test_the_demo_serves_and_a_clinical_field_alone_moves_the_probability(built, tmp_path: Path) -> None:
    root, _ = built
    rel = sorted(r["path"] for r in read_csv(root / "data" / "clinical.csv") if r["path"].startswith("test/"))[0]
    image = (root / "data" / rel).read_bytes()
    fields = {"composition": "solid", "echogenicity": "hypoechoic", "margins": "irregular",
              "calcifications": "micro", "sex": "F", "age": "30"}
    local = Explainer.from_checkpoint(root / "thyroid.pt", "thyroid_phantom", model_file=str(train_thyroid.MODEL_FILE))

    def in_process(**clinical: str) -> dict[str, float]:
        row = {"data": image, "explain": b"none", **{k: v.encode() for k, v in clinical.items()}}
        return local.handle([row])[0].probabilities

    with torchserve(root / "store", tmp_path / "ts") as server:
        client = server.client()
        info = client.describe("thyroid_phantom")
        young = client.explain("thyroid_phantom", image, **fields)
        old = client.explain("thyroid_phantom", image, **{**fields, "age": "80"})
        male = client.explain("thyroid_phantom", image, **{**fields, "sex": "M"})
        none = client.explain("thyroid_phantom", image)
    assert info.classes == ["benign", "malignant"] and info.layer == "cnn.layer3"
    assert info.tabular == json.loads((root / "data" / "schema.json").read_text())
    assert young.explanation is not None and young.explanation.target.label == young.prediction.label
    for served, clinical in ((young, fields), (old, {**fields, "age": "80"}), (none, {})):
        assert served.probabilities == pytest.approx(in_process(**clinical), abs=1e-6)
    p = young.probabilities["malignant"]
    assert abs(old.probabilities["malignant"] - p) > 1e-4 and abs(male.probabilities["malignant"] - p) > 1e-4
    assert young.probabilities["benign"] == pytest.approx(1 - p, abs=1e-6)
