"""The one way to score. A scorer is anything with

    embed_paths(paths, *, progress=False) -> (len(paths), D) numpy features, each image decoded once
    score_features(features1, features2) -> (N,) numpy similarities of two (N, D) feature arrays
    embeds                                   True; False for a deployed pair model without its parts
    score_whole_pairs(pairs, *, progress)    only where embeds is False: every pair through the model

TorchPredictor (predict.py), the deployed models (runtime.py) and the baselines (baselines.py)
are scorers; evaluation, retrieval and identification score them all with the functions here.
No torch here.
"""

import numpy as np

# Pairs of feature rows per score_features call: bounds the memory of the gathered rows
# (8192 x 1024 float32 features, 32 MiB a side).
SCORE_CHUNK = 8192


def score_indexed(scorer, features, left, right):
    """Similarities (len(left),) of features[left] with features[right]."""
    left, right = np.asarray(left, np.int64), np.asarray(right, np.int64)
    out = [scorer.score_features(features[left[i:i + SCORE_CHUNK]], features[right[i:i + SCORE_CHUNK]])
           for i in range(0, len(left), SCORE_CHUNK)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def score_feature_pairs(scorer, features1, features2):
    """Similarities (N,) of two (N, D) feature arrays (either may be a broadcast view)."""
    out = [scorer.score_features(np.ascontiguousarray(features1[i:i + SCORE_CHUNK]),
                                 np.ascontiguousarray(features2[i:i + SCORE_CHUNK]))
           for i in range(0, len(features1), SCORE_CHUNK)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def score_pairs(scorer, pairs, *, progress=False):
    """Similarities for (left path, right path) pairs: each distinct image embedded once, then
    every pair scored from the features, so the cost grows with the images, not the pairs."""
    if not pairs:
        return np.zeros(0, np.float32)
    if not scorer.embeds:
        return scorer.score_whole_pairs(pairs, progress=progress)
    paths = sorted({p for pair in pairs for p in pair})
    where = {p: i for i, p in enumerate(paths)}
    features = scorer.embed_paths(paths, progress=progress)
    left = np.fromiter((where[a] for a, _ in pairs), np.int64, len(pairs))
    right = np.fromiter((where[b] for _, b in pairs), np.int64, len(pairs))
    return score_indexed(scorer, features, left, right)


def similarity_matrix(scorer, features, queries, gallery):
    """(len(queries), len(gallery)) similarities between rows of features."""
    queries, gallery = np.asarray(queries, np.int64), np.asarray(gallery, np.int64)
    left = np.repeat(queries, len(gallery))
    right = np.tile(gallery, len(queries))
    return np.asarray(score_indexed(scorer, features, left, right), np.float64).reshape(len(queries), len(gallery))
