"""The analysed results as arrays, and the JSON / CSV outputs computed from them.

Everything here is a function of the latest record per image (sorted by path), so an interrupted and
resumed run writes the same files as an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from camserve.analysis import metrics as M
from camserve.analysis.dataset import Failure, Scan
from camserve.analysis.records import Record

MAX_TOPK = 5


@dataclass(frozen=True)
class Analysis:
    """Every analysed image (sorted by path) and every image that failed."""

    classes: list[str]
    rels: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray
    focus: np.ndarray  # NaN where there is no focus score
    failures: list[Failure]
    unknown_folders: list[str]
    mask_status: Counter
    clinical: tuple[str | None, ...] = ()  # per image: "row", "no_row" or None (no --tabular CSV)

    @property
    def n(self) -> int:
        return len(self.rels)

    @property
    def correct(self) -> np.ndarray:
        return self.y_true == self.y_pred

    @property
    def confidence(self) -> np.ndarray:
        return self.probs[np.arange(self.n), self.y_pred] if self.n else np.zeros(0)

    def errors_by_confidence(self) -> list[int]:
        """Indices of the misclassified images, most confident first (ties by path)."""
        wrong = np.flatnonzero(~self.correct)
        return sorted(wrong.tolist(), key=lambda i: (-self.confidence[i], self.rels[i]))

    def pair(self, i: int) -> str:
        return f"{self.classes[self.y_true[i]]}_as_{self.classes[self.y_pred[i]]}"


def collect(classes: Sequence[str], scanned: Scan, latest: Mapping[str, Record]) -> Analysis:
    """Join the scan with the latest records; an item with no record counts as failed."""
    index = {c: k for k, c in enumerate(classes)}
    ok: list[Record] = []
    failures = list(scanned.failures)
    for item in scanned.items:
        rec = latest.get(item.rel)
        if rec is None:
            failures.append(Failure(item.rel, "request", "no result recorded"))
        elif rec.ok:
            ok.append(rec)
        else:
            failures.append(Failure(item.rel, rec.stage or "request", rec.reason or "unknown"))
    ok.sort(key=lambda r: r.path)
    probs = np.array([r.probs for r in ok], dtype=np.float64).reshape(len(ok), len(classes))
    return Analysis(
        classes=list(classes), rels=[r.path for r in ok],
        y_true=np.array([index[r.label] for r in ok], dtype=np.int64),
        y_pred=np.array([index[r.pred] for r in ok], dtype=np.int64),
        probs=probs, focus=np.array([np.nan if r.focus is None else r.focus for r in ok], dtype=np.float64),
        failures=sorted(failures, key=lambda f: (f.rel, f.stage)), unknown_folders=list(scanned.unknown_folders),
        mask_status=Counter(r.mask for r in ok if r.mask is not None), clinical=tuple(r.clinical for r in ok))


def r6(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def _mean(a: np.ndarray) -> float | None:
    return r6(float(a.mean())) if len(a) else None


def _stats(values: np.ndarray) -> dict[str, Any]:
    v = values[np.isfinite(values)]
    if not len(v):
        return {"n": 0}
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return {"n": int(len(v)), "mean": r6(v.mean()), "median": r6(med), "q25": r6(q25), "q75": r6(q75)}


def focus_summary(an: Analysis) -> dict[str, Any] | None:
    """Focus-score distribution by true class and by correct vs wrong, or ``None`` without scores."""
    if not np.isfinite(an.focus).any():
        return None
    return {"by_class": {c: _stats(an.focus[an.y_true == k]) for k, c in enumerate(an.classes)},
            "correct": _stats(an.focus[an.correct]), "wrong": _stats(an.focus[~an.correct]),
            "masks": dict(sorted(an.mask_status.items()))}


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


def analyse(an: Analysis, model: Mapping[str, Any], top_k: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``error_summary.json`` and ``confusion_analysis.json`` contents."""
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
        "accuracy": _mean(an.correct.astype(float)), "balanced_accuracy": r6(M.balanced_accuracy(cm)),
        "topk_accuracy": {str(k): r6(v) for k, v in
                          M.topk_accuracy(an.probs, an.y_true, range(1, min(MAX_TOPK, C) + 1)).items()},
        "mean_confidence_errors": _mean(an.confidence[~an.correct]),
        "mean_confidence_correct": _mean(an.confidence[an.correct]),
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
    focus = [None if not np.isfinite(f) else float(f) for f in an.focus]
    write_csv(out / "predictions.csv",
              ["path", "true_label", "pred_label", "correct", "confidence", *[f"p_{c}" for c in an.classes],
               "focus_score", "clinical"],
              [[an.rels[i], an.classes[an.y_true[i]], an.classes[an.y_pred[i]], int(an.correct[i]),
                float(an.confidence[i]), *an.probs[i].tolist(), focus[i],
                an.clinical[i] if an.clinical else None] for i in range(an.n)])
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
