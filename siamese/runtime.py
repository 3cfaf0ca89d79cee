"""Deployed models: one interface over ONNX Runtime and TensorRT. No torch here.

    model = load_deployed_model("model.onnx")        # or "model.engine"
    model.preprocessing.load("a.png")                # the training code's evaluation transform
    model.predict(batch1, batch2)                    # (N, 3, H, W) float32 each -> (N,) similarity
    model.score_pairs([(path_a, path_b), ...])       # for the shared evaluation

Everything a runtime needs (image size, normalisation, threshold) comes from the model file's
metadata, or for a TensorRT engine from the ENGINE.json written beside it.
"""

import json
import math
import os
from functools import lru_cache

import numpy as np
from tqdm import tqdm

from .errors import UserError, check_batch_size
from .images import Preprocessing

INPUT_NAMES = ("img1", "img2")
OUTPUT_NAME = "similarity"
IMAGE_CACHE_BYTES = 512 * 2**20


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
    size = str(meta["siamese.image_size"])
    if not size.isdigit() or not 1 <= int(size) <= 8192:
        raise broken(f"image size {size!r} is not a whole number of pixels from 1 to 8192")
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


def check_interface(inputs, outputs, image_size, source):
    """The graph's own inputs and output (name -> shape, None for a dynamic dimension) against
    the deployed contract and the metadata's image size."""
    if sorted(inputs) != sorted(INPUT_NAMES):
        raise UserError(f"'{source}' has inputs {sorted(inputs)}, not img1 and img2; export it with torch_to_onnx.py")
    if list(outputs) != [OUTPUT_NAME]:
        raise UserError(f"'{source}' has outputs {list(outputs)}, not one named '{OUTPUT_NAME}'; export it with "
                        f"torch_to_onnx.py")
    for name, shape in inputs.items():
        if len(shape) != 4 or tuple(shape[1:]) != (3, image_size, image_size):
            raise UserError(f"'{source}' input {name} has shape {list(shape)}, but its metadata says "
                            f"(N, 3, {image_size}, {image_size}); the file was altered: export it again")
    shape = outputs[OUTPUT_NAME]
    if len(shape) != 2 or shape[1] != 1:
        raise UserError(f"'{source}' output {OUTPUT_NAME} has shape {list(shape)}, not (N, 1); export it again")


