"""What the service serves behind its HTTP face (service.py): the model, owned by the batcher's
thread (batching.py), the gallery, and each endpoint's answer as a dict. The model is loaded as
identify.py loads it (scorers.py), and a query is identified by the same function, shortlist,
head and threshold. No torch here (a checkpoint brings it)."""

import asyncio
import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np

from .batching import Batcher, QueueFull
from .deployed import note
from .enrollment import (check_class_name, check_new_content, extension_of, remove_class_images,
                         write_class_images)
from .errors import UserError, check_at_least, check_between
from .evaluate import DEFAULT_THRESHOLD, resolve_threshold
from .files import claim_beside, inside, sync_folder
from .gallery import check_index_path, choose_shortlist, identify, load_gallery, verdict
from .identification import match_rows
from .images import scan_folder

class NotAllowed(UserError):
    """A request this service was not started to answer (403)."""


class NoGallery(UserError):
    """/identify or /enroll on a service without a gallery (409)."""


RUNTIMES = {"OnnxRuntimeModel": "onnxruntime", "TensorRTModel": "tensorrt", "TorchPredictor": "torch"}


@dataclass(frozen=True)
class ServeSettings:
    """serve.py's settings, checked in check()."""

    engine: str = None  # a deployed model (-m), or
    checkpoint: str = None  # a checkpoint (-c, on PyTorch)
    gallery: str = None  # ROOT/ClassName/image folder for /identify and /enroll
    index: str = None  # the gallery index file
    allow_enroll: bool = False
    threshold: float = None  # None: the model's, else 0.5
    top_k: int = 5
    shortlist: object = "auto"
    max_batch: int = 32  # images embedded together
    max_wait_ms: float = 2.0  # how long a batch waits to fill
    queue: int = 256  # jobs waiting at most
    max_pixels: int = None  # an upload's pixels at most (None: Pillow's decompression-bomb limit)
    decoders: int = 2  # threads decoding uploads (their requests wait, counted in the queue)
    device: str = "auto"  # with a checkpoint: PyTorch's device, precision, compilation
    amp: bool = False
    compile: bool = False
    tf32: bool = True
    channels_last: bool = None  # None: on GPUs

    def check(self):
        check_between(self.threshold, 0.0, 1.0, "--threshold")
        for value, low, name in ((self.top_k, 1, "--top-k"), (self.max_batch, 1, "--max-batch"),
                                 (self.queue, 1, "--queue"), (self.max_wait_ms, 0, "--max-wait-ms"),
                                 (self.max_pixels, 1, "--max-pixels"), (self.decoders, 1, "--decoders")):
            check_at_least(value, low, name)
        if self.allow_enroll and not self.gallery:
            raise UserError("--allow-enroll adds images to a gallery: give --gallery too")
        if self.index and not self.gallery:
            raise UserError("--index keeps a gallery's features: give --gallery too")
        check_index_path(self.index, [self.gallery] if self.gallery else [])
        return self


