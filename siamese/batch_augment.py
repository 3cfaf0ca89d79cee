"""Training augmentation in batch on the device (the path when training on CUDA): the loader
gives uint8 images, copied from pinned memory without waiting, and they are augmented and
normalised where the model runs, so the loader workers only read the cached pixels.

Each step draws its parameters from the same distributions as the per-image path in data.py
(affine, flip, light jitter, erasing, in that order) and rounds to 8 bits where Pillow does;
normalisation is the table of `Preprocessing.levels`, the numbers the CPU path uses. The draws
come from a generator seeded by (seed, epoch, rank), so a resumed run sees the same ones.
"""

import math

import torch
import torch.nn.functional as F

from .data import (AFFINE_DEGREES, AFFINE_SCALE, AFFINE_SHEAR, AFFINE_TRANSLATE, ERASE_AREA, ERASE_ASPECT,
                   ERASE_TRIES)
from .pairs import rng_for


def augments_on_device(device):
    """Whether training on `device` augments in batch there (CUDA) or per image in the loader."""
    return torch.device(device).type == "cuda"


def _uniform(generator, n, low, high):
    return low + (high - low) * torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)


def draw_parameters(augmentation, n, size, generator):
    """Each image's draws, as data.py's per-image path makes them, for n images of size x size:
    a dict of (n,) tensors, with only the keys `augmentation` uses."""
    a, p = augmentation, {}
    if a.kind in ("full", "affine"):
        p["angle"] = _uniform(generator, n, -AFFINE_DEGREES, AFFINE_DEGREES)
        p["translate"] = torch.round(_uniform(generator, (n, 2), -AFFINE_TRANSLATE, AFFINE_TRANSLATE) * size)
        p["scale"] = _uniform(generator, n, *AFFINE_SCALE)
        p["shear"] = _uniform(generator, n, -AFFINE_SHEAR, AFFINE_SHEAR)
    if a.kind in ("full", "flip"):
        p["flip"] = _uniform(generator, n, 0.0, 1.0) < 0.5
    if a.jitter:
        p["brightness"] = _uniform(generator, n, 1.0 - a.jitter, 1.0 + a.jitter)
        p["contrast"] = _uniform(generator, n, 1.0 - a.jitter, 1.0 + a.jitter)
    if a.erase:
        p["erase"] = _uniform(generator, n, 0.0, 1.0) < a.erase
        p["box"] = _erase_boxes(generator, n, size)
    return p


def _erase_boxes(generator, n, size):
    """(n, 4) top, left, height, width of random_erase's rectangle; height 0 where every try missed."""
    target = _uniform(generator, (n, ERASE_TRIES), *ERASE_AREA) * size * size
    ratio = torch.exp(_uniform(generator, (n, ERASE_TRIES), math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])))
    h, w = torch.round(torch.sqrt(target * ratio)), torch.round(torch.sqrt(target / ratio))
    fits = (h > 0) & (h < size) & (w > 0) & (w < size)
    first = torch.argmax(fits.to(torch.uint8), dim=1, keepdim=True)  # the first try that fits
    h, w = h.gather(1, first)[:, 0] * fits.any(dim=1), w.gather(1, first)[:, 0]
    top = torch.floor(_uniform(generator, n, 0.0, 1.0) * (size - h + 1))
    left = torch.floor(_uniform(generator, n, 0.0, 1.0) * (size - w + 1))
    return torch.stack([top, left, h, w], dim=1)


def border_fill(images):
    """(n, 3) the median colour of each image's border pixels, truncated to a level, as data.affine."""
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], dim=-1)
    return torch.floor(torch.quantile(border, 0.5, dim=-1))


def affine(images, angle, translate, scale, shear):
    """data.affine for a batch of (n, 3, H, W) float images of 8-bit levels: torchvision's inverse
    matrix about the centre, sampled bilinearly at pixel centres as Pillow does; outside the image
    the border's median colour; rounded to levels."""
    n, _, height, width = images.shape
    rot, sx = torch.deg2rad(angle), torch.deg2rad(shear)
    a, c = torch.cos(rot), torch.sin(rot)
    b, d = -torch.cos(rot) * torch.tan(sx) - torch.sin(rot), -torch.sin(rot) * torch.tan(sx) + torch.cos(rot)
    m0, m1, m3, m4 = d / scale, -b / scale, -c / scale, a / scale
    cx, cy = width * 0.5, height * 0.5
    tx, ty = translate[:, 0], translate[:, 1]
    m2 = m0 * (-cx - tx) + m1 * (-cy - ty) + cx
    m5 = m3 * (-cx - tx) + m4 * (-cy - ty) + cy
    xs = (torch.arange(width, device=images.device, dtype=torch.float64) + 0.5)[None, None, :]
    ys = (torch.arange(height, device=images.device, dtype=torch.float64) + 0.5)[None, :, None]
    x_in = m0[:, None, None] * xs + m1[:, None, None] * ys + m2[:, None, None]
    y_in = m3[:, None, None] * xs + m4[:, None, None] * ys + m5[:, None, None]
    grid = torch.stack([x_in * (2.0 / width) - 1.0, y_in * (2.0 / height) - 1.0], dim=-1).to(images.dtype)
    sampled = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = ((x_in >= 0) & (x_in < width) & (y_in >= 0) & (y_in < height))[:, None]
    return torch.where(inside, torch.round(sampled), border_fill(images)[:, :, None, None])


