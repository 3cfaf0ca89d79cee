"""Verification metrics from similarity scores and same/different labels (numpy + scikit-learn).

All rates are fractions in [0, 1]. A pair is called 'same' when its similarity >= threshold.
"""

import numpy as np

EPS = 1e-7


def bce_loss(scores, labels):
    p = np.clip(np.asarray(scores, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def accuracy(scores, labels, threshold):
    return float(np.mean((np.asarray(scores) >= threshold) == np.asarray(labels, dtype=bool)))


def roc(scores, labels):
    """(far, tar, thresholds) as scikit-learn's roc_curve gives them (fpr, tpr)."""
    from sklearn.metrics import roc_curve  # imported here: infer_tensorrt.py starts faster without it

    far, tar, thresholds = roc_curve(np.asarray(labels, dtype=int), np.asarray(scores, dtype=np.float64))
    return far, tar, thresholds


def equal_error_rate(far, tar, thresholds):
    """(EER, threshold): where the false accept rate equals the false reject rate.

    Interpolated linearly between the two ROC points that straddle FAR = FRR.
    """
    frr = 1.0 - tar
    diff = far - frr  # rises from <= 0 to >= 0 along the curve
    i = int(np.searchsorted(diff, 0.0))
    if i == 0:
        return float(far[0]), float(min(thresholds[0], 1.0))
    d0, d1 = diff[i - 1], diff[i]
    w = 0.0 if d1 == d0 else -d0 / (d1 - d0)
    eer = far[i - 1] + w * (far[i] - far[i - 1])
    t0, t1 = min(thresholds[i - 1], 1.0), thresholds[i]
    return float(eer), float(t0 + w * (t1 - t0))


def best_accuracy_threshold(scores, labels):
    """(threshold, accuracy) maximising accuracy; ties go to the middle of the best interval."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    # threshold just above s[k-1]: pairs 0..k-1 are called different, k.. same
    unique_mask = np.r_[True, s[1:] != s[:-1]]
    candidates = np.flatnonzero(unique_mask)  # first index of each distinct score
    negatives_below = np.r_[0, np.cumsum(~y)]
    positives_above = np.r_[np.cumsum(y[::-1])[::-1], 0]
    ks = np.r_[candidates, len(s)]
    correct = negatives_below[ks] + positives_above[ks]
    best = int(np.argmax(correct))
    k = ks[best]
    if k == 0:
        threshold = s[0]
    elif k == len(s):
        threshold = min(s[-1] + 1e-6, 1.0) if s[-1] < 1.0 else 1.0
    else:
        threshold = (s[k - 1] + s[k]) / 2.0
    return float(threshold), float(correct[best] / len(s))


def tar_at_far(far, tar, target):
    """Highest true accept rate whose false accept rate does not exceed target."""
    ok = far <= target + 1e-12
    return float(tar[ok].max()) if ok.any() else 0.0


def threshold_at_far(scores, labels, far):
    """{'threshold', 'far', 'tar', 'negatives'}: the lowest threshold at which at most a fraction
    `far` of the different-class pairs score at or above it (are falsely accepted), with the false
    and true accept rates it gives on these pairs. With fewer than 1/far negatives the rate cannot
    be resolved: the threshold then accepts no negative at all (see 'negatives')."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    negatives = np.sort(s[~y])[::-1]
    allowed = int(np.floor(far * len(negatives) + 1e-9))  # negatives that may be accepted
    if len(negatives) == 0:
        threshold = float(s.min()) if len(s) else 0.0
    elif allowed >= len(negatives):
        threshold = float(negatives[-1])
    else:  # just above the first negative that must be rejected
        threshold = float(np.nextafter(negatives[allowed], np.inf))
    accepted = s >= threshold
    return {"threshold": threshold, "far": float(accepted[~y].mean()) if (~y).any() else 0.0,
            "tar": float(accepted[y].mean()) if y.any() else 0.0, "negatives": int(len(negatives))}


# Similarities closer than this are one similarity: float32 features and heads round at about
# 1e-7, so smaller differences tell nothing apart (a model that scores every pair alike, classes
# that tie for the first place in identification).
TIE = 1e-6


def digits_to_tell(value, threshold, *, fewest=3, most=7):
    """Decimal places that print `value` and `threshold` differently (rounding keeps their order,
    so the printed numbers then agree with the verdict), from `fewest` up to `most`."""
    for digits in range(fewest, most):
        if f"{value:.{digits}f}" != f"{threshold:.{digits}f}":
            return digits
    return most


def verification_metrics(scores, labels, threshold=0.5):
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    result = {"pairs": int(len(scores)), "positive_pairs": int(labels.sum()), "negative_pairs": int((~labels).sum()),
              "loss": bce_loss(scores, labels), "threshold": float(threshold),
              "accuracy": accuracy(scores, labels, threshold)}
    if labels.all() or not labels.any():
        return result  # ROC metrics need both kinds of pair
    from sklearn.metrics import roc_auc_score

    far, tar, thresholds = roc(scores, labels)
    eer, eer_threshold = equal_error_rate(far, tar, thresholds)
    best_threshold, best_accuracy = best_accuracy_threshold(scores, labels)
    result.update({
        "auc": float(roc_auc_score(labels, scores)), "eer": eer, "eer_threshold": eer_threshold,
        "best_threshold": best_threshold, "best_accuracy": best_accuracy,
        "tar_at_far_1e-2": tar_at_far(far, tar, 1e-2), "tar_at_far_1e-3": tar_at_far(far, tar, 1e-3),
    })
    return result


def one_shot_accuracy(similarities, answers):
    """similarities: (trials, n_way). A trial is right when the true candidate scores highest;
    a tie for the top counts as 1/k of a hit among k tied (the expectation of a random pick),
    so a constant predictor scores 1/N, not 0 or 1."""
    sims = np.asarray(similarities, dtype=np.float64)
    answers = np.asarray(answers, dtype=int)
    top = sims.max(axis=1, keepdims=True)
    at_top = sims >= top
    hit = at_top[np.arange(len(sims)), answers] / at_top.sum(axis=1)
    return float(np.mean(hit))


def auc_intervals_over_classes(scores, left, right, *, reference="model", draws=1000, seed=0, level=0.95):
    """How precisely these classes measure ROC-AUC: {system: (low, high)} and {"model - other":
    (low, high)} for each other system, the central `level` of a bootstrap over the classes.

    scores: {system: similarities of the same pairs}; left, right: each pair's two class indices
    (a pair is 'same' when they are equal). Each draw takes as many classes as there are, with
    replacement; a pair counts once per drawn copy of its class (same pairs) or per drawn copy of
    each of its two classes (different pairs), pairs of a class with its own copy are left out.
    None when fewer than 3 classes: too few to resample."""
    from sklearn.metrics import roc_auc_score

    _, classes = np.unique(np.concatenate([left, right]), return_inverse=True)  # numbered 0..n-1
    left, right = classes[:len(left)], classes[len(left):]
    same, n = left == right, int(classes.max()) + 1
    if n < 3 or same.all() or not same.any():
        return None
    rng = np.random.default_rng(seed)
    samples = {name: [] for name in [*scores, *(f"{reference} - {o}" for o in scores if o != reference)]}
    for _ in range(draws):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)
        weight = np.where(same, counts[left], counts[left] * counts[right]).astype(np.float64)
        kept = weight > 0
        if same[kept].all() or not same[kept].any():
            continue  # a draw of one class: no ROC-AUC
        auc = {name: roc_auc_score(same[kept], s[kept], sample_weight=weight[kept])
               for name, s in ((name, np.asarray(v)) for name, v in scores.items())}
        for name, value in auc.items():
            samples[name].append(value)
            if name != reference:
                samples[f"{reference} - {name}"].append(auc[reference] - value)
    tail = (1.0 - level) / 2 * 100
    return {name: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) for name, v in samples.items()}
