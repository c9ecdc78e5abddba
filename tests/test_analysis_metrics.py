"""The pure metrics of camserve.analysis on hand-made inputs whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from camserve.analysis import metrics as M

# 4 classes; class 3 never occurs (an empty row) and is never predicted (an empty column).
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2])


def test_confusion_matrix_and_empty_row_normalisation():
    cm = M.confusion_matrix(Y_TRUE, Y_PRED, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    norm = M.normalise_rows(cm)
    assert not np.isnan(norm).any()
    np.testing.assert_allclose(norm, [[2 / 3, 1 / 3, 0, 0], [0, .5, .5, 0], [0, 0, 1, 0], [0, 0, 0, 0]])


def test_precision_recall_f1_support():
    pcm = M.per_class_metrics(M.confusion_matrix(Y_TRUE, Y_PRED, 4))
    np.testing.assert_allclose(pcm.precision, [1.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(pcm.recall, [2 / 3, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(pcm.f1, [0.8, 0.5, 2 / 3, 0.0])
    assert pcm.support.tolist() == [3, 2, 1, 0]
    assert pcm.macro()["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 4)
    assert pcm.weighted()["f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 2 / 3) / 6)
    assert pcm.weighted()["recall"] == pytest.approx(4 / 6)  # support-weighted recall is accuracy


def test_balanced_accuracy_ignores_absent_classes():
    cm = M.confusion_matrix(Y_TRUE, Y_PRED, 4)
    assert M.balanced_accuracy(cm) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert M.balanced_accuracy(np.zeros((3, 3), dtype=int)) is None


def test_topk_accuracy_breaks_ties_like_the_server():
    probs = np.array([[0.5, 0.3, 0.2],    # true 1: second
                      [0.1, 0.2, 0.7],    # true 0: third
                      [0.4, 0.4, 0.2],    # true 1: tied with class 0, which wins (lower index)
                      [0.2, 0.5, 0.3]])   # true 1: first
    acc = M.topk_accuracy(probs, np.array([1, 0, 1, 1]), [1, 2, 3])
    assert acc == {1: 0.25, 2: 0.75, 3: 1.0}
    assert M.topk_accuracy(np.zeros((0, 3)), np.zeros(0, int), [1]) == {1: None}


def test_ece_on_known_bins():
    cal = M.calibration(np.array([0.1, 0.12, 0.9]), np.array([0, 1, 1]))
    assert cal.n_bins == 15 and cal.counts.sum() == 3
    assert cal.counts[1] == 2 and cal.counts[13] == 1
    # bin 1: accuracy 0.5, confidence 0.11, weight 2/3; bin 13: accuracy 1, confidence 0.9, weight 1/3
    assert cal.ece == pytest.approx(2 / 3 * 0.39 + 1 / 3 * 0.1)
    assert cal.mce == pytest.approx(0.39)


def test_confidence_one_goes_to_the_last_bin_not_a_phantom_bin():
    assert M.bin_index(np.array([0.0, 1.0, 14 / 15 + 1e-9, 1 / 15]), 15).tolist() == [0, 14, 14, 1]
    cal = M.calibration(np.array([0.95, 1.0]), np.array([1, 0]))
    assert len(cal.counts) == 15 and cal.counts[14] == 2
    # one shared bin: |0.5 - 0.975|; a separate bin for 1.0 would give 0.5*0.05 + 0.5*1.0 = 0.525
    assert cal.ece == pytest.approx(0.475)
    assert M.calibration(np.zeros(0), np.zeros(0)).ece is None


def test_confusion_pairs_ranked_by_count_then_index():
    cm = np.array([[5, 1, 3], [2, 4, 0], [3, 0, 1]])
    assert M.confusion_pairs(cm) == [(0, 2, 3), (2, 0, 3), (1, 0, 2), (0, 1, 1)]


def test_confident_learning_thresholds_joint_and_ranking():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9],      # labelled 0; the third looks like a 1
                      [0.2, 0.8], [0.3, 0.7], [0.65, 0.35]])   # labelled 1; the last looks like a 0
    given = np.array([0, 0, 0, 1, 1, 1])
    res = M.confident_learning(probs, given, 2)
    np.testing.assert_allclose(res.thresholds, [0.6, (0.8 + 0.7 + 0.35) / 3])
    assert res.suggested.tolist() == [0, 0, 1, 1, 1, 0]
    assert res.joint.tolist() == [[2, 1], [1, 2]]
    np.testing.assert_allclose(res.margin, [0.8, 0.6, -0.8, 0.6, 0.4, -0.3])
    assert res.ranked.tolist() == [2, 5]  # most negative margin first


def test_confident_learning_needs_a_class_above_its_threshold():
    probs = np.array([[0.1, 0.1, 0.8], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    res = M.confident_learning(probs, np.array([0, 0, 1]), 3)
    assert np.isinf(res.thresholds[2])  # no sample labelled 2: never suggested
    assert res.suggested.tolist() == [-1, 0, 1]  # sample 0 reaches no threshold: not counted
    assert res.ranked.tolist() == [] and res.joint.sum() == 2


# ---------------------------------------------------------------- ROC, PR, binary test, label quality

def mann_whitney_auc(y: np.ndarray, score: np.ndarray) -> float:
    """The probability that a positive outscores a negative, ties counting one half: every pair counted."""
    pos, neg = score[y == 1], score[y == 0]
    wins = sum(float(p > n) + 0.5 * float(p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def brute_average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """sum over distinct thresholds, highest first, of (recall gained) x (precision there)."""
    total, ap, last_recall = int(y.sum()), 0.0, 0.0
    for thr in sorted(set(score.tolist()), reverse=True):
        called = score >= thr
        tp = int((called & (y == 1)).sum())
        recall, precision = tp / total, tp / int(called.sum())
        ap += (recall - last_recall) * precision
        last_recall = recall
    return ap


def test_roc_auc_equals_the_pairwise_count_with_ties():
    rng = np.random.default_rng(3)
    for n in (2, 7, 50, 301):
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1
        score = np.round(rng.random(n), 1)  # many ties
        assert M.roc_curve(y, score).area == pytest.approx(mann_whitney_auc(y, score), abs=1e-12)
        assert M.pr_curve(y, score).area == pytest.approx(brute_average_precision(y, score), abs=1e-12)


def test_roc_curve_points_by_hand():
    y = np.array([0, 0, 1, 1, 1])
    score = np.array([0.1, 0.6, 0.6, 0.8, 0.3])
    roc = M.roc_curve(y, score)
    # thresholds 0.8, 0.6 (one positive, one negative tied), 0.3, 0.1
    np.testing.assert_allclose(roc.x, [0, 0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(roc.y, [0, 1 / 3, 2 / 3, 1.0, 1.0])
    np.testing.assert_allclose(roc.thresholds, [np.inf, 0.8, 0.6, 0.3, 0.1])
    assert roc.area == pytest.approx(0.5 * (1 / 3 + 2 / 3) / 2 + 0.5 * 1.0)  # = 4.5 of 6 pairs won
    pr = M.pr_curve(y, score)
    np.testing.assert_allclose(pr.x, [0, 1 / 3, 2 / 3, 1.0, 1.0])
    np.testing.assert_allclose(pr.y, [1.0, 1.0, 2 / 3, 3 / 4, 3 / 5])
    assert pr.area == pytest.approx(1 / 3 * 1.0 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 4)
    assert M.roc_curve(np.ones(3, int), np.array([0.1, 0.2, 0.3])).area is None  # no negatives
    assert M.pr_curve(np.zeros(3, int), np.array([0.1, 0.2, 0.3])).area is None  # no positives


def test_binary_metrics_at_the_served_operating_point():
    p1 = np.array([0.9, 0.7, 0.4, 0.2, 0.6, 0.1, 0.5])
    probs = np.stack([1 - p1, p1], axis=1)
    y_true = np.array([1, 1, 1, 0, 0, 0, 1])
    y_pred = np.array([1, 1, 0, 0, 1, 0, 0])  # 0.5 is a tie: the server picks the lower index
    bm = M.binary_metrics(probs, y_true, y_pred)
    assert (bm.tp, bm.fn, bm.tn, bm.fp) == (2, 2, 2, 1)
    assert (bm.sensitivity, bm.specificity, bm.ppv, bm.npv) == (0.5, 2 / 3, 2 / 3, 0.5)
    assert bm.roc.area == pytest.approx(mann_whitney_auc(y_true, p1), abs=1e-12)
    assert M.binary_metrics(probs[:0], y_true[:0], y_pred[:0]).sensitivity is None


def test_one_vs_rest_auc_and_label_quality():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.4, 0.4, 0.2], [0.3, 0.3, 0.4]])
    y = np.array([0, 1, 2, 1, 0])
    aucs = M.one_vs_rest_auc(probs, y)
    for k in range(3):
        assert aucs[k] == pytest.approx(mann_whitney_auc((y == k).astype(int), probs[:, k]), abs=1e-12)
    assert M.one_vs_rest_auc(probs, np.zeros(5, int))[0] is None  # class 0 is all there is
    np.testing.assert_array_equal(M.label_quality(probs, y), [0.7, 0.5, 0.6, 0.4, 0.3])
