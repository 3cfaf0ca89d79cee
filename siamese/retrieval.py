"""Retrieval metrics over a similarity matrix (queries x gallery images): the cumulative match
characteristic (CMC), mean average precision (mAP), and open-set identification (the
detection-and-identification rate at a false positive identification rate). No torch here.

Rankings are over gallery images, best first (ties keep the gallery order). A query's own image
is left out of its ranking with `exclude_self` (leave-one-out over one folder); a query whose
class has no other image in the gallery has no correct answer and is left out of CMC and mAP.
"""

import numpy as np

from .scoring import similarity_matrix

CMC_RANKS = (1, 5, 10)


def _masked(similarity, exclude_self):
    similarity = np.asarray(similarity, dtype=np.float64)
    if exclude_self:
        similarity = similarity.copy()
        np.fill_diagonal(similarity, -np.inf)
    return similarity


def _orders(similarity):
    return np.argsort(-similarity, axis=1, kind="stable")


def cmc(similarity, query_labels, gallery_labels, *, ranks=CMC_RANKS, exclude_self=False):
    """{rank: the share of queries whose first correct gallery image is within that rank}, and
    the number of queries that count (those with a correct image in the gallery)."""
    similarity = _masked(similarity, exclude_self)
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    orders = _orders(similarity)
    firsts = []
    for q, order in enumerate(orders):
        valid = order[np.isfinite(similarity[q, order])]
        hits = np.flatnonzero(gallery_labels[valid] == query_labels[q])
        if len(hits):
            firsts.append(hits[0] + 1)
    firsts = np.asarray(firsts)
    return {k: float(np.mean(firsts <= k)) if len(firsts) else float("nan") for k in ranks}, len(firsts)


def mean_average_precision(similarity, query_labels, gallery_labels, *, exclude_self=False):
    """The mean over queries of the average precision of their correct gallery images."""
    similarity = _masked(similarity, exclude_self)
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    precisions = []
    for q, order in enumerate(_orders(similarity)):
        valid = order[np.isfinite(similarity[q, order])]
        relevant = gallery_labels[valid] == query_labels[q]
        if relevant.any():
            hits = np.cumsum(relevant)
            precisions.append(float(np.mean(hits[relevant] / (np.flatnonzero(relevant) + 1))))
    return float(np.mean(precisions)) if precisions else float("nan")


def open_set_identification(similarity, query_labels, gallery_labels, known, *, fpir=1e-2, exclude_self=False):
    """Detection and identification rate at a false positive identification rate.

    Queries of known classes (`known` True) must be identified: top gallery image of their
    class and a top similarity at or above the threshold; queries of unknown classes must be
    rejected: the threshold lets through at most `fpir` of them. Returns {'dir', 'threshold',
    'fpir', 'known_queries', 'unknown_queries'}."""
    similarity = _masked(similarity, exclude_self)
    query_labels, gallery_labels, known = np.asarray(query_labels), np.asarray(gallery_labels), np.asarray(known, bool)
    best = similarity.max(axis=1)
    top = gallery_labels[np.argmax(similarity, axis=1)]
    unknown_best = np.sort(best[~known])[::-1]
    allowed = int(np.floor(fpir * len(unknown_best)))
    # the lowest threshold that lets at most `allowed` unknown queries through
    threshold = float(np.nextafter(unknown_best[allowed], np.inf)) if allowed < len(unknown_best) else -np.inf
    identified = (top[known] == query_labels[known]) & (best[known] >= threshold)
    return {"dir": float(identified.mean()) if known.any() else float("nan"), "threshold": threshold,
            "fpir": float(np.mean(unknown_best >= threshold)) if len(unknown_best) else float("nan"),
            "known_queries": int(known.sum()), "unknown_queries": int((~known).sum())}


def retrieval_evaluation(scorer, folder, *, seed, progress=False):
    """Leave-one-out retrieval over a folder: every image a query against all the others, ranked
    by the model's head; CMC, mAP, rank-1 by the features' cosine (what the head adds), and open-set
    identification with a seeded half of the classes left out of the gallery as unknown."""
    labels = np.asarray(folder.labels)
    everything = np.arange(len(labels))
    features = scorer.embed_paths(folder.paths, progress=progress)
    similarity = similarity_matrix(scorer, features, everything, everything)
    ranks, queries = cmc(similarity, labels, labels, ranks=tuple(range(1, min(20, len(labels) - 1) + 1)),
                         exclude_self=True)
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    cosine, _ = cmc(unit @ unit.T, labels, labels, ranks=(1,), exclude_self=True)
    classes = np.random.default_rng(seed).permutation(len(folder.classes))
    known_classes = classes[:max(1, len(classes) // 2)] if len(classes) > 1 else classes
    known = np.isin(labels, known_classes)
    gallery = np.flatnonzero(known)
    open_similarity = similarity[:, gallery].copy()
    open_similarity[gallery, np.arange(len(gallery))] = -np.inf  # a known query is not its own gallery image
    metrics = {"queries": queries, "images": int(len(labels)),
               "cmc": {str(k): ranks[k] for k in CMC_RANKS if k in ranks},
               "map": mean_average_precision(similarity, labels, labels, exclude_self=True),
               "rank1_feature_cosine": cosine[1]}
    if len(known_classes) < len(classes):
        metrics["open_set"] = open_set_identification(open_similarity, labels, labels[gallery], known)
    return metrics, ranks