class DeployedModel:
    """Shared behaviour; subclasses set preprocessing, threshold, metadata, max_batch and predict()."""

    preprocessing: Preprocessing
    threshold = None
    metadata: dict
    max_batch = 64

    def predict(self, img1, img2):
        raise NotImplementedError

    def predict_batched(self, img1, img2):
        """predict() over any number of pairs, in batches the model accepts."""
        out = [self.predict(img1[i:i + self.max_batch], img2[i:i + self.max_batch]) for i in range(0, len(img1), self.max_batch)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def score_pairs(self, pairs, *, progress=False):
        """Similarities for (left path, right path) pairs; each image is decoded once while it
        stays in a cache of IMAGE_CACHE_BYTES."""
        size = self.preprocessing.image_size
        load = lru_cache(maxsize=max(64, IMAGE_CACHE_BYTES // (12 * size * size)))(self.preprocessing.load)
        scores = []
        for start in tqdm(range(0, len(pairs), self.max_batch), desc="pairs", unit="batch", disable=not progress, leave=False):
            chunk = pairs[start:start + self.max_batch]
            img1 = np.stack([load(a) for a, _ in chunk])
            img2 = np.stack([load(b) for _, b in chunk])
            scores.append(self.predict(img1, img2))
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)


class OnnxRuntimeModel(DeployedModel):
    def __init__(self, path, *, providers=None, batch_size=None):
        check_batch_size(batch_size)
        try:
            import onnxruntime
        except ImportError:
            raise UserError("running an .onnx model needs ONNX Runtime: pip install onnxruntime (or onnxruntime-gpu)") from None
        available = onnxruntime.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = onnxruntime.InferenceSession(path, providers=providers)
        except Exception as error:
            raise UserError(f"ONNX Runtime cannot load '{path}' ({str(error).strip().splitlines()[0][:200]}); "
                            f"give an .onnx file written by torch_to_onnx.py") from None
        self.preprocessing, self.threshold, self.metadata = parse_metadata(self.session.get_modelmeta().custom_metadata_map, path)

        def shape(value):  # symbolic dimensions (the batch) as None
            return [d if isinstance(d, int) else None for d in value.shape]

        check_interface({i.name: shape(i) for i in self.session.get_inputs()},
                        {o.name: shape(o) for o in self.session.get_outputs()}, self.preprocessing.image_size, path)
        self.max_batch = batch_size or 64  # on a CPU, batches of 4 to 64 pairs ran equally fast here
        self.providers = self.session.get_providers()

    def predict(self, img1, img2):
        out = self.session.run([OUTPUT_NAME], {"img1": np.ascontiguousarray(img1, np.float32),
                                               "img2": np.ascontiguousarray(img2, np.float32)})[0]
        return out.reshape(-1).astype(np.float32)


def engine_metadata_path(engine_path):
    return engine_path + ".json"


class TensorRTModel(DeployedModel):
    """A serialized TensorRT engine (10.x/11.x API) with device buffers sized for its largest batch."""

    def __init__(self, path, *, trt=None, cuda=None):
        from .trt import import_tensorrt, read_engine_metadata
        from .cuda_memory import default_cuda

        trt = trt or import_tensorrt()
        self.trt = trt
        meta = read_engine_metadata(path)
        self.preprocessing, self.threshold, self.metadata = parse_metadata(meta, engine_metadata_path(path))
        self.cuda = cuda or default_cuda()
        with open(path, "rb") as f:
            blob = f.read()
        self.logger = trt.Logger(trt.Logger.ERROR)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            here = f"TensorRT {trt.__version__} on {self.cuda.device_name()}"
            built = f"TensorRT {meta.get('tensorrt_version', '?')} on {meta.get('gpu', '?')}"
            raise UserError(f"cannot load engine '{path}': it was built with {built}, this is {here}; engines only run "
                            f"on the GPU model and TensorRT version that built them: rebuild it here with onnx_to_trt.py")
        self.context = self.engine.create_execution_context()
        self.tensors = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            self.tensors[name] = (self.engine.get_tensor_mode(name), np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))))
        if sorted(self.tensors) != sorted([*INPUT_NAMES, OUTPUT_NAME]):
            raise UserError(f"engine '{path}' has tensors {sorted(self.tensors)}, expected img1, img2 and similarity")
        self.min_batch, self.max_batch = int(meta.get("min_batch", 1)), int(meta["max_batch"])
        size = self.preprocessing.image_size
        self.shapes = {"img1": (3, size, size), "img2": (3, size, size), OUTPUT_NAME: (1,)}
        self.stream = self.cuda.create_stream()
        self.buffers = {name: self.cuda.malloc(self.max_batch * int(np.prod(shape)) * self.tensors[name][1].itemsize)
                        for name, shape in self.shapes.items()}
        for name, pointer in self.buffers.items():
            self.context.set_tensor_address(name, pointer)

    def predict(self, img1, img2):
        n = len(img1)
        if n > self.max_batch:
            return self.predict_batched(img1, img2)
        if n < self.min_batch:  # pad with repeats of the last pair: the profile refuses smaller batches
            img1, img2 = (np.concatenate([x, np.repeat(x[-1:], self.min_batch - n, axis=0)]) for x in (img1, img2))
        batch = len(img1)
        for name, array in (("img1", img1), ("img2", img2)):
            array = np.ascontiguousarray(array, dtype=self.tensors[name][1])
            if not self.context.set_input_shape(name, (batch, *self.shapes[name])):
                raise UserError(f"the engine does not accept a batch of {batch} (it was built for "
                                f"{self.metadata.get('min_batch')}-{self.max_batch})")
            self.cuda.copy_to_device(self.buffers[name], array, self.stream)
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        out_shape = tuple(self.context.get_tensor_shape(OUTPUT_NAME))
        out = np.empty(out_shape, dtype=self.tensors[OUTPUT_NAME][1])
        self.cuda.copy_to_host(out, self.buffers[OUTPUT_NAME], self.stream)
        self.cuda.synchronize(self.stream)
        return out.reshape(-1)[:n].astype(np.float32)

    def close(self):
        for pointer in getattr(self, "buffers", {}).values():
            self.cuda.free(pointer)
        self.buffers = {}

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def load_deployed_model(path, *, batch_size=None):
    """An .onnx file runs on ONNX Runtime; anything else is taken for a TensorRT engine."""
    if not path or not os.path.isfile(path):
        raise UserError(f"model file '{path}' does not exist; give an .onnx file or a TensorRT engine")
    with open(path, "rb") as f:
        head = f.read(4096)
    if path.lower().endswith(".onnx"):
        return OnnxRuntimeModel(path, batch_size=batch_size)
    if head[:1] == b"\x08" and b"pytorch" in head:  # an ONNX protobuf under another name
        return OnnxRuntimeModel(path, batch_size=batch_size)
    if head[:2] == b"PK" or b"format_version" in head[:200]:
        raise UserError(f"'{path}' looks like a PyTorch checkpoint; export it first with torch_to_onnx.py")
    return TensorRTModel(path)
