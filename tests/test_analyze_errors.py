"""scripts/analyze_errors.py: retry and resume mechanics without a server, then end to end against a real
TorchServe on a generated ImageFolder tree whose expected predictions come from an in-process run of the
same checkpoint (camserve.explainer.Explainer on the same bytes)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from html import escape as html_escape
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camserve.analysis.dataset import safe_component, safe_stems
from camserve.analysis.records import Record, RecordLog, ResumeMismatch, read_log
from camserve.analysis.runner import run_pool, with_retries
from camserve.checkpoint import load_checkpoint
from camserve.errors import InvalidRequest, ServerUnavailable
from camserve.explainer import Explainer
from camserve.imaging import decode_image, preprocess
from scripts import analyze_errors, archive
from tests.conftest import CLASSES, make_checkpoint
from tests.harness import free_port, torchserve

# ---------------------------------------------------------------- mechanics, no server


def test_retries_back_off_on_server_unavailable_only():
    calls, sleeps = [], []

    def flaky(attempt: int) -> str:
        calls.append(attempt)
        if attempt < 2:
            raise ServerUnavailable("503")
        return "ok"
    assert with_retries(flaky, retries=3, backoff=0.5, sleep=sleeps.append) == "ok"
    assert calls == [0, 1, 2] and sleeps == [0.5, 1.0]
    with pytest.raises(ServerUnavailable):
        with_retries(lambda a: flaky(-1), retries=2, backoff=0.1, sleep=sleeps.append)
    calls.clear()

    def bad(attempt: int) -> str:
        calls.append(attempt)
        raise InvalidRequest("415 will not change")
    with pytest.raises(InvalidRequest):
        with_retries(bad, retries=3, backoff=0.1, sleep=sleeps.append)
    assert calls == [0]


def test_retry_moves_to_the_next_server():
    servers = analyze_errors.Servers(["http://a", "http://b", "http://c"], ["t"] * 3, 1.0)
    first = servers.client(0).url
    assert servers.client(1).url != first and servers.client(3).url == first


def test_run_pool_accounts_for_every_item():
    out: list = []

    def work(i: int) -> tuple[int, str]:
        if i % 3 == 0:
            raise RuntimeError("boom")
        return i, "ok"
    run_pool(range(10), work, lambda i, exc: (i, f"error {exc}"), out.append, concurrency=3)
    assert sorted(out) == [(i, "error boom" if i % 3 == 0 else "ok") for i in range(10)]


def test_safe_names_cannot_escape_the_output_dir():
    for text in ("../../etc/passwd", "..", "a/b\\c", "COVID_as_../../x", " ", "ü.png"):
        name = safe_component(text)
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name) and ".." not in name.split("/"), name
    stems = safe_stems(["A/x.png", "B/x.png", "A/y.png"])
    assert stems["A/y.png"] == "y" and len({stems["A/x.png"], stems["B/x.png"]}) == 2


def test_record_log_resume_cuts_a_torn_line_and_checks_the_header(tmp_path: Path):
    path = tmp_path / "predictions.jsonl"
    meta = {"model": "m", "classes": ["a", "b"]}
    with RecordLog(path, meta, resume=False) as log:
        log.write(Record("a/1.png", "a", "ok", "a", [0.75, 0.25]))
        log.write(Record.failed("a/2.png", "a", "request", "ServerUnavailable"))
    with open(path, "a") as fh:
        fh.write('{"path": "a/3.p')  # killed mid-line
    with RecordLog(path, meta, resume=True) as log:
        assert log.done() == {"a/1.png"} and len(log.records) == 2
        log.write(Record("a/2.png", "a", "ok", "b", [0.4, 0.6]))
        assert log.latest()["a/2.png"].ok
    _, records, _ = read_log(path)  # the torn line is gone, not glued to the next record
    assert [(r.path, r.status) for r in records] == [("a/1.png", "ok"), ("a/2.png", "failed"), ("a/2.png", "ok")]
    with pytest.raises(ResumeMismatch):
        RecordLog(path, {**meta, "classes": ["a", "c"]}, resume=True)


def test_unreachable_server_is_a_setup_error(tmp_path: Path, capsys):
    (tmp_path / "data" / "a").mkdir(parents=True)
    key = tmp_path / "key_file.json"
    key.write_text(json.dumps({"inference": {"key": "x"}}))
    rc = analyze_errors.main(["--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out"),
                              "--url", f"http://127.0.0.1:{free_port()}", "--token-file", str(key),
                              "--retries", "0", "--model", "tiny"])
    assert rc == 2 and "not reachable" in capsys.readouterr().err


# ---------------------------------------------------------------- end to end

# Folder -> tint of each of its images. A tint is the class the model was built to predict for it, so
# the expected confusion is not trivial: COVID->Normal x2, Viral_Pneumonia->COVID x2, ->Normal, Normal->VP.
TINTS = {"COVID": [0, 0, 0, 0, 1, 1], "Normal": [1, 1, 1, 1, 1, 2], "Viral_Pneumonia": [2, 2, 2, 0, 0, 1]}


def tinted_png(tint: int, seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    """Noise in one colour channel, the others black."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[..., tint] = np.random.default_rng(seed).integers(0, 256, (size[1], size[0]))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def nearest_centroid_checkpoint(path: Path) -> Path:
    """tiny's resnet18 with its head replaced by a nearest-centroid classifier over the three tints,
    so predictions follow the image content (a random head predicts one class for everything)."""
    make_checkpoint(path)
    model, spec = load_checkpoint(path)
    feats = []
    hook = model.avgpool.register_forward_hook(lambda m, i, o: feats.append(o.flatten(1)))
    with torch.no_grad():
        for tint in range(3):
            model(torch.stack([preprocess(decode_image(tinted_png(tint, 1000 + s)), spec.input_size, spec.mean,
                                          spec.std) for s in range(4)]))
    hook.remove()
    cents = torch.stack([f.mean(0) for f in feats]).double()
    mid = cents.mean(0)
    temp = torch.cdist(cents, cents).pow(2).masked_fill(torch.eye(3, dtype=torch.bool), float("inf")).min()
    # logits = -|f - c|^2 / temp up to a constant, centred on ``mid`` to keep float32 cancellation small
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["fc.weight"] = (2 * (cents - mid) / temp).float()
    ckpt["state_dict"]["fc.bias"] = (-((cents - mid) * (cents + mid)).sum(1) / temp).float()
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def centroid_checkpoint(tmp_path_factory) -> Path:
    return nearest_centroid_checkpoint(tmp_path_factory.mktemp("ckpt") / "centroid.pt")


