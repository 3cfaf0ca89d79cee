"""The data path: decoded images cached once in memory shared by the loader workers, and the
batch augmentation on the device (CUDA), which must draw from the per-image path's distributions
(checked here on CPU tensors)."""

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw

import train
from conftest import TINY_TRAIN_ARGS
from siamese import batch_augment, image_cache
from siamese.batch_augment import DeviceAugmentation, DeviceBatches, draw_parameters, on_device
from siamese.data import Augmentation, TrainingImages, TrainingPairs, affine, set_loader_epoch, training_loader
from siamese.errors import UserError
from siamese.image_cache import ImageCache
from siamese.images import Preprocessing, scan_folder
from siamese.pairs import rng_for
from siamese.settings import TrainingSettings

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def _picture(size=32):
    """A light background with two shapes off-centre: moving, turning or mirroring it shows."""
    img = Image.new("RGB", (size, size), (250, 240, 230))
    draw = ImageDraw.Draw(img)
    draw.ellipse([5, 8, 20, 26], fill=(200, 30, 40))
    draw.rectangle([18, 3, 29, 12], fill=(20, 90, 200))
    return img


def _as_batch(img):
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None]


def _params(*values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("angle,translate,scale,shear", [(13.0, (3, -2), 1.1, 0.15), (-19.0, (-6, 5), 0.83, -0.2),
                                                         (90.0, (0, 0), 1.0, 0.0), (0.0, (0, 0), 1.0, 0.0)])
def test_batch_affine_gives_pillows_pixels_for_the_same_parameters(angle, translate, scale, shear):
    img = _picture()
    expected = np.asarray(affine(img, angle, list(translate), scale, shear)).astype(int)
    out = batch_augment.affine(_as_batch(img), _params(angle), _params(translate), _params(scale), _params(shear))
    diff = np.abs(out[0].permute(1, 2, 0).numpy().astype(int) - expected)
    assert diff.max() <= 1 and diff.mean() < 0.1  # a level, where Pillow's rounding differs


@pytest.mark.parametrize("brightness,contrast", [(0.7, 0.6), (0.7, 1.4), (1.3, 0.6), (1.3, 1.4)])
def test_batch_jitter_gives_pillows_pixels(brightness, contrast):
    img = _picture()
    expected = np.asarray(TF.adjust_contrast(TF.adjust_brightness(img, brightness), contrast))
    out = batch_augment.jitter_light(_as_batch(img), _params(brightness), _params(contrast))
    assert np.array_equal(out[0].permute(1, 2, 0).numpy().astype(np.uint8), expected)


def _ks(a, b):
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two CDFs."""
    grid = np.sort(np.concatenate([a, b]))
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
    return np.abs(cdf(a) - cdf(b)).max()


def _statistics(images):
    """Per image: mean value per channel, the darkness-weighted centre of mass (moves with the
    affine and the flip), and the share of exactly 0 (erased) pixels."""
    images = images.double()
    dark = (images.max() - images).sum(dim=1)  # (n, H, W)
    _, height, width = dark.shape
    mass = dark.sum(dim=(1, 2))
    cx = (dark.sum(dim=1) * torch.arange(width)).sum(dim=1) / mass
    cy = (dark.sum(dim=2) * torch.arange(height)).sum(dim=1) / mass
    dx = torch.arange(width)[None, None, :] - cx[:, None, None]
    dy = torch.arange(height)[:, None] - cy[:, None, None]
    moments = [(dark * d).sum(dim=(1, 2)) / mass for d in (dx * dx, dy * dy, dx * dy)]
    orientation = 0.5 * torch.atan2(2 * moments[2], moments[0] - moments[1])  # turns with the image
    zero = (images == 0).all(dim=1).double().mean(dim=(1, 2))
    return {"mean_r": images[:, 0].mean(dim=(1, 2)), "mean_b": images[:, 2].mean(dim=(1, 2)), "cx": cx, "cy": cy,
            "spread": moments[0] + moments[1], "orientation": orientation, "erased": zero}


@pytest.mark.parametrize("augmentation", [
    pytest.param(Augmentation("full", jitter=0.4, erase=0.5), id="full-jitter-erase"),
    pytest.param(Augmentation("affine"), id="affine", marks=pytest.mark.slow),
    pytest.param(Augmentation("flip", erase=1.0), id="flip", marks=pytest.mark.slow)])
def test_batch_augmentation_draws_from_the_per_image_distributions(tmp_path, augmentation):
    """Many augmented copies of one image, by the per-image path and by the batch path: every
    statistic of the outputs is distributed alike (two-sample KS test, 2,000 copies each: a gap
    of 0.075 between the two CDFs has a chance below 1e-4 when the distributions are the same)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for i, name in enumerate(("a/0.png", "a/1.png", "b/0.png")):  # three images, only the first's pixels are used
        picture = _picture()
        if i:  # of distinct content: a copy in another class is refused
            picture.putpixel((0, 0), (i, i, i))
        picture.save(tmp_path / name)
    preprocessing = Preprocessing(image_size=32)
    dataset = TrainingImages(scan_folder(str(tmp_path)), preprocessing, seed=0, augmentation=augmentation)
    n = 2000
    per_image = torch.stack([dataset._tensor(0, rng_for(5, i)) for i in range(n)])
    pixels = torch.from_numpy(np.array(_picture()))[None].expand(n, -1, -1, -1)
    batch = DeviceAugmentation(augmentation, preprocessing, "cpu")(pixels, torch.Generator().manual_seed(5))
    assert batch.shape == per_image.shape and batch.dtype == per_image.dtype
    ours, theirs = _statistics(batch), _statistics(per_image)
    for name in ours:
        assert _ks(ours[name].numpy(), theirs[name].numpy()) < 0.075, name
    assert ours["cx"].std() > 0.5  # the statistics do see the augmentation


def test_unaugmented_batches_are_normalised_exactly_as_on_the_cpu(tiny_folder):
    folder, preprocessing = scan_folder(tiny_folder), Preprocessing(image_size=16)
    floats = TrainingImages(folder, preprocessing, seed=1, augmentation=Augmentation("none"))
    uint8 = TrainingImages(folder, preprocessing, seed=1, augmentation=Augmentation("none"), uint8=True)
    keys = [(1, v, 0) for v in range(len(floats))]
    batch = torch.stack([uint8[key][0] for key in keys])
    assert batch.dtype == torch.uint8 and batch.shape == (len(keys), 16, 16, 3)
    out = DeviceAugmentation(Augmentation("none"), preprocessing, "cpu")(batch, torch.Generator())
    assert torch.equal(out, torch.stack([floats[key][0] for key in keys]))


def test_uint8_items_are_the_turned_and_mirrored_images(tiny_folder):
    dataset = TrainingImages(scan_folder(tiny_folder), Preprocessing(image_size=16), seed=1, uint8=True,
                             augmentation=Augmentation("affine", rotations=4, mirror_classes=True))
    assert len(dataset) == 8 * 18
    for v in range(len(dataset)):
        assert np.array_equal(dataset[(1, v, 0)][0].numpy(), np.asarray(dataset._image(v))), v


def test_device_batches_are_seeded_by_seed_and_epoch(tiny_folder):
    augmentation = Augmentation("full", jitter=0.3, erase=0.5)
    preprocessing = Preprocessing(image_size=16)
    dataset = TrainingPairs(scan_folder(tiny_folder), preprocessing, seed=2, augmentation=augmentation, uint8=True)

    def epoch_of(epoch, seed=2):
        loader = training_loader(dataset, batch_size=6, workers=0, device="cpu", seed=2)
        batches = on_device(loader, dataset, device="cpu", seed=seed)
        assert isinstance(batches, DeviceBatches)
        set_loader_epoch(batches, epoch)
        return [torch.cat([img1, img2]) for img1, img2, _ in batches]

    first = epoch_of(1)
    assert len(first) == 3 and first[0].shape == (12, 3, 16, 16) and first[0].dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(first, epoch_of(1)))  # a resumed epoch sees the same
    assert not torch.equal(first[0], epoch_of(2)[0])
    assert not torch.equal(first[0], epoch_of(1, seed=3)[0])


