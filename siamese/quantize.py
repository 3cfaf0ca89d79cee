"""INT8 copies of an export: ONNX Runtime's static quantization in the QDQ format (QuantizeLinear /
DequantizeLinear pairs around each quantized operator), per-channel weights, activation ranges
calibrated on real images through the model's own preprocessing. The QDQ format is also what
TensorRT builds INT8 engines from (explicit quantization).

Each part is calibrated on what it sees: the embedder on images, the head on pairs of the float
embedder's features (each image with one same-class and one other-class partner), the pair
model on those pairs of images. The copies are then scored against the float export on classes
kept out of the calibration. No torch here.
"""

import contextlib
import logging
import os
import sys
import tempfile
from dataclasses import dataclass

import numpy as np

from .contract import INT8_TARGETS, int8_metadata, new_export_id, part_path
from .errors import UserError, shown_path
from .files import atomic_open, disk_error
from .images import scan_folder
from .lineage import derived_from
from .metrics import verification_metrics
from .pairs import all_pairs
from .scoring import score_pairs

# Entropy (KL) calibration is not offered: quantize_static runs it with as many histogram bins as
# quantized bins (128), which leaves one candidate range, the whole one: the same scales as
# minmax, bit for bit (measured on resnet18).
METHODS = ("minmax", "percentile")
CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class Quantization:
    """How to quantize: the calibration folder (ROOT/ClassName/image), how many of its images
    calibrate, by which method, for which runtime; whole classes of about check_images images are
    kept out of the calibration to check the copies on, drawn by seed."""

    calibration: str
    images: int = 200
    method: str = "minmax"
    target: str = "onnxruntime"
    check_images: int = 100
    seed: int = 0

    def validate(self):
        if self.method not in METHODS:
            raise UserError(f"--method must be one of {', '.join(METHODS)}, not '{self.method}'")
        if self.target not in INT8_TARGETS:
            raise UserError(f"--target must be one of {', '.join(INT8_TARGETS)}, not '{self.target}'")
        if self.images < 1 or self.check_images < 2:
            raise UserError("--calibration-images must be at least 1 and --check-images at least 2")


def split_images(quantization):
    """(calibration paths, the check folder): whole classes of at least check_images images kept
    out, and `images` images drawn from the other classes."""
    q = quantization
    folder = scan_folder(q.calibration, what="calibration folder")
    rng = np.random.default_rng(q.seed)
    by_class = folder.images_by_class()
    checked, count = [], 0
    for label in rng.permutation(len(folder.classes)):
        if count >= q.check_images and len(checked) >= 2:
            break
        checked.append(folder.classes[label])
        count += len(by_class[label])
    rest = [p for p, label in zip(folder.paths, folder.labels) if folder.classes[label] not in set(checked)]
    if len(rest) < q.images or len(checked) == len(folder.classes):
        raise UserError(f"calibration folder '{q.calibration}' has {len(folder)} images in {len(folder.classes)} "
                        f"classes; calibrating on {q.images} and checking on classes of {q.check_images} other images "
                        f"needs more: give a larger folder, or fewer --calibration-images or --check-images")
    calibration = [rest[i] for i in sorted(rng.choice(len(rest), q.images, replace=False))]
    return calibration, folder.subset(checked)


def _partners(paths, rng):
    """(left, right) index arrays: each image with a same-class partner (where its class has
    another image) and an other-class one."""
    classes = np.array([os.path.basename(os.path.dirname(p)) for p in paths])
    left, right = [], []
    for i, name in enumerate(classes):
        for candidates in (np.flatnonzero((classes == name) & (np.arange(len(paths)) != i)),
                           np.flatnonzero(classes != name)):
            if len(candidates):
                left.append(i)
                right.append(int(rng.choice(candidates)))
    return np.array(left), np.array(right)


def _batches(count):
    """Slices of equal size (at most CALIBRATION_BATCH) covering range(count): ONNX Runtime's
    percentile calibration cannot stack batches of different sizes."""
    size = max(d for d in range(1, CALIBRATION_BATCH + 1) if count % d == 0)
    return [slice(i, i + size) for i in range(0, count, size)]


def calibration_feeds(model, paths, seed=0):
    """{part: list of input dicts}: batches of what each part sees, from the calibration images."""
    images = np.stack([model.preprocessing.load(p) for p in paths])
    left, right = _partners(paths, np.random.default_rng(seed))
    features = model.embed(images)
    return {
        "embed": [{"images": images[s]} for s in _batches(len(images))],
        "head": [{"features1": features[left[s]], "features2": features[right[s]]} for s in _batches(len(left))],
        "pair": [{"img1": images[left[s]], "img2": images[right[s]]} for s in _batches(len(left))],
    }