def _levels(images):
    return torch.clamp(torch.floor(images), 0.0, 255.0)


def jitter_light(images, brightness, contrast):
    """data.jitter_light for a batch: brightness, then contrast about the mean grey level (Pillow's
    ImageEnhance: luma 0.299/0.587/0.114, its mean rounded to a level), each truncated to levels."""
    images = _levels(images * brightness.to(images.dtype)[:, None, None, None])
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)[None, :, None, None]
    grey = torch.floor((images * weights).sum(dim=1) + 0.5).mean(dim=(1, 2))
    mean = torch.floor(grey + 0.5)[:, None, None, None]
    return _levels(mean + contrast.to(images.dtype)[:, None, None, None] * (images - mean))


def erase(images, boxes, applied):
    """random_erase for a batch of normalised images: each box (top, left, height, width) set to 0
    where `applied`."""
    _, _, height, width = images.shape
    rows = torch.arange(height, device=images.device)[None, :, None]
    cols = torch.arange(width, device=images.device)[None, None, :]
    top, left, h, w = (boxes[:, i, None, None] for i in range(4))
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w) & applied[:, None, None]
    return images.masked_fill(inside[:, None], 0.0)


class DeviceAugmentation:
    """(n, H, W, 3) uint8 images on a device -> (n, 3, H, W) float32, augmented by `augmentation`
    (data.Augmentation) and normalised by `preprocessing` (images.Preprocessing), all there."""

    def __init__(self, augmentation, preprocessing, device):
        self.augmentation = augmentation
        self.levels = torch.from_numpy(preprocessing.levels).to(device).reshape(-1)  # (3 x 256) table

    def __call__(self, images, generator):
        n, size = images.shape[0], images.shape[1]
        p = draw_parameters(self.augmentation, n, size, generator)
        images = images.permute(0, 3, 1, 2).float()
        if "angle" in p:
            images = affine(images, p["angle"], p["translate"], p["scale"], p["shear"])
        if "flip" in p:
            images = torch.where(p["flip"][:, None, None, None], images.flip(-1), images)
        if "brightness" in p:
            images = jitter_light(images, p["brightness"], p["contrast"])
        channels = torch.arange(3, device=images.device)[None, :, None, None] * 256
        images = torch.take(self.levels, images.long() + channels)
        return erase(images, p["box"], p["erase"]) if "erase" in p else images


class DeviceBatches:
    """The training loader's batches with their images on `device`, augmented and normalised
    there: iterated as the loader is, with its samplers (set_loader_epoch reaches them). Labels
    stay as the loader gives them."""

    def __init__(self, loader, augment, *, device, seed, rank=0):
        self.loader, self.augment, self.device, self.seed, self.rank = loader, augment, device, seed, rank
        self.batch_sampler, self.sampler = loader.batch_sampler, loader.sampler

    def __len__(self):
        return len(self.loader)

    def generator(self):
        """This epoch's generator for the draws: seeded by (seed, epoch, rank)."""
        epoch = getattr(self.batch_sampler, "epoch", None)
        epoch = self.sampler.epoch if epoch is None else epoch
        seed = int(rng_for(self.seed, epoch, self.rank, 4).integers(2 ** 62))
        return torch.Generator(device=self.device).manual_seed(seed)

    def __iter__(self):
        generator = self.generator()
        for *images, labels in self.loader:
            yield (*(self.augment(x.to(self.device, non_blocking=True), generator) for x in images), labels)


def on_device(loader, dataset, *, device, seed, rank=0):
    """The training loader as the epoch iterates it: for a dataset of uint8 images (training on
    CUDA), its batches augmented and normalised on `device`; else the loader itself."""
    if not dataset.uint8:
        return loader
    augment = DeviceAugmentation(dataset.augmentation, dataset.preprocessing, device)
    return DeviceBatches(loader, augment, device=device, seed=seed, rank=rank)
