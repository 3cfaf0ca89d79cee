import numpy as np
import pytest

from siamese.metrics import (auc_intervals_over_classes, best_accuracy_threshold, one_shot_accuracy,
                             verification_metrics)


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


def test_threshold_at_far_accepts_at_most_that_share_of_negatives():
    from siamese.metrics import threshold_at_far

    negatives = np.linspace(0.0, 0.99, 100)  # 100 different-class pairs
    positives = np.array([0.95, 0.975, 0.5, 0.2])
    scores = np.r_[negatives, positives]
    labels = np.r_[np.zeros(100, bool), np.ones(4, bool)]
    found = threshold_at_far(scores, labels, 0.02)
    assert found["negatives"] == 100 and found["far"] == 0.02  # the two highest negatives (0.98, 0.99) accepted
    assert 0.97 < found["threshold"] <= 0.98 and found["tar"] == 0.25  # of the positives only 0.975 reaches it
    assert threshold_at_far(scores, labels, 0.001)["far"] == 0.0  # 1e-3 of 100: none may be accepted
    assert threshold_at_far(scores, labels, 0.001)["threshold"] > 0.99
    assert threshold_at_far(scores, labels, 0.5)["far"] == 0.5


def test_printed_digits_agree_with_the_verdict():
    from siamese.metrics import digits_to_tell

    assert digits_to_tell(0.56, 0.3) == 3
    d = digits_to_tell(0.55774, 0.55768)
    assert f"{0.55774:.{d}f}" > f"{0.55768:.{d}f}" and d == 5
    assert f"{0.5576:.{digits_to_tell(0.5576, 0.5577, fewest=2)}f}" == "0.5576"
    assert digits_to_tell(0.5, 0.5) == 7  # equal: as many digits as allowed, and >= holds


def _class_pairs(classes, per_class):
    labels = np.repeat(np.arange(classes), per_class)
    i, j = np.triu_indices(len(labels), k=1)
    return labels[i], labels[j]


@pytest.mark.slow
def test_auc_intervals_over_classes_bound_a_perfect_a_noisy_and_an_equal_system():
    left, right = _class_pairs(8, 4)
    same = left == right
    rng = np.random.default_rng(0)
    perfect = same + rng.uniform(0, 0.5, len(same))
    noisy = same * 0.3 + rng.uniform(0, 1, len(same))
    intervals = auc_intervals_over_classes({"model": perfect, "noisy": noisy, "copy": perfect}, left, right, draws=300)
    assert intervals["model"] == pytest.approx((1.0, 1.0)) and intervals["model - copy"] == (0.0, 0.0)
    low, high = intervals["noisy"]
    from sklearn.metrics import roc_auc_score

    assert low < roc_auc_score(same, noisy) < high and high - low > 0.02  # 8 classes: a real spread
    assert 0 < intervals["model - noisy"][0] < intervals["model - noisy"][1]  # a lead the draws all show
    again = auc_intervals_over_classes({"model": perfect, "noisy": noisy, "copy": perfect}, left, right, draws=300)
    assert again == intervals  # seeded


def test_auc_intervals_need_three_classes_and_both_kinds_of_pair():
    left, right = _class_pairs(2, 4)
    assert auc_intervals_over_classes({"model": np.zeros(len(left))}, left, right) is None
    left, right = np.arange(5), np.arange(5) + 10  # no same pair
    assert auc_intervals_over_classes({"model": np.zeros(5)}, left, right) is None