def test_draws_cover_their_ranges():
    augmentation = Augmentation("full", jitter=0.2, erase=0.3)
    p = draw_parameters(augmentation, 20_000, 32, torch.Generator().manual_seed(0))
    assert -20 <= p["angle"].min() < -19.9 and 19.9 < p["angle"].max() <= 20
    assert p["translate"].abs().max() == round(0.2 * 32) and torch.equal(p["translate"], p["translate"].round())
    assert 0.8 <= p["scale"].min() and p["scale"].max() <= 1.2
    assert abs(p["flip"].double().mean() - 0.5) < 0.02 and abs(p["erase"].double().mean() - 0.3) < 0.02
    assert 0.8 <= p["brightness"].min() and p["contrast"].max() <= 1.2
    top, left, h, w = p["box"].T
    assert (h > 0).all() and (top + h <= 32).all() and (left + w <= 32).all()


# The cache


def test_cached_items_equal_streamed_ones_and_fill_the_cache(tiny_folder):
    folder, preprocessing = scan_folder(tiny_folder), Preprocessing(image_size=16)
    cache = ImageCache(folder.paths, preprocessing, shared=False)
    options = dict(seed=3, augmentation=Augmentation("full", jitter=0.3, erase=0.5))
    cached = TrainingPairs(folder, preprocessing, cache=cache, **options)
    streamed = TrainingPairs(folder, preprocessing, **options)
    for epoch in (1, 2):  # the second from the cache alone
        for i in range(len(cached)):
            for a, b in zip(cached[(epoch, i)], streamed[(epoch, i)]):
                assert torch.equal(a, b)
        assert cache.filled.all()
    cache.paths = ["/nonexistent.png"] * len(cache)  # read from the cache, not the files
    assert torch.equal(cached[(1, 0)][0], streamed[(1, 0)][0])


