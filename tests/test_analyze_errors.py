"""scripts/analyze_errors.py: retry and resume mechanics without a server, then end to end against a real
TorchServe on a generated ImageFolder tree whose expected predictions come from an in-process run of the
same checkpoint (camserve.explainer.Explainer on the same bytes)."""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import os
import re
import signal
from collections import Counter
from html import escape as html_escape
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from camserve.analysis.cards import CARD_SIDE, Masks, overlay
from camserve.analysis.dataset import Item, safe_component, safe_stems, scan
from camserve.analysis.localisation import upsample_cam
from camserve.analysis.records import Record, RecordLog, read_log
from camserve.analysis.remote import Remote, Servers, Settings
from camserve.analysis.runner import run_pool, with_retries
from camserve.checkpoint import load_checkpoint
from camserve.client import Client
from camserve.errors import (
    InvalidRequest,
    ResumeMismatch,
    ServerError,
    ServerTimeout,
    ServerUnavailable,
    WorkerDied,
    from_payload,
)
from camserve.explainer import Explainer
from camserve.imaging import decode_image, decode_mask, preprocess
from camserve.schema import ExplainResponse, Explanation, Faithfulness, ModelInfo, Prediction, Target
from scripts import analyze_errors, archive
from tests.conftest import CLASSES, make_checkpoint
from tests.harness import free_port, torchserve

# ---------------------------------------------------------------- mechanics, no server


def test_retries_back_off_on_retriable_errors_only():
    calls, sleeps = [], []

    def flaky(attempt: int) -> str:
        calls.append(attempt)
        if attempt < 3:
            raise (ServerUnavailable, WorkerDied, ServerTimeout)[attempt]("down")
        return "ok"
    assert with_retries(flaky, retries=3, backoff=0.5, sleep=sleeps.append) == "ok"
    assert calls == [0, 1, 2, 3] and sleeps == [0.5, 1.0, 2.0]
    sleeps.clear()

    def always(exc: Exception):
        def call(attempt: int) -> str:
            calls.append(attempt)
            raise exc
        return call
    calls.clear()
    with pytest.raises(ServerError):  # a plain 500: the handler failed on this input, not retried
        with_retries(always(ServerError("boom")), retries=3, backoff=0.1, sleep=sleeps.append)
    assert calls == [0] and sleeps == []
    with pytest.raises(WorkerDied):
        with_retries(always(WorkerDied("again")), retries=2, backoff=20.0, sleep=sleeps.append)
    assert sleeps == [20.0, 30.0]  # doubled, capped at 30 s
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
    servers = Servers(["http://a", "http://b", "http://c"], ["t"] * 3, 1.0)
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


def test_scan_never_follows_a_link_out_of_or_back_into_the_data_folder(tmp_path: Path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "COVID").mkdir(parents=True)
    (data / "Normal").mkdir()
    outside.mkdir()
    (data / "COVID" / "a.png").write_bytes(b"a")
    (data / "Normal" / "b.png").write_bytes(b"b")
    (outside / "c.png").write_bytes(b"c")
    (data / "COVID" / "loop").symlink_to("..")  # a loop: would list the tree again and again
    (data / "Normal" / "away").symlink_to(outside)
    (data / "Normal" / "c.png").symlink_to(outside / "c.png")
    (data / "Normal" / "same.png").symlink_to(data / "COVID" / "a.png")
    scanned = scan(data, CLASSES)
    assert [(it.rel, it.label) for it in scanned.items] == [("COVID/a.png", "COVID"), ("Normal/b.png", "Normal")]
    assert [(f.rel, f.stage) for f in sorted(scanned.failures, key=lambda f: f.rel)] == [
        ("COVID/loop", "link"), ("Normal/away", "link"), ("Normal/c.png", "link"), ("Normal/same.png", "link")]


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


@pytest.mark.parametrize("flag,value", [("--timeout", "inf"), ("--timeout", "0"), ("--timeout", "nan"),
                                        ("--top-k", "0"), ("--concurrency", "-1"), ("--retries", "x"),
                                        ("--alpha", "1.5"), ("--backoff", "-1"), ("--method", "cam"),
                                        ("--dilate-px", "-2"), ("--colormap", "rainbow")])
