import numpy as np
import pytest

from siamese.metrics import (best_accuracy_threshold, one_shot_accuracy, verification_metrics)


def test_perfect_scores():
    m = verification_metrics([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0])
    assert m["auc"] == 1.0 and m["eer"] == 0.0 and m["accuracy"] == 1.0 and m["best_accuracy"] == 1.0
    assert 0.2 < m["best_threshold"] < 0.8
    assert m["tar_at_far_1e-3"] == 1.0


def test_inverted_scores():
    m = verification_metrics([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0])
    assert m["auc"] == 0.0 and m["eer"] == 1.0 and m["accuracy"] == 0.0
    assert m["tar_at_far_1e-2"] == 0.0


def test_tied_scores_are_chance():
    m = verification_metrics([0.5] * 6, [1, 0, 1, 0, 1, 0])
    assert m["auc"] == 0.5
    assert m["eer"] == pytest.approx(0.5)
    assert m["best_accuracy"] == 0.5


def test_hand_computed_case():
    scores = [0.9, 0.7, 0.6, 0.4, 0.3, 0.1]
    labels = [1, 0, 1, 1, 0, 0]
    m = verification_metrics(scores, labels, threshold=0.5)
    # positives 0.9,0.6,0.4 vs negatives 0.7,0.3,0.1: 7 of 9 orderings right
    assert m["auc"] == pytest.approx(7 / 9)
    assert m["accuracy"] == pytest.approx(4 / 6)
    expected_loss = -np.mean(np.log([0.9, 0.3, 0.6, 0.4, 0.7, 0.9]))
    assert m["loss"] == pytest.approx(expected_loss)
    assert m["eer"] == pytest.approx(1 / 3)
    threshold, accuracy = best_accuracy_threshold(scores, labels)
    # calling the top four 'same' gets five of six right: the threshold lies between 0.3 and 0.4
    assert accuracy == pytest.approx(5 / 6)
    assert threshold == pytest.approx(0.35)


def test_one_shot_accuracy():
    answers = [0, 2, 1]
    oracle = np.zeros((3, 4))
    oracle[np.arange(3), answers] = 1
    assert one_shot_accuracy(oracle, answers) == 1.0
    assert one_shot_accuracy(np.full((3, 4), 0.5), answers) == pytest.approx(0.25)
    assert one_shot_accuracy(1 - oracle, answers) == 0.0
