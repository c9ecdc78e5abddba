"""scripts/analyze_errors.py --tabular: each image's clinical fields travel with its requests, and the
report of a binary model.

A tiny multimodal single-logit model is analysed through a real TorchServe and every probability is
compared with an in-process ``Explainer`` given the same fields (an image without a row: none of them).
The CSV reader itself is tested in test_clinical_table.py."""

from __future__ import annotations

import csv
import json
import re
from html import escape as html_escape
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from camserve import client as client_module
from camserve.checkpoint import load_model_class
from camserve.errors import InvalidRequest
from camserve.explainer import Explainer
from camserve.tabular import TabularSchema
from scripts import analyze_errors, archive
from scripts.demo import thyroid_phantoms
from scripts.demo.train_thyroid import MODEL_FILE
from tests.harness import torchserve

FEATURES = list(thyroid_phantoms.FEATURES)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path):
    """Synthetic thyroid test images, a CSV with one row missing and one invalid value, and a tiny
    random multimodal model (its clinical branch amplified so fields matter) served beside ``tiny``."""
    root = tmp_path_factory.mktemp("tabular")
    data = root / "thyroid"
    assert thyroid_phantoms.main(["--out", str(data), "--n-train", "2", "--n-val", "1", "--n-test", "8",
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


@pytest.fixture(scope="module")
def analysed(setup, tmp_path_factory) -> SimpleNamespace:
    """One run with figures and the maps of the top 3 errors, every request recorded."""
    calls: list[tuple[bytes, dict]] = []
    original = client_module.Client.explain

    def spy(self, model, image, mask=None, **options):
        calls.append((image, options))
        return original(self, model, image, mask, **options)
    out = tmp_path_factory.mktemp("tab") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client_module.Client, "explain", spy)
        rc = run(setup, out, "--gradcam", "--top-k", "3", "--visualize")
    with open(out / "predictions.csv", newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    return SimpleNamespace(rc=rc, out=out, calls=calls, rows=rows, reference=in_process(setup),
                           summary=json.loads((out / "error_summary.json").read_text()),
                           html=(out / "report.html").read_text(encoding="utf-8"))


@pytest.mark.integration
def test_analysis_sends_each_images_fields(setup, analysed) -> None:
    out, rows, reference = analysed.out, analysed.rows, analysed.reference
    assert analysed.rc == 1  # the invalid value fails one image
    assert isinstance(reference[setup["invalid"]], InvalidRequest)
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
    reason = failures[0]["reason"]
    assert reason.startswith("InvalidRequest (400): ") and "clinical field 'sex'" in reason
    n = len(reference)
    assert analysed.summary["clinical_fields"] == {"csv": str(setup["root"] / "clinical.csv"),
                                                   "images_with_row": n - 2, "images_without_row": 1,
                                                   "csv_rows_outside_data_dir": 3}

    by_bytes = {p.read_bytes(): p.relative_to(setup["data"] / "test").as_posix()
                for p in (setup["data"] / "test").rglob("*.png")}
    sent = [(by_bytes[image], options) for image, options in analysed.calls
            if image in by_bytes]  # not describe()'s blank image
    maps = [rel for rel, options in sent if "target" in options]
    assert len(maps) == min(3, analysed.summary["total_errors"]) and len(sent) == n + len(maps)
    for rel, options in sent:  # predictions and maps alike carry the image's own fields, and ask for no image
        assert options["images"] == "none" and options["explain"] == ("gradcam" if "target" in options else "none")
        fields = setup["fields"].get(rel)
        if fields:
            assert json.loads(options["clinical"]) == fields, rel
        else:
            assert "clinical" not in options, rel


def pairwise_auc(pos: list[float], neg: list[float]) -> float:
    """P(a positive outscores a negative), ties one half: every pair counted."""
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


@pytest.mark.integration
def test_binary_report_auc_threshold_metrics_and_headline(setup, analysed) -> None:
    rows, summary = analysed.rows, analysed.summary
    truth = {rel: rel.split("/")[0] for rel in rows}
    pos = [float(r["p_malignant"]) for rel, r in rows.items() if truth[rel] == "malignant"]
    neg = [float(r["p_malignant"]) for rel, r in rows.items() if truth[rel] == "benign"]
    assert pos and neg
    b = summary["binary"]
    assert abs(b["roc_auc"] - pairwise_auc(pos, neg)) <= 1e-9
    here = analysed.reference  # the in-process model's probabilities give the same AUC
    assert abs(b["roc_auc"] - pairwise_auc(
        [here[r].probabilities["malignant"] for r in rows if truth[r] == "malignant"],
        [here[r].probabilities["malignant"] for r in rows if truth[r] == "benign"])) <= 1e-9
    called = {rel: r["pred_label"] == "malignant" for rel, r in rows.items()}
    for rel, r in rows.items():  # the served prediction is the threshold p > 0.5
        assert called[rel] == (float(r["p_malignant"]) > 0.5), rel
    tp = sum(called[r] and truth[r] == "malignant" for r in rows)
    fn = sum(not called[r] and truth[r] == "malignant" for r in rows)
    tn = sum(not called[r] and truth[r] == "benign" for r in rows)
    fp = sum(called[r] and truth[r] == "benign" for r in rows)
    assert (b["positive"], b["threshold"], b["tp"], b["fn"], b["tn"], b["fp"]) == ("malignant", 0.5, tp, fn, tn, fp)
    assert b["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-6)
    assert b["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-6)
    assert summary["topk_accuracy"] == {"1": summary["accuracy"]} and "one_vs_rest" not in summary
    sentence = next(line for line in summary["headline"] if line.startswith("As a test for malignant"))
    assert sentence == (f"As a test for malignant at the served threshold (p > 0.5): sensitivity "
                        f"{100 * tp / (tp + fn):.1f}% ({tp} of {tp + fn}), specificity {100 * tn / (tn + fp):.1f}% "
                        f"({tn} of {tn + fp}), ROC AUC {pairwise_auc(pos, neg):.3f}.")
    assert "top-2 accuracy" not in analysed.html and "ROC AUC" in analysed.html
    assert (analysed.out / "figures" / "roc_pr.png").stat().st_size > 1000 and 'alt="roc_pr"' in analysed.html


@pytest.mark.integration
def test_binary_error_cards_show_both_maps_and_the_clinical_values(setup, analysed) -> None:
    errors = [c["path"] for c in analysed.summary["most_confident_errors"]]
    cards = analysed.html.split('<div class="card">')[1:]
    assert len(cards) == len(errors) >= 1
    for card, rel in zip(cards, errors, strict=True):
        pred = analysed.rows[rel]["pred_label"]
        true = rel.split("/")[0]
        titles = re.findall(r"<figure><figcaption>(.*?)</figcaption>", card)
        assert titles == ["image", f"gradcam: predicted {pred}", f"gradcam: true {true}"]
        fields = setup["fields"].get(rel, {})
        shown = ", ".join(f"{k}={html_escape(v)}" for k, v in fields.items()) or "none sent (every field missing)"
        assert f"clinical: {shown}</p>" in card


@pytest.mark.integration
def test_unusable_csv_is_a_setup_error(setup, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = write(tmp_path / "bad.csv", "path,Age\nbenign/a.png,3\n")
    assert run(setup, tmp_path / "a", csv_path=bad) == 2
    assert "column 'Age' is not a clinical field of the model" in capsys.readouterr().err
    assert run(setup, tmp_path / "b", model="tiny") == 2
    assert "model 'tiny' takes no clinical fields" in capsys.readouterr().err
