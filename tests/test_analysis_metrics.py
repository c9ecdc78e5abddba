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