def test_loader_workers_fill_one_shared_cache(tiny_folder):
    folder, preprocessing = scan_folder(tiny_folder), Preprocessing(image_size=16)
    cache, line = image_cache.image_cache(folder.paths, preprocessing, budget_mb=1, shared=True)
    assert line == f"caching 18 images, {18 * 16 * 16 * 3 / 2 ** 20:.1f} MB" and cache.pixels.is_shared()
    dataset = TrainingPairs(folder, preprocessing, seed=3, cache=cache, augmentation=Augmentation("none"))
    loader = training_loader(dataset, batch_size=6, workers=2, device="cpu", seed=3)
    set_loader_epoch(loader, 1)
    batches = list(loader)
    assert cache.filled.all()  # filled by the workers, seen here
    cache.paths = ["/nonexistent.png"] * len(cache)
    set_loader_epoch(loader, 1)  # the persistent workers read the filled cache
    for a, b in zip(batches, loader):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_dataset_over_the_budget_streams_with_one_line(tiny_folder, monkeypatch):
    paths = scan_folder(tiny_folder).paths
    big = Preprocessing(image_size=512)  # 18 x 512 x 512 x 3 bytes: 13.5 MB
    assert image_cache.image_cache(paths, big, budget_mb=13, shared=False) == (
        None, "dataset needs 13.5 MB, above --cache-mb 13: images stream from disk")
    assert image_cache.image_cache(paths, big, budget_mb=14, shared=False)[0] is not None
    assert image_cache.image_cache(paths, big, budget_mb=0, shared=False)[0] is None
    monkeypatch.setattr(image_cache, "shared_memory_free", lambda: 20 * 2 ** 20)
    cache, line = image_cache.image_cache(paths, big, budget_mb=100, shared=True)
    assert cache is None and "above half the 20.0 MB free in /dev/shm" in line and "stream from disk" in line
    assert image_cache.image_cache(paths, big, budget_mb=100, shared=False)[0] is not None  # no workers, no /dev/shm


