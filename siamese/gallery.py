"""Identification against a gallery of known entities (a folder per class): the gallery's features
kept in an index file, and each query scored by the pair head against them, exhaustively or on a
FAISS shortlist. Works with any scorer (scoring.py): a PyTorch predictor or a deployed model; no
torch here.
"""

import bisect
import contextlib
import io
import os
import re
import zipfile
from dataclasses import dataclass

import numpy as np

from .errors import UserError, import_optional
from .evaluate import check_finite_scores
from .files import atomic_open, check_not_inside
from .metrics import TIE
from .lineage import sha256_of
from .scoring import score_feature_pairs

INDEX_FORMAT = 2  # 1 knew images by size and time; it is refused
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
    index_path: str = None  # the index file the features were kept in, if any
    _shortlist: object = None

    def shortlist(self):
        """The FAISS index of the features, built on first use and kept for every query."""
        if self._shortlist is None:
            self._shortlist = Shortlist(self.features)
        return self._shortlist


def _file_stamp(path):
    """What an image is known by in an index: the SHA-256 of its bytes (hex), never its name, size
    or time (a file moved between class folders keeps those, and PGM files share one size)."""
    try:
        return sha256_of(path)
    except OSError as error:
        raise UserError(f"cannot read gallery image '{path}' ({error.strerror}); make it readable or remove it") from None


