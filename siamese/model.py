"""The Siamese network: a torchvision backbone shared by both images, the element-wise product
of the two feature vectors, and the original toolkit's MLP head.

The module names (`backbone`, `cls_head` with the original's layer order) match the original
toolkit, so its checkpoints load into the `logits` feature mode.
"""

import copy
import difflib
import os

import torch
import torchvision
from torch import nn

from .errors import UserError
from .images import Preprocessing
from .settings import DEFAULT_FEATURES, FEATURE_MODES


def classification_backbones():
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_backbone_name(name):
    names = classification_backbones()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown backbone '{name}'; {hint}any torchvision classification model works, e.g. resnet18, "
                        f"efficientnet_b0, mobilenet_v3_small, convnext_tiny ({len(names)} in all)")


def _last_linear(module):
    """(parent, attribute name, layer) of the last nn.Linear: the ImageNet classifier."""
    found = None
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found = (parent, name, child)
    return found


def _load_backbone_weights(model, backbone, weights):
    """weights: 'imagenet', 'none' or a path to a torchvision state dict for this backbone."""
    if weights == "none":
        return
    if weights == "imagenet":
        weight_enum = torchvision.models.get_model_weights(backbone).DEFAULT
        try:
            state = weight_enum.get_state_dict(progress=False, check_hash=True)
        except Exception as error:
            raise UserError(f"could not download ImageNet weights for {backbone} ({type(error).__name__}: {error}); "
                            f"train from scratch with --weights none, or pass a downloaded state dict with --weights PATH") from None
        model.load_state_dict(state)
        return
    if not os.path.isfile(weights):
        raise UserError(f"--weights must be 'imagenet', 'none' or an existing file; '{weights}' does not exist")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"cannot load weights file '{weights}' ({type(error).__name__}); give a torchvision state dict saved with torch.save") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"weights file '{weights}' does not fit backbone {backbone} ({first}); "
                        f"give weights saved from torchvision's {backbone}") from None


def build_backbone(backbone, *, features, weights="none"):
    """A torchvision model returning a feature vector, and that vector's length."""
    check_backbone_name(backbone)
    if features not in FEATURE_MODES:
        raise UserError(f"--features must be one of {', '.join(FEATURE_MODES)}, got '{features}'")
    kwargs = {"aux_logits": False, "init_weights": False} if backbone in ("inception_v3", "googlenet") else {}
    model = torchvision.models.get_model(backbone, weights=None, **kwargs)
    _load_backbone_weights(model, backbone, weights)
    last = _last_linear(model)
    if last is None:
        raise UserError(f"backbone {backbone} has no linear classifier to take features from; choose another backbone")
    parent, name, layer = last
    if features == "logits":
        return model, layer.out_features
    setattr(parent, name, nn.Identity())
    return model, layer.in_features


# --shift-average: one pixel down, up, right and left (rows, columns)
SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1))


