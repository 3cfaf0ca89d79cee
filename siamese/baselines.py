"""No-learning baselines scored on the same pairs as a model, so that every figure can be read
beside what comparing the images themselves gives:

- `pixels`: cosine similarity of the raw grey pixels (resized, each image's mean removed);
- `lbp`: uniform local binary pattern histograms over a grid of cells (Ahonen et al. 2006, the
  classic face descriptor) compared by chi-square distance.

They are scorers (scoring.py), so `evaluate()` scores them like a model
(`evaluate.baseline_metrics`).
Their similarities are not probabilities: only ranking metrics (ROC-AUC, EER, TAR at FAR,
one-shot accuracy) mean anything for them. No torch here.
"""

import numpy as np
from PIL import Image
from tqdm import tqdm

from .images import load_image

BASELINES = ("pixels", "lbp")
# The figures that do not depend on the scores being probabilities.
RANKING_METRICS = ("auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3")


def _grey(path, size):
    """8-bit grey pixels (size, size)."""
    return np.asarray(load_image(path).convert("L").resize((size, size), Image.BILINEAR))


class _Baseline:
    """A scorer (scoring.py) from a fixed image descriptor and a similarity of two descriptors."""

    name = ""
    embeds = True

    def features(self, path):
        raise NotImplementedError

    def embed_paths(self, paths, *, progress=False):
        return np.stack([self.features(p) for p in tqdm(paths, desc=self.name, unit="image", disable=not progress,
                                                        leave=False)])



class PixelCosine(_Baseline):
    """Cosine similarity of grey pixels at size x size with each image's mean removed."""

    name = "pixels"

    def __init__(self, size=48):
        self.size = size

    def features(self, path):
        grey = _grey(path, self.size).ravel().astype(np.float64)
        grey -= grey.mean()
        norm = np.linalg.norm(grey)
        return grey / norm if norm > 0 else grey

    def score_features(self, a, b):
        return np.einsum("ij,ij->i", a, b)


class LocalBinaryPatterns(_Baseline):
    """Histograms of non-rotation-invariant uniform LBP codes (8 neighbours at radius 2, 59
    codes) in a cells x cells grid of a grey image at size x size; similarity is minus the
    chi-square distance of the concatenated, normalised histograms."""

    name = "lbp"

    def __init__(self, size=96, cells=6, points=8, radius=2):
        self.size, self.cells, self.points, self.radius = size, cells, points, radius
        self.codes = points * (points - 1) + 3  # uniform patterns, plus one bin for all the others

    def features(self, path):
        from skimage.feature import local_binary_pattern  # imported here: only the baselines need it

        codes = local_binary_pattern(_grey(path, self.size), self.points, self.radius, method="nri_uniform")
        step = self.size // self.cells
        histograms = [np.bincount(codes[r:r + step, c:c + step].astype(np.int64).ravel(), minlength=self.codes)
                      for r in range(0, step * self.cells, step) for c in range(0, step * self.cells, step)]
        histogram = np.concatenate(histograms).astype(np.float64)
        return histogram / histogram.sum()

    def score_features(self, a, b):
        total = a + b
        return -np.sum(np.divide((a - b) ** 2, total, out=np.zeros_like(total), where=total > 0), axis=1)


def make_baseline(name):
    return {"pixels": PixelCosine, "lbp": LocalBinaryPatterns}[name]()