def test_bad_flag_values_exit_2_with_a_usage_message(flag: str, value: str, capsys):
    with pytest.raises(SystemExit) as info:
        analyze_errors.build_parser().parse_args([flag, value])
    assert info.value.code == 2 and "usage:" in capsys.readouterr().err


def test_old_flag_spellings_still_work_but_are_hidden(capsys):
    args = analyze_errors.build_parser().parse_args(["--data", "d", "--out", "o", "--server-url", "http://a",
                                                     "--key-file", "k1", "--token-file", "k2"])
    assert (args.data_dir, args.output_dir, args.url, args.token_file) == (Path("d"), Path("o"), ["http://a"],
                                                                           [Path("k1"), Path("k2")])
    with pytest.raises(SystemExit):
        analyze_errors.build_parser().parse_args(["--help"])
    shown = capsys.readouterr().out
    assert "--data-dir" in shown and "--server-url" not in shown and "--key-file" not in shown


class FakeClient:
    """Answers every request with one error (or counts calls)."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors, self.calls = errors, 0

    def explain(self, model, image, mask=None, **options):
        self.calls += 1
        raise self.errors[min(self.calls - 1, len(self.errors) - 1)]


def test_failures_are_recorded_with_their_real_type(tmp_path: Path, monkeypatch):
    image = tmp_path / "COVID" / "a.png"
    image.parent.mkdir()
    image.write_bytes(tinted_png(0, 1))
    item = Item("COVID/a.png", image, "COVID")
    cases = [([from_payload(413, "")], "PayloadTooLarge (413): the request is larger than the server's "
                                       "max_request_size", 1),
             ([WorkerDied("Worker died.")] * 3, "WorkerDied (507) after 3 attempts: Worker died.", 3),
             ([ServerTimeout("no answer")] * 3, "ServerTimeout (503) after 3 attempts: no answer", 3),
             ([ServerError("boom")], "ServerError (500): boom", 1)]
    for errors, reason, calls in cases:
        fake = FakeClient(errors)
        remote = Remote(Servers(["http://a"], ["t"], 1.0), Settings("m", retries=2, backoff=0.01))
        monkeypatch.setattr(remote.servers, "client", lambda attempt, fake=fake: fake)
        record = remote.predict(item, CLASSES)
        assert (record.status, record.stage, record.reason, fake.calls) == ("failed", "request", reason, calls)


def test_faithfulness_and_lesion_scores_reach_the_record(tmp_path: Path, monkeypatch):
    image, lesion = tmp_path / "COVID" / "a.png", tmp_path / "lesions" / "COVID" / "a.png"
    for path in (image, lesion):
        path.parent.mkdir(parents=True)
    image.write_bytes(tinted_png(0, 1, size=(8, 8)))
    spot = np.zeros((8, 8), np.uint8)
    spot[6:, 6:] = 255  # bottom-right corner
    Image.fromarray(spot).save(lesion)
    cam = [[0.0, 0.0], [0.0, 1.0]]  # the peak is in the bottom-right quarter
    faith = Faithfulness(0.8, 0.2, 0.75, False, 0.1, 0.875)
    answer = ExplainResponse(
        model=ModelInfo("m", "1", "resnet18", "layer4", CLASSES, 64),
        prediction=Prediction("Normal", 1, 0.8), topk=[], probabilities={"COVID": 0.1, "Normal": 0.8,
                                                                          "Viral_Pneumonia": 0.1},
        explanation=Explanation("layercam", Target("Normal", 1), cam, 2.0, None, None, None, faith))
    sent = []

    class Answers:
        def explain(self, model, data, mask=None, **options):
            sent.append(options)
            return answer
    remote = Remote(Servers(["http://a"], ["t"], 1.0), Settings("m", "layercam", lesions=True, faithfulness=True))
    monkeypatch.setattr(remote.servers, "client", lambda attempt: Answers())
    record = remote.predict(Item("COVID/a.png", image, "COVID", lesion=lesion), CLASSES)
    assert sent == [{"explain": "layercam", "images": "none", "faithfulness": "true"}]
    assert record.faithfulness == {"average_drop": 0.75, "increase": 0.0, "deletion_drop": 0.875}
    assert (record.lesion, record.hit, record.pred, record.probs) == ("ok", True, "Normal", [0.1, 0.8, 0.1])
    # bilinear 2 -> 8 weights of the bright cell per row/column: 0 0 .125 .375 .625 .875 1 1 (sum 4);
    # the 2x2 lesion holds 1 x 1 of them per axis: (2 x 2) / (4 x 4)
    assert record.lesion_focus == pytest.approx(0.25, abs=1e-6)


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
    corrupt PNG, a text file, a folder the model has no class for, a file outside any class folder and
    a link back to the top of the tree."""
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
    (data / "COVID" / "loop").symlink_to("..")  # a link back into the tree: never followed
    return data, masks, images, mask_bytes


