"""The one checkpoint format: a plain dict that loads with torch.load(weights_only=True).

{format_version, config, model, optimizer, scheduler, scaler, epoch, threshold, metrics, args,
run_id, training_images}
`config` rebuilds the network with no flags. With a weight average (train.py --ema), `model` is
the averaged network, `training_model` the one the optimizer steps and `average_steps` the
average's step count, for --resume. `training_images` (uint8, N x lineage.KEY_BYTES, sorted)
holds the content key of each training image, so that an evaluation can say when it scores
images the model learned; checkpoints written before it lack it and load as ever. Files are
written to a temporary name and renamed, so an interrupted save never leaves a half-written
checkpoint.
"""

import io
import math
import os
import threading

import numpy as np
import torch

from .errors import UserError
from .files import atomic_open, temporary_beside
from .lineage import KEY_BYTES
from .options import MAX_IMAGE_SIZE

FORMAT_VERSION = 1


def atomic_save(obj, path):
    """Serialise in memory, then write: a Ctrl-C or a full disk then interrupts a plain file write
    (KeyboardInterrupt, OSError) instead of torch's writer, which turns both into an opaque
    RuntimeError; the file at path stays as it was either way."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_open(path, "wb") as f:
        f.write(buffer.getbuffer())


class CheckpointWriter:
    """Checkpoints of a training run, each serialised at once (the state as it is now) and
    written in the background while the next epoch trains: write() waits for the previous
    write and raises its error, if any; close() waits for the last. Each file is written as
    atomic_save writes it, so a kill at any moment leaves every name whole (the earlier file or
    the new one). Each name is a file of its own (never a link to another): a file copied over
    best.pth, or edited in place, leaves last.pth as it was."""

    def __init__(self):
        self._thread, self._error = None, None

    def write(self, obj, paths):
        self.wait()
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        self._thread = threading.Thread(target=self._write, args=(buffer, list(paths)), name="checkpoint writer")
        self._thread.start()

    def _write(self, buffer, paths):
        try:
            for path in paths:
                with atomic_open(path, "wb") as f:
                    f.write(buffer.getbuffer())
        except BaseException as error:  # raised in the training thread, at the next write or close
            self._error = error

    def wait(self):
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error


def make_checkpoint(*, model, epoch, optimizer=None, scheduler=None, scaler=None, threshold=None, metrics=None, args=None,
                    average=None, classifier=None, run_id=None, training_images=None):
    """The checkpoint dict; its keyword arguments are its fields, one each. average: a
    model.WeightAverage; then `model` holds its averaged weights. classifier: the --class-loss
    classifier, kept only to resume training (it is not part of the model). training_images: the
    training images' lineage.content_keys."""
    extra = {}
    if average is not None:
        extra = {"training_model": average.network.state_dict(), "average_steps": average.steps}
    if classifier is not None:
        extra["classifier"] = classifier.state_dict()
    if training_images is not None:
        extra["training_images"] = keys_tensor(training_images)
    return {
        "format_version": FORMAT_VERSION,
        "config": dict(model.config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": int(epoch),
        "threshold": None if threshold is None else float(threshold),
        "metrics": dict(metrics or {}),
        "args": dict(args or {}),
        "run_id": run_id,
        **extra,
    }


def keys_tensor(keys):
    """Content keys (bytes of KEY_BYTES) as the checkpoint stores them: distinct, sorted, one row each."""
    data = b"".join(sorted(set(keys)))
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy()).reshape(-1, KEY_BYTES)


def training_keys(checkpoint):
    """The set of content keys of the images a checkpoint was trained on, or None when it does
    not record them (written before it did, or by the original toolkit)."""
    recorded = checkpoint.get("training_images")
    if not isinstance(recorded, torch.Tensor) or recorded.dtype != torch.uint8 or recorded.dim() != 2 \
            or recorded.shape[1] != KEY_BYTES:
        return None
    data = recorded.contiguous().numpy().tobytes()
    return {data[i:i + KEY_BYTES] for i in range(0, len(data), KEY_BYTES)}


