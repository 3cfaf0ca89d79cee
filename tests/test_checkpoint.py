import os

import pytest
import torch

from siamese.checkpoint import atomic_save, load_checkpoint, load_model, make_checkpoint
from siamese.errors import UserError
from siamese.model import SiameseNetwork


def test_round_trip_loads_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = SiameseNetwork("resnet18", image_size=32)
    optimizer = torch.optim.Adam(model.parameters())
    path = str(tmp_path / "c.pth")
    atomic_save(make_checkpoint(model=model, epoch=3, optimizer=optimizer, threshold=0.4, args={"seed": 1}), path)
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["format_version"] == 1 and raw["epoch"] == 3 and raw["threshold"] == 0.4
    loaded, checkpoint = load_model(path)
    assert loaded.config == model.config
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)
    assert not loaded.training
    assert os.listdir(tmp_path) == ["c.pth"]  # no temporary file left behind


def test_original_toolkit_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    original = SiameseNetwork("resnet18", features="logits")
    path = str(tmp_path / "original.pth")
    torch.save({"epoch": 7, "model_state_dict": original.state_dict(), "backbone": "resnet18",
                "optimizer_state_dict": {}}, path)
    model, checkpoint = load_model(path)
    assert checkpoint["config"]["features"] == "logits" and checkpoint["epoch"] == 7
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, x.flip(0)), original.eval()(x, x.flip(0)))


def test_bad_checkpoints(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(str(tmp_path / "none.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(str(junk))
    other = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(UserError, match="not a checkpoint of this toolkit"):
        load_checkpoint(str(other))
    mismatched = tmp_path / "mismatch.pth"
    state = make_checkpoint(model=SiameseNetwork("resnet18", image_size=32), epoch=1)
    state["config"]["backbone"] = "resnet34"
    torch.save(state, mismatched)
    # resnet34 has every weight of resnet18, in the same shapes, and more
    with pytest.raises(UserError, match=r"does not match its recorded model resnet34: \d+ weights missing \(such as "
                                        r"backbone.layer1.2.conv1.weight\); it was altered or damaged"):
        load_model(str(mismatched))


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    atomic_save({"format_version": 1, "epoch": 1}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"format_version": 1, "epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pth"]


def test_the_training_images_are_recorded_compactly(tmp_path):
    """The content keys of the training images, with or without a weight average, as one uint8
    tensor that loads with weights_only; a checkpoint without them loads as ever."""
    from siamese.checkpoint import training_keys
    from siamese.model import WeightAverage

    torch.manual_seed(0)
    model = SiameseNetwork("resnet18", image_size=32)
    keys = [bytes([i, 1, 2, 3, 4, 5, 6, 7]) for i in (5, 3, 5, 9)]
    path = str(tmp_path / "c.pth")
    atomic_save(make_checkpoint(model=model, epoch=1, average=WeightAverage(model, 0.9), training_images=keys), path)
    raw = torch.load(path, weights_only=True)
    assert raw["training_images"].dtype == torch.uint8 and raw["training_images"].shape == (3, 8)
    assert training_keys(load_checkpoint(path)) == set(keys) and "training_model" in raw
    atomic_save(make_checkpoint(model=model, epoch=1), path)
    assert "training_images" not in torch.load(path, weights_only=True) and training_keys(load_checkpoint(path)) is None


def test_each_checkpoint_name_is_a_file_of_its_own(tmp_path):
    """best.pth, last.pth and epoch_N.pth are written as separate files: a file copied over one
    of them, or one edited in place, leaves the others as they were."""
    import shutil

    from siamese.checkpoint import CheckpointWriter

    names = [str(tmp_path / name) for name in ("best.pth", "last.pth", "epoch_2.pth")]
    writer = CheckpointWriter()
    writer.write({"format_version": 1, "epoch": 2, "optimizer": {"state": {}}}, names)
    writer.wait()
    assert len({os.stat(path).st_ino for path in names}) == 3 and all(os.stat(p).st_nlink == 1 for p in names)
    other = str(tmp_path / "other.pth")
    atomic_save({"format_version": 1, "epoch": 9, "optimizer": None}, other)
    shutil.copyfile(other, names[0])  # cp other/best.pth run/best.pth: writes into the file at that name
    assert torch.load(names[1], weights_only=True)["epoch"] == 2
    state = torch.load(names[1], weights_only=True)
    state["optimizer"] = None
    torch.save(state, names[2])  # edited in place
    assert torch.load(names[1], weights_only=True)["optimizer"] == {"state": {}}
    assert sorted(os.listdir(tmp_path)) == ["best.pth", "epoch_2.pth", "last.pth", "other.pth"]