EXPECTED_FAILURES = {("COVID/corrupt.png", "decode"), ("Normal/notes.txt", "decode"), ("Other/o1.png", "label"),
                     ("README.md", "scan"), ("COVID/loop", "link")}


@pytest.fixture(scope="module")
def reference(centroid_checkpoint: Path, dataset) -> dict[str, tuple[str, list[float], float | None]]:
    """In-process predictions on the same bytes: rel -> (pred, probabilities, focus score)."""
    _, _, images, masks = dataset
    ex = Explainer.from_checkpoint(centroid_checkpoint, "centroid")
    rows = [{"data": png, "explain": b"gradcam", **({"mask": masks[rel]} if rel in masks else {})}
            for rel, png in images.items()]
    return {rel: (r.prediction.label, [r.probabilities[c] for c in CLASSES], r.explanation.focus_score)
            for rel, r in zip(images, ex.handle(rows), strict=True)}


@pytest.fixture(scope="module")
def lesions(dataset) -> tuple[Path, dict[str, np.ndarray]]:
    """Lesion masks: a 12 px square in one corner for COVID and Viral_Pneumonia images, empty for
    Normal ones, none for one image."""
    data, _, images, _ = dataset
    folder = data.parent / "lesions"
    arrays = {}
    for k, rel in enumerate(sorted(images)):
        if rel == "COVID/x ray (1).png":
            continue
        mask = np.zeros((40, 48), bool)
        if not rel.startswith("Normal/"):
            mask[:12, :12] = k % 2 == 0
            mask[-12:, -12:] = k % 2 == 1
        arrays[rel] = mask
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / rel)
    return folder, arrays


@pytest.fixture(scope="module")
def cams(centroid_checkpoint: Path, dataset) -> dict[str, np.ndarray]:
    """In-process map of the predicted class of every image."""
    _, _, images, _ = dataset
    ex = Explainer.from_checkpoint(centroid_checkpoint, "centroid")
    answers = ex.handle([{"data": png, "explain": b"gradcam"} for png in images.values()])
    return {rel: np.asarray(r.explanation.cam) for rel, r in zip(images, answers, strict=True)}


def run(served, dataset, out: Path, *extra: str) -> int:
    data, masks, _, _ = dataset
    return analyze_errors.main(["--data-dir", str(data), "--masks-dir", str(masks), "--output-dir", str(out),
                                "--url", served.url, "--token-file", str(served.key_file), "--model", "centroid",
                                "--retries", "2", "--backoff", "0.2", *extra])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def report(served, dataset, lesions, tmp_path_factory) -> SimpleNamespace:
    """One full run (two URLs of the same server, 6 in flight, lesion masks, figures, maps of the top 3
    errors), with every request the client sent recorded."""
    out = tmp_path_factory.mktemp("report") / "out"
    calls: list[tuple[bytes, bool, dict]] = []
    original = Client.explain

    def spy(self, model, image, mask=None, **options):
        calls.append((image, mask is not None, dict(options)))
        return original(self, model, image, mask, **options)
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(Client, "explain", spy)
        rc = run(served, dataset, out, "--url", served.url, "--concurrency", "6", "--visualize", "--gradcam",
                 "--top-k", "3", "--lesion-masks", str(lesions[0]))
    return SimpleNamespace(rc=rc, out=out, printed=printed.getvalue(), calls=calls,
                           html=(out / "report.html").read_text(encoding="utf-8"),
                           summary=json.loads((out / "error_summary.json").read_text()))


