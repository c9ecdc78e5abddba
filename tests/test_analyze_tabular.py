"""scripts/analyze_errors.py --tabular: each image's clinical fields travel with its requests.

The CSV reader is checked alone; then a tiny multimodal model is analysed through a real TorchServe and
every probability is compared with an in-process ``Explainer`` given the same fields (an image without a
row: none of them)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from camserve import client as client_module
from camserve.analysis.clinical import ClinicalError, load_table
from camserve.checkpoint import load_model_class
from camserve.errors import InvalidRequest
from camserve.explainer import Explainer
from camserve.tabular import TabularSchema
from scripts import analyze_errors, archive, make_thyroid_phantoms
from scripts.train_thyroid import MODEL_FILE
from tests.harness import torchserve

FEATURES = list(make_thyroid_phantoms.FEATURES)

# ---------------------------------------------------------------- the CSV, no server


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_paths_are_relative_to_the_data_dir_or_the_root(tmp_path: Path) -> None:
    data = tmp_path / "set" / "test"
    text = ("path,age,sex\n"
            "test/benign/a.png,61,F\n"
            "test\\malignant\\b.png,,M\n"  # Windows separators, an empty cell
            "train/benign/c.png,40,F\n"  # another split: outside the data dir
            ",,\n")  # blank lines are skipped
    table = load_table(write(tmp_path / "set" / "clinical.csv", text), data, FEATURES, root=tmp_path / "set")
    assert table.rows == {"benign/a.png": {"age": "61", "sex": "F"}, "malignant/b.png": {"sex": "M"}}
    assert table.outside == 1 and table.columns == ("age", "sex") and table.fields("benign/x.png") is None
    direct = load_table(write(tmp_path / "direct.csv", "\ufeffpath,age\nbenign/a.png,61\n"), data, FEATURES)
    assert direct.fields("benign/a.png") == {"age": "61"}  # relative to --data-dir; a BOM is fine


@pytest.mark.parametrize("text,match", [
    ("image,age\na.png,3\n", "needs a 'path' column"),
    ("path,weight\na.png,70\n", "column 'weight' is not a clinical field"),
    ("path,age\na.png,3\n./a.png,4\n", "lines 2 and 3 are both for 'a.png'"),
    ("path,age\na.png,3,4\n", "line 2: 3 cells for 2 columns"),
    ("path,age\n../elsewhere.png,3\n,4\n", "line 3: empty 'path'"),
])
def test_csv_errors_name_the_problem(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ClinicalError, match=match):
        load_table(write(tmp_path / "c.csv", text), tmp_path, FEATURES)


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path):
    """Synthetic thyroid test images, a CSV with one row missing and one invalid value, and a tiny
    random multimodal model (its clinical branch amplified so fields matter) served beside ``tiny``."""
    root = tmp_path_factory.mktemp("tabular")
    data = root / "thyroid"
    assert make_thyroid_phantoms.main(["--out", str(data), "--n-train", "2", "--n-val", "1", "--n-test", "8",
                                       "--size", "64", "--seed", "2"]) == 0
    schema = json.loads((data / "schema.json").read_text())
    with open(data / "clinical.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    tests = sorted(r["path"] for r in rows if r["path"].startswith("test/"))
    rowless, invalid = tests[1], tests[2]
    kept = [r if r["path"] != invalid else {**r, "sex": "X"} for r in rows if r["path"] != rowless]
    with open(root / "clinical.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["path", *FEATURES])
        writer.writeheader()
        writer.writerows(kept)

    torch.manual_seed(0)
    width = TabularSchema.from_dict(schema).width
    model = load_model_class(MODEL_FILE)(tabular_width=width, hidden=8)
    with torch.no_grad():  # clinical logit terms of about +-1, next to image terms of about +-0.1
        model.tab[0].weight.mul_(4)
        model.head[1].weight[0, 512:] = torch.linspace(-3, 3, 8)
    ckpt = root / "thy.pt"
    torch.save({"state_dict": model.state_dict(), "class_names": ["benign", "malignant"], "input_size": 64,
                "target_layer": "cnn.layer3", "model_args": {"tabular_width": width, "hidden": 8},
                "tabular": schema}, ckpt)
    store = root / "store"
    assert archive.main([str(ckpt), "--name", "thy", "--model-store", str(store), "--model-file", str(MODEL_FILE),
                         "--batch-size", "4", "--max-batch-delay", "50"]) == 0
    assert archive.main([str(tiny_checkpoint), "--name", "tiny", "--model-store", str(store)]) == 0
    fields = {r["path"][len("test/"):]: {k: v for k, v in r.items() if k != "path" and v}
              for r in kept if r["path"].startswith("test/")}
    original = {r["path"][len("test/"):]: {k: v for k, v in r.items() if k != "path" and v} for r in rows}
    with torchserve(store, root / "ts") as server:
        yield {"root": root, "data": data, "ckpt": ckpt, "server": server, "fields": fields, "original": original,
               "rowless": rowless[len("test/"):], "invalid": invalid[len("test/"):]}


def run(setup, out: Path, *extra: str, model: str = "thy", csv_path: Path | None = None) -> int:
    server = setup["server"]
    return analyze_errors.main(["--data-dir", str(setup["data"] / "test"), "--output-dir", str(out),
                                "--tabular", str(csv_path or setup["root"] / "clinical.csv"),
                                "--tabular-root", str(setup["data"]), "--url", server.url,
                                "--token-file", str(server.key_file), "--model", model, "--retries", "1",
                                "--backoff", "0.2", *extra])


def in_process(setup) -> dict[str, object]:
    """rel -> probabilities (or the error) of the checkpoint run here with the same clinical fields."""
    ex = Explainer.from_checkpoint(setup["ckpt"], "thy", model_file=str(MODEL_FILE))
    test = setup["data"] / "test"
    out = {}
    for path in sorted(test.rglob("*.png")):
        rel = path.relative_to(test).as_posix()
        clinical = setup["fields"].get(rel, {})
        row = {"data": path.read_bytes(), "explain": b"none", **{k: v.encode() for k, v in clinical.items()}}
        out[rel] = ex.handle([row])[0]
    return out


@pytest.mark.integration
def test_analysis_sends_each_images_fields(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, dict]] = []
    original = client_module.Client.explain

    def spy(self, model, image, mask=None, **options):
        calls.append((image, options))
        return original(self, model, image, mask, **options)
    monkeypatch.setattr(client_module.Client, "explain", spy)
    out = tmp_path / "out"
    assert run(setup, out, "--gradcam", "--top-k", "3") == 1  # the invalid value fails one image
    monkeypatch.undo()

    reference = in_process(setup)
    assert isinstance(reference[setup["invalid"]], InvalidRequest)
    with open(out / "predictions.csv", newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(reference) - {setup["invalid"]}
    for rel, row in rows.items():
        want = reference[rel].probabilities
        np.testing.assert_allclose([float(row["p_benign"]), float(row["p_malignant"])],
                                   [want["benign"], want["malignant"]], atol=1e-6, rtol=0)
        assert row["clinical"] == ("no_row" if rel == setup["rowless"] else "row")
    # The row-less image was sent with every field missing, which the model tells from its own fields.
    rowless = setup["data"] / "test" / setup["rowless"]
    ex = Explainer.from_checkpoint(setup["ckpt"], "thy", model_file=str(MODEL_FILE))
    own = setup["original"][setup["rowless"]]
    with_own = ex.handle([{"data": rowless.read_bytes(), **{k: v.encode() for k, v in own.items()}}])[0]
    assert abs(with_own.probabilities["malignant"] - float(rows[setup["rowless"]]["p_malignant"])) > 1e-3

    with open(out / "failures.csv", newline="") as fh:
        failures = list(csv.DictReader(fh))
    assert [(f["path"], f["stage"]) for f in failures] == [(setup["invalid"], "request")]
    assert "clinical field 'sex'" in failures[0]["reason"]
    summary = json.loads((out / "error_summary.json").read_text())
    n = len(reference)
    assert summary["clinical_fields"] == {"csv": str(setup["root"] / "clinical.csv"), "images_with_row": n - 2,
                                          "images_without_row": 1, "csv_rows_outside_data_dir": 3}

    by_bytes = {p.read_bytes(): p.relative_to(setup["data"] / "test").as_posix()
                for p in (setup["data"] / "test").rglob("*.png")}
    sent = [(by_bytes[image], options) for image, options in calls if image in by_bytes]  # not describe()'s
    heatmaps = [rel for rel, options in sent if options.get("explain") == "gradcam"]
    assert heatmaps and len(sent) == n + len(heatmaps)
    for rel, options in sent:  # predictions and heatmaps alike carry the image's own fields
        fields = setup["fields"].get(rel)
        if fields:
            assert json.loads(options["clinical"]) == fields, rel
        else:
            assert "clinical" not in options, rel


@pytest.mark.integration
def test_unusable_csv_is_a_setup_error(setup, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = write(tmp_path / "bad.csv", "path,Age\nbenign/a.png,3\n")
    assert run(setup, tmp_path / "a", csv_path=bad) == 2
    assert "column 'Age' is not a clinical field of the model" in capsys.readouterr().err
    assert run(setup, tmp_path / "b", model="tiny") == 2
    assert "model 'tiny' takes no clinical fields" in capsys.readouterr().err