class SiameseNetwork(nn.Module):
    """forward(img1, img2) returns the logit that the two images show the same class. The
    constructor's parameters are the model's config, one each: a checkpoint rebuilds the model
    from that dict (build_model)."""

    def __init__(self, backbone="resnet18", features=DEFAULT_FEATURES, weights="none", image_size=224,
                 mean=None, std=None, dropout=0.5, normalize=False, flip_average=False, shift_average=False):
        super().__init__()
        self.backbone, feature_dim = build_backbone(backbone, features=features, weights=weights)
        preprocessing = Preprocessing(image_size, *(() if mean is None else (tuple(mean), tuple(std))))
        self.config = {"backbone": backbone, "features": features, "feature_dim": feature_dim,
                       "dropout": float(dropout), "normalize": bool(normalize), "flip_average": bool(flip_average),
                       "shift_average": bool(shift_average),
                       **preprocessing.to_dict()}
        # The original head, layer for layer (index 10 was a Sigmoid: we keep the logit).
        self.cls_head = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(feature_dim, 512), nn.BatchNorm1d(512), nn.ReLU(),
            nn.Dropout(p=dropout), nn.Linear(512, 64), nn.BatchNorm1d(64), nn.Sigmoid(),
            nn.Dropout(p=dropout), nn.Linear(64, 1),
        )

    @property
    def preprocessing(self):
        return Preprocessing.from_dict(self.config)

    def embed(self, images):
        return self.backbone(images)

    def check_image_size(self):
        """A UserError unless the backbone takes images of the model's size: one image through it
        before a run writes anything (a ViT takes only the size it was built for)."""
        size = self.preprocessing.image_size
        if size < 1:
            raise UserError(f"--image-size must be at least 1 pixel, not {size}")
        training = self.training
        try:
            with torch.no_grad():
                self.backbone.eval()(torch.zeros(1, 3, size, size))
        except Exception as error:  # backbones assert, or fail inside a layer
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise UserError(f"{self.config['backbone']} cannot take {size} px images ({first}); choose another "
                            f"--image-size or backbone") from None
        finally:
            self.train(training)

    def score_features(self, features1, features2):
        """Logits (N,) from two batches of backbone features. With `normalize` each feature vector
        is scaled to unit length first, so the product's elements sum to the cosine similarity
        and the head weighs the directions of the features, not their lengths."""
        if self.config["normalize"]:
            features1 = nn.functional.normalize(features1, dim=1)
            features2 = nn.functional.normalize(features2, dim=1)
        return self.cls_head(features1 * features2).squeeze(1)

    def forward(self, img1, img2):
        # One backbone pass over both halves: a bigger batch runs faster than two calls.
        features = self.embed(torch.cat([img1, img2]))
        n = img1.shape[0]  # slicing, not chunk(2): chunk pins the batch size in an ONNX export
        return self.score_features(features[:n], features[n:])

    # What evaluation and deployment compute (training uses embed, score_features and forward).
    # With `flip_average` each image is also embedded mirrored left-right, and a pair's
    # similarity is the average of the two images' and the two mirrored images' similarities:
    # test-time augmentation for left-right symmetric subjects such as faces. With `shift_average`
    # each image's features are the mean over the image and its copies shifted by one pixel.

    @property
    def scoring_dim(self):
        """The length of scoring_features(): the backbone's, twice with flip_average."""
        return self.config["feature_dim"] * (2 if self.config.get("flip_average") else 1)

    def _shift_averaged_embed(self, images):
        if not self.config.get("shift_average"):
            return self.embed(images)
        # One copy at a time: peak memory stays that of one batch. torch.roll wraps the edge row or
        # column round to the other side (for a centred subject, a line of background) and exports
        # to ONNX as slices.
        total = self.embed(images)
        for shift in SHIFTS:
            total = total + self.embed(torch.roll(images, shift, dims=(2, 3)))
        return total / (1 + len(SHIFTS))

    def scoring_features(self, images):
        features = self._shift_averaged_embed(images)
        if self.config.get("flip_average"):
            features = torch.cat([features, self._shift_averaged_embed(torch.flip(images, dims=[3]))], dim=1)
        return features

    def scoring_logits(self, features1, features2):
        """Logits (N,) from two batches of scoring_features()."""
        if not self.config.get("flip_average"):
            return self.score_features(features1, features2)
        d = self.config["feature_dim"]
        average = (torch.sigmoid(self.score_features(features1[:, :d], features2[:, :d]))
                   + torch.sigmoid(self.score_features(features1[:, d:], features2[:, d:]))) / 2
        return torch.logit(average, eps=1e-7)

    def pair_logits(self, img1, img2):
        features = self.scoring_features(torch.cat([img1, img2]))
        n = img1.shape[0]
        return self.scoring_logits(features[:n], features[n:])