def top_errors(reference, k: int = 3) -> list[str]:
    conf = {rel: max(p) for rel, (_, p, _) in reference.items()}
    wrong = [rel for rel, (pred, _, _) in reference.items() if pred != rel.split("/")[0]]
    return sorted(wrong, key=lambda r: (-conf[r], r))[:k]


@pytest.mark.integration
def test_report_matches_the_in_process_model(report, reference):
    out = report.out
    assert report.rc == 1  # some files could not be analysed

    rows = {r["path"]: r for r in read_csv(out / "predictions.csv")}
    assert set(rows) == set(reference)  # the link loop added nothing
    for rel, (pred, probs, focus) in reference.items():
        assert rows[rel]["pred_label"] == pred, rel
        np.testing.assert_allclose([float(rows[rel][f"p_{c}"]) for c in CLASSES], probs, atol=1e-6, rtol=0)
        assert float(rows[rel]["label_quality"]) == pytest.approx(probs[CLASSES.index(rel.split("/")[0])], abs=1e-6)
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

    summary = report.summary
    n_err = sum(n for (t, p), n in expected.items() if t != p)
    assert (summary["total_samples"], summary["total_errors"], summary["failed"]) == (18, n_err, 5)
    assert summary["unknown_class_folders"] == ["Other"] and summary["calibration"]["n_bins"] == 15
    assert summary["focus_score"]["masks"] == {"missing": 1, "ok": 17} and summary["gradcam_failed"] == 0
    assert {(f["path"], f["stage"]) for f in read_csv(out / "failures.csv")} == EXPECTED_FAILURES
    assert f"Total samples: 18\nTotal errors: {n_err} ({100 * n_err / 18:.1f}%)" in report.printed

    top3 = top_errors(reference)
    conf = {rel: max(p) for rel, (_, p, _) in reference.items()}
    stems = {"COVID/x ray (1).png": "x_ray_1"}
    want = {f"{truth[r]}_as_{reference[r][0]}/{stems.get(r, Path(r).stem)}_conf{conf[r]:.2f}_gradcam.png"
            for r in top3}
    got = {p.relative_to(out / "gradcam_errors").as_posix() for p in (out / "gradcam_errors").rglob("*.png")}
    assert got == want
    details = read_csv(out / "error_details.csv")
    assert [d["path"] for d in details[:3]] == top3 and all(d["gradcam"] for d in details[:3])
    assert len(list((out / "figures" / "misclassified").rglob("*.png"))) == n_err

    html = report.html
    figures = ("error_distribution", "confidence_histogram", "confusion_matrix", "reliability_diagram",
               "roc_one_vs_rest", "focus_scores")
    for name in figures:
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
        assert f'alt="{name}" src="data:image/png;base64,' in html
    assert html.count('class="fig"') == len(figures) and html.count('<div class="card">') == 3
    assert 'src="http' not in html and all(html_escape(r) in html for r in top3)


@pytest.mark.integration
def test_requests_ask_only_for_what_is_used(report, dataset):
    _, masks, images, _ = dataset
    by_bytes = {png: rel for rel, png in images.items()}
    sent = [(by_bytes[image], has_mask, options) for image, has_mask, options in report.calls if image in by_bytes]
    predictions = [(rel, has_mask, o) for rel, has_mask, o in sent if "target" not in o]
    maps = [(rel, o) for rel, _, o in sent if "target" in o]
    assert sorted(rel for rel, _, _ in predictions) == sorted(images)  # one prediction per image, no retry
    for rel, has_mask, options in predictions:  # a mask needs the map for its focus score; no image ever
        assert options["images"] == "none" and options["explain"] == "gradcam" and has_mask == (rel != "COVID/c1.png")
    assert [rel for rel, _ in sorted(maps)] == sorted(top_errors_of(report))
    for rel, options in maps:  # one request for both maps of an error
        pred, true = report_classes(report, rel)
        assert options["target"] == f"{CLASSES.index(pred)},{CLASSES.index(true)}" and options["images"] == "none"


