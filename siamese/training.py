"""Training: one epoch of pair training, and the whole run (validation, logs, checkpoints).

Randomness comes from generators seeded by (seed, epoch): pairs, augmentation, shuffling and
dropout, so a run resumed from last.pth continues exactly as if it had not stopped.
"""

import csv
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass

import torch
from torch.nn.functional import binary_cross_entropy_with_logits
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import device as devices
from . import distributed
from .batch_augment import augments_on_device, on_device
from .checkpoint import CheckpointWriter, build_checkpoint_model, load_checkpoint, make_checkpoint, training_keys
from .data import Augmentation, TrainingImages, TrainingPairs, set_loader_epoch, training_loader
from .errors import UserError
from .evaluate import constant_scores_note, evaluate
from .metrics import threshold_at_far
from .files import atomic_open, check_not_inside, claim_folder, same_path
from .image_cache import image_cache
from .images import ImageFolder, scan_folder
from .content import shared_content
from .model import AllPairs, SiameseNetwork, WeightAverage
from .pairs import evaluation_pairs
from .predict import TorchPredictor
from .settings import LR_SCHEDULES, TrainingSettings, flag

METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auc", "val_eer",
                  "val_best_threshold", "learning_rate", "seconds", "pairs_per_second", "train_class_loss"]


def make_scheduler(optimizer, schedule, epochs):
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    if schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    raise UserError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got '{schedule}'")


def balanced_weights(same):
    """Per-pair weights that give same-class and different-class pairs half the loss each, as the
    0.5 rule does for sampled pairs; they average 1."""
    n = same.numel()
    positives = same.sum().clamp(min=1)
    negatives = (n - same.sum()).clamp(min=1)
    return torch.where(same, n / (2.0 * positives), n / (2.0 * negatives))


def _forward_batch(model, batch, *, device, memory_format):
    """(logits, targets, weights, class logits or None, class labels or None) for a batch of
    sampled pairs or of class-grouped images."""
    if len(batch) == 3:  # img1, img2, label
        img1, img2, label = batch
        img1 = img1.to(device, non_blocking=True, memory_format=memory_format)
        img2 = img2.to(device, non_blocking=True, memory_format=memory_format)
        label = label.to(device, non_blocking=True)
        return model(img1, img2), label, torch.ones_like(label), None, None
    images, labels = batch  # model is AllPairs
    images = images.to(device, non_blocking=True, memory_format=memory_format)
    labels = labels.to(device, non_blocking=True)
    logits, same, class_logits = model(images, labels)
    return logits, same.float(), balanced_weights(same), class_logits, labels


def train_one_epoch(model, loader, optimizer, *, scaler, settings, context, progress=None, average=None):
    """One pass over the loader on context.device, with settings' amp, channels_last and
    class_loss; returns {'loss', 'accuracy', 'pairs', 'seconds'} over all ranks, and
    'class_loss' when the model has a classifier.

    The loader yields sampled pairs (img1, img2, label) for a SiameseNetwork, or class-grouped
    images (images, labels) for an AllPairs model; then the loss and accuracy are balanced
    between same-class and different-class pairs, and an AllPairs classifier adds its
    cross-entropy times `class_loss` to the loss ('loss' reports the pair loss alone).
    progress advances by images; a WeightAverage is updated after every step."""
    device, amp, class_loss = context.device, settings.amp, settings.class_loss
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    class_loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    class_steps = 0
    start = time.perf_counter()
    for batch in loader:
        with devices.autocast(device, amp):
            logits, label, weight, class_logits, classes = _forward_batch(model, batch, device=device,
                                                                          memory_format=memory_format)
        per_pair = binary_cross_entropy_with_logits(logits.float(), label, reduction="none")
        loss = (per_pair * weight).sum() / weight.sum()
        if class_logits is not None:
            cross_entropy = torch.nn.functional.cross_entropy(class_logits.float(), classes)
            loss = loss + class_loss * cross_entropy
            class_loss_sum += cross_entropy.detach()
            class_steps += 1
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if average is not None:
            average.update()
        # Sums stay on the device: no synchronisation per step. Weighted as in the loss, so with
        # in-batch pairs they are balanced between same-class and different-class pairs.
        loss_sum += (per_pair.detach() * weight).sum()
        correct += (((logits.detach() >= 0) == (label >= 0.5)) * weight).sum()
        count += weight.sum()
        if progress is not None:
            images = sum(len(tensor) for tensor in batch[:-1])  # everything but the labels
            progress.update(images * context.world_size)
    loss_sum, correct, count, class_loss_sum, class_steps = distributed.all_reduce_sum(
        [loss_sum.item(), correct.item(), count.item(), class_loss_sum.item(), class_steps], context)
    stats = {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1), "pairs": int(round(count)),
             "seconds": time.perf_counter() - start}
    if class_steps:
        stats["class_loss"] = class_loss_sum / class_steps
    return stats