def _activation_options(target):
    from onnxruntime.quantization import QuantType

    if target == "tensorrt":  # signed, symmetric: a zero point of 0; biases stay float, as TensorRT fuses them
        return dict(activation_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    return dict(activation_type=QuantType.QUInt8, extra_options={"WeightSymmetric": True})


@contextlib.contextmanager
def _output_discarded():
    """Standard output and error sent to the null device, as Python objects (print, tqdm) and as
    file descriptors (what native code writes), and restored after."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


@contextlib.contextmanager
def _tool_quiet(scratch):
    """While ONNX Runtime's quantization tool runs: its temporaries in `scratch` (tempfile's default
    folder), and its output kept off the terminal. It warns per tensor of what it handles itself,
    logs tracebacks of the failures it recovers from, or that end in the exception we report, and
    its histogram calibrators (percentile) print their progress."""
    root_log, quiet = logging.getLogger(), logging.NullHandler()
    level, system_temp = root_log.level, tempfile.tempdir
    root_log.setLevel(logging.ERROR)
    root_log.addHandler(quiet)  # a handler: Python's last resort no longer prints the records to stderr
    tempfile.tempdir = scratch
    try:
        with _output_discarded():
            yield
    finally:
        root_log.removeHandler(quiet)
        root_log.setLevel(level)
        tempfile.tempdir = system_temp


# ONNX Runtime's quantization tool writes up to this many copies of a part at once beside the out
# path (measured: a 44 MB part failed with 60 MB free, passed with 100 MB).
COPIES_WRITTEN = 3


def _quantization_error(error, source, written):
    """The one line for a failed quantization of `source` into `written`: a full disk names the out
    path; so does a failure with less room left there than the tool's copies need, as a truncated
    copy that ONNX Runtime wrote without a word fails later as a corrupt model. Anything else names
    the part that could not be quantized."""
    cause = error
    for _ in range(8):  # the OSError under the tool's own exceptions
        if cause is None or isinstance(cause, OSError):
            break
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError) and disk_error(cause, written):
        return disk_error(cause, written)
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    stats, needed = os.statvfs(os.path.dirname(os.path.abspath(written))), COPIES_WRITTEN * os.path.getsize(source)
    if stats.f_bavail * stats.f_frsize < needed:
        return UserError(f"ONNX Runtime could not quantize '{source}' ({first}): the device that holds "
                         f"'{shown_path(written)}' has {stats.f_bavail * stats.f_frsize / 1e6:.0f} MB free, and the "
                         f"quantization writes about {needed / 1e6:.0f} MB there: free some space and run again")
    return UserError(f"ONNX Runtime could not quantize '{source}' ({first}); the float export is unchanged")


def quantize_part(source, written, feeds, metadata, quantization):
    """Quantize the float ONNX file `source` into `written` (a temporary path), calibrated on
    `feeds`, with `metadata` in place of the source's."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.set_range(0, len(feeds))

        def __len__(self):
            return len(feeds)

        def set_range(self, start_index, end_index):
            self.batches = iter(feeds[start_index:end_index])

        def get_next(self):
            return next(self.batches, None)

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[quantization.method]
    options = _activation_options(quantization.target)
    # calibrate one batch at a time, merging its ranges or histograms into the others': the
    # percentile method otherwise keeps every activation of every batch until the end, which for a
    # model with test-time averaging is gigabytes per hundred images
    options["extra_options"]["CalibStridedMinMax"] = 1
    # beside the out path, with ONNX Runtime's own temporaries (ort.quant.*, pre.quant.*: tempfile's
    # default folder points there meanwhile): a killed run's are removed by the next run into it
    folder, name = os.path.split(os.path.abspath(written))
    try:
        with tempfile.TemporaryDirectory(prefix=name + ".scratch.", dir=folder) as scratch:
            prepared, quantized = os.path.join(scratch, "prepared.onnx"), os.path.join(scratch, "quantized.onnx")
            try:
                with _tool_quiet(scratch):
                    # shape inference and ONNX Runtime's basic fusions (BatchNorm into Conv) first, as
                    # its quantization tool recommends: fewer float operators between the quantized ones
                    quant_pre_process(source, prepared, skip_symbolic_shape=True)
                    quantize_static(prepared, quantized, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                    weight_type=QuantType.QInt8, calibrate_method=method, **options)
                    proto = onnx.load(quantized)
            except Exception as error:
                raise _quantization_error(error, source, written) from None
    except OSError as error:  # the scratch folder itself
        raise disk_error(error, written) or error from None
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    with atomic_open(written, "wb") as f:  # synced before it can take its out path
        f.write(proto.SerializeToString())


def quantize_export(model, written, quantization, *, log=print):
    """Write the INT8 copies of `model` (an OnnxRuntimeModel with its parts) to the temporary
    paths `written` ({part: path}); returns the calibration's paths and the check folder."""
    q = quantization
    calibration, check = split_images(q)
    log(f"calibrating on {len(calibration)} images of '{q.calibration}' ({q.method}, for {q.target}); checking on "
        f"{len(check)} images of {len(check.classes)} other classes")
    quantize_parts(model, written, calibration, q, log=log)
    return calibration, check


def quantize_parts(model, written, calibration, quantization, *, log=print):
    """Write the INT8 copies of `model`'s three parts to `written` ({part: path}), calibrated on
    the image paths `calibration`."""
    q = quantization
    feeds = calibration_feeds(model, calibration, seed=q.seed)
    parts = {"pair": model.pair, "embed": model.parts[0], "head": model.parts[1]}
    export_id = new_export_id()  # the copy's own: the parts of two copies (another seed) are not mixed
    for part in ("embed", "head", "pair"):
        source = part_path(model.path, part)
        metadata = int8_metadata(parts[part].metadata, target=q.target, calibration=os.path.abspath(q.calibration),
                                 images=len(calibration), method=q.method, export_id=export_id)
        metadata.update(derived_from(source, written[part], parts[part].metadata))  # refused once the source changes
        log(f"quantizing {source}")
        quantize_part(source, written[part], feeds[part], metadata, q)


def compare(float_model, int8_model, check):
    """Every pair of the check folder scored by both: {'pairs', 'max_difference', 'float': metrics,
    'int8': metrics}, metrics being ROC-AUC and EER."""
    pairs = all_pairs(check)
    paths, same = [(p.left, p.right) for p in pairs], [p.same for p in pairs]
    scores = {name: np.asarray(score_pairs(model, paths), np.float64) for name, model in
              (("float", float_model), ("int8", int8_model))}
    report = {"pairs": len(pairs), "max_difference": float(np.abs(scores["float"] - scores["int8"]).max())}
    for name, values in scores.items():
        metrics = verification_metrics(values, same)
        report[name] = {"auc": metrics["auc"], "eer": metrics["eer"]}
    return report
