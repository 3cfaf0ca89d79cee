"""The deployed contract, in one leaf module that the exporter, the runtimes and the engine
builder all read: the parts and their tensors, where each file of a deployment lies, and the
metadata written into every file and parsed back (each key written and read here, side by side).
No torch, no other module of the toolkit but errors and images.
"""

import io
import json
import math
import os
import uuid

from .errors import UserError
from .images import Preprocessing
from .options import MAX_IMAGE_SIZE

# The deployed parts: name -> (input names, output name). The pair model is the original
# toolkit's contract; the embedder and the head beside it let each image be embedded once.
PARTS = {"pair": (("img1", "img2"), "similarity"),
         "embed": (("images",), "features"),
         "head": (("features1", "features2"), "similarity")}


def part_path(path, part):
    """MODEL.embed.onnx and MODEL.head.onnx beside MODEL.onnx (engines likewise)."""
    if part == "pair":
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.{part}{ext}"


PART_NAMES = {"embed": "embedder", "head": "head"}


def export_holding(path):
    """(the export's pair model, its part) when `path` is where an export beside it keeps a part
    (MODEL.embed.onnx beside MODEL.onnx; engines likewise), else None."""
    root, ext = os.path.splitext(path)
    for part in PART_NAMES:
        pair = root[:-len(part) - 1] + ext
        if root.endswith("." + part) and os.path.isfile(pair):
            return pair, part
    return None


def engine_metadata_path(engine_path):
    return engine_path + ".json"


def _varint(f):
    value = shift = 0
    while shift < 64:
        byte = f.read(1)
        if not byte:
            raise ValueError("the file ends inside a field")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
    raise ValueError("a malformed number")


def _fields(f, end):
    """(field number, bytes) of the length-delimited fields of ONNX_METADATA_FIELDS in a protobuf
    message ending at offset `end`; every other field is skipped unread."""
    while f.tell() < end:
        tag = _varint(f)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _varint(f)
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
        elif wire == 2:
            length = _varint(f)
            if field in ONNX_METADATA_FIELDS:
                yield field, f.read(length)
            else:
                f.seek(length, os.SEEK_CUR)
        else:
            raise ValueError(f"wire type {wire}")
    if f.tell() != end:
        raise ValueError("a field runs past the end of the file")


# ModelProto.metadata_props is field 14, each a StringStringEntryProto of key (1) and value (2)
ONNX_METADATA_FIELDS = (14, 1, 2)


def onnx_metadata(path):
    """The metadata of an ONNX file ({key: value}), as ONNX Runtime's custom_metadata_map gives it,
    read without loading the model (the weights are skipped) and without the onnx package, which
    a deployment machine need not have."""
    meta = {}
    try:
        with open(path, "rb") as f:
            for field, entry in _fields(f, os.fstat(f.fileno()).st_size):
                if field == 14:
                    inner = dict(_fields(io.BytesIO(entry), len(entry)))
                    meta[inner.get(1, b"").decode()] = inner.get(2, b"").decode()
    except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
        raise UserError(f"cannot read '{path}' as an ONNX file ({error}); export the model again with "
                        f"torch_to_onnx.py") from None
    return meta


FORMAT_VERSION = "1"
FIXED = {"siamese.channel_order": "RGB", "siamese.layout": "NCHW"}  # what every runtime feeds
# The keys that may differ between the files of one export: the rest are one model's, alike in all.
PER_PART = ("siamese.part", "siamese.derived_from")
# One id per export, written into each of its files when they are made (the float export, each
# INT8 copy of it, and carried into the engines built from them), so the parts of two exports of
# one model (another opset, another calibration seed) are never mixed. Files without it (exports
# of earlier versions) have nothing to compare and are used as before.
EXPORT_ID = "siamese.export_id"


def new_export_id():
    return uuid.uuid4().hex


def model_metadata(config, *, threshold, opset, fp16, part="pair", model_fingerprint="", export_id=None):
    """String key/values stored in the ONNX file (and beside a TensorRT engine)."""
    return {
        "siamese.format_version": FORMAT_VERSION,
        "siamese.part": part,
        "siamese.fingerprint": model_fingerprint,
        **({EXPORT_ID: export_id} if export_id else {}),
        "siamese.backbone": config["backbone"],
        "siamese.features": config["features"],
        "siamese.feature_dim": str(config["feature_dim"] * (2 if config.get("flip_average") else 1)),
        "siamese.flip_average": "1" if config.get("flip_average") else "0",
        "siamese.shift_average": "1" if config.get("shift_average") else "0",
        "siamese.image_size": str(config["image_size"]),
        "siamese.mean": json.dumps(list(config["mean"])),
        "siamese.std": json.dumps(list(config["std"])),
        **FIXED,
        "siamese.threshold": "" if threshold is None else repr(float(threshold)),
        "siamese.opset": str(opset),
        "siamese.precision": "fp16" if fp16 else "fp32",
    }


# What INT8 weights and activations look like for each runtime: ONNX Runtime's CPU kernels run
# unsigned 8-bit activations with a zero point fast (signed symmetric ones ran at float32 speed
# here); TensorRT accepts only signed symmetric ones (a zero point of 0).
INT8_TARGETS = ("onnxruntime", "tensorrt")


def int8_metadata(meta, *, target, calibration, images, method, export_id):
    """An fp32 part's metadata for its INT8 copy: the precision, the runtime it was quantized for,
    the calibration set (folder, image count, method) and the copy's own export id."""
    return {**meta, EXPORT_ID: export_id, "siamese.precision": "int8", "siamese.int8_target": target,
            "siamese.calibration": calibration, "siamese.calibration_images": str(images),
            "siamese.calibration_method": method}


