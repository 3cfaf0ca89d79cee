"""PyTorch datasets over a scanned folder: training pairs that change every epoch, and single
images for feature extraction. Preprocessing is the one definition in `images.Preprocessing`.
"""

import functools
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision.transforms import InterpolationMode

from .distributed import stop_with_parent
from .image_cache import decoded
from .images import load_image
from .pairs import draw_partner, rng_for

# The original toolkit's augmentation: RandomAffine(20, translate=0.2, scale=0.8-1.2, shear=0.2)
# and a horizontal flip.
AFFINE_DEGREES = 20.0
AFFINE_TRANSLATE = 0.2
AFFINE_SCALE = (0.8, 1.2)
AFFINE_SHEAR = 0.2


def augment(img, rng, *, flip=True):
    """Random affine (+ flip) with parameters from rng; the uncovered area takes the border colour."""
    width, height = img.size
    angle = rng.uniform(-AFFINE_DEGREES, AFFINE_DEGREES)
    translate = [int(round(rng.uniform(-AFFINE_TRANSLATE, AFFINE_TRANSLATE) * width)),
                 int(round(rng.uniform(-AFFINE_TRANSLATE, AFFINE_TRANSLATE) * height))]
    scale = rng.uniform(*AFFINE_SCALE)
    shear = rng.uniform(-AFFINE_SHEAR, AFFINE_SHEAR)
    img = affine(img, angle, translate, scale, shear)
    return TF.hflip(img) if flip and rng.random() < 0.5 else img


def affine(img, angle, translate, scale, shear):
    """The affine of `augment` with given parameters (degrees, whole pixels, factor, degrees of
    x-shear), bilinear; the uncovered area takes the median colour of the border pixels."""
    array = np.asarray(img)
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
    fill = [int(v) for v in np.median(border, axis=0)]
    return TF.affine(img, angle=angle, translate=translate, scale=scale, shear=[shear, 0.0],
                     interpolation=InterpolationMode.BILINEAR, fill=fill)


def jitter_light(img, rng, strength):
    """Brightness, then contrast, each scaled by a factor drawn from [1 - strength, 1 + strength]:
    the same subject under other lighting or exposure (the affine augmentation moves pixels but
    leaves their values as they are)."""
    img = TF.adjust_brightness(img, rng.uniform(1.0 - strength, 1.0 + strength))
    return TF.adjust_contrast(img, rng.uniform(1.0 - strength, 1.0 + strength))


ERASE_AREA = (0.02, 0.33)  # random erasing: the rectangle's share of the image,
ERASE_ASPECT = (0.3, 3.3)  # its height / width (drawn log-uniform),
ERASE_TRIES = 10  # and how many draws may miss the image before none is erased


def random_erase(array, rng, *, area=ERASE_AREA, aspect=ERASE_ASPECT):
    """Random erasing (Zhong et al. 2017): one rectangle of a normalised (C, H, W) array, in place,
    set to 0, the mean colour. It teaches the model not to lean on any one part of the image."""
    _, height, width = array.shape
    for _ in range(ERASE_TRIES):  # a drawn rectangle may not fit; give up after a few tries, as torchvision does
        target = rng.uniform(*area) * height * width
        ratio = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
        h, w = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < h < height and 0 < w < width:
            top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
            array[:, top:top + h, left:left + w] = 0.0
            return array
    return array


@dataclass(frozen=True)
class Augmentation:
    """How training images are altered (TrainingSettings checks the values): `kind` 'full'
    (affine and flips), 'affine', 'flip' (flips alone) or 'none'; light `jitter` strength; `erase` probability; each
    class also turned by 360/`rotations` degrees and, with mirror_classes, mirrored, as classes
    of their own."""

    kind: str = "full"
    jitter: float = 0.0
    erase: float = 0.0
    rotations: int = 1
    mirror_classes: bool = False

    @classmethod
    def from_settings(cls, settings):
        return cls(settings.augment, settings.jitter, settings.erase, settings.rotations, settings.mirror_classes)