@pytest.fixture(scope="module")
def served(tmp_path_factory, centroid_checkpoint: Path):
    store = tmp_path_factory.mktemp("store")
    assert archive.main([str(centroid_checkpoint), "--name", "centroid", "--model-store", str(store),
                         "--batch-size", "8", "--max-batch-delay", "50"]) == 0
    with torchserve(store, tmp_path_factory.mktemp("ts")) as server:
        yield server


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path, dict[str, bytes], dict[str, bytes]]:
    """18 images (one with a space in its name, one in a subfolder), masks for all but one, plus a
    corrupt PNG, a text file, a folder the model has no class for and a file outside any class folder."""
    root = tmp_path_factory.mktemp("dataset")
    data, masks = root / "data", root / "masks"
    images, mask_bytes = {}, {}
    left = np.zeros((40, 48), np.uint8)
    left[:, :24] = 255
    for k, (cls, tints) in enumerate(TINTS.items()):
        for s, tint in enumerate(tints):
            name = f"{cls[0].lower()}{s}.png" if s else "x ray (1).png"
            images[f"{cls}/sub/{name}" if (cls, s) == ("Normal", 5) else f"{cls}/{name}"] = tinted_png(tint, 10 * k + s)
    for rel, png in images.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(png)
        if rel != "COVID/c1.png":
            buf = io.BytesIO()
            Image.fromarray(left).save(buf, format="PNG")
            mask_bytes[rel] = buf.getvalue()
            (masks / rel).parent.mkdir(parents=True, exist_ok=True)
            (masks / rel).write_bytes(mask_bytes[rel])
    (data / "COVID" / "corrupt.png").write_bytes(images["COVID/c2.png"][:60])
    (data / "Normal" / "notes.txt").write_text("not an image")
    (data / "Other").mkdir()
    (data / "Other" / "o1.png").write_bytes(images["COVID/c2.png"])
    (data / "README.md").write_text("dataset notes")
    return data, masks, images, mask_bytes


EXPECTED_FAILURES = {("COVID/corrupt.png", "decode"), ("Normal/notes.txt", "decode"), ("Other/o1.png", "label"),
                     ("README.md", "scan")}


@pytest.fixture(scope="module")
def reference(centroid_checkpoint: Path, dataset) -> dict[str, tuple[str, list[float], float | None]]:
    """In-process predictions on the same bytes: rel -> (pred, probabilities, focus score)."""
    _, _, images, masks = dataset
    ex = Explainer.from_checkpoint(centroid_checkpoint, "centroid")
    rows = [{"data": png, "explain": b"gradcam", **({"mask": masks[rel]} if rel in masks else {})}
            for rel, png in images.items()]
    return {rel: (r.prediction.label, [r.probabilities[c] for c in CLASSES], r.explanation.focus_score)
            for rel, r in zip(images, ex.handle(rows), strict=True)}


def run(served, dataset, out: Path, *extra: str) -> int:
    data, masks, _, _ = dataset
    return analyze_errors.main(["--data-dir", str(data), "--masks-dir", str(masks), "--output-dir", str(out),
                                "--url", served.url, "--token-file", str(served.key_file), "--model", "centroid",
                                "--retries", "2", "--backoff", "0.2", *extra])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.integration