def top_errors_of(report) -> list[str]:
    return [c["path"] for c in report.summary["most_confident_errors"]]


def report_classes(report, rel: str) -> tuple[str, str]:
    row = next(c for c in report.summary["most_confident_errors"] if c["path"] == rel)
    return row["pred"], row["true"]


@pytest.mark.integration
def test_headline_agrees_with_the_csvs(report):
    rows = read_csv(report.out / "predictions.csv")
    n = len(rows)
    right = sum(r["true_label"] == r["pred_label"] for r in rows)
    pairs = Counter((r["true_label"], r["pred_label"]) for r in rows if r["true_label"] != r["pred_label"])
    (t, p), count = sorted(pairs.items(), key=lambda kv: (-kv[1], CLASSES.index(kv[0][0]), CLASSES.index(kv[0][1])))[0]
    support = {c: sum(r["true_label"] == c for r in rows) for c in CLASSES}
    recall = {c: sum(r["pred_label"] == c for r in rows if r["true_label"] == c) / support[c] for c in CLASSES}
    worst = min(CLASSES, key=lambda c: (recall[c], c))
    conf = np.array([float(r["confidence"]) for r in rows])
    ok = np.array([r["true_label"] == r["pred_label"] for r in rows])
    edges = np.linspace(0, 1, 16)
    ece = 0.0
    for b in range(15):  # the last bin is closed on the right
        inside = (conf >= edges[b]) & ((conf < edges[b + 1]) if b < 14 else (conf <= 1.0))
        if inside.any():
            ece += inside.mean() * abs(ok[inside].mean() - conf[inside].mean())
    played = [r for r in rows if r["pointing_game_hit"]]
    hits_right = [int(r["pointing_game_hit"]) for r in played if r["true_label"] == r["pred_label"]]
    hits_wrong = [int(r["pointing_game_hit"]) for r in played if r["true_label"] != r["pred_label"]]

    lines = report.summary["headline"]
    assert 3 <= len(lines) <= 5
    assert lines[0] == (f"centroid got {right} of {n} images right ({100 * right / n:.1f}%; balanced accuracy "
                        f"{100 * np.mean(list(recall.values())):.1f}%), and 5 files could not be analysed "
                        "(failures.csv).")
    missed = support[worst] - round(recall[worst] * support[worst])
    assert lines[1] == (f"The largest confusion is {t}→{p}: {count} of {n - right} errors "
                        f"({100 * count / (n - right):.1f}%); the weakest class is {worst} (recall "
                        f"{100 * recall[worst]:.1f}%, {missed} of {support[worst]} missed).")
    assert lines[2].startswith(f"Calibration: ECE {ece:.3f} over 15 bins")
    assert f"{100 * np.mean(hits_right):.0f}% ({sum(hits_right)} of {len(hits_right)} lesion images, mask dilated " \
           f"by 4 px); when it is wrong, {100 * np.mean(hits_wrong):.0f}% ({sum(hits_wrong)} of {len(hits_wrong)})." \
           in lines[3] and lines[3].startswith("When the model is right, its map's peak is ")
    assert all(html_escape(line) in report.html for line in lines)


@pytest.mark.integration
def test_provenance_names_model_data_command_and_servers(report, served, dataset, lesions):
    data, masks, images, _ = dataset
    prov = json.loads((report.out / "provenance.json").read_text())
    info = served.client().describe("centroid")
    assert prov["model"] == {"name": "centroid", "version": info.version, "arch": "resnet18", "classes": CLASSES,
                             "layer": info.layer, "input_size": 64}
    assert (prov["data_dir"], prov["masks_dir"], prov["lesion_masks_dir"]) == (
        str(data.resolve()), str(masks.resolve()), str(lesions[0].resolve()))
    assert prov["servers"] == [served.url, served.url] and prov["method"] == "gradcam"
    assert prov["images"] == {"files": 23, "analysed": 18, "failed": 5}
    listed = sorted([*images, "COVID/corrupt.png", "Normal/notes.txt", "Other/o1.png", "README.md", "COVID/loop"])
    assert prov["file_list_sha256"] == hashlib.sha256("\n".join(listed).encode()).hexdigest()
    assert "--model centroid" in prov["command"] and str(served.key_file) in prov["command"]
    created = dt.datetime.fromisoformat(prov["created"])
    assert dt.timedelta(0) <= dt.datetime.now(dt.UTC) - created < dt.timedelta(hours=1)
    for value in (prov["file_list_sha256"], html_escape(str(data.resolve())), prov["created"]):
        assert value in report.html