def _restore_classifier(classifier, checkpoint, resume):
    """Resume the --class-loss classifier, which must be there exactly when the run had one."""
    if ("classifier" in checkpoint) != (classifier is not None):
        had = "with" if "classifier" in checkpoint else "without"
        raise UserError(f"'{resume}' was trained {had} --class-loss; resume it {had} --class-loss")
    if classifier is not None:
        saved = checkpoint["classifier"]["weight"].shape[0]
        if saved != classifier.out_features:
            raise UserError(f"'{resume}' classified {saved} training classes, but this run has {classifier.out_features}; "
                            f"resume on the same training folder with the same --rotations and --mirror-classes")
        if set(checkpoint["classifier"]) != set(classifier.state_dict()):  # a linear one has a bias
            raise UserError(f"'{resume}' was trained with another --class-scale; resume it with the same --class-scale")
        classifier.load_state_dict(checkpoint["classifier"])


def _read_metric_rows(path, before_epoch):
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["epoch"]) < before_epoch]


def _write_metric_rows(path, rows):
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


CHECKPOINT_NAME = re.compile(r"(last|best|epoch_\d+)\.pth$")
RUN_FILES = ("args.json", "metrics.csv", "tensorboard")  # what a run writes besides its checkpoints


def _checkpoints_in(out_path):
    return sorted(n for n in os.listdir(out_path) if CHECKPOINT_NAME.match(n)) if os.path.isdir(out_path) else []


def _check_out_path(out_path, resume, run_id, checkpoint=None):
    """Refuse an out path that holds another run's checkpoints: a new run never writes over a run,
    and a resumed one continues only in its own folder or in one that holds no run (checkpoint:
    the resumed one, whose run the folder's best.pth must be)."""
    found = _checkpoints_in(out_path)
    if not found:
        return
    if not resume:
        raise UserError(f"output folder '{out_path}' already holds a training run ({', '.join(found)}); continue it "
                        f"with --resume {os.path.join(out_path, 'last.pth')}, or give another -o/--out")
    for name in ("last.pth", "best.pth", found[0]):
        path = os.path.join(out_path, name)
        if os.path.exists(path):
            break
    if not same_path(path, resume):
        theirs = _checkpoint_run_id(path)
        if theirs is None or theirs != run_id:
            raise UserError(f"output folder '{out_path}' holds another training run than '{resume}' "
                            f"({', '.join(found)}); resume into the run's own folder or an empty one, so that "
                            f"neither run is overwritten")
    recorded = _recorded_run_id(out_path)
    if recorded is not None and recorded != run_id:  # a checkpoint copied in from another run, even as last.pth
        raise UserError(f"'{resume}' belongs to run {run_id}, but '{os.path.join(out_path, 'args.json')}' records run "
                        f"{recorded}: the checkpoint comes from another run; continue it into a new folder (another "
                        f"-o/--out), so that neither run is overwritten")
    _check_best(out_path, resume, checkpoint)