class _TrainingImages(Dataset):
    """Virtual training images: with rotations=4, every class rotated by 90, 180 and 270 degrees
    counts as a class of its own, and with mirror_classes its mirror image too (the Omniglot
    trick for more classes from the same images: a turned or mirrored character is another one).
    Files are decoded and resized once into `cache` (an ImageCache) when one is given: decoding
    and resizing dominate loading for small images. With `uint8`, items are the (H, W, 3) uint8
    images before augmentation, which `batch_augment` normalises and augments on the device."""

    def __init__(self, folder, preprocessing, *, seed, augmentation=Augmentation(), cache=None, uint8=False):
        self.folder = folder
        self.preprocessing = preprocessing
        self.seed = seed
        self.augmentation = augmentation
        self.rotations = augmentation.rotations
        variants = self.rotations * (2 if augmentation.mirror_classes else 1)
        n = len(folder)
        # virtual image v: file v % n, variant t = v // n: turned by 360 / rotations * (t % rotations)
        # degrees, then mirrored when t >= rotations
        self.labels = [folder.labels[v % n] * variants + v // n for v in range(n * variants)]
        self.by_class = [[] for _ in range(len(folder.classes) * variants)]
        for v, label in enumerate(self.labels):
            self.by_class[label].append(v)
        self.cache = cache
        self.uint8 = uint8

    def _image(self, v):
        n = len(self.folder)
        file_index = v % n
        if self.cache is not None:
            size = (self.preprocessing.image_size,) * 2
            img = Image.frombytes("RGB", size, self.cache.decode(file_index))  # faster than fromarray
        else:
            img = self.preprocessing.resize(load_image(self.folder.paths[file_index], size_hint=self.preprocessing.image_size))
        variant = v // n
        turns = variant % self.rotations
        if turns:
            img = img.rotate(360 // self.rotations * turns)
        return TF.hflip(img) if variant >= self.rotations else img  # the mirrored variants come last

    def _pixels(self, v):
        """Virtual image v as (H, W, 3) uint8, unaugmented: what _image gives, without Pillow."""
        n = len(self.folder)
        array = (self.cache.decode(v % n) if self.cache is not None
                 else decoded(self.folder.paths[v % n], self.preprocessing))
        variant = v // n
        array = np.rot90(array, 4 // self.rotations * (variant % self.rotations))  # counter-clockwise, as Pillow
        return torch.from_numpy(np.ascontiguousarray(array[:, ::-1] if variant >= self.rotations else array))

    def _tensor(self, v, rng):
        if self.uint8:
            return self._pixels(v)
        img, a = self._image(v), self.augmentation
        if a.kind in ("full", "affine"):
            img = augment(img, rng, flip=a.kind == "full")
        elif a.kind == "flip" and rng.random() < 0.5:
            img = TF.hflip(img)
        if a.jitter:
            img = jitter_light(img, rng, a.jitter)
        array = self.preprocessing.normalize(img)
        if a.erase and rng.random() < a.erase:
            random_erase(array, rng)
        return torch.from_numpy(array)


class TrainingPairs(_TrainingImages):
    """Map-style pairs: item (epoch, i) pairs an image with a partner drawn by the 0.5 rule.

    Each image is the first element of `pairs_per_image` pairs per epoch. Partner and
    augmentation come from a generator seeded by (seed, epoch, i), so the pairs change every
    epoch, do not depend on workers or ranks, and a resumed run sees the same ones.
    """

    def __init__(self, folder, preprocessing, *, seed, pairs_per_image=1, **options):
        super().__init__(folder, preprocessing, seed=seed, **options)
        self.pairs_per_image = pairs_per_image

    def __len__(self):
        return len(self.labels) * self.pairs_per_image

    def pair(self, epoch, item):
        index = item % len(self.labels)
        partner, same = draw_partner(rng_for(self.seed, epoch, item), index, self.labels, self.by_class)
        return index, partner, same

    def __getitem__(self, key):
        epoch, item = key
        index, partner, same = self.pair(epoch, item)
        rng = rng_for(self.seed, epoch, item, 1)
        return self._tensor(index, rng), self._tensor(partner, rng), torch.tensor(float(same))


class TrainingImages(_TrainingImages):
    """Single augmented images with their class, for scoring every pair within a batch.
    Item (epoch, v, visit) is virtual image v's visit-th appearance in that epoch; each image
    appears `visits` times per epoch."""

    def __init__(self, folder, preprocessing, *, seed, visits=1, **options):
        super().__init__(folder, preprocessing, seed=seed, **options)
        self.visits = visits

    def __len__(self):
        return len(self.labels) * self.visits

    def __getitem__(self, key):
        epoch, v, visit = key
        return self._tensor(v, rng_for(self.seed, epoch, v, visit, 2)), self.labels[v]


class ClassBatchSampler(Sampler):
    """Batches of `images_per_class` images from each of several classes, so that every batch
    holds same-class pairs as well as different-class ones.

    Each epoch, every class's images are shuffled and cut into groups of images_per_class
    (`visits` times over, a remainder smaller than a group waits for another epoch); the groups
    are shuffled and joined into batches. Batches are dealt to ranks in turn, each rank getting
    the same number. The order is a function of (seed, epoch) alone."""

    def __init__(self, by_class, *, batch_size, images_per_class, seed, visits=1, num_replicas=1, rank=0):
        if images_per_class < 2 or batch_size < 2 * images_per_class:
            raise ValueError("a batch needs at least two classes of at least two images")
        self.by_class = [list(members) for members in by_class if len(members) >= images_per_class]
        if len(self.by_class) < 2:
            raise ValueError(f"fewer than two classes have {images_per_class} images")
        self.groups_per_batch = batch_size // images_per_class
        self.images_per_class = images_per_class
        self.seed = seed
        self.visits = visits
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _groups_per_epoch(self):
        return self.visits * sum(len(members) // self.images_per_class for members in self.by_class)

    def __len__(self):
        return self._groups_per_epoch() // self.groups_per_batch // self.num_replicas

    def __iter__(self):
        rng = rng_for(self.seed, self.epoch, 3)
        groups = []
        for visit in range(self.visits):
            for members in self.by_class:
                order = rng.permutation(members)
                k = self.images_per_class
                groups += [[(self.epoch, int(v), visit) for v in order[i:i + k]]
                           for i in range(0, len(order) - k + 1, k)]
        order = rng.permutation(len(groups))
        g = self.groups_per_batch
        batches = [sum((groups[j] for j in order[i:i + g]), []) for i in range(0, len(self) * self.num_replicas * g, g)]
        return iter(batches[self.rank::self.num_replicas])


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


def set_loader_epoch(loader, epoch):
    sampler = loader.batch_sampler if isinstance(loader.batch_sampler, ClassBatchSampler) else loader.sampler
    sampler.set_epoch(epoch)


def loader_options(*, workers, device):
    """DataLoader settings shared by training and evaluation."""
    options = {"num_workers": workers, "pin_memory": torch.device(device).type == "cuda"}
    if workers > 0:
        # workers die with the process that starts them (the one that iterates the loader), even
        # after a SIGKILL of it, when nothing is left to tell them to stop
        options.update(persistent_workers=True, prefetch_factor=4,
                       worker_init_fn=functools.partial(_worker_start, os.getpid()))
    return options


def _worker_start(parent_pid, worker_id):
    stop_with_parent(parent_pid)


def training_loader(dataset, *, batch_size, workers, device, seed, num_replicas=1, rank=0, images_per_class=None):
    """Pairs (a TrainingPairs dataset) or, for TrainingImages, class-grouped image batches."""
    if isinstance(dataset, TrainingImages):
        sampler = ClassBatchSampler(dataset.by_class, batch_size=batch_size, images_per_class=images_per_class,
                                    seed=seed, visits=dataset.visits, num_replicas=num_replicas, rank=rank)
        return DataLoader(dataset, batch_sampler=sampler, generator=torch.Generator().manual_seed(seed),
                          **loader_options(workers=workers, device=device))
    sampler = EpochSampler(dataset, seed=seed, num_replicas=num_replicas, rank=rank)
    # drop_last: BatchNorm in the head cannot train on a final batch of one pair.
    # Its own generator: starting workers must not draw from the global RNG that dropout uses,
    # or a resumed run would see different dropout masks than an uninterrupted one.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=len(sampler) > batch_size,
                      generator=torch.Generator().manual_seed(seed), **loader_options(workers=workers, device=device))