def int8_target(meta):
    """The runtime an INT8 file was quantized for, None for a float file."""
    return meta.get("siamese.int8_target") if meta.get("siamese.precision") == "int8" else None


def _numbers(text, count):
    values = json.loads(text)
    if not (isinstance(values, list) and len(values) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
        raise ValueError(f"{text!r} is not {count} numbers")
    return tuple(float(v) for v in values)


def parse_metadata(meta, source):
    """Metadata strings (from ONNX or ENGINE.json) -> (Preprocessing, threshold or None, dict),
    each value checked: an edited file is refused in one line, not run on nonsense."""
    def broken(why):
        return UserError(f"'{source}' has unusable metadata: {why}; export the model again with torch_to_onnx.py "
                         f"(and build engines with onnx_to_trt.py)")

    missing = [key for key in ("siamese.image_size", "siamese.mean", "siamese.std") if key not in meta]
    if missing:
        raise UserError(f"'{source}' lacks the toolkit's preprocessing metadata ({', '.join(missing)}); "
                        f"export it with torch_to_onnx.py (and build engines with onnx_to_trt.py)")
    version = meta.get("siamese.format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"'{source}' is in export format version {version!r}, and this toolkit reads version "
                        f"{FORMAT_VERSION} only; export the model again with this toolkit's torch_to_onnx.py (and "
                        f"build engines with onnx_to_trt.py)")
    for key, value in FIXED.items():  # what the runtimes feed, whatever a file says
        if meta.get(key, value) != value:
            raise broken(f"{key[len('siamese.'):]} {meta[key]!r} is not {value}, the only one the runtimes feed")
    size = str(meta["siamese.image_size"])
    if not size.isdigit() or not 1 <= int(size) <= MAX_IMAGE_SIZE:
        raise broken(f"image size {size!r} is not a whole number of pixels from 1 to {MAX_IMAGE_SIZE}")
    try:
        mean, std = _numbers(meta["siamese.mean"], 3), _numbers(meta["siamese.std"], 3)
    except ValueError as error:
        raise broken(f"mean or std: {error} (one per colour channel)") from None
    if min(std) <= 0:
        raise broken(f"std {list(std)} has a value at or below 0")
    threshold = meta.get("siamese.threshold") or None
    if threshold is not None:
        try:
            threshold = float(threshold)
        except ValueError:
            raise broken(f"threshold {threshold!r} is not a number") from None
        if not 0.0 <= threshold <= 1.0:
            raise broken(f"threshold {threshold} is not between 0 and 1")
    return Preprocessing(int(size), mean, std), threshold, dict(meta)


def part_of(meta, source):
    part = meta.get("siamese.part", "pair")  # exports before the parts were pair models
    if part not in PARTS:
        raise UserError(f"'{source}' has unusable metadata: part {part!r} is none of {', '.join(PARTS)}; export the "
                        f"model again with torch_to_onnx.py")
    return part


def feature_dim(meta, source):
    dim = str(meta.get("siamese.feature_dim", ""))
    if not dim.isdigit() or int(dim) < 1:
        raise UserError(f"'{source}' has unusable metadata: feature size {dim!r} is not a whole number of at least 1; "
                        f"export the model again with torch_to_onnx.py")
    return int(dim)


def tensor_shapes(part, image_size, feature_dim=None):
    """name -> shape after the batch dimension, for a part's inputs and output."""
    image, features = (3, image_size, image_size), (feature_dim,)
    names, output = PARTS[part]
    shapes = {name: features if part == "head" else image for name in names}
    shapes[output] = features if part == "embed" else (1,)
    return shapes


def check_interface(inputs, outputs, image_size, source, part="pair", feature_dim=None):
    """The graph's own inputs and output (name -> shape, None for a dynamic dimension) against
    the deployed contract of its part and the metadata's sizes."""
    names, output = PARTS[part]
    if sorted(inputs) != sorted(names):
        raise UserError(f"'{source}' has inputs {sorted(inputs)}, not {' and '.join(names)}; export it with "
                        f"torch_to_onnx.py")
    if list(outputs) != [output]:
        raise UserError(f"'{source}' has outputs {list(outputs)}, not one named '{output}'; export it with "
                        f"torch_to_onnx.py")
    expected = tensor_shapes(part, image_size, feature_dim)
    for name, shape in {**inputs, **outputs}.items():
        if len(shape) != 1 + len(expected[name]) or tuple(shape[1:]) != expected[name]:
            raise UserError(f"'{source}' {name} has shape {list(shape)}, but its metadata says "
                            f"(N, {', '.join(map(str, expected[name]))}); the file was altered: export it again")


def check_parts_agree(path, meta, parts):
    """Refuse parts ({path: metadata}) of an export whose metadata differs from the pair model's
    (at `path`, with `meta`) in anything but PER_PART: edited files, or files of different exports."""
    for part_path_, part_meta in parts.items():
        if meta.get(EXPORT_ID) != part_meta.get(EXPORT_ID):
            raise UserError(f"'{part_path_}' is not of the export of '{path}' (export id {part_meta.get(EXPORT_ID)!r}, "
                            f"not {meta.get(EXPORT_ID)!r}): files of two exports were mixed; make the export again as "
                            f"it was made (torch_to_onnx.py, then onnx_to_int8.py or onnx_to_trt.py)")
        for key in sorted(k for k in {*meta, *part_meta} if k.startswith("siamese.") and k not in PER_PART):
            if meta.get(key) != part_meta.get(key):
                raise UserError(f"'{part_path_}' and '{path}' disagree on {key[len('siamese.'):]} "
                                f"({part_meta.get(key)!r} against {meta.get(key)!r}): files of one export were edited "
                                f"or mixed with another's; export the model again with torch_to_onnx.py (and build "
                                f"engines with onnx_to_trt.py)")
