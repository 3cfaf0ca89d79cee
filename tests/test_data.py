import numpy as np
import pytest
import torch
from PIL import Image

from siamese.data import (Augmentation, ClassBatchSampler, EpochSampler, TrainingImages, TrainingPairs, jitter_light,
                          random_erase, set_loader_epoch, training_loader)
from siamese.images import Preprocessing, scan_folder


def _dataset(folder, **kwargs):
    return TrainingPairs(scan_folder(folder), Preprocessing(image_size=16), seed=3, **kwargs)


def test_pairs_change_per_epoch_and_repeat_for_the_same_epoch(tiny_folder):
    dataset = _dataset(tiny_folder)
    epoch1 = [dataset.pair(1, i) for i in range(len(dataset))]
    assert epoch1 == [dataset.pair(1, i) for i in range(len(dataset))]
    assert epoch1 != [dataset.pair(2, i) for i in range(len(dataset))]
    assert [index for index, _, _ in epoch1] == list(range(len(dataset)))  # every image leads one pair


def test_items_are_deterministic_with_augmentation(tiny_folder):
    dataset = _dataset(tiny_folder, augmentation=Augmentation("full"))
    a1, b1, y1 = dataset[(4, 5)]
    a2, b2, y2 = _dataset(tiny_folder, augmentation=Augmentation("full"))[(4, 5)]
    assert torch.equal(a1, a2) and torch.equal(b1, b2) and y1 == y2
    assert a1.shape == (3, 16, 16) and y1.item() in (0.0, 1.0)
    plain, _, _ = _dataset(tiny_folder, augmentation=Augmentation("none"))[(4, 5)]
    assert not torch.equal(a1, plain)


def test_sampler_shards_each_pair_once_across_ranks(tiny_folder):
    dataset = _dataset(tiny_folder)  # 18 items
    keys = []
    for rank in range(3):
        sampler = EpochSampler(dataset, seed=0, num_replicas=3, rank=rank)
        sampler.set_epoch(5)
        keys.append(list(sampler))
    assert all(epoch == 5 for part in keys for epoch, _ in part)
    indices = [i for part in keys for _, i in part]
    assert sorted(indices) == list(range(len(dataset)))
    single = EpochSampler(dataset, seed=0)
    single.set_epoch(5)
    order5 = list(single)
    single.set_epoch(6)
    assert order5 != list(single)  # reshuffled every epoch


def test_loader_with_workers_gives_what_the_dataset_gives(tiny_folder):
    dataset = _dataset(tiny_folder)
    loader = training_loader(dataset, batch_size=4, workers=2, device="cpu", seed=0)
    loader.sampler.set_epoch(2)
    batches = list(loader)
    assert len(batches) == 4  # 18 pairs, batches of 4, the last partial batch dropped
    expected = torch.stack([dataset[key][0] for key in list(loader.sampler)[:4]])
    assert torch.equal(batches[0][0], expected)


