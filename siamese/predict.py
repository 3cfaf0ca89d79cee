"""The PyTorch scorer (see scoring.py): a trained network's features of image files and its
head's similarities of features."""

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data import ImageFiles, loader_options
from .distributed import autocast
from .errors import check_batch_size
from .export import fingerprint
from .images import cpu_images_per_batch

GPU_BATCH_SIZE = 64


def default_batch_size(device, image_size):
    """Images per batch for computing features: 64 on a GPU, on a CPU cpu_images_per_batch()."""
    if torch.device(device).type != "cpu":
        return GPU_BATCH_SIZE
    return cpu_images_per_batch(image_size)


class TorchPredictor:
    embeds = True

    def __init__(self, model, *, device="cpu", batch_size=None, workers=0, amp=False, channels_last=False):
        self.model = model
        self.device = torch.device(device)
        self.batch_size = check_batch_size(batch_size) or default_batch_size(self.device, model.preprocessing.image_size)
        self.workers = workers
        self.amp = amp
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.preprocessing = model.preprocessing

    def _autocast(self):
        return autocast(self.device, self.amp)

    @torch.inference_mode()
    def embed_paths(self, paths, *, progress=False):
        """Scoring features (len(paths), D) float32 (see SiameseNetwork.scoring_features)."""
        self.model.eval()
        # On a CPU the backbone already keeps every core busy: loader processes only add their
        # start-up and copying (measured slower at 32, 64 and 224 px, even on 3000 px JPEGs).
        workers = self.workers if self.device.type != "cpu" else 0
        # persistent workers would outlive this one pass for nothing
        options = dict(loader_options(workers=workers, device=self.device), persistent_workers=False)
        loader = DataLoader(ImageFiles(paths, self.preprocessing), batch_size=self.batch_size, **options)
        chunks = []
        for images in tqdm(loader, desc="features", unit="batch", disable=not progress, leave=False):
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            with self._autocast():
                chunks.append(self.model.scoring_features(images).float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.model.scoring_dim), np.float32)

    @torch.inference_mode()
    def score_features(self, features1, features2):
        """Similarities (N,) of two (N, D) arrays of scoring features, by the head."""
        self.model.eval()
        f1 = torch.as_tensor(features1, device=self.device)
        f2 = torch.as_tensor(features2, device=self.device)
        return torch.sigmoid(self.model.scoring_logits(f1, f2)).float().cpu().numpy()

    def index_key(self):
        """What features depend on (for gallery index files): the weights, preprocessing, precision."""
        return f"{fingerprint(self.model)}:fp32"
