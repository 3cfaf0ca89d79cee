"""Decoded training images kept once for the whole run: every file decoded at the model's size
(before any augmentation) into one uint8 (N, H, W, 3) tensor, in shared memory when loader
workers read it, so each image is decoded once by whichever process needs it first and every
worker then reads the same copy. Datasets above the --cache-mb budget stream from disk.
"""

import os

import numpy as np
import torch

from .images import load_image

MB = 1 << 20
SHARED_MEMORY = "/dev/shm"  # where torch keeps tensors shared between processes on Linux


def shared_memory_free():
    """Bytes free for shared tensors, or None where that cannot be told (not Linux)."""
    try:
        stat = os.statvfs(SHARED_MEMORY)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


class ImageCache:
    """The training files decoded and resized by `preprocessing`, filled as they are first read:
    `pixels` (N, H, W, 3) uint8 and `filled` (N,) flags, both shared with loader workers when
    `shared`. An image's pixels are written before its flag, and a decoded image is the same
    whichever process decodes it, so the cache never changes what the model sees."""

    def __init__(self, paths, preprocessing, *, shared):
        size = preprocessing.image_size
        self.paths = list(paths)
        self.preprocessing = preprocessing
        # empty: pages are committed as images are written (share_memory_ commits the shared copy)
        self.pixels = torch.empty((len(self.paths), size, size, 3), dtype=torch.uint8)
        self.filled = torch.zeros(len(self.paths), dtype=torch.uint8)
        if shared:
            self.pixels.share_memory_()
            self.filled.share_memory_()
        self._arrays = None  # numpy views of both, made in each process (indexing them is 10x faster)

    def __len__(self):
        return len(self.paths)

    def __getstate__(self):  # to a spawned worker: the shared tensors, not this process's views
        return dict(self.__dict__, _arrays=None)

    def decode(self, index):
        """File `index` as the model's size, (H, W, 3) uint8, from the cache or decoded into it."""
        if self._arrays is None:
            self._arrays = self.pixels.numpy(), self.filled.numpy()
        pixels, filled = self._arrays
        if filled[index]:
            return pixels[index]
        array = decoded(self.paths[index], self.preprocessing)
        pixels[index] = array
        filled[index] = 1
        return array


def decoded(path, preprocessing):
    """One file at the model's size, (H, W, 3) uint8: what the cache holds and streaming reads."""
    return np.array(preprocessing.resize(load_image(path, size_hint=preprocessing.image_size)))


def image_cache(paths, preprocessing, *, budget_mb, shared):
    """(ImageCache or None, the line that says which): the files are cached when they fit in
    budget_mb and, for loader workers, in half the free shared memory; else they stream from disk."""
    size = preprocessing.image_size
    needed = len(paths) * size * size * 3
    if budget_mb == 0:
        return None, f"--cache-mb 0: images stream from disk (the dataset would need {needed / MB:.1f} MB)"
    if needed > budget_mb * MB:
        return None, f"dataset needs {needed / MB:.1f} MB, above --cache-mb {budget_mb}: images stream from disk"
    free = shared_memory_free() if shared else None
    if free is not None and needed > free // 2:  # the workers' batches pass through there too
        return None, (f"dataset needs {needed / MB:.1f} MB, above half the {free / MB:.1f} MB free in {SHARED_MEMORY} "
                      f"(loader workers share the cache and their batches there): images stream from disk; enlarge "
                      f"{SHARED_MEMORY} (docker run --shm-size) or train with --workers 0 to cache them")
    return ImageCache(paths, preprocessing, shared=shared), f"caching {len(paths)} images, {needed / MB:.1f} MB"