def _from_original(data):
    """Checkpoints of the original toolkit: {backbone, model_state_dict, optimizer_state_dict, epoch}.

    Its network used the ImageNet classifier's outputs as features ('logits' mode) at 224 px.
    """
    from .images import Preprocessing

    state = data["model_state_dict"]
    return {
        "format_version": FORMAT_VERSION,
        "config": {"backbone": data["backbone"], "features": "logits", "dropout": 0.5, **Preprocessing().to_dict()},
        "model": state,
        "optimizer": None,  # the original's optimizer covered a head ending in Sigmoid; start afresh
        "scheduler": None,
        "scaler": None,
        "epoch": int(data.get("epoch", 0)),
        "threshold": None,
        "metrics": {},
        "args": {},
        "converted_from": "original",
    }


def load_checkpoint(path):
    if not path or not os.path.isfile(path):
        raise UserError(f"checkpoint '{path}' does not exist; give a .pth file written by train.py")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"'{path}' is not a readable checkpoint ({type(error).__name__}); give a .pth file written by train.py") from None
    if isinstance(data, dict) and "format_version" in data:
        version = data["format_version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise _altered(path, f"its format_version is {version!r}, not a whole number")
        if version > FORMAT_VERSION:
            raise UserError(f"checkpoint '{path}' has format {version}, newer than this toolkit reads ({FORMAT_VERSION}); update the toolkit")
        _check_config(data, path)
        return data
    if isinstance(data, dict) and "model_state_dict" in data and "backbone" in data:
        return _from_original(data)
    raise UserError(f"'{path}' is a PyTorch file but not a checkpoint of this toolkit; give a .pth file written by train.py")


def _altered(path, why):
    return UserError(f"checkpoint '{path}' cannot be used: {why}; it was altered or damaged, so use one as train.py wrote it")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_config(data, path):
    """The recorded model settings, checked before anything is built from them."""
    config = data.get("config")
    if not isinstance(config, dict):
        raise _altered(path, "it has no model config")
    if not isinstance(config.get("backbone"), str) or config.get("features") not in ("pooled", "logits"):
        raise _altered(path, f"its config names backbone {config.get('backbone')!r} with features {config.get('features')!r}")
    size = config.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_IMAGE_SIZE:
        raise _altered(path, f"its image_size is {size!r}, not a whole number of pixels from 1 to {MAX_IMAGE_SIZE}")
    for key in ("mean", "std"):
        values = config.get(key)
        if not (isinstance(values, (list, tuple)) and len(values) == 3 and all(_is_number(v) for v in values)):
            raise _altered(path, f"its {key} is {values!r}, not three numbers (one per colour channel)")
    if any(v <= 0 for v in config["std"]):
        raise _altered(path, f"its std {config['std']} has a value at or below 0")
    dropout = config.get("dropout", 0.5)
    if not _is_number(dropout) or not 0 <= dropout < 1:
        raise _altered(path, f"its dropout is {dropout!r}, not a probability below 1")
    if not isinstance(data.get("model"), dict) or not isinstance(data.get("epoch", 0), int):
        raise _altered(path, "its weights or epoch are missing")


def build_checkpoint_model(checkpoint, path, key="model"):
    """The network the checkpoint's config describes, holding its weights `key` (`model`, or
    `training_model` for a run to resume); a UserError when they do not fit each other."""
    from .model import build_model

    model = build_model(checkpoint["config"])
    expected, state = model.state_dict(), checkpoint[key]
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    reshaped = [name for name in expected if name in state and tuple(state[name].shape) != tuple(expected[name].shape)]
    if missing or unexpected or reshaped:
        found = [f"{len(names)} {what} (such as {names[0]})" for names, what in
                 ((missing, "weights missing"), (unexpected, "unexpected"), (reshaped, "of another shape")) if names]
        raise UserError(f"checkpoint '{path}' does not match its recorded model {checkpoint['config'].get('backbone')}: "
                        f"{', '.join(found)}; it was altered or damaged, so use one as train.py wrote it")
    broken = [name for name, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise UserError(f"checkpoint '{path}' holds weights that are not finite numbers (NaN or infinity) in "
                        f"{len(broken)} tensor(s), such as {broken[0]}: it comes from a training run that diverged; "
                        f"use an earlier checkpoint, or train again with a lower -lr")
    model.load_state_dict(state)
    return model


def load_model(path, *, device="cpu"):
    """(network in eval mode on device, checkpoint dict) from a checkpoint file."""
    checkpoint = load_checkpoint(path)
    return build_checkpoint_model(checkpoint, path).to(device).eval(), checkpoint