@pytest.mark.integration
def test_error_cards_carry_the_predicted_and_the_true_class_maps(report, dataset, lesions, centroid_checkpoint):
    _, _, images, masks = dataset
    ex = Explainer.from_checkpoint(centroid_checkpoint, "centroid")
    cards = report.html.split('<div class="card">')[1:]
    assert len(cards) == 3
    for card, rel in zip(cards, top_errors_of(report), strict=True):
        pred, true = report_classes(report, rel)
        pictures = re.findall(r'<figure><figcaption>(.*?)</figcaption><img class="map" alt="[^"]*" '
                              r'src="data:image/png;base64,([^"]+)">', card)
        assert [title for title, _ in pictures] == ["image", f"gradcam: predicted {pred}", f"gradcam: true {true}"]
        image = decode_image(images[rel])
        shown = {}
        for cls, (_, b64) in zip((pred, true), pictures[1:], strict=True):
            exp = ex.handle([{"data": images[rel], "explain": b"gradcam",
                              "target": str(CLASSES.index(cls)).encode()}])[0].explanation
            want = overlay(image, exp, "jet", 0.5, CARD_SIDE)
            want = Masks(roi=decode_mask(masks[rel], image.size) if rel in masks else None,
                         lesion=lesions[1].get(rel)).outline(want)
            got = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=int)
            assert got.shape == np.asarray(want).shape and np.abs(got - np.asarray(want, dtype=int)).max() <= 2, cls
            shown[cls] = got
        assert np.abs(shown[pred] - shown[true]).max() > 50  # two different maps, not one shown twice
        assert "p(true class)" in card and "raw map maximum (cam_max)" in card


def in_dilated(mask: np.ndarray, where: tuple[int, int], px: int) -> bool:
    """Whether a mask pixel lies within ``px`` (Euclidean) of ``where``: the dilation, checked directly."""
    ys, xs = np.nonzero(mask)
    return bool(((ys - where[0]) ** 2 + (xs - where[1]) ** 2 <= px ** 2).any())


@pytest.mark.integration
def test_localisation_against_lesion_masks(report, lesions, cams):
    rows = {r["path"]: r for r in read_csv(report.out / "predictions.csv")}
    masks = lesions[1]
    loc = report.summary["localisation"]
    assert loc["masks"] == {"empty": 6, "missing": 1, "ok": 11} and loc["dilate_px"] == 4
    for rel, row in rows.items():
        mask = masks.get(rel)
        if mask is None or not mask.any():
            assert row["pointing_game_hit"] == row["lesion_focus"] == "", rel
            continue
        up = upsample_cam(cams[rel], *mask.shape)
        peak = np.unravel_index(int(np.argmax(up)), up.shape)
        assert row["pointing_game_hit"] == str(int(up.max() > 0 and in_dilated(mask, peak, 4))), rel
        if up.sum() > 0:
            assert float(row["lesion_focus"]) == pytest.approx(up[mask].sum() / up.sum(), abs=1e-6), rel
        else:  # no positive evidence: a miss, and no focus
            assert row["lesion_focus"] == "" and row["pointing_game_hit"] == "0", rel
    game = loc["pointing_game"]
    assert game["all"]["n"] == 11 == game["correct"]["n"] + game["wrong"]["n"]
    assert game["all"]["hits"] == sum(int(r["pointing_game_hit"] or 0) for r in rows.values())
    assert "Localisation against the lesion masks" in report.html and html_escape(loc["reading"]) in report.html


@pytest.mark.integration
def test_one_vs_rest_auc_equals_a_pairwise_count(report):
    rows = read_csv(report.out / "predictions.csv")
    for c in CLASSES:
        pos = [float(r[f"p_{c}"]) for r in rows if r["true_label"] == c]
        neg = [float(r[f"p_{c}"]) for r in rows if r["true_label"] != c]
        wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
        assert abs(report.summary["one_vs_rest"]["roc_auc"][c] - wins) <= 1e-9


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


