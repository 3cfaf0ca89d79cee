"""PyTorch datasets over a scanned folder: training pairs that change every epoch, and single
images for feature extraction. Preprocessing is the one definition in `images.Preprocessing`.
"""

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision.transforms import InterpolationMode

from .images import load_image
from .pairs import draw_partner, rng_for

# The original toolkit's augmentation: RandomAffine(20, translate=0.2, scale=0.8-1.2, shear=0.2)
# and a horizontal flip.
AFFINE_DEGREES = 20.0
AFFINE_TRANSLATE = 0.2
AFFINE_SCALE = (0.8, 1.2)
AFFINE_SHEAR = 0.2


def augment(img, rng):
    """Random affine + flip with parameters from rng; the uncovered area takes the border colour."""
    width, height = img.size
    angle = rng.uniform(-AFFINE_DEGREES, AFFINE_DEGREES)
    translate = [int(round(rng.uniform(-AFFINE_TRANSLATE, AFFINE_TRANSLATE) * width)),
                 int(round(rng.uniform(-AFFINE_TRANSLATE, AFFINE_TRANSLATE) * height))]
    scale = rng.uniform(*AFFINE_SCALE)
    shear = [rng.uniform(-AFFINE_SHEAR, AFFINE_SHEAR), 0.0]
    array = np.asarray(img)
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
    fill = [int(v) for v in np.median(border, axis=0)]
    img = TF.affine(img, angle=angle, translate=translate, scale=scale, shear=shear,
                    interpolation=InterpolationMode.BILINEAR, fill=fill)
    return TF.hflip(img) if rng.random() < 0.5 else img


class TrainingPairs(Dataset):
    """Map-style pairs: item (epoch, i) pairs image i with a partner drawn by the 0.5 rule.

    Partner and augmentation come from a generator seeded by (seed, epoch, i), so the pairs
    change every epoch, do not depend on workers or ranks, and a resumed run sees the same ones.
    """

    def __init__(self, folder, preprocessing, *, seed, augment=True, cache_images=True):
        self.folder = folder
        self.preprocessing = preprocessing
        self.seed = seed
        self.augment = augment
        self.by_class = folder.images_by_class()
        # Decoded, resized images: decoding and resizing dominate loading for small images.
        self._cache = {} if cache_images else None

    def __len__(self):
        return len(self.folder)

    def pair(self, epoch, index):
        return draw_partner(rng_for(self.seed, epoch, index), index, self.folder.labels, self.by_class)

    def _image(self, index):
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        img = self.preprocessing.resize(load_image(self.folder.paths[index], size_hint=self.preprocessing.image_size))
        if self._cache is not None:
            self._cache[index] = img
        return img

    def _tensor(self, index, rng):
        img = self._image(index)
        if self.augment:
            img = augment(img, rng)
        return torch.from_numpy(self.preprocessing.normalize(img))

    def __getitem__(self, key):
        epoch, index = key
        partner, same = self.pair(epoch, index)
        rng = rng_for(self.seed, epoch, index, 1)
        return self._tensor(index, rng), self._tensor(partner, rng), torch.tensor(float(same))


class EpochSampler(Sampler):
    """Yields (epoch, index) keys in DistributedSampler's order: shuffled by (seed, epoch) and
    sharded across ranks (one rank is the single-process case). Passing the epoch in the key
    lets persistent workers serve each epoch's new pairs."""

    def __init__(self, dataset, *, seed, num_replicas=1, rank=0, shuffle=True):
        self.inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        return ((self.epoch, index) for index in self.inner)


class ImageFiles(Dataset):
    """Preprocessed single images (evaluation transform), for computing features once per image."""

    def __init__(self, paths, preprocessing):
        self.paths = list(paths)
        self.preprocessing = preprocessing

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return torch.from_numpy(self.preprocessing.load(self.paths[index]))


def loader_options(*, workers, device):
    """DataLoader settings shared by training and evaluation."""
    options = {"num_workers": workers, "pin_memory": torch.device(device).type == "cuda"}
    if workers > 0:
        options.update(persistent_workers=True, prefetch_factor=4)
    return options


def training_loader(dataset, *, batch_size, workers, device, seed, num_replicas=1, rank=0):
    sampler = EpochSampler(dataset, seed=seed, num_replicas=num_replicas, rank=rank)
    # drop_last: BatchNorm in the head cannot train on a final batch of one pair.
    # Its own generator: starting workers must not draw from the global RNG that dropout uses,
    # or a resumed run would see different dropout masks than an uninterrupted one.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=len(sampler) > batch_size,
                      generator=torch.Generator().manual_seed(seed), **loader_options(workers=workers, device=device))