class WeightAverage:
    """An exponential moving average of a network's weights and BatchNorm statistics, updated
    after every optimizer step: `model` is a copy that changes smoothly where the trained
    network jumps from step to step. Validated, kept in best.pth and deployed in its place.

    The decay ramps up as (1 + steps) / (10 + steps) until it reaches `decay`, so the average
    does not drag the random initial weights along for thousands of steps."""

    def __init__(self, network, decay, steps=0):
        if not 0.0 < decay < 1.0:
            raise ValueError("decay must be between 0 and 1")
        self.network = network
        self.decay = decay
        self.steps = steps
        self.model = copy.deepcopy(network).eval().requires_grad_(False)
        # state_dict tensors share storage with the modules, so these lists stay current
        averaged, current = self.model.state_dict(), network.state_dict()
        floats = [name for name, value in averaged.items() if value.is_floating_point()]
        counters = [name for name in averaged if name not in floats]  # BatchNorm's batch counters
        self._averaged_floats, self._current_floats = [averaged[n] for n in floats], [current[n] for n in floats]
        self._counters = [(averaged[n], current[n]) for n in counters]

    @torch.no_grad()
    def update(self):
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self._averaged_floats, self._current_floats, 1.0 - decay)
        for averaged, current in self._counters:
            averaged.copy_(current)


class LinearClassifier(nn.Linear):
    """Class logits = a linear layer on the features; takes (and ignores) the labels, as the
    CosineClassifier does."""

    def forward(self, features, labels=None):
        return super().forward(features)


class CosineClassifier(nn.Module):
    """Class logits = scale * cosine between an image's features and each class's weight vector,
    less `margin` on the image's own class while training (CosFace's additive margin). It trains
    the features' directions, which is what the pairs compare with --normalize-features; a linear
    classifier also rewards their lengths."""

    def __init__(self, in_features, classes, *, scale, margin=0.0):
        super().__init__()
        self.out_features, self.scale, self.margin = classes, float(scale), float(margin)
        self.weight = nn.Parameter(torch.empty(classes, in_features))
        nn.init.normal_(self.weight, std=in_features ** -0.5)

    def forward(self, features, labels=None):
        cosine = nn.functional.normalize(features, dim=1) @ nn.functional.normalize(self.weight, dim=1).T
        if labels is not None and self.margin:
            cosine = cosine - self.margin * nn.functional.one_hot(labels, self.out_features).to(cosine.dtype)
        return self.scale * cosine


class AllPairs(nn.Module):
    """Training view of a network: (images, labels) -> logits of every pair of images in the batch,
    whether each pair is same-class, and class logits. One backbone pass per image scores
    n(n-1)/2 pairs.

    With classes > 0 it carries a classifier over the training classes on the backbone features
    (`--class-loss`): linear, or a CosineClassifier with class_scale > 0 (`--class-scale`). A
    training aid that shapes the features and is never deployed. Without one the class logits
    are None."""

    def __init__(self, network, classes=0, *, class_scale=0.0, class_margin=0.0):
        super().__init__()
        self.network = network
        dim = network.config["feature_dim"]
        if not classes:
            self.classifier = None
        elif class_scale > 0:
            self.classifier = CosineClassifier(dim, classes, scale=class_scale, margin=class_margin)
        else:
            self.classifier = LinearClassifier(dim, classes)

    def forward(self, images, labels):
        features = self.network.embed(images)
        first, second = torch.triu_indices(len(images), len(images), offset=1, device=images.device)
        logits = self.network.score_features(features[first], features[second])
        class_logits = None if self.classifier is None else self.classifier(features, labels)
        return logits, labels[first] == labels[second], class_logits


def build_model(config, *, weights="none"):
    """Rebuild a network from the config stored in a checkpoint."""
    return SiameseNetwork(backbone=config["backbone"], features=config["features"], weights=weights,
                          image_size=config["image_size"], mean=config.get("mean"), std=config.get("std"),
                          dropout=config.get("dropout", 0.5), normalize=config.get("normalize", False),
                          flip_average=config.get("flip_average", False),
                          shift_average=config.get("shift_average", False))