def worker_pids(server) -> set[int]:
    """The pids of the server's model workers: processes of TorchServe's ``model_service_worker`` whose
    parent (the frontend) runs in the server's directory."""
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or b"model_service_worker" not in (proc / "cmdline").read_bytes():
                continue
            ppid = next(line.split()[1] for line in (proc / "status").read_text().splitlines()
                        if line.startswith("PPid:"))
            if Path(f"/proc/{ppid}/cwd").resolve() == server.workdir.resolve():
                pids.add(int(proc.name))
        except (OSError, StopIteration):
            continue
    return pids


@pytest.mark.integration
def test_a_worker_killed_mid_run_costs_no_image(served, dataset, reference, tmp_path: Path, monkeypatch):
    """SIGKILL the model worker after the 4th result: the requests it held answer 503/507 and are retried
    (TorchServe restarts the worker), so every image gets its prediction without --resume."""
    before = worker_pids(served)
    assert len(before) == 1
    original, sent = RecordLog.write, Counter()

    def write_and_kill(self, record):
        original(self, record)
        if len(self.records) == 4:
            os.kill(next(iter(before)), signal.SIGKILL)
    real_explain = Client.explain

    def count(self, model, image, mask=None, **options):
        sent[image] += 1
        return real_explain(self, model, image, mask, **options)
    monkeypatch.setattr(RecordLog, "write", write_and_kill)
    monkeypatch.setattr(Client, "explain", count)
    out = tmp_path / "out"
    assert run(served, dataset, out, "--concurrency", "8", "--retries", "6", "--backoff", "0.5") == 1
    rows = {r["path"]: r for r in read_csv(out / "predictions.csv")}
    assert set(rows) == set(reference) and all(rows[rel]["pred_label"] == reference[rel][0] for rel in rows)
    assert {(f["path"], f["stage"]) for f in read_csv(out / "failures.csv")} == EXPECTED_FAILURES
    _, _, images, _ = dataset
    assert sum(sent[png] for png in images.values()) > len(images)  # some requests were lost and sent again
    after = worker_pids(served)
    assert len(after) == 1 and after != before


@pytest.mark.integration
def test_any_method_with_per_request_faithfulness(served, dataset, centroid_checkpoint, tmp_path: Path):
    _, masks, images, mask_bytes = dataset
    out = tmp_path / "out"
    assert run(served, dataset, out, "--method", "gradcam++", "--faithfulness", "--gradcam", "--top-k", "1") == 1
    ex = Explainer.from_checkpoint(centroid_checkpoint, "centroid")
    rows = {r["path"]: r for r in read_csv(out / "predictions.csv")}
    for rel, png in images.items():
        mask = {"mask": mask_bytes[rel]} if rel in mask_bytes else {}
        exp = ex.handle([{"data": png, "explain": b"gradcam++", "faithfulness": b"true", **mask}])[0].explanation
        assert exp.method == "gradcam++" and exp.faithfulness is not None
        want = (exp.faithfulness.average_drop, float(exp.faithfulness.increase), exp.faithfulness.deletion_drop)
        got = tuple(float(rows[rel][k]) for k in ("average_drop", "increase", "deletion_drop"))
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=rel)
        if exp.focus_score is not None:
            assert float(rows[rel]["focus_score"]) == pytest.approx(exp.focus_score, abs=1e-5), rel
    summary = json.loads((out / "error_summary.json").read_text())
    faith = summary["faithfulness"]
    assert faith["method"] == "gradcam++" and faith["n"] == 18
    assert faith["average_drop"]["all"]["mean"] == pytest.approx(np.mean([float(r["average_drop"])
                                                                           for r in rows.values()]), abs=1e-6)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Faithfulness of the gradcam++ maps" in html and "gradcam++: predicted" in html
    assert [p.name.rsplit("_", 1)[1] for p in (out / "gradcam_errors").rglob("*.png")] == ["gradcampp.png"]
