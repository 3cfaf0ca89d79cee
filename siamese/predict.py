"""The PyTorch scorer (see scoring.py): a trained network's features of image files and its
head's similarities of features."""

import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data import ImageFiles, loader_options
from .distributed import amp_dtype, autocast, channels_last_for, compile_module
from .errors import check_batch_size
from .export import fingerprint
from .images import cpu_images_per_batch

# A GPU embeds a batch of 256 224 px images in channels_last bfloat16 at about 40,000 images/s
# on an H200 (7,400 at the earlier 32 in float32): big batches keep it busy.
GPU_BATCH_SIZE = 256
CACHE_BYTES = 1 << 30  # decoded images kept between calls with the same paths (cache_images)


def default_batch_size(device, image_size):
    """Images per batch for computing features: 256 on a GPU, on a CPU cpu_images_per_batch()."""
    if torch.device(device).type != "cpu":
        return GPU_BATCH_SIZE
    return cpu_images_per_batch(image_size)


class TorchPredictor:
    """amp: autocast in distributed.amp_dtype (bfloat16 on CPUs and Ampere or newer GPUs);
    channels_last: None for the device's best (on GPUs only); compile: torch.compile the
    embedder (each batch padded to the batch size, so one shape compiles once; the compile time
    is printed on stderr); cache_images: keep the decoded batches of the last call for a next
    call with the same paths (training's validation, every epoch), up to CACHE_BYTES. TF32 and
    cuDNN's set-up: distributed.configure_cuda."""

    embeds = True

    def __init__(self, model, *, device="cpu", batch_size=None, workers=0, amp=False, channels_last=None,
                 compile=False, cache_images=False):
        self.model = model
        self.device = torch.device(device)
        self.batch_size = check_batch_size(batch_size) or default_batch_size(self.device, model.preprocessing.image_size)
        self.workers = workers
        self.amp = amp
        if amp:
            amp_dtype(self.device)  # a GPU without half precision: one line now, before any work
        self.memory_format = torch.channels_last if channels_last_for(self.device, channels_last) else torch.contiguous_format
        self.preprocessing = model.preprocessing
        self.features = compile_module(model.scoring_features, self.device, what="embedder") if compile else None
        self.compiling, self.cache_images, self._cached = compile, cache_images, (None, None)

    def _autocast(self):
        return autocast(self.device, self.amp)

    def _batches(self, paths):
        """Decoded batches of paths: from the cache when the same paths came last, else loaded
        (and kept with cache_images, when they fit)."""
        key = tuple(paths)
        if self._cached[0] == key:
            return self._cached[1]
        # On a CPU the backbone already keeps every core busy: loader processes only add their
        # start-up and copying (measured slower at 32, 64 and 224 px, even on 3000 px JPEGs).
        # On a GPU they decode while it computes, into pinned memory.
        workers = self.workers if self.device.type != "cpu" else 0
        # persistent workers would outlive this one pass for nothing
        options = dict(loader_options(workers=workers, device=self.device), persistent_workers=False)
        loader = DataLoader(ImageFiles(paths, self.preprocessing), batch_size=self.batch_size, **options)
        return self._keeping(key, loader) if self.cache_images else loader

    def _keeping(self, key, batches):
        """The batches, kept for the next call while they fit in CACHE_BYTES (never all decoded at once)."""
        kept, size = [], 0
        for batch in batches:
            size += batch.numel() * batch.element_size()
            if size > CACHE_BYTES:
                kept = None
            elif kept is not None:
                kept.append(batch)
            yield batch
        if kept is not None:
            self._cached = (key, kept)

    def _features(self, images):
        if self.features is None:
            return self.model.scoring_features(images)
        n, start = len(images), time.perf_counter()
        if n < self.batch_size:  # one shape: no second compile for the last batch
            images = torch.cat([images, images[-1:].expand(self.batch_size - n, *images.shape[1:])])
        features = self.features(images)[:n]
        if self.compiling:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            print(f"torch.compile: the embedder compiled and ran its first batch in {time.perf_counter() - start:.1f} s",
                  file=sys.stderr)
            self.compiling = False
        return features

    @torch.inference_mode()
    def embed_paths(self, paths, *, progress=False):
        """Scoring features (len(paths), D) float32 (see SiameseNetwork.scoring_features)."""
        self.model.eval()
        chunks = []
        for images in tqdm(self._batches(paths), desc="features", unit="batch", disable=not progress, leave=False):
            chunks.append(self._embed_batch(images))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.model.scoring_dim), np.float32)

    @torch.inference_mode()
    def embed(self, images):
        """(N, 3, H, W) float32 preprocessed images (numpy) -> (N, D) features, as the deployed models' embed."""
        self.model.eval()
        chunks = [self._embed_batch(torch.as_tensor(images[i:i + self.batch_size]))
                  for i in range(0, len(images), self.batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.model.scoring_dim), np.float32)

    def _embed_batch(self, images):
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        with self._autocast():
            return self._features(images).float().cpu().numpy()

    @torch.inference_mode()
    def score_features(self, features1, features2):
        """Similarities (N,) of two (N, D) arrays of scoring features, by the head."""
        self.model.eval()
        f1 = torch.as_tensor(features1, device=self.device)
        f2 = torch.as_tensor(features2, device=self.device)
        return torch.sigmoid(self.model.scoring_logits(f1, f2)).float().cpu().numpy()

    def index_key(self):
        """What features depend on (for gallery index files): the weights, preprocessing, precision."""
        precision = str(amp_dtype(self.device)).removeprefix("torch.") if self.amp else "fp32"
        return f"{fingerprint(self.model)}:{precision}"
