import os
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Test trainings use tiny images and a from-scratch backbone: no network, a few seconds each.
TINY_TRAIN_ARGS = ["--weights", "none", "--image-size", "32", "--batch-size", "8", "--workers", "0",
                   "--device", "cpu", "-lr", "1e-3", "--no-augment"]


def make_folder(root, classes=3, per_class=6, size=24, seed=0):
    """A real little image set: each class is a shape of its own colour, drawn at random places.
    A corner pixel holds the class, the image and the seed, so no two images of the folders
    (those of other seeds too) are the same file content, which the folder scan would refuse
    across classes and set aside within one."""
    rng = np.random.default_rng(seed)
    shapes = ["ellipse", "rectangle", "polygon", "line", "cross"]
    colours = [(220, 40, 40), (40, 160, 40), (40, 60, 220), (200, 160, 20), (150, 40, 160)]
    for c in range(classes):
        folder = os.path.join(root, f"class_{c}")
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            img = Image.new("RGB", (size, size), (255, 255, 255))
            draw = ImageDraw.Draw(img)
            x, y = rng.integers(2, size // 3, 2)
            w = int(rng.integers(size // 2, size - max(x, y) - 1))
            box = [int(x), int(y), int(x) + w, int(y) + w]
            kind, colour = shapes[c % len(shapes)], colours[c % len(colours)]
            if kind == "ellipse":
                draw.ellipse(box, fill=colour)
            elif kind == "rectangle":
                draw.rectangle(box, fill=colour)
            elif kind == "polygon":
                draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour)
            elif kind == "line":
                draw.line(box, fill=colour, width=3)
            else:
                draw.line(box, fill=colour, width=2)
                draw.line([box[0], box[3], box[2], box[1]], fill=colour, width=2)
            img.putpixel((0, 0), (c % 256, i % 256, 100 + seed % 156))
            img.save(os.path.join(folder, f"img_{i:02d}.png"))
    return root


@pytest.fixture
def tiny_folder(tmp_path):
    return make_folder(str(tmp_path / "data"))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    base = tmp_path_factory.mktemp("dataset")
    return make_folder(str(base / "train"), classes=4, seed=1), make_folder(str(base / "val"), classes=3, seed=2)


@pytest.fixture(scope="session")
def trained_checkpoint(tiny_dataset, tmp_path_factory):
    """A checkpoint trained for two epochs by train.main (shared by the tests that need one)."""
    import train

    train_dir, val_dir = tiny_dataset
    out = str(tmp_path_factory.mktemp("run"))
    assert train.main(["--train_path", train_dir, "--val_path", val_dir, "-o", out, "-e", "2", "--seed", "3",
                       *TINY_TRAIN_ARGS]) == 0
    return os.path.join(out, "best.pth")


@pytest.fixture(scope="session")
def onnx_model(trained_checkpoint, tiny_dataset):
    """The trained checkpoint exported by torch_to_onnx.main."""
    import torch_to_onnx

    path = os.path.join(os.path.dirname(trained_checkpoint), "model.onnx")
    assert torch_to_onnx.main(["-c", trained_checkpoint, "-o", path, "--images", tiny_dataset[1]]) == 0
    return path