def test_report_matches_the_in_process_model(served, dataset, reference, tmp_path: Path, capsys):
    out = tmp_path / "out"
    rc = run(served, dataset, out, "--url", served.url, "--concurrency", "6", "--visualize", "--gradcam",
             "--top-k", "3")
    assert rc == 1  # some files could not be analysed
    printed = capsys.readouterr().out

    rows = {r["path"]: r for r in read_csv(out / "predictions.csv")}
    assert set(rows) == set(reference)
    for rel, (pred, probs, focus) in reference.items():
        assert rows[rel]["pred_label"] == pred, rel
        np.testing.assert_allclose([float(rows[rel][f"p_{c}"]) for c in CLASSES], probs, atol=1e-6, rtol=0)
        if focus is None:  # no mask, or a map with no positive evidence
            assert rows[rel]["focus_score"] == "", rel
        else:
            assert float(rows[rel]["focus_score"]) == pytest.approx(focus, abs=1e-5), rel
    assert reference["COVID/c1.png"][2] is None and sum(f is not None for _, _, f in reference.values()) >= 5

    truth = {rel: rel.split("/")[0] for rel in reference}
    expected = Counter((truth[rel], pred) for rel, (pred, _, _) in reference.items())
    assert sum(n for (t, p), n in expected.items() if t != p) == 6 and len({p for _, p in expected}) == 3
    confusion = json.loads((out / "confusion_analysis.json").read_text())
    assert confusion["matrix"] == [[expected[(t, p)] for p in CLASSES] for t in CLASSES]

    summary = json.loads((out / "error_summary.json").read_text())
    n_err = sum(n for (t, p), n in expected.items() if t != p)
    assert (summary["total_samples"], summary["total_errors"], summary["failed"]) == (18, n_err, 4)
    assert summary["unknown_class_folders"] == ["Other"] and summary["calibration"]["n_bins"] == 15
    assert summary["focus_score"]["masks"] == {"missing": 1, "ok": 17}
    assert {(f["path"], f["stage"]) for f in read_csv(out / "failures.csv")} == EXPECTED_FAILURES
    assert f"Total samples: 18\nTotal errors: {n_err} ({100 * n_err / 18:.1f}%)" in printed

    conf = {rel: max(p) for rel, (_, p, _) in reference.items()}
    top3 = sorted((rel for rel in reference if reference[rel][0] != truth[rel]), key=lambda r: (-conf[r], r))[:3]
    stems = {"COVID/x ray (1).png": "x_ray_1"}
    want = {f"{truth[r]}_as_{reference[r][0]}/{stems.get(r, Path(r).stem)}_conf{conf[r]:.2f}_gradcam.png"
            for r in top3}
    got = {p.relative_to(out / "gradcam_errors").as_posix() for p in (out / "gradcam_errors").rglob("*.png")}
    assert got == want
    details = read_csv(out / "error_details.csv")
    assert [d["path"] for d in details[:3]] == top3 and all(d["gradcam"] for d in details[:3])
    assert len(list((out / "figures" / "misclassified").rglob("*.png"))) == n_err

    html = (out / "report.html").read_text()
    for name in ("error_distribution", "confidence_histogram", "confusion_matrix", "reliability_diagram",
                 "focus_scores"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
        assert f'alt="{name}" src="data:image/png;base64,' in html
    assert html.count("data:image/png;base64,") == 5 + 2 * 3  # figures + thumbnail and heatmap per error
    assert 'src="http' not in html and all(html_escape(r) in html for r in top3)


@pytest.mark.integration
def test_interrupted_run_resumes_to_the_same_report(served, dataset, tmp_path: Path, monkeypatch):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    # one request in flight: the server never batches, so both runs see bit-identical outputs
    assert run(served, dataset, whole, "--concurrency", "1") == 1

    original = RecordLog.write

    def write_then_crash(self, record):
        if len(self.records) == 7:
            raise KeyboardInterrupt
        original(self, record)
    monkeypatch.setattr(RecordLog, "write", write_then_crash)
    assert run(served, dataset, parts, "--concurrency", "1") == 130
    monkeypatch.undo()
    log = parts / "predictions.jsonl"
    assert len(log.read_text().splitlines()) == 1 + 7 and not (parts / "error_summary.json").exists()
    with open(log, "a") as fh:
        fh.write('{"path": "Viral_Pneumonia/v')  # and a line torn by a crash
    first = [json.loads(line) for line in log.read_text().splitlines()[1:8]]

    assert run(served, dataset, parts, "--concurrency", "1", "--resume") == 1
    for name in ("error_summary.json", "predictions.csv", "confusion_analysis.json", "error_details.csv",
                 "failures.csv", "label_issues.csv"):
        assert (parts / name).read_bytes() == (whole / name).read_bytes(), name
    resumed = [json.loads(line)["path"] for line in log.read_text().splitlines()[8:]]
    assert not {r["path"] for r in first if r["status"] == "ok"} & set(resumed)
    assert len(resumed) == 20 - sum(r["status"] == "ok" for r in first)  # 18 images + 2 undecodable files
