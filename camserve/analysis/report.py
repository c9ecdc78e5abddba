"""The JSON / CSV outputs computed from the analysed results.

Everything here is a function of :class:`~camserve.analysis.results.Analysis` (the latest record per
image, sorted by path), so an interrupted and resumed run writes the same files as an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from camserve.analysis import metrics as M
from camserve.analysis import sections
from camserve.analysis.headline import headline
from camserve.analysis.results import FAITHFULNESS, Analysis, grouped, mean_or_none, r6

MAX_TOPK = 5


def focus_summary(an: Analysis) -> dict[str, Any] | None:
    """Focus-score distribution by true class and by correct vs wrong, or ``None`` without scores."""
    if not np.isfinite(an.focus).any():
        return None
    return {**grouped(an, an.focus), "masks": dict(sorted(an.mask_status.items()))}


def clinical_summary(an: Analysis) -> dict[str, int] | None:
    """How many analysed images were sent with their CSV row, and how many without one (``None``
    without a ``--tabular`` CSV)."""
    counts = Counter(c for c in an.clinical if c is not None)
    if not counts:
        return None
    return {"images_with_row": counts.get("row", 0), "images_without_row": counts.get("no_row", 0)}


def _image_row(an: Analysis, i: int) -> dict[str, Any]:
    return {"path": an.rels[i], "true": an.classes[an.y_true[i]], "pred": an.classes[an.y_pred[i]],
            "confidence": r6(an.confidence[i]), "true_probability": r6(an.probs[i, an.y_true[i]])}


def analyse(an: Analysis, model: Mapping[str, Any], top_k: int, method: str = "gradcam",
            dilate_px: int = 4) -> tuple[dict[str, Any], dict[str, Any]]:
    """``error_summary.json`` and ``confusion_analysis.json`` contents.

    Args:
        an: The results.
        model: Name, version, arch and classes of the served model.
        top_k: How many errors and label issues to list.
        method: The CAM method of the maps (for the faithfulness section).
        dilate_px: The pointing game's tolerance (for the localisation section).
    """
    C = len(an.classes)
    cm = M.confusion_matrix(an.y_true, an.y_pred, C)
    pcm = M.per_class_metrics(cm)
    cal = M.calibration(an.confidence, an.correct)
    issues = M.confident_learning(an.probs, an.y_true, C)
    pairs = [{"true": an.classes[t], "pred": an.classes[p], "count": n} for t, p, n in M.confusion_pairs(cm)]
    errors = an.errors_by_confidence()
    stages = Counter(f.stage for f in an.failures)
    summary = {
        "model": dict(model),
        "total_files": an.n + len(an.failures), "total_samples": an.n, "failed": len(an.failures),
        "failed_by_stage": dict(sorted(stages.items())), "unknown_class_folders": an.unknown_folders,
        "total_errors": len(errors), "error_rate": r6(len(errors) / an.n) if an.n else None,
        "accuracy": mean_or_none(an.correct.astype(float)), "balanced_accuracy": r6(M.balanced_accuracy(cm)),
        "topk_accuracy": {str(k): r6(v) for k, v in  # top-2 of two classes is always 1: left out
                          M.topk_accuracy(an.probs, an.y_true, range(1, min(MAX_TOPK, C - 1 if C == 2 else C) + 1)
                                          ).items()},
        "mean_confidence_errors": mean_or_none(an.confidence[~an.correct]),
        "mean_confidence_correct": mean_or_none(an.confidence[an.correct]),
        "errors_by_true_class": {c: int(cm[k].sum() - cm[k, k]) for k, c in enumerate(an.classes)},
        "top_confusion_pairs": pairs[:10],
        "per_class": {c: {"precision": r6(pcm.precision[k]), "recall": r6(pcm.recall[k]),
                          "f1": r6(pcm.f1[k]), "support": int(pcm.support[k])} for k, c in enumerate(an.classes)},
        "macro_avg": {k: r6(v) for k, v in pcm.macro().items()},
        "weighted_avg": {k: r6(v) for k, v in pcm.weighted().items()},
        "calibration": {
            "ece": r6(cal.ece), "mce": r6(cal.mce), "n_bins": cal.n_bins, "binning": M.BINNING,
            "confidence": "top-1 probability",
            "bins": [{"lower": r6(cal.edges[b]), "upper": r6(cal.edges[b + 1]), "count": int(cal.counts[b]),
                      "accuracy": r6(cal.accuracy[b]) if cal.counts[b] else None,
                      "confidence": r6(cal.confidence[b]) if cal.counts[b] else None}
                     for b in range(cal.n_bins)]},
        "most_confident_errors": [_image_row(an, i) for i in errors[:top_k]],
        "likely_label_errors": {
            "method": "confident learning: per-class threshold = mean self-confidence of the class; "
                      "off-diagonal confident joint; ranked by normalised margin p(given) - max p(other)",
            "thresholds": {c: r6(issues.thresholds[k]) for k, c in enumerate(an.classes)},
            "count": int(len(issues.ranked)),
            "top": [label_issue_row(an, issues, i) for i in issues.ranked[:top_k]]},
        "focus_score": focus_summary(an),
        "clinical_fields": clinical_summary(an),
    }
    extra = {"binary": sections.binary(an), "one_vs_rest": sections.one_vs_rest(an),
             "label_quality": sections.label_quality(an, issues),
             "localisation": sections.localisation(an, dilate_px), "faithfulness": sections.faithfulness(an, method)}
    summary.update({k: v for k, v in extra.items() if v is not None})
    summary["headline"] = headline(summary)
    confusion = {
        "classes": an.classes, "rows": "true class", "columns": "predicted class",
        "matrix": cm.tolist(), "normalized": [[r6(v) for v in row] for row in M.normalise_rows(cm)],
        "pairs": pairs, "confident_joint": issues.joint.tolist(),
    }
    return summary, confusion


def label_issue_row(an: Analysis, issues: M.LabelIssues, i: int) -> dict[str, Any]:
    return {"path": an.rels[i], "given": an.classes[an.y_true[i]],
            "suggested": an.classes[issues.suggested[i]], "predicted": an.classes[an.y_pred[i]],
            "p_given": r6(an.probs[i, an.y_true[i]]), "p_suggested": r6(an.probs[i, issues.suggested[i]]),
            "margin": r6(issues.margin[i])}


def _optional(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


def _extra_columns(an: Analysis) -> dict[str, list[Any]]:
    """predictions.csv columns that exist only when asked for: lesion scores, faithfulness."""
    cols: dict[str, list[Any]] = {}
    if an.lesion_status:
        cols["pointing_game_hit"] = [None if not np.isfinite(h) else int(h) for h in an.hit]
        cols["lesion_focus"] = _optional(an.lesion_focus)
    if np.isfinite(an.faithfulness).any():
        for k, name in enumerate(FAITHFULNESS):
            values = _optional(an.faithfulness[:, k])
            cols[name] = [None if v is None else int(v) for v in values] if name == "increase" else values
    return cols


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")


def write_tables(out: Path, an: Analysis, summary: Mapping[str, Any], confusion: Mapping[str, Any],
                 gradcam_files: Mapping[str, str]) -> None:
    """All JSON and CSV outputs. Probabilities are written with full precision (``repr``)."""
    write_json(out / "error_summary.json", summary)
    write_json(out / "confusion_analysis.json", confusion)
    focus = _optional(an.focus)
    quality = M.label_quality(an.probs, an.y_true)
    extra = _extra_columns(an)
    write_csv(out / "predictions.csv",
              ["path", "true_label", "pred_label", "correct", "confidence", *[f"p_{c}" for c in an.classes],
               "focus_score", "clinical", "label_quality", *extra],
              [[an.rels[i], an.classes[an.y_true[i]], an.classes[an.y_pred[i]], int(an.correct[i]),
                float(an.confidence[i]), *an.probs[i].tolist(), focus[i],
                an.clinical[i] if an.clinical else None, float(quality[i]), *(col[i] for col in extra.values())]
               for i in range(an.n)])
    write_csv(out / "error_details.csv",
              ["rank", "path", "true_label", "pred_label", "pair", "confidence", "true_probability", "margin",
               "focus_score", "gradcam"],
              [[r + 1, an.rels[i], an.classes[an.y_true[i]], an.classes[an.y_pred[i]], an.pair(i),
                float(an.confidence[i]), float(an.probs[i, an.y_true[i]]),
                float(an.probs[i, an.y_true[i]] - an.confidence[i]), focus[i], gradcam_files.get(an.rels[i])]
               for r, i in enumerate(an.errors_by_confidence())])
    write_csv(out / "failures.csv", ["path", "stage", "reason"], [[f.rel, f.stage, f.reason] for f in an.failures])
    per = summary["per_class"]
    write_csv(out / "per_class_metrics.csv", ["class", "precision", "recall", "f1", "support"],
              [[c, per[c]["precision"], per[c]["recall"], per[c]["f1"], per[c]["support"]] for c in an.classes])
    for name, key in (("confusion_matrix.csv", "matrix"), ("confusion_matrix_normalized.csv", "normalized")):
        write_csv(out / name, ["true\\pred", *an.classes],
                  [[c, *row] for c, row in zip(an.classes, confusion[key], strict=True)])
    issues = M.confident_learning(an.probs, an.y_true, len(an.classes))
    write_csv(out / "label_issues.csv", ["rank", "path", "given", "suggested", "predicted", "p_given",
                                         "p_suggested", "margin"],
              [[r + 1, *label_issue_row(an, issues, i).values()] for r, i in enumerate(issues.ranked)])