def test_pairs_per_image_and_rotations(tiny_folder):
    dataset = _dataset(tiny_folder, pairs_per_image=2, augmentation=Augmentation(rotations=4))
    folder = dataset.folder
    assert len(dataset) == len(folder) * 4 * 2
    assert len(dataset.by_class) == len(folder.classes) * 4
    # a rotated copy is its own class: same-class partners share the rotation
    for item in range(0, len(dataset), 7):
        index, partner, same = dataset.pair(0, item)
        n = len(folder)
        assert same == (folder.labels[index % n] == folder.labels[partner % n] and index // n == partner // n)
    upright = dataset._image(0)
    turned = dataset._image(len(folder))  # same file, 90 degrees
    np.testing.assert_array_equal(np.asarray(turned), np.asarray(upright.rotate(90)))


def test_mirror_classes_double_the_rotated_classes(tiny_folder):
    folder = scan_folder(tiny_folder)
    dataset = TrainingImages(folder, Preprocessing(image_size=16), seed=3,
                             augmentation=Augmentation("affine", rotations=4, mirror_classes=True))
    n = len(folder)
    assert len(dataset) == n * 8 and len(dataset.by_class) == len(folder.classes) * 8
    assert all(len(members) == len(folder.images_by_class()[c // 8]) for c, members in enumerate(dataset.by_class))
    upright = dataset._image(0)
    # variant 5: mirrored (5 >= 4 rotations) after turning by 90 degrees (5 % 4 = 1)
    np.testing.assert_array_equal(np.asarray(dataset._image(5 * n)), np.asarray(upright.rotate(90).transpose(0)))
    assert dataset.labels[5 * n] == folder.labels[0] * 8 + 5


def test_random_erase_blanks_one_rectangle_within_bounds():
    array = np.ones((3, 40, 30), dtype=np.float32)
    random_erase(array, np.random.default_rng(0))
    erased = np.argwhere(array[0] == 0.0)
    (top, left), (bottom, right) = erased.min(0), erased.max(0)
    area = (bottom - top + 1) * (right - left + 1)
    assert len(erased) == area  # one solid rectangle
    assert 0.02 * 1200 * 0.8 <= area <= 0.33 * 1200 * 1.2
    assert (array[:, array[0] == 0.0] == 0.0).all() and (array[:, array[0] != 0.0] == 1.0).all()


def test_erase_applies_with_its_probability(tiny_folder):
    folder = scan_folder(tiny_folder)
    plain = TrainingImages(folder, Preprocessing(image_size=16), seed=3, augmentation=Augmentation("none"))
    always = TrainingImages(folder, Preprocessing(image_size=16), seed=3, augmentation=Augmentation("none", erase=1.0))
    for key in [(0, v, 0) for v in range(6)]:
        a, b = plain[key][0], always[key][0]
        changed = a != b
        assert changed.any() and (b[changed] == 0.0).all()


def test_flip_augmentation_mirrors_about_half_the_images_and_moves_nothing_else(tiny_folder):
    folder = scan_folder(tiny_folder)
    plain = TrainingImages(folder, Preprocessing(image_size=16), seed=3, augmentation=Augmentation("none"))
    flips = TrainingImages(folder, Preprocessing(image_size=16), seed=3, augmentation=Augmentation("flip"))
    kinds = []
    for key in [(epoch, v, 0) for epoch in range(4) for v in range(6)]:
        a, b = plain[key][0], flips[key][0]
        assert torch.equal(b, a) or torch.equal(b, a.flip(-1))  # the image or its mirror, nothing else
        kinds.append(torch.equal(b, a.flip(-1)) and not torch.equal(a, a.flip(-1)))
    assert 4 <= sum(kinds) <= 20


def test_jitter_light_scales_brightness_and_contrast_within_its_strength():
    ramp = Image.fromarray(np.tile(np.linspace(60, 190, 32).astype(np.uint8), (8, 1)))
    rng = np.random.default_rng(0)
    spreads = []
    for _ in range(20):
        out = np.asarray(jitter_light(ramp, rng, 0.4), dtype=float)
        assert (np.diff(out, axis=1) >= 0).all()  # an increasing map of the pixel values: no geometry change
        spreads.append(out.std() / np.asarray(ramp, dtype=float).std())
    # contrast x brightness, each within [0.6, 1.4] (rounding to 8 bits aside)
    assert all(0.6 * 0.6 - 0.03 <= r <= 1.4 * 1.4 + 0.03 for r in spreads)
    assert max(spreads) > 1.2 and min(spreads) < 0.8


def test_jitter_applies_to_training_images(tiny_folder):
    folder = scan_folder(tiny_folder)
    plain = TrainingImages(folder, Preprocessing(image_size=16), seed=3, augmentation=Augmentation("none"))
    lit = TrainingImages(folder, Preprocessing(image_size=16), seed=3, augmentation=Augmentation("none", jitter=0.4))
    assert all(not torch.equal(plain[k][0], lit[k][0]) for k in [(0, v, 0) for v in range(6)])


def _batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_class_batches_group_images_by_class_and_change_per_epoch(tiny_folder):
    dataset = TrainingImages(scan_folder(tiny_folder), Preprocessing(image_size=16), seed=3, visits=2)
    sampler = ClassBatchSampler(dataset.by_class, batch_size=7, images_per_class=3, seed=0, visits=2)
    batches = _batches(sampler, 4)
    # 3 classes x 6 images, 2 visits: 12 groups of 3; batches of two groups (7 // 3), so 6 batches
    assert len(batches) == len(sampler) == 6
    for batch in batches:
        assert len(batch) == 6 and all(epoch == 4 for epoch, _, _ in batch)
        for group in (batch[:3], batch[3:]):
            assert len({dataset.labels[v] for _, v, _ in group}) == 1  # a group is one class
    # every image is used once per visit
    used = sorted((v, visit) for batch in batches for _, v, visit in batch)
    assert used == sorted((v, visit) for v in range(len(dataset.labels)) for visit in range(2))
    assert batches == _batches(ClassBatchSampler(dataset.by_class, batch_size=7, images_per_class=3, seed=0, visits=2), 4)
    assert batches != _batches(sampler, 5)


def test_class_batches_are_dealt_to_ranks_evenly(tiny_folder):
    dataset = TrainingImages(scan_folder(tiny_folder), Preprocessing(image_size=16), seed=3)
    parts = [_batches(ClassBatchSampler(dataset.by_class, batch_size=4, images_per_class=2, seed=0,
                                        num_replicas=4, rank=rank), 1) for rank in range(4)]
    # 9 groups of 2, two per batch: 4 batches, one per rank
    assert [len(part) for part in parts] == [1, 1, 1, 1]
    keys = [key for part in parts for batch in part for key in batch]
    assert len(keys) == len(set(keys)) == 16


def test_class_batches_need_two_classes_with_enough_images(tiny_folder):
    dataset = TrainingImages(scan_folder(tiny_folder), Preprocessing(image_size=16), seed=3)
    with pytest.raises(ValueError, match="fewer than two classes have 7 images"):
        ClassBatchSampler(dataset.by_class, batch_size=14, images_per_class=7, seed=0)


def test_in_batch_loader_yields_images_and_labels(tiny_folder):
    dataset = TrainingImages(scan_folder(tiny_folder), Preprocessing(image_size=16), seed=3,
                             augmentation=Augmentation("affine"))
    loader = training_loader(dataset, batch_size=6, workers=2, device="cpu", seed=0, images_per_class=3)
    set_loader_epoch(loader, 2)
    images, labels = next(iter(loader))
    keys = next(iter(loader.batch_sampler))
    assert images.shape == (6, 3, 16, 16)
    assert labels.tolist() == [dataset.labels[v] for _, v, _ in keys]
    assert torch.equal(images[0], dataset[keys[0]][0])  # workers give what the dataset gives

