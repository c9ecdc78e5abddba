"""The report's parts without a server: headline, sections, provenance, figures, cards and the page,
on hand-made results whose answers are worked out by hand."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camserve.analysis import figures, html_parts, report_html
from camserve.analysis import metrics as M
from camserve.analysis.cards import LESION_COLOUR, ROI_COLOUR, Masks, panel
from camserve.analysis.localisation import outline
from camserve.analysis.provenance import provenance, redact_argv, redact_url
from camserve.analysis.report import analyse
from camserve.analysis.results import Analysis
from camserve.analysis.sections import label_quality, reading

CLASSES = ["COVID", "Normal", "Viral_Pneumonia"]


def results(probs: list[list[float]], y_true: list[int], classes: list[str] = CLASSES, focus=None,
            hit=None) -> Analysis:
    p = np.array(probs, dtype=np.float64)
    n = len(y_true)
    nan = np.full(n, np.nan)
    return Analysis(classes=classes, rels=[f"{classes[t]}/{k:02d}.png" for k, t in enumerate(y_true)],
                    y_true=np.array(y_true), y_pred=p.argmax(axis=1), probs=p,
                    focus=nan if focus is None else np.array(focus, dtype=float),
                    hit=nan if hit is None else np.array(hit, dtype=float), lesion_focus=nan,
                    faithfulness=np.full((n, 3), np.nan), failures=[], unknown_folders=[],
                    mask_status=Counter(), lesion_status=Counter({"ok": n}) if hit is not None else Counter())


# 10 images: COVID 4 (1 read as Normal), Normal 3 (all right), Viral_Pneumonia 3 (2 read as COVID)
PROBS = [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.3, 0.6, 0.1],
         [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.05, 0.9, 0.05],
         [0.6, 0.1, 0.3], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8]]
TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_headline_reads_the_numbers():
    an = results(PROBS, TRUE, focus=[0.5, 0.6, 0.7, 0.2, 0.5, 0.5, 0.5, 0.1, 0.3, 0.5])
    summary, _ = analyse(an, {"name": "m", "version": "1", "arch": "a", "classes": CLASSES}, top_k=5)
    lines = summary["headline"]
    assert lines[0] == "m got 7 of 10 images right (70.0%; balanced accuracy 69.4%)."
    assert lines[1] == ("The largest confusion is Viral_Pneumonia→COVID: 2 of 3 errors (66.7%); the weakest class "
                        "is Viral_Pneumonia (recall 33.3%, 2 of 3 missed).")
    mean_conf = np.mean([0.9, 0.8, 0.7, 0.6, 0.8, 0.7, 0.9, 0.6, 0.9, 0.8])  # 0.77 for 0.70 accuracy
    assert lines[2].startswith("Calibration: ECE ") and f"mean confidence {100 * mean_conf:.1f}% for 70.0%" in lines[2]
    assert "over-confident" in lines[2] and "its errors average 70.0% confidence" in lines[2]
    assert lines[3] == ("The maps put a median share of their weight inside the mask of 0.50 when right, "
                        "0.20 when wrong.")
    assert len(lines) == 4 and summary["topk_accuracy"] == {"1": 0.7, "2": 0.9, "3": 1.0}


def test_binary_summary_has_no_top2_and_reads_the_test():
    p1 = [0.9, 0.8, 0.3, 0.6, 0.2, 0.1]
    an = results([[1 - p, p] for p in p1], [1, 1, 1, 0, 0, 0], classes=["benign", "malignant"])
    summary, _ = analyse(an, {"name": "t", "version": "1", "arch": "a", "classes": an.classes}, top_k=5)
    b = summary["binary"]
    assert (b["tp"], b["fn"], b["tn"], b["fp"]) == (2, 1, 2, 1) and b["roc_auc"] == pytest.approx(8 / 9)
    assert summary["topk_accuracy"] == {"1": pytest.approx(4 / 6, abs=1e-6)} and "one_vs_rest" not in summary
    assert ("As a test for malignant at the served threshold (p > 0.5): sensitivity 66.7% (2 of 3), specificity "
            "66.7% (2 of 3), ROC AUC 0.889.") in summary["headline"]


def test_label_quality_says_when_the_flags_are_just_the_confident_errors():
    an = results(PROBS, TRUE)
    issues = M.confident_learning(an.probs, an.y_true, 3)
    lq = label_quality(an, issues)
    # thresholds: COVID 0.675, Normal 0.8, Viral_Pneumonia 0.383; only image 8 (VP, p(COVID) 0.9) passes one
    assert issues.ranked.tolist() == [8] and an.errors_by_confidence()[0] == 8
    assert lq["flagged_are_the_most_confident_errors"] and lq["note"].startswith(
        "The 1 flagged image is misclassified, and it is the most confident error")
    other = label_quality(an, M.LabelIssues(issues.thresholds, issues.joint, np.array([3, 0]), issues.suggested,
                                            issues.margin))
    assert not other["flagged_are_the_most_confident_errors"] and other["note"] == (
        "1 of the 2 flagged images are misclassified (rank 2 of the 3 errors by confidence).")
    none = label_quality(an, M.LabelIssues(issues.thresholds, issues.joint, np.zeros(0, int), issues.suggested,
                                           issues.margin))
    assert none["note"] == "No image is flagged as a likely label error." and none["flagged"] == 0


def test_localisation_reading():
    an = results(PROBS, TRUE, hit=[1, 1, 0, 0, np.nan, np.nan, np.nan, 1, 0, 1])
    summary, _ = analyse(an, {"name": "m", "version": "1", "arch": "a", "classes": CLASSES}, top_k=5, dilate_px=3)
    game = summary["localisation"]["pointing_game"]
    assert game["correct"] == {"n": 4, "hits": 3, "rate": 0.75} and game["wrong"] == {"n": 3, "hits": 1,
                                                                                       "rate": pytest.approx(1 / 3)}
    assert summary["localisation"]["reading"] == reading(game, 3) == (
        "When the model is right, its map's peak is often off the lesion: 75% (3 of 4 lesion images, mask dilated "
        "by 3 px); when it is wrong, 33% (1 of 3).")
    assert summary["headline"][-1] == summary["localisation"]["reading"]


def test_provenance_hides_secrets():
    assert redact_url("http://user:pw@127.0.0.1:8080/x?token=abc#f") == "http://127.0.0.1:8080/x"
    argv = ["analyze_errors.py", "--token", "s3cret", "--token=s3cret", "--url", "http://a:b@h:1", "--url=http://c:d@h:2",
            "--model", "m"]
    assert redact_argv(argv) == ["analyze_errors.py", "--token", "***", "--token=***", "--url", "http://h:1",
                                 "--url=http://h:2", "--model", "m"]
    when = dt.datetime(2025, 1, 2, 3, 4, 5, 678, tzinfo=dt.UTC)
    prov = provenance(model={"name": "m"}, method="gradcam", argv=argv, urls=["http://u:p@h:1/"],
                      folders={"data_dir": Path("/d"), "masks_dir": None}, images={"files": 3},
                      file_list_sha256="ab", now=when)
    assert prov["created"] == "2025-01-02T03:04:05+00:00" and prov["servers"] == ["http://h:1/"]
    assert "s3cret" not in str(prov) and ":b@" not in str(prov) and prov["masks_dir"] is None


def test_figures_are_full_width_and_drawn(tmp_path: Path):
    an = results(PROBS, TRUE, focus=[0.5] * 10)
    paths = figures.write_figures(tmp_path, an)
    assert list(paths) == ["error_distribution", "confidence_histogram", "confusion_matrix", "reliability_diagram",
                           "roc_one_vs_rest", "focus_scores"]
    for path in paths.values():
        with Image.open(path) as im:
            assert im.width == round(figures.WIDTH * figures.DPI)
    binary = results([[0.2, 0.8], [0.6, 0.4], [0.9, 0.1]], [1, 1, 0], classes=["a", "b"])
    assert list(figures.write_figures(tmp_path / "b", binary))[-1] == "roc_pr"


def test_mask_outlines_and_panels():
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    ring = outline(mask, (8, 8))
    assert ring.sum() == 12 and not ring[3:5, 3:5].any() and ring[2, 2:6].all()
    image = Image.new("RGB", (8, 8), (0, 0, 0))
    lesion = np.zeros((8, 8), bool)
    lesion[4, 4] = True
    drawn = np.asarray(Masks(roi=mask, lesion=lesion).outline(image))
    assert tuple(drawn[2, 3]) == ROI_COLOUR and tuple(drawn[4, 4]) == LESION_COLOUR and tuple(drawn[0, 0]) == (0, 0, 0)
    out = panel([("a", image), ("b", image), ("c", image)], "caption")
    assert out.height == 224 + 36 and out.width >= 3 * 224 + 8  # 8 px images enlarged 28x, nearest


def test_page_escapes_data_and_links_cells_to_their_images():
    classes = ["<b>A</b>", "B"]
    thumbs = [html_parts.Thumb("x/<i>.png", 0, 1, 0.9, b"\xff\xd8jpeg"), html_parts.Thumb("y.png", 1, 1, 0.8, b"j")]
    page = html_parts.confusion_browser(classes, [[0, 1], [0, 1]], thumbs)
    assert "<b>A</b>" not in page and "&lt;b&gt;A&lt;/b&gt;" in page and "x/&lt;i&gt;.png" in page
    assert re.findall(r'data-cell="(\d-\d)"', page) == ["0-1", "1-1"]  # only cells with images are buttons
    assert 'id="cell-0-1" hidden' in page and 'id="cell-1-1" hidden' in page
    card = html_parts.card(html_parts.Card("a/<x>.png", "A", "B", 0.5, [html_parts.Picture("image", b"p", "alt")],
                                           clinical={"sex": "<F>"}))
    assert "a/&lt;x&gt;.png" in card and "clinical: sex=&lt;F&gt;" in card
    assert "clinical" not in html_parts.card(html_parts.Card("a.png", "A", "B", 0.5, []))  # image-only model


def test_whole_page(tmp_path: Path):
    an = results(PROBS, TRUE)
    summary, confusion = analyse(an, {"name": "<m>", "version": "1", "arch": "a", "classes": CLASSES}, top_k=5)
    prov = provenance(model={"name": "<m>", "version": "1", "arch": "a", "layer": "l"}, method="gradcam",
                      argv=["x"], urls=["http://h:1"], folders={"data_dir": tmp_path, "masks_dir": None,
                                                                 "lesion_masks_dir": None},
                      images={"files": 10, "analysed": 10, "failed": 0}, file_list_sha256="f" * 64)
    page = report_html.render(summary, confusion, {}, [], [], prov)
    assert page.count("<script>") == 1 and "&lt;m&gt;" in page and "<m>" not in page
    assert page.index('class="lead"') < page.index("<h2>Provenance</h2>") < page.index("<h2>Overview</h2>")
    assert "f" * 64 in page and "One-vs-rest ROC AUC" in page and "top-2 accuracy" in page
