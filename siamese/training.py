"""Training: one epoch of pair training, and the whole run (validation, logs, checkpoints).

Randomness comes from generators seeded by (seed, epoch): pairs, augmentation, shuffling and
dropout, so a run resumed from last.pth continues exactly as if it had not stopped.
"""

import csv
import json
import math
import os
import re
import shutil
import sys
import time
import uuid

import torch
from torch.nn.functional import binary_cross_entropy_with_logits
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import distributed
from .checkpoint import atomic_save, build_checkpoint_model, load_checkpoint, make_checkpoint
from .data import TrainingImages, TrainingPairs, set_loader_epoch, training_loader
from .errors import UserError, check_at_least, check_batch_size, check_finite
from .evaluate import constant_scores_note, evaluate
from .files import atomic_open, check_not_inside, claim_folder, same_path
from .images import ImageFolder, scan_folder
from .model import AllPairs, SiameseNetwork, WeightAverage
from .pairs import evaluation_pairs
from .predict import TorchPredictor

LR_SCHEDULES = ("constant", "cosine", "step")
PAIRINGS = ("sampled", "in-batch")
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


def train_one_epoch(model, loader, optimizer, *, device, scaler, amp=False, channels_last=False,
                    progress=None, context=None, average=None, class_loss=0.0):
    """One pass over the loader; returns {'loss', 'accuracy', 'pairs', 'seconds'} over all ranks,
    and 'class_loss' when the model has a classifier.

    The loader yields sampled pairs (img1, img2, label) for a SiameseNetwork, or class-grouped
    images (images, labels) for an AllPairs model; then the loss and accuracy are balanced
    between same-class and different-class pairs, and an AllPairs classifier adds its
    cross-entropy times `class_loss` to the loss ('loss' reports the pair loss alone).
    progress advances by images; a WeightAverage is updated after every step."""
    context = context or distributed.Context(device=device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    class_loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    class_steps = 0
    start = time.perf_counter()
    for batch in loader:
        with distributed.autocast(device, amp):
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


def _check_out_path(out_path, resume, run_id):
    """Refuse an out path that holds another run's checkpoints: a new run never writes over a run,
    and a resumed one continues only in its own folder or in one that holds no run."""
    found = _checkpoints_in(out_path)
    if not found:
        return
    if not resume:
        raise UserError(f"output folder '{out_path}' already holds a training run ({', '.join(found)}); continue it "
                        f"with --resume {os.path.join(out_path, 'last.pth')}, or give another --out_path")
    for name in ("last.pth", "best.pth", found[0]):
        path = os.path.join(out_path, name)
        if os.path.exists(path):
            break
    if same_path(path, resume):
        return
    try:
        theirs = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("run_id")
    except Exception:
        theirs = None
    if theirs is None or theirs != run_id:
        raise UserError(f"output folder '{out_path}' holds another training run than '{resume}' ({', '.join(found)}); "
                        f"resume into the run's own folder or an empty one, so that neither run is overwritten")


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


def fit(*, train_path, val_path, out_path, backbone="resnet18", weights="imagenet", features="pooled",
        image_size=224, dropout=0.5, epochs=20, batch_size=32, learning_rate=1e-4, weight_decay=0.0, lr_schedule="constant",
        save_after=25, workers=2, device="auto", amp=False, channels_last=False, seed=0, resume=None,
        augment="full", jitter=0.0, erase=0.0, pairs_per_image=1, rotations=1, mirror_classes=False, pairing="sampled",
        images_per_class=4, ema=0.0, class_loss=0.0, val_pairs_per_image=1, eval_batch_size=None, normalize_features=False,
        run_args=None,
        log=print):
    """Train a Siamese network; returns the best validation metrics. Writes into out_path:
    best.pth, last.pth, epoch_N.pth, args.json, metrics.csv, tensorboard/.

    train_path and val_path are folders or scanned `ImageFolder`s (cross-validation passes
    subsets of classes). Without val_path nothing is validated: no epoch is picked, best.pth is
    not written, and last.pth (with the weight average under --ema) is the final model; the
    returned metrics are then {'epoch': None}."""
    context = distributed.setup(device)
    device = context.device
    if amp and device.type == "cpu" and not distributed.cpu_has_bfloat16() and context.is_main:
        log("note: --amp on this CPU: it has no bfloat16 instructions (avx512_bf16, amx_bf16), "
            "so mixed precision will likely run slower than without --amp")
    if epochs < 1 or batch_size < 2 or pairs_per_image < 1 or val_pairs_per_image < 1:
        raise UserError("--epochs, --pairs-per-image and --val-pairs-per-image must be at least 1, and --batch-size "
                        "at least 2 (BatchNorm needs two pairs)")
    if pairing not in PAIRINGS:
        raise UserError(f"--pairing must be one of {', '.join(PAIRINGS)}, got '{pairing}'")
    if not 0.0 <= ema < 1.0:
        raise UserError(f"--ema must be 0 (off) or a decay below 1 such as 0.999, got {ema}")
    check_batch_size(eval_batch_size, "--eval-batch-size")  # before the output folder is made
    check_at_least(workers, 0, "--workers")
    check_at_least(check_finite(weight_decay, "--weight-decay"), 0, "--weight-decay")
    check_finite(learning_rate, "-lr/--learning_rate")
    check_finite(class_loss, "--class-loss")
    check_at_least(seed, 0, "--seed")
    if not learning_rate > 0:
        raise UserError(f"-lr/--learning_rate must be above 0, not {learning_rate}")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"--dropout is a probability from 0 up to, not including, 1, not {dropout}")
    if pairing == "in-batch" and (images_per_class < 2 or batch_size < 2 * images_per_class):
        raise UserError(f"--pairing in-batch needs --images-per-class of at least 2 and --batch-size (images) of at least "
                        f"two classes' worth (2 x {images_per_class}); got {images_per_class} and {batch_size}")
    if not 0.0 <= jitter < 1.0:
        raise UserError(f"--jitter is a strength from 0 (off) up to, not including, 1 (0.4 draws factors from 0.6 to 1.4), "
                        f"got {jitter}")
    if not 0.0 <= erase <= 1.0:
        raise UserError(f"--erase is a probability between 0 and 1, got {erase}")
    if class_loss < 0 or (class_loss > 0 and pairing != "in-batch"):
        raise UserError(f"--class-loss must be 0 (off) or a positive weight, with --pairing in-batch (it needs each "
                        f"image's class); got {class_loss} with --pairing {pairing}")
    if mirror_classes and augment == "full":
        raise UserError("--mirror-classes needs --augment affine (or none): the flip of --augment full would mix "
                        "each class with its mirror class")
    checkpoint = load_checkpoint(resume) if resume else None
    run_id = (checkpoint or {}).get("run_id") or uuid.uuid4().hex  # which run a checkpoint belongs to
    _check_out_path(out_path, resume, run_id)  # again once the folder is claimed: another run may have started
    train_folder = train_path if isinstance(train_path, ImageFolder) else scan_folder(train_path, what="training folder")
    train_path = train_folder.root
    val_folder = val_pairs = None
    if val_path is not None:
        # decoded whole: a truncated validation image is found now, not after the first epoch
        val_folder = val_path if isinstance(val_path, ImageFolder) else scan_folder(val_path, what="validation folder",
                                                                                     decode=True)
        val_pairs = evaluation_pairs(val_folder, seed=seed, pairs_per_image=val_pairs_per_image)
        same = sum(pair.same for pair in val_pairs)
        if same in (0, len(val_pairs)):  # no ROC-AUC to pick the best epoch by
            raise UserError(f"the {len(val_pairs)} validation pairs drawn from '{val_folder.root}' are all "
                            f"{'different-class' if same == 0 else 'same-class'} pairs; choosing the best epoch needs "
                            f"both kinds: add validation images or raise --val-pairs-per-image")
    check_not_inside(out_path, [train_folder.root] + ([val_folder.root] if val_folder else []))

    torch.manual_seed(seed)  # initial weights of the head (and of the backbone with --weights none)
    if checkpoint is not None:
        model = build_checkpoint_model(checkpoint, resume, "training_model" if "training_model" in checkpoint else "model")
        start_epoch = checkpoint["epoch"] + 1
        if context.is_main:
            log(f"resuming from {resume} after epoch {checkpoint['epoch']}; the model settings come from it")
    else:
        # Rank 0 downloads ImageNet weights first; the others then read its cache.
        # (DistributedDataParallel copies rank 0's parameters to every rank.)
        if context.is_main:
            model = SiameseNetwork(backbone, features, weights=weights, image_size=image_size, dropout=dropout,
                                   normalize=normalize_features)
        distributed.barrier(context)
        if not context.is_main:
            model = SiameseNetwork(backbone, features, weights=weights, image_size=image_size, dropout=dropout,
                                   normalize=normalize_features)
        start_epoch = 1
    model.check_image_size()
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    augmentation = dict(augment=augment, jitter=jitter, erase=erase, rotations=rotations, mirror_classes=mirror_classes)
    if pairing == "in-batch":
        dataset = TrainingImages(train_folder, model.preprocessing, seed=seed, visits=pairs_per_image, **augmentation)
        train_model = AllPairs(model, classes=len(dataset.by_class) if class_loss > 0 else 0).to(device)
    else:
        dataset = TrainingPairs(train_folder, model.preprocessing, seed=seed, pairs_per_image=pairs_per_image,
                                **augmentation)
        train_model = model
    classifier = getattr(train_model, "classifier", None)
    if checkpoint is not None:
        _restore_classifier(classifier, checkpoint, resume)

    optimizer = torch.optim.Adam(train_model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scheduler = make_scheduler(optimizer, lr_schedule, epochs)
    scaler = distributed.grad_scaler(device, amp)
    best = {"auc": -1.0} if val_folder is not None else {"epoch": None}
    if checkpoint is not None:
        if checkpoint.get("optimizer"):
            optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scheduler"):
            scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        best = checkpoint.get("metrics", {}).get("best", best)
    if start_epoch > epochs:
        raise UserError(f"'{resume}' already finished epoch {start_epoch - 1}; raise --epochs above it to train further")

    try:
        loader = training_loader(dataset, batch_size=batch_size, workers=workers, device=device, seed=seed,
                                 num_replicas=context.world_size, rank=context.rank, images_per_class=images_per_class)
    except ValueError as error:
        raise UserError(f"--pairing in-batch: {error} in '{train_path}'; lower --images-per-class") from None
    if len(loader) == 0:
        raise UserError(f"'{train_path}' has too few images for one batch of {batch_size} per process; lower --batch-size")
    images_per_batch = (batch_size // images_per_class * images_per_class) if pairing == "in-batch" else 2 * batch_size
    if context.distributed:
        train_model = DistributedDataParallel(train_model, device_ids=[device.index] if device.type == "cuda" else None)
    average = None
    if ema > 0:
        average = WeightAverage(model, ema, steps=checkpoint.get("average_steps", 0) if checkpoint else 0)
        if checkpoint is not None:
            average.model.load_state_dict(checkpoint["model"])
    validated = model if average is None else average.model  # what best.pth holds
    predictor = TorchPredictor(validated, device=device, batch_size=eval_batch_size, workers=workers,
                               amp=amp, channels_last=channels_last)

    writer = claim = None
    metrics_path = os.path.join(out_path, "metrics.csv")
    try:
        if context.is_main:
            # Only once every input is known to be good (a bad one leaves no folder), and for the
            # whole run: a second run into this path is refused while this one lives.
            claim = claim_folder(out_path)
            from torch.utils.tensorboard import SummaryWriter

            _check_out_path(out_path, resume, run_id)
            _remove_unfinished_run(out_path, log)
            with atomic_open(os.path.join(out_path, "args.json"), "w") as f:
                json.dump(dict(run_args or {}, device=str(device), world_size=context.world_size, run_id=run_id), f,
                          indent=2)
            rows = _read_metric_rows(metrics_path, start_epoch)
            writer = SummaryWriter(os.path.join(out_path, "tensorboard"), purge_step=start_epoch)
            classes = f"{len(train_folder.classes)} classes"
            if len(dataset.by_class) > len(train_folder.classes):
                classes += f", {len(dataset.by_class)} with turned or mirrored copies"
            validation = (f"validating on {len(val_pairs)} pairs from {len(val_folder.classes)} classes" if val_folder else
                          "no validation: last.pth is the final model, best.pth is not written")
            log(f"training {model.config['backbone']} ({model.config['features']} features, {model.config['image_size']} px) on "
                f"{len(train_folder)} images in {classes} ({len(loader) * images_per_batch * context.world_size} images per "
                f"epoch, {pairing} pairs); {validation}; {context.world_size} process(es) on {device}")
        distributed.barrier(context)
        for epoch in range(start_epoch, epochs + 1):
            set_loader_epoch(loader, epoch)
            torch.manual_seed(seed * 100_003 + epoch)  # dropout draws depend on (seed, epoch) only
            learning_rate_now = optimizer.param_groups[0]["lr"]
            bar = tqdm(total=len(loader) * images_per_batch * context.world_size, desc=f"epoch {epoch}/{epochs}", unit="image",
                       disable=not context.is_main, leave=False, dynamic_ncols=True,
                       mininterval=0.5 if sys.stderr.isatty() else 60)  # logs to a file stay readable
            stats = train_one_epoch(train_model, loader, optimizer, device=device, scaler=scaler, amp=amp,
                                    channels_last=channels_last, progress=bar, context=context, average=average,
                                    class_loss=class_loss)
            bar.close()
            _check_finite_training(stats, validated, epoch, learning_rate, weight_decay)
            scheduler.step()
            if context.is_main:
                result = evaluate(predictor, val_pairs) if val_folder is not None else None
                m = result.metrics if result is not None else {}
                threshold = m.get("best_threshold")
                pairs_per_second = stats["pairs"] / stats["seconds"]
                row = {"epoch": epoch, "train_loss": stats["loss"], "train_accuracy": stats["accuracy"],
                       "val_loss": m.get("loss", ""), "val_accuracy": m.get("accuracy", ""), "val_auc": m.get("auc", ""),
                       "val_eer": m.get("eer", ""), "val_best_threshold": "" if threshold is None else threshold,
                       "learning_rate": learning_rate_now, "seconds": stats["seconds"],
                       "pairs_per_second": pairs_per_second, "train_class_loss": stats.get("class_loss", "")}
                rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
                _write_metric_rows(metrics_path, rows)
                for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auc", "val_eer",
                            "learning_rate", "pairs_per_second", "train_class_loss"):
                    if row[key] != "":
                        writer.add_scalar(key.replace("_", "/", 1), row[key], epoch)
                writer.flush()
                improved = result is not None and m["auc"] > best["auc"]
                if improved:
                    best = {"epoch": epoch, "auc": m["auc"], "eer": m["eer"], "threshold": threshold,
                            "accuracy": m["best_accuracy"]}
                state = make_checkpoint(model=validated, average=average, epoch=epoch, optimizer=optimizer,
                                        scheduler=scheduler, scaler=scaler, threshold=threshold,
                                        metrics={"train": stats, "val": m, "best": best}, args=run_args,
                                        classifier=classifier, run_id=run_id)
                if improved:
                    atomic_save(state, os.path.join(out_path, "best.pth"))
                atomic_save(state, os.path.join(out_path, "last.pth"))
                if save_after > 0 and epoch % save_after == 0:
                    atomic_save(state, os.path.join(out_path, f"epoch_{epoch}.pth"))
                class_part = f" class loss {stats['class_loss']:.4f}" if "class_loss" in stats else ""
                val_part = f"val loss {m['loss']:.4f} AUC {m['auc']:.4f} EER {m['eer']:.2%} | " if m else ""
                log(f"epoch {epoch}/{epochs}: loss {stats['loss']:.4f} acc {stats['accuracy']:.3f}{class_part} | "
                    f"{val_part}{pairs_per_second:.1f} pairs/s{'  *best' if improved else ''}")
                note = constant_scores_note(result.scores) if result is not None else None
                if note:
                    log(note)
            distributed.barrier(context)
    finally:
        if writer is not None:
            writer.close()
        distributed.cleanup(context)
        if claim is not None:
            claim.__exit__(None, None, None)
    return best
