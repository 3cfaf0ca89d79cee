"""The bundled demo dataset: scikit-learn's handwritten digits (1,797 real 8x8 scans of
digits 0-9) written as PNGs in the folder-per-class layout.

The split is image-disjoint: every digit appears in train/ and val/, with different images
(a class-disjoint split of ten classes would leave too few classes to learn from).
"""

import os

import numpy as np
from PIL import Image

from .files import prepare_output_dir

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def build_digits_dataset(root, *, val_fraction=0.3, upscale=4, seed=0):
    """Write root/train/<digit>/NNNN.png and root/val/<digit>/NNNN.png; returns the two paths."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    prepare_output_dir(root, what="demo data folder")
    counts = {"train": 0, "val": 0}
    for label, name in enumerate(DIGIT_NAMES):
        indices = np.flatnonzero(digits.target == label)
        rng.shuffle(indices)
        n_val = int(round(len(indices) * val_fraction))
        for split, chosen in (("val", indices[:n_val]), ("train", indices[n_val:])):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in chosen:
                # 0..16 ink levels -> dark ink on white paper, like a scan
                pixels = (255 - digits.images[i] * (255 / 16)).round().astype(np.uint8)
                img = Image.fromarray(pixels, "L").resize((8 * upscale, 8 * upscale), Image.NEAREST)
                img.save(os.path.join(folder, f"{i:04d}.png"))
                counts[split] += 1
    return os.path.join(root, "train"), os.path.join(root, "val"), counts
