"""Identification against a gallery of known entities (a folder per class): the gallery's features
kept in an index file, and each query scored by the pair head against them, exhaustively or on a
FAISS shortlist. Works with any scorer (scoring.py): a PyTorch predictor or a deployed model; no
torch here.
"""

import io
import os
from dataclasses import dataclass

import numpy as np

from .errors import UserError
from .files import atomic_open
from .scoring import score_feature_pairs

INDEX_FORMAT = 1
# Galleries up to this many images are scored exhaustively by the head; larger ones on a FAISS
# shortlist (README, Identification: measured cost and rank-1 on both sides).
EXHAUSTIVE_UP_TO = 20_000
DEFAULT_SHORTLIST = 200


# --- the gallery index -------------------------------------------------------------------------

@dataclass
class Gallery:
    root: str
    classes: list  # class names
    paths: list  # absolute image paths
    labels: np.ndarray  # class index per image
    features: np.ndarray  # (len(paths), D) scoring features
    reused: int = 0  # images whose features came from the index file
    embedded: int = 0
    _shortlist: object = None

    def shortlist(self):
        """The FAISS index of the features, built on first use and kept for every query."""
        if self._shortlist is None:
            self._shortlist = Shortlist(self.features)
        return self._shortlist


def _file_stamp(path):
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def _read_index(path, key):
    """{relative path: (size, mtime_ns, features)} from an index file of this model, {} when absent."""
    if not path or not os.path.exists(path):
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            fmt, their_key = int(data["format"]), str(data["key"])
            names, sizes, stamps, features = data["paths"], data["sizes"], data["mtimes"], data["features"]
    except Exception as error:
        raise UserError(f"cannot read the gallery index '{path}' ({type(error).__name__}); delete it (the gallery is "
                        f"indexed again) or give another --index") from None
    if fmt != INDEX_FORMAT:
        raise UserError(f"the gallery index '{path}' has format {fmt}, this toolkit writes {INDEX_FORMAT}; delete it "
                        f"or give another --index")
    if their_key != key:
        raise UserError(f"the gallery index '{path}' was made by another model ({their_key.split(':')[0]}, not "
                        f"{key.split(':')[0]}); its features cannot be mixed with this model's: give another --index, "
                        f"or delete it to index the gallery again")
    if not (len(names) == len(sizes) == len(stamps) == len(features)) or features.ndim != 2:
        raise UserError(f"the gallery index '{path}' is inconsistent (damaged?); delete it or give another --index")
    return {str(n): (int(s), int(t), f) for n, s, t, f in zip(names, sizes, stamps, features)}


def _write_index(path, key, relative, stamps, features):
    buffer = io.BytesIO()
    np.savez(buffer, format=np.int64(INDEX_FORMAT), key=np.str_(key), paths=np.array(relative, dtype=str),
             sizes=np.array([s for s, _ in stamps], np.int64), mtimes=np.array([t for _, t in stamps], np.int64),
             features=features.astype(np.float32))
    with atomic_open(path, "wb") as f:  # whole or not at all
        f.write(buffer.getvalue())


def load_gallery(folder, scorer, *, index_path=None, progress=False, log=print):
    """The gallery's features, reusing an index file's for unchanged files and embedding only added
    or changed ones; the index is rewritten (atomically) when anything changed."""
    if len(folder) < 2:
        raise UserError(f"gallery '{folder.root}' has {len(folder)} image; identification needs a gallery of at least "
                        f"two images, in a folder per known entity")
    key = scorer.index_key()
    known = _read_index(index_path, key)
    relative = [os.path.relpath(p, folder.root) for p in folder.paths]
    stamps = [_file_stamp(p) for p in folder.paths]
    features, missing = [None] * len(relative), []
    for i, (name, stamp) in enumerate(zip(relative, stamps)):
        entry = known.get(name)
        if entry is not None and entry[:2] == stamp:
            features[i] = entry[2]
        else:
            missing.append(i)
    if missing:
        new = scorer.embed_paths([folder.paths[i] for i in missing], progress=progress)
        for i, row in zip(missing, new):
            features[i] = row
    dims = {len(f) for f in features}
    if len(dims) != 1:
        raise UserError(f"the gallery index '{index_path}' holds features of another size than the model's; delete it "
                        f"or give another --index")
    matrix = np.stack(features).astype(np.float32)
    removed = len(set(known) - set(relative))
    if index_path and (missing or removed or len(known) != len(relative)):
        _write_index(index_path, key, relative, stamps, matrix)
        if known:
            log(f"gallery index '{index_path}': {len(missing)} image(s) embedded, {removed} removed, "
                f"{len(relative) - len(missing)} reused")
    return Gallery(folder.root, list(folder.classes), list(folder.paths), np.asarray(folder.labels),
                   matrix, reused=len(relative) - len(missing), embedded=len(missing))


# --- search ------------------------------------------------------------------------------------

def _unit(features):
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)


class Shortlist:
    """The gallery images nearest a query by inner product on L2-normalised features (FAISS), for
    the head to re-rank: an exact search up to EXACT_UP_TO images, an inverted-file search beyond
    (4 sqrt(N) lists, NPROBE of them searched per query), which is what keeps one query against
    100,000 images within milliseconds."""

    EXACT_UP_TO = 50_000
    NPROBE = 24

    def __init__(self, gallery_features):
        try:
            import faiss
        except ImportError:
            raise UserError("a shortlist needs FAISS: pip install faiss-cpu (or faiss-gpu), or give --shortlist 0 "
                            "to score the whole gallery") from None
        unit, dim = _unit(gallery_features), gallery_features.shape[1]
        if len(unit) <= self.EXACT_UP_TO:
            self.index = faiss.IndexFlatIP(dim)
        else:
            lists = int(4 * np.sqrt(len(unit)))
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
            self.index.train(unit)
            self.index.nprobe = self.NPROBE
        self.index.add(unit)

    def search(self, query_features, count):
        _, found = self.index.search(_unit(query_features), min(count, self.index.ntotal))
        return found


@dataclass
class Match:
    rank: int
    label: int
    image: str
    similarity: float


def identify(scorer, gallery, query_features, *, top_k=5, shortlist=None):
    """For each query (rows of query_features): the top_k classes, each by its best gallery image,
    as Matches best first. shortlist: None exhaustive, else how many gallery images FAISS
    proposes for the head to re-rank."""
    candidates = gallery.shortlist().search(query_features, shortlist) if shortlist else None
    results = []
    for q, query in enumerate(query_features):
        if candidates is None:
            rows, found = np.arange(len(gallery.paths)), gallery.features  # no copy of the gallery
        else:
            rows = candidates[q][candidates[q] >= 0]
            found = gallery.features[rows]
        scores = np.asarray(score_feature_pairs(scorer, np.broadcast_to(query, found.shape), found), np.float64)
        best = {}
        for i in np.argsort(-scores, kind="stable"):
            label = int(gallery.labels[rows[i]])
            if label not in best:
                best[label] = Match(len(best) + 1, label, gallery.paths[rows[i]], float(scores[i]))
                if len(best) == top_k:
                    break
        results.append(list(best.values()))
    return results


def choose_shortlist(requested, gallery_size):
    """--shortlist: 'auto' (exhaustive up to EXHAUSTIVE_UP_TO images), 0 (exhaustive) or N."""
    if requested == "auto":
        return None if gallery_size <= EXHAUSTIVE_UP_TO else DEFAULT_SHORTLIST
    if not str(requested).isdigit():
        raise UserError(f"--shortlist must be 'auto', 0 (score the whole gallery) or a number of images, not '{requested}'")
    return int(requested) or None
