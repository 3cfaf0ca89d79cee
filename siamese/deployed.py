"""What every deployed model shares, whatever runs it (ONNX Runtime in runtime.py, TensorRT in
trt.py): the pair model and, beside it, the embedder and head, loaded on first use; embedding
image files and scoring features (the scorer interface of scoring.py). No torch here."""

import os
import sys
from functools import lru_cache

import numpy as np
from tqdm import tqdm

from .contract import PARTS, check_parts_agree, parse_metadata, part_of, part_path
from .errors import UserError
from .lineage import check_sources, content_digest

IMAGE_CACHE_BYTES = 512 * 2**20
HEAD_BATCH = 4096  # pairs of features per head call: a small MLP, fast in big batches


def note(message):
    print(message, file=sys.stderr, flush=True)


class Part:
    """One loaded file of a deployment: run({input name: array}) -> output, in batches it accepts.
    files: the files it was loaded from (for an engine, with its ENGINE.json)."""

    part: str
    max_batch: int
    files: tuple

    def run_batch(self, feeds):
        raise NotImplementedError

    def run(self, feeds):
        n = len(next(iter(feeds.values())))
        out = [self.run_batch({k: v[i:i + self.max_batch] for k, v in feeds.items()})
               for i in range(0, n, self.max_batch)]
        if not out:
            return np.zeros((0, *self.shapes[PARTS[self.part][1]]), np.float32)
        return np.concatenate(out)

    def close(self):
        pass