def _read_index(path, key):
    """{relative path: (content digest, features)} from an index file of this model, {} when absent."""
    if not path or not os.path.exists(path):
        return {}
    _check_written_here(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            fmt = int(data["format"])
            if fmt != INDEX_FORMAT:
                raise _other_format(path, fmt)
            their_key, names, digests, features = str(data["key"]), data["paths"], data["digests"], data["features"]
    except UserError:
        raise
    except Exception as error:
        raise UserError(f"cannot read the gallery index '{path}' ({type(error).__name__}; damaged?); delete it (the "
                        f"gallery is indexed again) or give another --index") from None
    _check_same_model(path, their_key, key)
    problem = _index_problem(names, digests, features)
    if problem:
        raise _damaged(path, problem)
    return {str(n): (str(d), f) for n, d, f in zip(names, digests, features)}


def _other_format(path, fmt):
    if fmt == 1:
        return UserError(f"the gallery index '{path}' was written by an earlier version of the toolkit, which knew "
                         f"images by size and time rather than by content; delete it (the gallery is indexed again) "
                         f"or give another --index")
    return UserError(f"the gallery index '{path}' has format {fmt}, this toolkit writes {INDEX_FORMAT}; delete it "
                     f"or give another --index")


def _damaged(path, why):
    return UserError(f"the gallery index '{path}' is damaged ({why}); delete it (the gallery is indexed again) or "
                     f"give another --index")


def _index_problem(names, digests, features):
    """What is wrong with an index's arrays, or None: features must be a table of finite numbers,
    one row per file, and the file names and content digests text."""
    if not (names.dtype.kind == "U" and digests.dtype.kind == "U"):
        return "file names or content digests of the wrong type"
    if features.dtype.kind not in "fiu":
        return f"features that are not numbers ({features.dtype})"
    if features.ndim != 2 or not (names.ndim == digests.ndim == 1):
        return f"features of shape {features.shape}, not one row per image"
    if not (len(names) == len(digests) == len(features)):
        return "lists of different lengths"
    bad = len(features) - int(np.isfinite(features).all(axis=1).sum())
    if bad:
        return f"{bad} image(s) with features that are not finite numbers (NaN or infinity)"
    return None


def _check_same_model(path, their_key, key):
    """The index's features came from these very model files (index_key: 'fingerprint:precision:files',
    files being the content digest of the deployed files, or 'pytorch' for a checkpoint's network)."""
    if their_key == key:
        return
    (theirs, their_precision, _), (ours, our_precision, _) = (
        (k.split(":", 2) + ["", ""])[:3] for k in (their_key, key))
    if theirs != ours:
        raise UserError(f"the gallery index '{path}' was made by another model ({theirs}, not {ours}); its features "
                        f"cannot be mixed with this model's: give another --index, or delete it to index the gallery "
                        f"again")
    if their_precision != our_precision:
        raise UserError(f"the gallery index '{path}' holds this model's {their_precision} features, and this copy of "
                        f"it gives {our_precision} ones, which cannot be mixed with them: give another --index (one "
                        f"per precision), or delete it to index the gallery again")
    raise UserError(f"the gallery index '{path}' was made with other files of this model than the ones given now "
                    f"(files are known by their content: a checkpoint and its export, or an export, INT8 copy or "
                    f"engine made again since, give other features), so its features are not reused: give another "
                    f"--index, or delete it to index the gallery again")


def _other_width(index_path, theirs, ours):
    if not index_path:
        return UserError(f"the gallery's features have {theirs} numbers and the queries' {ours}: embed both with one "
                         f"model")
    return UserError(f"the gallery index '{index_path}' holds features of {theirs} numbers, and the model gives "
                     f"{ours}; it is damaged: delete it (the gallery is indexed again) or give another --index")


# --- what an --index path may be ---------------------------------------------------------------

def _written_here(path):
    """Whether the file is an index this toolkit wrote (whole or damaged): np.savez's zip with
    the 'format' entry first, as _write_index writes it."""
    with open(path, "rb") as f:
        head = f.read(40)
    return head[:4] == b"PK\x03\x04" and head[30:40] == b"format.npy"


def _what_file(path):
    """A few words on what a file that is not an index is, to name it rather than advise deleting it."""
    from .contract import engine_metadata_path

    if zipfile.is_zipfile(path):
        with contextlib.suppress(zipfile.BadZipFile), zipfile.ZipFile(path) as archive:
            if any(n.endswith("data.pkl") for n in archive.namelist()):
                return "a PyTorch checkpoint"
        return "a zip archive"
    if os.path.getsize(path) == 0:
        return "an empty file"
    if path.lower().endswith(".onnx"):
        return "an ONNX model"
    if os.path.isfile(engine_metadata_path(path)):
        return "a TensorRT engine"
    try:
        from PIL import Image

        with Image.open(path) as image:
            return f"an image ({image.format})"
    except Exception:
        return None


def _check_written_here(path):
    """Refuse an existing --index file that this toolkit did not write as an index: it is named,
    never advised for deletion, never overwritten."""
    if os.path.isdir(path):
        raise UserError(f"--index '{path}' is a folder; give a file name for the gallery index")
    try:
        ours = _written_here(path)
    except OSError as error:
        raise UserError(f"cannot read --index '{path}' ({error.strerror}); give a readable file or another "
                        f"--index") from None
    if not ours:
        kind = _what_file(path)
        what = f"{kind}, not a gallery index" if kind else "not a gallery index"
        raise UserError(f"--index '{path}' is {what}; it is left as it is: give another --index (a new file name, "
                        f"or an index identify.py wrote)")


def check_index_path(path, image_folders):
    """An --index given by the user, before any work: a file (a new one, or an index this toolkit
    wrote) in a folder that exists, outside the image folders that are read."""
    if not path:
        return
    if os.path.exists(path):
        _check_written_here(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"--index '{path}': the folder '{os.path.dirname(path)}' does not exist; create it or give "
                        f"another path")
    check_not_inside(path, image_folders, option="--index")


def _write_index(path, key, relative, stamps, features):
    """The one writer of the index format: the model key (scorer.index_key()), each image's path
    relative to the gallery root and its _file_stamp (content digest), and its features row."""
    buffer = io.BytesIO()
    np.savez(buffer, format=np.int64(INDEX_FORMAT), key=np.str_(key), paths=np.array(relative, dtype=str),
             digests=np.array(stamps, dtype=str), features=features.astype(np.float32))
    with atomic_open(path, "wb") as f:  # whole or not at all
        f.write(buffer.getvalue())


def load_gallery(folder, scorer, *, index_path=None, progress=False, log=print):
    """The gallery's features, reusing an index file's for images of the same content (by SHA-256,
    whatever their name) and embedding only added or changed ones; the index is rewritten
    (atomically) when anything changed."""
    if len(folder) < 2:
        raise UserError(f"gallery '{folder.root}' has {len(folder)} image; identification needs a gallery of at least "
                        f"two images, in a folder per known entity")
    key = scorer.index_key()
    known = _read_index(index_path, key)
    by_content = {digest: row for digest, row in known.values()}
    relative = [os.path.relpath(p, folder.root) for p in folder.paths]
    stamps = [_file_stamp(p) for p in folder.paths]
    features = [by_content.get(stamp) for stamp in stamps]
    missing = [i for i, row in enumerate(features) if row is None]
    if missing:
        new = scorer.embed_paths([folder.paths[i] for i in missing], progress=progress)
        _check_finite_features(new, [folder.paths[i] for i in missing])
        for i, row in zip(missing, new):
            features[i] = row
    dims = sorted({len(f) for f in features})
    if len(dims) != 1:  # rows from the index beside rows embedded now
        raise _other_width(index_path, len(next(iter(by_content.values()))), len(new[0]))
    matrix = np.stack(features).astype(np.float32)
    removed = len(set(known) - set(relative))
    if index_path and {name: digest for name, (digest, _) in known.items()} != dict(zip(relative, stamps)):
        _write_index(index_path, key, relative, stamps, matrix)
        if known:
            log(f"gallery index '{index_path}': {len(missing)} image(s) embedded, {removed} removed, "
                f"{len(relative) - len(missing)} reused")
    return Gallery(folder.root, list(folder.classes), list(folder.paths), np.asarray(folder.labels),
                   matrix, reused=len(relative) - len(missing), embedded=len(missing), index_path=index_path)


def _check_finite_features(features, paths=None, what="gallery image(s)"):
    """Features fresh from the model are finite numbers, or they reach neither the index nor a match."""
    bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if len(bad):
        example = f", such as '{paths[bad[0]]}'" if paths else ""
        raise UserError(f"the model gave {len(bad)} {what} features that are not finite numbers (NaN or infinity)"
                        f"{example}; its weights are broken (a diverged training run?): use an earlier checkpoint or "
                        f"train again")


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
        faiss = import_optional("faiss", "a shortlist needs FAISS: pip install faiss-cpu (or faiss-gpu), or give "
                                         "--shortlist 0 to score the whole gallery")
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
    as Matches best first, and beyond top_k every class that ties with the first (within TIE; see
    verdict). A Match's rank is 1 + the classes more similar by more than TIE, so classes that
    tie share one. shortlist: None exhaustive, else how many gallery images FAISS proposes for
    the head to re-rank."""
    if query_features.shape[1:] != gallery.features.shape[1:]:  # an index's rows, all reused
        raise _other_width(gallery.index_path, gallery.features.shape[1], query_features.shape[1])
    _check_finite_features(query_features, what="query image(s)")
    candidates = gallery.shortlist().search(query_features, shortlist) if shortlist else None
    results = []
    for q, query in enumerate(query_features):
        if candidates is None:
            rows, found = np.arange(len(gallery.paths)), gallery.features  # no copy of the gallery
        else:
            rows = candidates[q][candidates[q] >= 0]
            found = gallery.features[rows]
        scores = np.asarray(score_feature_pairs(scorer, np.broadcast_to(query, found.shape), found), np.float64)
        check_finite_scores(scores)  # a NaN is never a silent 'unknown'
        best, below = {}, []  # below: minus the similarities listed, ascending
        for i in np.argsort(-scores, kind="stable"):
            label, score = int(gallery.labels[rows[i]]), float(scores[i])
            if label in best:
                continue
            if len(best) >= top_k and -below[0] - score > TIE:
                break  # past top_k, and no tie with the first
            rank = 1 + bisect.bisect_left(below, -(score + TIE))  # the classes more similar by more than TIE
            best[label] = Match(rank, label, gallery.paths[rows[i]], score)
            below.append(-score)
        results.append(list(best.values()))
    return results


def verdict(matches, threshold):
    """(verdict, classes) of one query's matches (identify's answer, best first): 'match' and the
    first class's label when it is at or above the threshold and no other class ties with it;
    'tie' and the labels of the classes that tie for the first place (similarities within TIE of
    the first's), when it is at or above the threshold: no one class is named; 'unknown' and ()
    below it. The one rule identify.py and any other front end call a query by."""
    if not matches or matches[0].similarity < threshold:
        return "unknown", ()
    tied = tuple(m.label for m in matches if matches[0].similarity - m.similarity <= TIE)
    return ("tie" if len(tied) > 1 else "match"), tied


def choose_shortlist(requested, gallery_size):
    """--shortlist: 'auto' (exhaustive up to EXHAUSTIVE_UP_TO images), 0 (exhaustive) or N."""
    if requested == "auto":
        return None if gallery_size <= EXHAUSTIVE_UP_TO else DEFAULT_SHORTLIST
    if not re.fullmatch("[0-9]+", str(requested)):  # not str.isdigit, which takes '²' that int() refuses
        raise UserError(f"--shortlist must be 'auto', 0 (score the whole gallery) or a number of images, not '{requested}'")
    return int(requested) or None