def _checkpoint_run_id(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("run_id")
    except Exception:
        return None


def _check_best(out_path, resume, checkpoint):
    """Refuse to resume into a folder whose best.pth is another run's (copied in): it would be
    kept, or replaced, as if it were this run's best epoch."""
    best = os.path.join(out_path, "best.pth")
    if checkpoint is None or not os.path.isfile(best) or same_path(best, resume):
        return
    if _checkpoint_run_id(best) != checkpoint.get("run_id"):
        raise UserError(f"'{best}' belongs to another training run than '{resume}'; move it away, or resume into "
                        f"another -o/--out, so that neither run is overwritten")


def best_checkpoint(out_path, resume, run_id, best, start_epoch):
    """The best.pth that holds the best epoch `best` names: this run's in out_path, or the
    resumed run's (beside `resume`), or None where none holds it (the best epoch came before the
    resume and its best.pth is not in either folder)."""
    if best.get("epoch") is None:
        return None
    for folder in [out_path] + ([os.path.dirname(resume)] if resume else []):
        path = os.path.join(folder, "best.pth")
        if os.path.isfile(path) and (best["epoch"] >= start_epoch and folder == out_path
                                     or _checkpoint_run_id(path) == run_id):
            return path
    return None


def _recorded_run_id(out_path):
    """The run_id that out_path's args.json records, or None (no args.json, or one from before run ids)."""
    try:
        with open(os.path.join(out_path, "args.json")) as f:
            recorded = json.load(f).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, str) else None


def check_resumable(checkpoint, resume, *, fresh_optimizer=False, log=print):
    """Refuse to resume a checkpoint without the optimiser's or the schedule's state (removed, or
    a model of the original toolkit): Adam's moments and the learning rate would start afresh
    while the epochs go on. With fresh_optimizer the run goes on, with a warning saying so.
    checkpoint: the one to resume, or None for a new run."""
    missing = [name for name in ("optimizer", "scheduler") if checkpoint is not None and not checkpoint.get(name)]
    if not missing:
        return
    what, epoch = " and ".join(missing), checkpoint["epoch"] + 1
    if not fresh_optimizer:
        raise UserError(f"'{resume}' holds no {what} state (removed from it, or not written by train.py), so resuming "
                        f"would restart the {what} (Adam's moments, the learning-rate schedule) at epoch {epoch}; "
                        f"resume a last.pth that holds it, or pass --fresh-optimizer to continue with a fresh {what}")
    if log is not None:
        log(f"warning: '{resume}' holds no {what} state: --fresh-optimizer continues at epoch {epoch} with a fresh "
            f"{what} (Adam's moments, the learning-rate schedule), so this run differs from an uninterrupted one")


