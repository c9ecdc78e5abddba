"""Classification metrics on numpy arrays, with the conventions of scikit-learn / torchmetrics / cleanlab.

Labels are class indices ``0..C-1``; ``probs`` is ``[N, C]``. Divisions by zero give 0 (precision of a
class never predicted, recall of a class never present), never NaN, as scikit-learn's
``zero_division=0``; balanced accuracy averages recall over the classes that occur, as scikit-learn does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ECE_BINS = 15
BINNING = ("B equal-width bins on [0, 1]: bin b (0-based) holds confidences in [b/B, (b+1)/B); the last "
           "bin is closed, [(B-1)/B, 1], so confidence 1.0 falls in bin B-1, not in an extra bin")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``cm[t, p]`` = number of samples of true class ``t`` predicted as ``p`` (int64, ``[C, C]``)."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def normalise_rows(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (recall view); a class with no samples gets a row of zeros, not NaN."""
    cm = np.asarray(cm, dtype=np.float64)
    sums = cm.sum(axis=1, keepdims=True)
    return np.asarray(np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0))


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.asarray(np.divide(num, den, out=np.zeros_like(num), where=den > 0))


@dataclass(frozen=True)
class ClassMetrics:
    """Per-class arrays, each ``[C]``."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray

    def macro(self) -> dict[str, float]:
        """Unweighted mean over all classes (scikit-learn's ``average="macro"``)."""
        return {k: float(getattr(self, k).mean()) for k in ("precision", "recall", "f1")}

    def weighted(self) -> dict[str, float]:
        """Mean weighted by support (scikit-learn's ``average="weighted"``); zeros when empty."""
        total = self.support.sum()
        if total == 0:
            return {k: 0.0 for k in ("precision", "recall", "f1")}
        return {k: float((getattr(self, k) * self.support).sum() / total) for k in ("precision", "recall", "f1")}


def per_class_metrics(cm: np.ndarray) -> ClassMetrics:
    """Precision, recall, F1 and support of every class from a confusion matrix."""
    cm = np.asarray(cm)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    precision = _safe_div(tp, cm.sum(axis=0))
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return ClassMetrics(precision, recall, f1, support.astype(np.int64))


def balanced_accuracy(cm: np.ndarray) -> float | None:
    """Mean recall over the classes present in the true labels; ``None`` with no samples."""
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return None
    return float((np.diag(cm)[present] / support[present]).mean())


def topk_accuracy(probs: np.ndarray, y_true: np.ndarray, ks: Sequence[int]) -> dict[int, float | None]:
    """Share of samples whose true class is among the ``k`` most probable.

    Ties are broken towards the lower class index (a stable sort), as the server picks its prediction,
    so top-1 accuracy equals plain accuracy.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return {k: None for k in ks}
    order = np.argsort(-probs, axis=1, kind="stable")
    hits = order == np.asarray(y_true)[:, None]
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}


@dataclass(frozen=True)
class Calibration:
    """Reliability of the top-1 confidence over ``n_bins`` equal-width bins (see ``BINNING``).

    ``accuracy`` and ``confidence`` are per-bin means (0 for empty bins, which carry no weight).
    """

    ece: float | None
    mce: float | None
    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    @property
    def n_bins(self) -> int:
        return len(self.counts)


def bin_index(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """The bin of each confidence; 1.0 (and anything above) goes to the last bin, never to bin ``n_bins``."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges, np.asarray(confidence, dtype=np.float64), side="right") - 1
    return np.clip(idx, 0, n_bins - 1)


def calibration(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> Calibration:
    """Expected (and maximum) calibration error of the top-1 confidence.

    ECE = sum over bins of (n_b / N) * |accuracy_b - mean confidence_b| (Guo et al. 2017).
    """
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    idx = bin_index(conf, n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    acc = _safe_div(np.bincount(idx, weights=ok, minlength=n_bins), counts)
    mean_conf = _safe_div(np.bincount(idx, weights=conf, minlength=n_bins), counts)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    if len(conf) == 0:
        return Calibration(None, None, edges, counts, acc, mean_conf)
    gaps = np.abs(acc - mean_conf)
    return Calibration(float((counts / len(conf) * gaps).sum()), float(gaps[counts > 0].max()),
                       edges, counts, acc, mean_conf)


def confusion_pairs(cm: np.ndarray) -> list[tuple[int, int, int]]:
    """Off-diagonal ``(true, pred, count)`` with a count, most frequent first (ties by index)."""
    cm = np.asarray(cm)
    pairs = [(t, p, int(cm[t, p])) for t in range(cm.shape[0]) for p in range(cm.shape[1])
             if t != p and cm[t, p] > 0]
    return sorted(pairs, key=lambda x: (-x[2], x[0], x[1]))


@dataclass(frozen=True)
class LabelIssues:
    """Confident-learning result (Northcutt et al. 2021, cleanlab's ``compute_confident_joint``).

    Attributes:
        thresholds: ``[C]`` per-class threshold, the mean self-confidence p(j) over samples labelled
            j (``inf`` for a class with no samples, so it is never confidently suggested).
        joint: ``[C, C]`` confident joint: ``joint[given, suggested]`` counts samples whose most
            probable class among those above their thresholds is ``suggested``.
        ranked: Indices of the off-diagonal samples (suggested != given), most likely label error
            first: by normalised margin ascending, ties by index.
        suggested: ``[N]`` the confidently suggested class, ``-1`` where no class reaches its threshold.
        margin: ``[N]`` p(given) - max over other classes of p (negative: another class is preferred).
    """

    thresholds: np.ndarray
    joint: np.ndarray
    ranked: np.ndarray
    suggested: np.ndarray
    margin: np.ndarray


def confident_learning(probs: np.ndarray, given: np.ndarray, n_classes: int) -> LabelIssues:
    """Likely label errors from out-of-sample probabilities and the given labels."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, n_classes)
    given = np.asarray(given, dtype=np.int64)
    n = len(given)
    counts = np.bincount(given, minlength=n_classes)
    sums = np.zeros(n_classes)
    np.add.at(sums, given, probs[np.arange(n), given])
    thresholds = np.full(n_classes, np.inf)
    thresholds[counts > 0] = sums[counts > 0] / counts[counts > 0]
    above = probs >= thresholds[None, :]
    masked = np.where(above, probs, -np.inf)
    suggested = np.where(above.any(axis=1), masked.argmax(axis=1), -1)
    joint = np.zeros((n_classes, n_classes), dtype=np.int64)
    has = suggested >= 0
    np.add.at(joint, (given[has], suggested[has]), 1)
    others = probs.copy()
    others[np.arange(n), given] = -np.inf
    margin = probs[np.arange(n), given] - others.max(axis=1)
    issues = np.flatnonzero(has & (suggested != given))
    ranked = issues[np.lexsort((issues, margin[issues]))]
    return LabelIssues(thresholds, joint, ranked, suggested.astype(np.int64), margin)


def label_quality(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Per-sample label-quality score: the self-confidence p(given label) (cleanlab's default
    ``get_label_quality_scores(method="self_confidence")``); low means likely mislabelled. ``[N]``."""
    probs = np.asarray(probs, dtype=np.float64)
    given = np.asarray(given, dtype=np.int64)
    return probs[np.arange(len(given)), given] if len(given) else np.zeros(0)


@dataclass(frozen=True)
class Curve:
    """A ROC or precision-recall curve over every distinct score threshold (highest first).

    ``x`` / ``y`` are FPR / TPR (ROC) or recall / precision (PR); ``thresholds[i]`` is the score at or
    above which samples are called positive to reach point ``i`` (``inf`` for the ROC's origin).
    ``area`` is the ROC AUC (trapezoids; equals the Mann-Whitney probability that a positive outscores
    a negative, ties counting one half) or the average precision
    ``sum_n (R_n - R_{n-1}) P_n`` (scikit-learn's ``average_precision_score``, no interpolation).
    """

    x: np.ndarray
    y: np.ndarray
    thresholds: np.ndarray
    area: float | None


def _cumulative(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives at each distinct threshold, highest score first."""
    order = np.argsort(-score, kind="mergesort")
    score, y = score[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(score)), len(y) - 1]  # the last sample of each run of equal scores
    tps = np.cumsum(y)[last]
    return tps, (last + 1) - tps, score[last]


def roc_curve(y: np.ndarray, score: np.ndarray) -> Curve:
    """ROC of a binary problem: ``y`` is 1 for positives, ``score`` the positive class's probability.
    ``area`` is ``None`` when one of the two classes is absent."""
    y = np.asarray(y, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if len(y) == 0:
        return Curve(np.zeros(1), np.zeros(1), np.full(1, np.inf), None)
    tps, fps, thr = _cumulative(y, score)
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.zeros(len(tps) + 1)
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.zeros(len(fps) + 1)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) if n_pos and n_neg else None
    return Curve(fpr, tpr, np.r_[np.inf, thr], area)


def pr_curve(y: np.ndarray, score: np.ndarray) -> Curve:
    """Precision-recall curve from the highest threshold down, starting at (recall 0, precision 1);
    ``area`` is the average precision, ``None`` without positives."""
    y = np.asarray(y, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        return Curve(np.zeros(1), np.ones(1), np.full(1, np.inf), None)
    tps, fps, thr = _cumulative(y, score)
    precision = tps / (tps + fps)
    recall = tps / n_pos
    area = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return Curve(np.r_[0.0, recall], np.r_[1.0, precision], np.r_[np.inf, thr], area)


@dataclass(frozen=True)
class BinaryMetrics:
    """A two-class model seen as a test for ``positive``, at the served operating point.

    The served prediction is the more probable class, ties to the lower index (as the server picks),
    i.e. positive when p(positive) > ``threshold`` = 0.5 for positive class 1 (>= 0.5 for class 0).
    Counts and rates come from those predictions; a rate is ``None`` when undefined (0/0):
    sensitivity TP/(TP+FN), specificity TN/(TN+FP), PPV TP/(TP+FP), NPV TN/(TN+FN).
    """

    positive: int
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None
    roc: Curve
    pr: Curve


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def binary_metrics(probs: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, positive: int = 1) -> BinaryMetrics:
    """Sensitivity, specificity, PPV, NPV at the served predictions, and the ROC and PR curves of
    p(positive) (``probs`` is ``[N, 2]``)."""
    y = (np.asarray(y_true) == positive).astype(np.int64)
    called = np.asarray(y_pred) == positive
    score = np.asarray(probs, dtype=np.float64).reshape(-1, 2)[:, positive]
    tp, fp = int((called & (y == 1)).sum()), int((called & (y == 0)).sum())
    fn, tn = int((~called & (y == 1)).sum()), int((~called & (y == 0)).sum())
    return BinaryMetrics(positive, 0.5, tp, fp, tn, fn, _rate(tp, tp + fn), _rate(tn, tn + fp), _rate(tp, tp + fp),
                         _rate(tn, tn + fn), roc_curve(y, score), pr_curve(y, score))


def one_vs_rest_auc(probs: np.ndarray, y_true: np.ndarray) -> list[float | None]:
    """ROC AUC of each class against the others from its own probability (``None`` where the class is
    absent or is the only one present)."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    return [roc_curve((y_true == k).astype(np.int64), probs[:, k]).area for k in range(probs.shape[1])]