class Served:
    """The model in its thread, the gallery, and the answers. start() loads and warms up the model
    (and embeds the gallery) in the model thread; stop() ends it after the queued work."""

    def __init__(self, settings, *, observe=None):
        self.settings = settings.check()
        self.folder = scan_folder(settings.gallery, what="gallery folder", for_pairs=False) if settings.gallery else None
        self.batcher = Batcher(self._setup, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                               queue_size=settings.queue, observe=observe)
        self.gallery, self.files, self.ready = None, {}, False
        self.enrolling = asyncio.Lock()  # one enrollment at a time, waited for without holding a thread
        # Uploads are decoded here, not in asyncio's shared pool: a few at a time, whatever their size.
        self.decoders = ThreadPoolExecutor(settings.decoders, thread_name_prefix="decode")
        self.decoding = 0  # requests decoding or waiting for a decoder

    def start(self):
        self.batcher.start()
        self.ready = True
        return self

    def stop(self):
        self.ready = False
        self.batcher.stop()
        self.decoders.shutdown(wait=False)

    def _setup(self):
        """In the model thread: load the model, warm it up, embed (or read) the gallery."""
        s = self.settings
        from .scorers import load_scorer

        # Its threads sleep between calls: the same cores read, decode and answer the requests.
        scorer, calibrated = load_scorer(s.engine, s.checkpoint, device=s.device, amp=s.amp, compile=s.compile,
                                         tf32=s.tf32, channels_last=s.channels_last,
                                         busy_wait=False)
        self.threshold, _ = resolve_threshold(s.threshold, calibrated)
        self.threshold_source = ("--threshold" if s.threshold is not None else "model" if calibrated is not None
                                 else f"default {DEFAULT_THRESHOLD:g}")  # in a word, for the page
        self.preprocessing, self.runtime = scorer.preprocessing, RUNTIMES.get(type(scorer).__name__, "other")
        size = self.preprocessing.image_size
        warm = scorer.embed(np.zeros((min(s.max_batch, 8), 3, size, size), np.float32))
        scorer.score_features(warm[:1], warm[:1])
        self.dim = warm.shape[1]
        if self.folder is not None:
            self.index_key = scorer.index_key()
            self._use(load_gallery(self.folder, scorer, index_path=s.index, log=note))
        return scorer

    def _use(self, gallery):
        """Answer from this gallery from now on (one assignment: a query sees the old or the new)."""
        self.files = {os.path.relpath(p, gallery.root): p for p in gallery.paths}
        self.gallery = gallery

    # --- requests --------------------------------------------------------------------------------

    def decode(self, uploads):
        """[(field name, bytes)] -> (n, 3, H, W) preprocessed images; a UserError names the field."""
        return np.stack([self.preprocessing.load_bytes(data, name=name, max_pixels=self.settings.max_pixels)
                         for name, data in uploads])

    async def _run(self, uploads, pairs=(), then=None):
        """Decode the uploads (in a decoder) and embed them; the requests waiting for a decoder and
        those queued for the model together take at most --queue places (else QueueFull)."""
        if self.decoding + self.batcher.depth >= self.settings.queue:
            raise QueueFull(f"all {self.settings.queue} places of the queue are taken")
        self.decoding += 1
        try:
            with self.batcher.coming():  # a batch being gathered waits for this request
                images = await asyncio.get_running_loop().run_in_executor(self.decoders, self.decode, uploads)
                future = self.batcher.submit(images, pairs, then)
        finally:
            self.decoding -= 1
        return await asyncio.wrap_future(future)

    def _threshold(self, requested):
        if requested is None:
            return self.threshold, self.threshold_source
        return float(check_between(requested, 0.0, 1.0, "threshold")), "request"

    async def verify(self, image1, image2, threshold=None):
        threshold, source = self._threshold(threshold)
        _, similarities = await self._run([("image1", image1), ("image2", image2)], [(0, 1)])
        similarity = float(np.float32(similarities[0]))
        return {"similarity": similarity, "same": bool(np.float32(similarity) >= threshold), "threshold": threshold,
                "threshold_source": source}

    async def embed(self, images):
        features, _ = await self._run([(f"images[{i}]", data) for i, data in enumerate(images)])
        return {"features": features.tolist(), "dim": int(features.shape[1])}

    async def identify(self, image, top_k=None, threshold=None):
        if self.gallery is None:
            raise NoGallery("this service has no gallery to identify against; start serve.py with --gallery")
        threshold, source = self._threshold(threshold)
        top_k = check_at_least(top_k, 1, "top_k") or self.settings.top_k

        def search(scorer, features, _):  # in the model thread
            gallery = self.gallery
            shortlist = choose_shortlist(self.settings.shortlist, len(gallery.paths))
            return gallery, identify(scorer, gallery, features, top_k=top_k, shortlist=shortlist)

        gallery, results = await self._run([("image", image)], then=search)
        return self._identified(gallery, results, threshold, source)

    def _identified(self, gallery, results, threshold, source):
        """The answer of /identify from identify()'s results, with identify.py's rows."""
        rows = match_rows(["image"], results, gallery, threshold)
        relative = [os.path.relpath(r["gallery_image"], gallery.root) for r in rows]
        matches = [{"rank": r["rank"], "class": r["class"], "similarity": r["similarity"], "gallery_image": name,
                    # None for an image the gallery reaches through a link out of its folder: not served
                    "thumbnail": "/gallery/" + quote(name) if self.gallery_file(name) else None}
                   for r, name in zip(rows, relative)]
        kind, labels = verdict(results[0], threshold)  # identify.py's one rule
        called = gallery.classes[labels[0]] if kind == "match" else kind
        return {"verdict": called, "tie": kind == "tie", "tied": [gallery.classes[label] for label in labels] if
                kind == "tie" else [], "threshold": threshold, "threshold_source": source, "matches": matches}

    async def enroll(self, name, images):
        if not self.settings.allow_enroll:
            raise NotAllowed("enrollment is off; start serve.py with --allow-enroll to add images to the gallery")
        name = check_class_name(name)  # as the folder is named (NFC)
        uploads = [(f"images[{i}]", data) for i, data in enumerate(images)]
        features, _ = await self._run(uploads)  # every image decoded and embedded before anything is written
        extensions = [extension_of(data) for data in images]
        async with self.enrolling:  # waited for here, then a thread only for the writing
            return await asyncio.to_thread(self._enroll, name, list(zip(images, extensions)), features)

    def _enroll(self, name, images, features):
        """Write the images and the gallery index (each synced) and use the new gallery; the index
        claimed against other commands writing it. Anything failing after the images are written
        (an unreadable file put in the gallery by hand) removes them: a refused enrollment leaves
        nothing behind."""
        index = self.settings.index
        with claim_beside(index, what="gallery index") if index else contextlib.nullcontext():
            check_new_content(self.folder, check_class_name(name), images)  # before anything is written
            written = write_class_images(self.gallery.root, name, images)
            try:
                known = dict(zip(self.gallery.paths, self.gallery.features))
                known.update(zip(written, features))
                folder = scan_folder(self.gallery.root, what="gallery folder", for_pairs=False)
                gallery = load_gallery(folder, _Known(self, known), index_path=index, log=note)
            except BaseException as error:
                remove_class_images(self.gallery.root, written)
                if isinstance(error, UserError):  # a file put in the gallery by hand: named as in the gallery
                    raise UserError("in the gallery: " + str(error).replace(os.path.join(self.gallery.root, ""), "")
                                    ) from None
                raise
            if index:
                sync_folder(os.path.dirname(os.path.abspath(index)))
            self.folder = folder
            self._use(gallery)
        return {"class": name, "added": len(written), "images": len(gallery.paths), "classes": len(gallery.classes)}

    def gallery_file(self, relative):
        """The gallery image at this path relative to the gallery, or None: only the images of the
        gallery's scan that lie inside it (not through a link out of it)."""
        path, gallery = self.files.get(relative), self.gallery
        return path if path and gallery and inside(path, gallery.root) else None

    def info(self):
        s, g = self.settings, self.gallery
        model = s.engine or s.checkpoint
        return {"model": os.path.basename(model), "runtime": self.runtime, "threshold": self.threshold,
                "threshold_source": self.threshold_source, "gallery": g is not None,
                "classes": len(g.classes) if g else 0, "images": len(g.paths) if g else 0, "enroll": s.allow_enroll,
                "top_k": s.top_k, "max_batch": s.max_batch, "image_size": self.preprocessing.image_size}


class _Known:
    """The scorer as load_gallery sees it from outside the model thread: the features known
    already (the gallery's and the enrolled images'), the others embedded by the model thread."""

    def __init__(self, served, known):
        self.served, self.known = served, known

    def index_key(self):
        return self.served.index_key

    def embed_paths(self, paths, *, progress=False):
        missing = [p for p in paths if p not in self.known]
        if missing:  # files added to the folder by hand since the start
            images = np.stack([self.served.preprocessing.load(p) for p in missing])
            features, _ = self.served.batcher.submit(images).result()
            self.known.update(zip(missing, features))
        return np.stack([self.known[p] for p in paths]) if paths else np.zeros((0, self.served.dim), np.float32)