def _remove_unfinished_run(out_path, log):
    """A run stopped before its first checkpoint leaves logs with nothing to continue: a new run
    replaces them (there is nothing to protect) instead of refusing the folder."""
    left = [name for name in RUN_FILES if os.path.lexists(os.path.join(out_path, name))]
    if left and not _checkpoints_in(out_path):
        for name in left:
            path = os.path.join(out_path, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        log(f"note: removed {', '.join(left)} of an earlier run in '{out_path}' that stopped before its first checkpoint")


def _check_finite_training(stats, model, epoch, learning_rate, weight_decay):
    """Stop before a diverged epoch is saved: a checkpoint with NaN weights must never replace a good one."""
    broken = not math.isfinite(stats["loss"]) or not math.isfinite(stats.get("class_loss", 0.0)) or any(
        value.is_floating_point() and not torch.isfinite(value).all() for value in model.state_dict().values())
    if broken:
        raise UserError(f"training diverged in epoch {epoch}: the loss or the weights became NaN or infinite, most "
                        f"likely from a learning rate ({learning_rate:g}) or weight decay ({weight_decay:g}) too large; "
                        f"nothing of epoch {epoch} was saved: lower -lr (e.g. 1e-4) and train again, or --resume the "
                        f"last good last.pth")


@dataclass
class _Data:
    train: ImageFolder
    train_keys: list  # content.content_keys of the training images (and the resumed run's), recorded in the checkpoints
    val: ImageFolder | None = None
    val_pairs: list | None = None


def check_disjoint(train, train_keys, val, *, shown=3, earlier=(), resume=None):
    """Refuse a validation folder that holds images of the training folder, known by their content
    (the same folder twice, train/ and val/ both trained on, a class linked or copied into both):
    best.pth and the threshold would be chosen on images the model learned. earlier: the content
    keys that the resumed checkpoint `resume` records (images it learned before, in any folder)."""
    known = dict.fromkeys(earlier, f"an image '{resume}' was trained on")
    known.update(zip(train_keys, train.paths))
    shared = shared_content(val.paths, known, keys=val.image_keys())
    if shared:
        examples = ", ".join(f"'{path}' ({twin})" if twin not in train.paths else
                             f"'{path}' (as '{twin}')" if os.path.realpath(path) != os.path.realpath(twin)
                             else f"'{path}'" for path, twin in shared[:shown])
        raise UserError(f"validation folder '{val.root}' shares {len(shared)} of its {len(val)} images with the "
                        f"training data (the same file content), such as {examples}: best.pth and the threshold would "
                        f"be chosen on images the model learned; give a --val-path whose images are not in --train-path")


def _read_data(settings, train, val, *, earlier=(), resume=None):
    """The training folder, and the validation folder with its fixed pairs (folders or scanned
    `ImageFolder`s: cross-validation passes subsets of classes). earlier: the training images
    that the resumed checkpoint records; the record written keeps them beside this run's."""
    if val is None and settings.threshold_at_far:
        raise UserError("--threshold-at-far calibrates on the validation pairs: give --val-path, or for a final model "
                        "without one, --threshold with the one crossval.py --threshold-at-far found")
    train = train if isinstance(train, ImageFolder) else scan_folder(train, what="training folder")
    train_keys = train.image_keys()  # the scan's: each image is hashed once
    recorded = list(dict.fromkeys([*earlier, *train_keys]))  # every image the model was ever trained on, once
    if val is None:
        return _Data(train, recorded)
    # decoded whole: a truncated validation image is found now, not after the first epoch
    val = val if isinstance(val, ImageFolder) else scan_folder(val, what="validation folder", decode=True)
    check_disjoint(train, train_keys, val, earlier=earlier, resume=resume)
    pairs = evaluation_pairs(val, seed=settings.seed, pairs_per_image=settings.val_pairs_per_image)
    same = sum(pair.same for pair in pairs)
    if same in (0, len(pairs)):  # no ROC-AUC to pick the best epoch by
        raise UserError(f"the {len(pairs)} validation pairs drawn from '{val.root}' are all "
                        f"{'different-class' if same == 0 else 'same-class'} pairs; choosing the best epoch needs "
                        f"both kinds: add validation images or raise --val-pairs-per-image")
    return _Data(train, recorded, val, pairs)


def _build_model(settings, checkpoint, resume, context, log):
    """The network (new, or as resumed) on the device, and the first epoch to train."""
    torch.manual_seed(settings.seed)  # initial weights of the head (and of the backbone with --weights none)
    if checkpoint is not None:
        model = build_checkpoint_model(checkpoint, resume, "training_model" if "training_model" in checkpoint else "model")
        start_epoch = checkpoint["epoch"] + 1
        if context.is_main:
            log(f"resuming from {resume} after epoch {checkpoint['epoch']}; the model settings come from it")
            for line in _kept_settings_notes(settings, checkpoint):
                log(line)
    else:
        def build():
            return SiameseNetwork(settings.backbone, settings.features, weights=settings.weights,
                                  image_size=settings.image_size, dropout=settings.dropout,
                                  normalize=settings.normalize_features, flip_average=settings.flip_average,
                                  shift_average=settings.shift_average)

        # Rank 0 downloads ImageNet weights first; the others then read its cache.
        # (DistributedDataParallel copies rank 0's parameters to every rank.)
        model = distributed.on_main(context, build)
        if model is None:
            model = build()
        start_epoch = 1
    if start_epoch > settings.epochs:
        raise UserError(f"'{resume}' already finished epoch {start_epoch - 1}; raise --epochs above it to train further")
    model.check_image_size()
    model.to(context.device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, start_epoch


def _training_set(settings, model, train_folder, device, checkpoint, resume):
    """The training images or pairs, and the module trained on them (the network itself, or with
    --pairing in-batch the network scoring every pair of a batch, with its classifier)."""
    cache, cache_line = image_cache(train_folder.paths, model.preprocessing, budget_mb=settings.cache_mb,
                                    shared=settings.workers > 0)
    images = dict(augmentation=Augmentation.from_settings(settings), cache=cache, uint8=augments_on_device(device))
    if settings.pairing == "in-batch":
        dataset = TrainingImages(train_folder, model.preprocessing, seed=settings.seed, visits=settings.pairs_per_image,
                                 **images)
        train_model = AllPairs(model, classes=len(dataset.by_class) if settings.class_loss > 0 else 0,
                               class_scale=settings.class_scale, class_margin=settings.class_margin).to(device)
    else:
        dataset = TrainingPairs(train_folder, model.preprocessing, seed=settings.seed,
                                pairs_per_image=settings.pairs_per_image, **images)
        train_model = model
    dataset.cache_line = cache_line
    if checkpoint is not None:
        _restore_classifier(getattr(train_model, "classifier", None), checkpoint, resume)
    return dataset, train_model


# What a resumed run takes from its checkpoint rather than from the command line: the network,
# and the optimiser's and schedule's state (learning rate and weight decay included).
RESUMED_SETTINGS = ("backbone", "features", "image_size", "dropout", "normalize_features", "flip_average",
                    "shift_average", "learning_rate", "weight_decay", "lr_schedule")


def _kept_settings_notes(settings, checkpoint):
    """A line for each setting given now that the resumed run does not use, so that a changed
    --learning-rate (say) is never silently ignored."""
    recorded = checkpoint.get("args") or {}
    return [f"note: {flag(name)} {getattr(settings, name)} is not used: the resumed run keeps its own "
            f"{recorded[name]} (start a new run, -o elsewhere, to change it)"
            for name in RESUMED_SETTINGS if name in recorded and recorded[name] != getattr(settings, name)]


def _paths(value):
    return [value] if isinstance(value, str) else list(value or [])


def _resumed_record(record, checkpoint, resume, log):
    """The record of a run resumed on other training folders keeps the folders it trained on
    before ('earlier_train_path'), as its checkpoints keep those images: args.json names every
    folder the model learned from. Says so in a note, as a setting the resumed run does not use is named."""
    recorded = (checkpoint or {}).get("args") or {}
    now = _paths(record.get("train_path"))
    earlier = [path for path in dict.fromkeys(_paths(recorded.get("earlier_train_path"))
                                              + _paths(recorded.get("train_path"))) if path not in now]
    if not earlier or checkpoint is None:
        return record
    if log is not None and set(_paths(recorded.get("train_path"))) != set(now):
        log(f"note: '{resume}' was trained on {', '.join(map(repr, _paths(recorded.get('train_path'))))}; this run "
            f"trains on {', '.join(map(repr, now))}: validation is checked against the images of both, and the "
            f"checkpoints and args.json record both")
    return dict(record, earlier_train_path=earlier)


def _optimisation(settings, train_model, device, checkpoint, validating):
    """Optimiser, schedule, gradient scaler and the best validation so far (as resumed)."""
    optimizer = torch.optim.Adam(train_model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = make_scheduler(optimizer, settings.lr_schedule, settings.epochs)
    scaler = devices.grad_scaler(device, settings.amp)
    best = {"auc": -1.0} if validating else {"epoch": None}
    if checkpoint is not None:
        for name, part in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
            if checkpoint.get(name):
                part.load_state_dict(checkpoint[name])
        best = checkpoint.get("metrics", {}).get("best", best)
    return optimizer, scheduler, scaler, best


def _loader(settings, dataset, device, context, train_root):
    """The training batches of this process, and the images the whole run sees per epoch."""
    try:
        loader = training_loader(dataset, batch_size=settings.batch_size, workers=settings.workers, device=device,
                                 seed=settings.seed, num_replicas=context.world_size, rank=context.rank,
                                 images_per_class=settings.images_per_class)
    except ValueError as error:
        raise UserError(f"--pairing in-batch: {error} in '{train_root}'; lower --images-per-class") from None
    if len(loader) == 0:
        raise UserError(f"'{train_root}' has too few images for one batch of {settings.batch_size} per process; "
                        f"lower --batch-size")
    loader = on_device(loader, dataset, device=device, seed=settings.seed, rank=context.rank)
    per_batch = (settings.batch_size // settings.images_per_class * settings.images_per_class
                 if settings.pairing == "in-batch" else 2 * settings.batch_size)
    return loader, len(loader) * per_batch * context.world_size


def _weight_average(settings, model, checkpoint):
    if settings.ema <= 0:
        return None
    average = WeightAverage(model, settings.ema, steps=checkpoint.get("average_steps", 0) if checkpoint else 0)
    if checkpoint is not None:
        average.model.load_state_dict(checkpoint["model"])
    return average


class _RunFolder:
    """The out folder of the main process: claimed for the whole run, args.json, metrics.csv and
    TensorBoard, one row per epoch."""

    def __init__(self, out_path, record, *, start_epoch, resume, log):
        self.out_path, self.record = out_path, record
        self.metrics_path = os.path.join(out_path, "metrics.csv")
        # Only once every input is known to be good (a bad one leaves no folder), and for the
        # whole run: a second run into this path is refused while this one lives.
        self.claim = claim_folder(out_path)
        try:
            from torch.utils.tensorboard import SummaryWriter

            _check_out_path(out_path, resume, record["run_id"])
            _remove_unfinished_run(out_path, log)
            with atomic_open(os.path.join(out_path, "args.json"), "w") as f:
                json.dump(record, f, indent=2)
            self.rows = _read_metric_rows(self.metrics_path, start_epoch)
            self.writer = SummaryWriter(os.path.join(out_path, "tensorboard"), purge_step=start_epoch)
            self.checkpoints = CheckpointWriter()
        except BaseException:
            self.claim.__exit__(None, None, None)
            raise

    def add(self, row):
        self.rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        _write_metric_rows(self.metrics_path, self.rows)
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auc", "val_eer",
                    "learning_rate", "pairs_per_second", "train_class_loss"):
            if row[key] != "":
                self.writer.add_scalar(key.replace("_", "/", 1), row[key], row["epoch"])
        self.writer.flush()

    def save(self, state, names):
        """One checkpoint under these names, written while the next epoch trains (see CheckpointWriter)."""
        self.checkpoints.write(state, [os.path.join(self.out_path, name) for name in names])

    def close(self):
        try:
            self.checkpoints.wait()
        finally:
            self.writer.close()
            self.claim.__exit__(None, None, None)


def _start_line(settings, model, data, dataset, images_per_epoch, context):
    classes = f"{len(data.train.classes)} classes"
    if len(dataset.by_class) > len(data.train.classes):
        classes += f", {len(dataset.by_class)} with turned or mirrored copies"
    validation = (f"validating on {len(data.val_pairs)} pairs from {len(data.val.classes)} classes" if data.val else
                  "no validation: last.pth is the final model, best.pth is not written")
    return (f"training {model.config['backbone']} ({model.config['features']} features, {model.config['image_size']} px) "
            f"on {len(data.train)} images in {classes} ({images_per_epoch} images per epoch, {settings.pairing} pairs); "
            f"{validation}; {context.world_size} process(es) on {context.device}")


@dataclass
class _Run:
    """What the epoch loop trains and saves."""
    settings: TrainingSettings
    model: SiameseNetwork
    train_model: torch.nn.Module  # the model, AllPairs around it, or either in DistributedDataParallel
    classifier: torch.nn.Module | None
    average: WeightAverage | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    run_id: str
    record: dict

    @property
    def validated(self):
        """What is validated and saved as best.pth: the weight average under --ema, else the model."""
        return self.model if self.average is None else self.average.model


def _train_epoch(run, loader, epoch, images_per_epoch, context):
    settings = run.settings
    set_loader_epoch(loader, epoch)
    torch.manual_seed(settings.seed * 100_003 + epoch)  # dropout draws depend on (seed, epoch) only
    bar = tqdm(total=images_per_epoch, desc=f"epoch {epoch}/{settings.epochs}", unit="image",
               disable=not context.is_main, leave=False, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 60)  # logs to a file stay readable
    stats = train_one_epoch(run.train_model, loader, run.optimizer, scaler=run.scaler, settings=settings,
                            context=context, progress=bar, average=run.average)
    bar.close()
    _check_finite_training(stats, run.validated, epoch, settings.learning_rate, settings.weight_decay)
    return stats


def stored_threshold(settings, result):
    """The threshold saved with the model: --threshold as given; else calibrated on the validation
    pairs (`result`), at --threshold-at-far or at the best accuracy; else None."""
    if settings.threshold is not None:
        return settings.threshold
    if result is None or "auc" not in result.metrics:
        return None
    if settings.threshold_at_far:
        return threshold_at_far(result.scores, result.labels, settings.threshold_at_far)["threshold"]
    return result.metrics["best_threshold"]


def _finish_epoch(run, epoch, stats, best, *, predictor, data, folder, log):
    """Validate, record the epoch's row, save the checkpoints and say how it went; returns the best
    so far. stats: train_one_epoch's, with the epoch's 'learning_rate'."""
    result = evaluate(predictor, data.val_pairs) if data.val is not None else None
    m = result.metrics if result is not None else {}
    threshold = stored_threshold(run.settings, result)
    pairs_per_second = stats["pairs"] / stats["seconds"]
    folder.add({"epoch": epoch, "train_loss": stats["loss"], "train_accuracy": stats["accuracy"],
                "val_loss": m.get("loss", ""), "val_accuracy": m.get("accuracy", ""), "val_auc": m.get("auc", ""),
                "val_eer": m.get("eer", ""), "val_best_threshold": m.get("best_threshold", ""),
                "learning_rate": stats["learning_rate"], "seconds": stats["seconds"],
                "pairs_per_second": pairs_per_second, "train_class_loss": stats.get("class_loss", "")})
    improved = result is not None and m["auc"] > best["auc"]
    if improved:
        best = {"epoch": epoch, "auc": m["auc"], "eer": m["eer"], "threshold": threshold, "accuracy": m["best_accuracy"]}
    state = make_checkpoint(model=run.validated, average=run.average, epoch=epoch, optimizer=run.optimizer,
                            scheduler=run.scheduler, scaler=run.scaler, threshold=threshold,
                            metrics={"train": stats, "val": m, "best": best}, args=run.record,
                            classifier=run.classifier, run_id=run.run_id, training_images=data.train_keys)
    every = run.settings.save_after > 0 and epoch % run.settings.save_after == 0
    # best.pth before last.pth, as ever: a run stopped between the two resumes at the epoch before
    folder.save(state, ["best.pth"] * improved + ["last.pth"] + [f"epoch_{epoch}.pth"] * every)
    class_part = f" class loss {stats['class_loss']:.4f}" if "class_loss" in stats else ""
    val_part = f"val loss {m['loss']:.4f} AUC {m['auc']:.4f} EER {m['eer']:.2%} | " if m else ""
    log(f"epoch {epoch}/{run.settings.epochs}: loss {stats['loss']:.4f} acc {stats['accuracy']:.3f}{class_part} | "
        f"{val_part}{pairs_per_second:.1f} pairs/s{'  *best' if improved else ''}")
    note = constant_scores_note(result.scores) if result is not None else None
    if note:
        log(note)
    return best


def _for_device(settings, device, log):
    """The settings as they run on `device` (channels_last chosen), once every device-dependent
    choice is known to work there (--amp, --compile): one line before anything is written.
    Sets up cuDNN and TF32 on a GPU."""
    if settings.amp:
        devices.amp_dtype(device)
        if device.type == "cpu" and not devices.cpu_has_bfloat16() and log is not None:
            log("note: --amp on this CPU: it has no bfloat16 instructions (avx512_bf16, amx_bf16), "
                "so mixed precision will likely run slower than without --amp")
    if settings.compile:
        devices.check_compile(device)
    devices.configure_cuda(device, settings.tf32)
    return dataclasses.replace(settings, channels_last=devices.channels_last_for(device, settings.channels_last))


def _log_compile_time(module, optimizer, device, log):
    """Say how long the first optimizer step took, most of it compiling (forward and backward)."""
    if log is None:
        return
    start = {}
    pre = module.register_forward_pre_hook(lambda *_: start.setdefault("t", time.perf_counter()) and None)  # args kept

    def after_step(*_):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        log(f"torch.compile: the first training step, compiling included, took {time.perf_counter() - start['t']:.1f} s")
        pre.remove()
        post.remove()

    post = optimizer.register_step_post_hook(after_step)


def fit(settings, *, train, val=None, out_path, resume=None, record=None, log=print, fresh_optimizer=False):
    """Train a Siamese network with `settings` (a TrainingSettings) on the train folder; returns the
    best validation metrics. Writes into out_path: best.pth, last.pth, epoch_N.pth, args.json (the
    settings, beside `record`: what else describes the run, such as its folders), metrics.csv and
    tensorboard/.

    train and val are folders or scanned `ImageFolder`s. Without val nothing is validated: no
    epoch is picked, best.pth is not written, and last.pth (with the weight average under --ema)
    is the final model; the returned metrics are then {'epoch': None}. Under torchrun the main
    process returns them and the others None, so that what the run found is reported once.
    fresh_optimizer: resume a checkpoint without optimiser or schedule state (check_resumable)."""
    context = distributed.setup(settings.device)
    device = context.device
    recorded, settings = settings.to_dict(), _for_device(settings, device, log if context.is_main else None)
    checkpoint = load_checkpoint(resume) if resume else None
    check_resumable(checkpoint, resume, fresh_optimizer=fresh_optimizer, log=log if context.is_main else None)
    run_id = (checkpoint or {}).get("run_id") or uuid.uuid4().hex  # which run a checkpoint belongs to
    _check_out_path(out_path, resume, run_id, checkpoint)  # again once the folder is claimed: another run may start
    data = _read_data(settings, train, val, earlier=training_keys(checkpoint or {}) or (), resume=resume)
    check_not_inside(out_path, data.train.folders + (data.val.folders if data.val else []))

    model, start_epoch = _build_model(settings, checkpoint, resume, context, log)
    dataset, train_model = _training_set(settings, model, data.train, device, checkpoint, resume)
    classifier = getattr(train_model, "classifier", None)
    optimizer, scheduler, scaler, best = _optimisation(settings, train_model, device, checkpoint,
                                                       validating=data.val is not None)
    loader, images_per_epoch = _loader(settings, dataset, device, context, data.train.root)
    if context.distributed:
        train_model = DistributedDataParallel(train_model, device_ids=[device.index] if device.type == "cuda" else None)
    run = _Run(settings, model, train_model, classifier, _weight_average(settings, model, checkpoint), optimizer,
               scheduler, scaler, run_id,
               record=dict(_resumed_record(record or {}, checkpoint, resume, log if context.is_main else None),
                           **recorded, ran_on=str(device), world_size=context.world_size, run_id=run_id))
    if settings.compile:
        run.train_model = devices.compile_module(train_model, device, log=log if context.is_main else None)
        _log_compile_time(run.train_model, optimizer, device, log if context.is_main else None)
    predictor = TorchPredictor(run.validated, device=device, batch_size=settings.eval_batch_size,
                               workers=settings.workers, amp=settings.amp, channels_last=settings.channels_last,
                               compile=settings.compile, cache_images=True)

    folder = None
    try:
        # What only the main process does (claim the folder, validate, save) is refused or fails on
        # every process at once (distributed.on_main): none is left waiting for it.
        folder = distributed.on_main(context, lambda: _RunFolder(out_path, run.record, start_epoch=start_epoch,
                                                                 resume=resume, log=log))
        if context.is_main:
            log(_start_line(settings, model, data, dataset, images_per_epoch, context))
            log(dataset.cache_line)
        for epoch in range(start_epoch, settings.epochs + 1):
            learning_rate = optimizer.param_groups[0]["lr"]
            stats = dict(_train_epoch(run, loader, epoch, images_per_epoch, context), learning_rate=learning_rate)
            scheduler.step()
            best = distributed.on_main(context, lambda: _finish_epoch(run, epoch, stats, best, predictor=predictor,
                                                                      data=data, folder=folder, log=log))
    finally:
        if folder is not None:
            folder.close()
        distributed.cleanup(context)
    return dict(best, path=best_checkpoint(out_path, resume, run_id, best, start_epoch)) if context.is_main else None