class DeployedModel:
    """A deployment: the pair model, and the embedder and head beside it when the export has them
    (loaded on first use, so scoring one pair loads one file). Subclasses give open_part()."""

    def __init__(self, path, *, part_paths=None):
        """part_paths: the (embedder, head) files, when not beside `path` under their usual names."""
        self.path, self.part_paths = path, part_paths
        self.pair = self._open(path, "pair")
        self.preprocessing, self.threshold, self.metadata = self.pair.preprocessing, self.pair.threshold, self.pair.metadata
        self.max_batch = self.pair.max_batch
        self._parts = None  # (embedder, head), or False when the export has none
        self._no_parts = None  # why not, when it has none
        self._index_key = None
        # the one consistency check, at load, whatever runs the model: parts beside it agree with it
        present = [(p, part) for p, part in zip(self._part_paths(), ("embed", "head")) if os.path.isfile(p)]
        self._parts_problem({p: self._checked_metadata(p, part) for p, part in present})

    def open_part(self, path, part):
        raise NotImplementedError

    def read_metadata(self, path, part):
        """The toolkit's metadata of a part file, without loading it (subclasses)."""
        raise NotImplementedError

    def _checked_metadata(self, path, part):
        """A part's metadata, checked as opening it checks it (without loading it)."""
        meta = self.read_metadata(path, part)
        parse_metadata(meta, path)
        if part_of(meta, path) != part:
            raise UserError(f"'{path}' is the {part_of(meta, path)} part of an export, not its {part}; export the model "
                            f"again with torch_to_onnx.py (and build engines with onnx_to_trt.py)")
        return meta

    def _open(self, path, part):
        """open_part, and the one check of what every deployed file was made from."""
        opened = self.open_part(path, part)
        check_sources(path, opened.metadata)
        return opened

    def predict(self, img1, img2):
        """(N, 3, H, W) float32 each -> (N,) similarities, through the pair model."""
        return self.pair.run({"img1": img1, "img2": img2}).reshape(-1)

    @property
    def parts(self):
        """(embedder, head), or None for an export without them (with a one-line note, once)."""
        if self._parts is None:
            self._parts = self._open_parts() or False
        return self._parts or None

    def _part_paths(self):
        return list(self.part_paths or (part_path(self.path, part) for part in ("embed", "head")))

    def _parts_problem(self, parts):
        """Why the parts ({path: metadata}) cannot serve this pair model (another model's, or an export
        without fingerprints), or None; parts of this very model whose metadata disagrees with the
        pair model's (an edited file) are refused."""
        def identity(meta):  # the weights and the precision
            return [meta.get(key) for key in ("siamese.fingerprint", "siamese.precision")]

        strangers = [p for p, meta in parts.items() if identity(meta) != identity(self.metadata)]
        if not identity(self.metadata)[0]:
            return (f"has no weights fingerprint (an export from an earlier version), so {' and '.join(parts)} cannot "
                    f"be told to be its own")
        if strangers:
            return f"was exported from another model (or in another precision) than {' and '.join(strangers)}"
        check_parts_agree(self.path, self.metadata, parts)
        return None

    def _open_parts(self):
        paths = self._part_paths()
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            self._no_parts = f"has no {' and '.join(os.path.basename(p) for p in missing)} beside it"
            note(f"note: '{self.path}' {self._no_parts}, so every pair runs through the whole model; export it again "
                 f"with torch_to_onnx.py (and onnx_to_trt.py) to embed each image once, which is much faster")
            return None
        embedder, head = (self._open(p, part) for p, part in zip(paths, ("embed", "head")))
        self._no_parts = self._parts_problem({p: part.metadata for p, part in zip(paths, (embedder, head))})
        if self._no_parts:
            note(f"note: ignoring the embedder and head: '{self.path}' {self._no_parts}; every pair runs through the "
                 f"whole model until they are exported again with it (torch_to_onnx.py)")
            return None
        return embedder, head

    def require_parts(self):
        """(embedder, head), or a UserError saying why the export has none to use."""
        if self.parts is None:
            raise UserError(f"'{self.path}' cannot embed images: it {self._no_parts}; export it again with "
                            f"torch_to_onnx.py (and build engines with onnx_to_trt.py)")
        return self.parts

    def embed(self, images):
        """(N, 3, H, W) float32 preprocessed images -> (N, D) features, through the embedder."""
        return self.require_parts()[0].run({"images": images})

    def score_features(self, features1, features2):
        """Two (N, D) batches of features -> (N,) similarities, through the head."""
        return self.require_parts()[1].run({"features1": features1, "features2": features2}).reshape(-1)

    def embed_paths(self, paths, *, progress=False):
        """Features (len(paths), D) of image files, each decoded and embedded once."""
        embedder = self.require_parts()[0]
        chunks = []
        for start in tqdm(range(0, len(paths), embedder.max_batch), desc="features", unit="batch",
                          disable=not progress, leave=False):
            images = np.stack([self.preprocessing.load(p) for p in paths[start:start + embedder.max_batch]])
            chunks.append(embedder.run({"images": images}))
        return np.concatenate(chunks) if chunks else np.zeros((0, *embedder.shapes["features"]), np.float32)

    @property
    def embeds(self):
        """Whether images are embedded once (the export has its parts), else scored pair by pair."""
        return self.parts is not None

    def index_key(self):
        """What features depend on (for gallery index files): the weights' fingerprint, the precision,
        and the content (SHA-256) of every file the features come through: the pair model (whose
        preprocessing is used), the embedder and the head, and an engine's ENGINE.json."""
        fingerprint = self.metadata.get("siamese.fingerprint")
        if not fingerprint:
            raise UserError(f"'{self.path}' has no weights fingerprint (an export from an earlier version); export it "
                            f"again with torch_to_onnx.py to index a gallery with it")
        if self._index_key is None:  # the files as loaded: hashed once
            files = [file for part in (self.pair, *self.require_parts()) for file in part.files]
            self._index_key = (f"{fingerprint}:{self.metadata.get('siamese.precision', 'fp32')}:"
                               f"{content_digest(files)}")
        return self._index_key

    def score_whole_pairs(self, pairs, *, progress=False):
        """Every pair through the pair model; each image is decoded once while it stays in a
        cache of IMAGE_CACHE_BYTES."""
        size = self.preprocessing.image_size
        load = lru_cache(maxsize=max(64, IMAGE_CACHE_BYTES // (12 * size * size)))(self.preprocessing.load)
        scores = []
        for start in tqdm(range(0, len(pairs), self.max_batch), desc="pairs", unit="batch", disable=not progress, leave=False):
            chunk = pairs[start:start + self.max_batch]
            img1 = np.stack([load(a) for a, _ in chunk])
            img2 = np.stack([load(b) for _, b in chunk])
            scores.append(self.predict(img1, img2))
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)

    def close(self):
        for part in (self.pair, *(self._parts or ())):
            part.close()