def test_a_negative_cache_budget_is_refused_in_one_line_and_writes_nothing(tiny_dataset, tmp_path, capsys):
    with pytest.raises(UserError, match="--cache-mb must be at least 0"):
        TrainingSettings(cache_mb=-1)
    train_dir, val_dir = tiny_dataset
    out = tmp_path / "out"
    assert train.main(["--train-path", train_dir, "-o", str(out), *TINY_TRAIN_ARGS, "--cache-mb", "-5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --cache-mb must be at least 0, not -5"]
    assert not out.exists()


def _weights(path):
    return torch.load(str(path / "last.pth"), weights_only=True)["model"]


@pytest.mark.slow
def test_the_cache_changes_no_pixel_the_model_sees(tiny_dataset, tmp_path, capsys):
    """The same --seed trains the same weights with the cache and without it (workers filling it)."""
    train_dir, _ = tiny_dataset
    augmenting = [a for a in TINY_TRAIN_ARGS if a != "--no-augment"]
    common = ["--train-path", train_dir, *augmenting, "--workers", "2", "--seed", "4", "-e", "2", "--jitter", "0.3",
              "--erase", "0.5"]
    assert train.main([*common, "-o", str(tmp_path / "cached")]) == 0
    assert "caching 24 images, 0.1 MB" in capsys.readouterr().out
    assert train.main([*common, "-o", str(tmp_path / "streamed"), "--cache-mb", "0"]) == 0
    assert "--cache-mb 0: images stream from disk" in capsys.readouterr().out
    cached, streamed = _weights(tmp_path / "cached"), _weights(tmp_path / "streamed")
    for name, value in cached.items():
        assert torch.equal(value, streamed[name]), name


@pytest.mark.slow
def test_the_device_path_resumes_exactly(tiny_dataset, tmp_path, monkeypatch):
    """The batch augmentation (here on the CPU) continues a resumed run exactly as a straight one."""
    import siamese.training

    monkeypatch.setattr(siamese.training, "augments_on_device", lambda device: True)
    train_dir, _ = tiny_dataset
    augmenting = [a for a in TINY_TRAIN_ARGS if a != "--no-augment"]
    common = ["--train-path", train_dir, *augmenting, "--workers", "0", "--seed", "6", "-e", "2", "--jitter", "0.3",
              "--erase", "0.5", "--pairing", "in-batch", "--images-per-class", "2"]
    assert train.main([*common, "-o", str(tmp_path / "straight")]) == 0
    assert train.main([*common, "-o", str(tmp_path / "resumed"), "-e", "1"]) == 0
    assert train.main([*common, "-o", str(tmp_path / "resumed"), "--resume", str(tmp_path / "resumed" / "last.pth")]) == 0
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name


@needs_cuda
@pytest.mark.gpu
def test_the_batch_augmentation_runs_on_cuda_as_on_the_cpu():
    """The same parameters give the same pixels on the GPU (a level at most where rounding differs)."""
    pixels = torch.from_numpy(np.array(_picture()))[None].expand(64, -1, -1, -1).contiguous()
    augmentation = Augmentation("full", jitter=0.3, erase=0.5)
    p = draw_parameters(augmentation, 64, 32, torch.Generator().manual_seed(1))
    images = pixels.permute(0, 3, 1, 2).float()
    cpu = batch_augment.affine(images, p["angle"], p["translate"], p["scale"], p["shear"])
    gpu = batch_augment.affine(images.cuda(), *(p[k].cuda() for k in ("angle", "translate", "scale", "shear")))
    assert (gpu.cpu() - cpu).abs().max() <= 1
    generator = torch.Generator(device="cuda").manual_seed(1)
    out = DeviceAugmentation(augmentation, Preprocessing(image_size=32), "cuda")(pixels.cuda(), generator)
    assert out.shape == (64, 3, 32, 32) and out.is_cuda and torch.isfinite(out).all()


@needs_cuda
@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_training_feeds_uint8_batches_through_the_device_augmentation(tiny_dataset, tmp_path, capsys):
    train_dir, val_dir = tiny_dataset
    args = ["cuda" if a == "cpu" else a for a in TINY_TRAIN_ARGS if a != "--no-augment"]
    assert train.main(["--train-path", train_dir, "--val-path", val_dir, "-o", str(tmp_path / "out"), *args,
                       "--workers", "2", "--jitter", "0.3", "--erase", "0.3", "-e", "1"]) == 0
    assert "caching 24 images" in capsys.readouterr().out
