import numpy as np
import torch
from torch.utils.data import DataLoader

from siamese.data import EpochSampler, TrainingPairs, training_loader
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
    dataset = _dataset(tiny_folder, augment="full")
    a1, b1, y1 = dataset[(4, 5)]
    a2, b2, y2 = _dataset(tiny_folder, augment="full")[(4, 5)]
    assert torch.equal(a1, a2) and torch.equal(b1, b2) and y1 == y2
    assert a1.shape == (3, 16, 16) and y1.item() in (0.0, 1.0)
    plain, _, _ = _dataset(tiny_folder, augment="none")[(4, 5)]
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
    dataset = _dataset(tiny_folder, pairs_per_image=2, rotations=4)
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
