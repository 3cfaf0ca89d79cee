"""Deployed models: one interface over ONNX Runtime and TensorRT. No torch here.

    model = load_deployed_model("model.onnx")        # or "model.engine"
    model.preprocessing.load("a.png")                # the training code's evaluation transform
    model.predict(batch1, batch2)                    # (N, 3, H, W) float32 each -> (N,) similarity
    model.embed(batch)                               # (N, 3, H, W) -> (N, D) features
    model.score_features(features1, features2)       # (N, D) each -> (N,) similarity
    score_pairs(model, [(path_a, path_b), ...])      # siamese.scoring: each image embedded once

An export is three files: MODEL.onnx (the pair model: the original toolkit's contract), and
MODEL.embed.onnx and MODEL.head.onnx (engines likewise: MODEL.engine, MODEL.embed.engine,
MODEL.head.engine). The parts are loaded on first use; an export without them still works, every
pair through the pair model.

Everything a runtime needs (image size, normalisation, threshold) comes from the model file's
metadata, or for a TensorRT engine from the ENGINE.json written beside it.
"""

import hashlib
import os
import sys
from functools import lru_cache

import numpy as np
from tqdm import tqdm

from .contract import (
    PARTS,
    check_interface,
    engine_metadata_path,
    feature_dim,
    parse_metadata,
    part_of,
    part_path,
    tensor_shapes,
)
from .errors import UserError, check_batch_size

IMAGE_CACHE_BYTES = 512 * 2**20
HEAD_BATCH = 4096  # pairs of features per head call: a small MLP, fast in big batches


def note(message):
    print(message, file=sys.stderr, flush=True)


class _Part:
    """One loaded file of a deployment: run({input name: array}) -> output, in batches it accepts."""

    part: str
    max_batch: int

    def run_batch(self, feeds):
        raise NotImplementedError

    def run(self, feeds):
        n = len(next(iter(feeds.values())))
        out = [self.run_batch({k: v[i:i + self.max_batch] for k, v in feeds.items()})
               for i in range(0, n, self.max_batch)]
        if not out:
            return np.zeros((0, *self.shapes[PARTS[self.part][1]]), np.float32)
        return np.concatenate(out)

    def close(self):
        pass


class _OnnxPart(_Part):
    def __init__(self, path, part, *, providers, batch_size):
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
        meta = self.session.get_modelmeta().custom_metadata_map
        self.preprocessing, self.threshold, self.metadata = parse_metadata(meta, path)
        self.part = part_of(meta, path)
        if self.part != part:
            raise UserError(f"'{path}' is the {self.part} part of an export, not the {part} model; give the model's "
                            f".onnx file (the one without .embed or .head in its name)")
        size = self.preprocessing.image_size
        dim = feature_dim(meta, path) if part != "pair" else None

        def shape(value):  # symbolic dimensions (the batch) as None
            return [d if isinstance(d, int) else None for d in value.shape]

        check_interface({i.name: shape(i) for i in self.session.get_inputs()},
                        {o.name: shape(o) for o in self.session.get_outputs()}, size, path, part, dim)
        self.shapes = tensor_shapes(part, size, dim)
        self.providers = self.session.get_providers()
        # On 2 CPU cores, batches of 4 to 64 pairs ran equally fast; unlike PyTorch, ONNX Runtime's
        # embedder was fastest at batch 64 at every size (resnet18: 61 images/s against 57 at batch 8
        # at 224 px, 673 against 548 at 64 px).
        default = {"pair": 64, "embed": 64, "head": HEAD_BATCH}[part]
        self.max_batch = batch_size or default

    def run_batch(self, feeds):
        arrays = {name: np.ascontiguousarray(array, np.float32) for name, array in feeds.items()}
        return self.session.run([PARTS[self.part][1]], arrays)[0].astype(np.float32, copy=False)


class DeployedModel:
    """A deployment: the pair model, and the embedder and head beside it when the export has them
    (loaded on first use, so scoring one pair loads one file). Subclasses give open_part()."""

    def __init__(self, path):
        self.path = path
        self.pair = self.open_part(path, "pair")
        self.preprocessing, self.threshold, self.metadata = self.pair.preprocessing, self.pair.threshold, self.pair.metadata
        self.max_batch = self.pair.max_batch
        self._parts = None  # (embedder, head), or False when the export has none

    def open_part(self, path, part):
        raise NotImplementedError

    def predict(self, img1, img2):
        """(N, 3, H, W) float32 each -> (N,) similarities, through the pair model."""
        return self.pair.run({"img1": img1, "img2": img2}).reshape(-1)

    @property
    def parts(self):
        """(embedder, head), or None for an export without them (with a one-line note, once)."""
        if self._parts is None:
            self._parts = self._open_parts() or False
        return self._parts or None

    def _open_parts(self):
        paths = [part_path(self.path, part) for part in ("embed", "head")]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            note(f"note: '{self.path}' has no {' and '.join(os.path.basename(p) for p in missing)} beside it, so every "
                 f"pair runs through the whole model; export it again with torch_to_onnx.py (and onnx_to_trt.py) to "
                 f"embed each image once, which is much faster")
            return None
        embedder, head = (self.open_part(p, part) for p, part in zip(paths, ("embed", "head")))
        mine = self.metadata.get("siamese.fingerprint")
        strangers = [p for p, other in zip(paths, (embedder, head)) if not mine or other.metadata.get("siamese.fingerprint") != mine]
        if strangers:
            note(f"note: ignoring {' and '.join(strangers)}: exported from another model than '{self.path}'; every pair "
                 f"runs through the whole model until the parts are exported again with it (torch_to_onnx.py)")
            return None
        return embedder, head

    def require_parts(self):
        """(embedder, head), or a UserError naming the export that lacks them."""
        if self.parts is None:
            raise UserError(f"'{self.path}' has no embedder and head beside it (export it again with torch_to_onnx.py, "
                            f"and build engines with onnx_to_trt.py)")
        return self.parts

    def embed(self, images):
        """(N, 3, H, W) float32 preprocessed images -> (N, D) features, through the embedder."""
        return self.require_parts()[0].run({"images": images})

    def score_features(self, features1, features2):
        """Two (N, D) batches of features -> (N,) similarities, through the head."""
        return self.require_parts()[1].run({"features1": features1, "features2": features2}).reshape(-1)

    def embed_paths(self, paths, *, progress=False):
        """Features (len(paths), D) of image files, each decoded and embedded once."""
        embedder = self.require_parts()[0]
        chunks = []
        for start in tqdm(range(0, len(paths), embedder.max_batch), desc="features", unit="batch",
                          disable=not progress, leave=False):
            images = np.stack([self.preprocessing.load(p) for p in paths[start:start + embedder.max_batch]])
            chunks.append(embedder.run({"images": images}))
        return np.concatenate(chunks) if chunks else np.zeros((0, *embedder.shapes["features"]), np.float32)

    @property
    def embeds(self):
        """Whether images are embedded once (the export has its parts), else scored pair by pair."""
        return self.parts is not None

    def index_key(self):
        """What features depend on (for gallery index files): the weights, preprocessing, precision."""
        fingerprint = self.metadata.get("siamese.fingerprint")
        if not fingerprint:
            raise UserError(f"'{self.path}' has no weights fingerprint (an export from an earlier version); export it "
                            f"again with torch_to_onnx.py to index a gallery with it")
        return f"{fingerprint}:{self.metadata.get('siamese.precision', 'fp32')}"

    def score_whole_pairs(self, pairs, *, progress=False):
        """Every pair through the pair model; each image is decoded once while it stays in a
        cache of IMAGE_CACHE_BYTES."""
        size = self.preprocessing.image_size
        load = lru_cache(maxsize=max(64, IMAGE_CACHE_BYTES // (12 * size * size)))(self.preprocessing.load)
        scores = []
        for start in tqdm(range(0, len(pairs), self.max_batch), desc="pairs", unit="batch", disable=not progress, leave=False):
            chunk = pairs[start:start + self.max_batch]
            img1 = np.stack([load(a) for a, _ in chunk])
            img2 = np.stack([load(b) for _, b in chunk])
            scores.append(self.predict(img1, img2))
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)

    def close(self):
        for part in (self.pair, *(self._parts or ())):
            part.close()


class OnnxRuntimeModel(DeployedModel):
    def __init__(self, path, *, providers=None, batch_size=None):
        check_batch_size(batch_size)
        self.providers_asked, self.batch_size = providers, batch_size
        super().__init__(path)
        self.providers = self.pair.providers

    def open_part(self, path, part):
        # --batch-size sets the images per call (pairs for the pair model); the head keeps its own batches
        return _OnnxPart(path, part, providers=self.providers_asked, batch_size=self.batch_size if part != "head" else None)


class _EnginePart(_Part):
    """A serialized TensorRT engine (10.x/11.x API) with device buffers sized for its largest batch."""

    def __init__(self, path, part, *, trt, cuda):
        from .trt import read_engine_metadata

        meta = read_engine_metadata(path)
        sidecar = engine_metadata_path(path)
        self.preprocessing, self.threshold, self.metadata = parse_metadata(meta, sidecar)
        self.part = part_of(meta, sidecar)
        if self.part != part:
            raise UserError(f"'{path}' is the {self.part} part of a deployment, not the {part} engine; give the "
                            f"model's engine (the one without .embed or .head in its name)")
        self.cuda, self.trt = cuda, trt
        with open(path, "rb") as f:
            blob = f.read()
        if meta.get("engine_sha256") not in (None, hashlib.sha256(blob).hexdigest()):
            raise UserError(f"'{sidecar}' describes another build than the engine '{path}' (an interrupted build or a "
                            f"copied file?); rebuild the engine with onnx_to_trt.py")
        self.logger = trt.Logger(trt.Logger.ERROR)
        try:
            self.runtime = trt.Runtime(self.logger)
        except TypeError:  # how the bindings report that TensorRT cannot initialise CUDA
            raise UserError("TensorRT cannot use a GPU on this machine (no usable NVIDIA GPU or driver); run the engine "
                            "on the GPU machine that built it, or the .onnx file with ONNX Runtime") from None
        here, built = f"TensorRT {trt.__version__} on {cuda.device_name()}", \
            f"TensorRT {meta.get('tensorrt_version', '?')} on {meta.get('gpu', '?')}"
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise UserError(f"cannot load engine '{path}': it was built with {built}, this is {here}; engines only run "
                            f"on the GPU model and TensorRT version that built them: rebuild it here with onnx_to_trt.py")
        if here != built and part == "pair":
            # TensorRT refuses only another compute capability or version; another GPU of the same
            # capability loads, with kernels tuned for the other one
            note(f"warning: engine '{path}' was built with {built} and runs with {here}; it works, but may be slower "
                 f"than one built here with onnx_to_trt.py")
        self.context = self.engine.create_execution_context()
        self.tensors = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            self.tensors[name] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
        names, output = PARTS[part]
        if sorted(self.tensors) != sorted([*names, output]):
            raise UserError(f"engine '{path}' has tensors {sorted(self.tensors)}, expected {', '.join([*names, output])}")
        self.min_batch, self.max_batch = int(meta.get("min_batch", 1)), int(meta["max_batch"])
        dim = feature_dim(meta, sidecar) if part != "pair" else None
        self.shapes = tensor_shapes(part, self.preprocessing.image_size, dim)
        self.stream = cuda.create_stream()
        self.buffers = {name: cuda.malloc(self.max_batch * int(np.prod(shape)) * self.tensors[name].itemsize)
                        for name, shape in self.shapes.items()}
        for name, pointer in self.buffers.items():
            self.context.set_tensor_address(name, pointer)

    def run_batch(self, feeds):
        n = len(next(iter(feeds.values())))
        if n < self.min_batch:  # pad with repeats of the last row: the profile refuses smaller batches
            feeds = {k: np.concatenate([x, np.repeat(x[-1:], self.min_batch - n, axis=0)]) for k, x in feeds.items()}
        batch = max(n, self.min_batch)
        for name, array in feeds.items():
            array = np.ascontiguousarray(array, dtype=self.tensors[name])
            if not self.context.set_input_shape(name, (batch, *self.shapes[name])):
                raise UserError(f"the engine does not accept a batch of {batch} (it was built for "
                                f"{self.min_batch}-{self.max_batch})")
            self.cuda.copy_to_device(self.buffers[name], array, self.stream)
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        output = PARTS[self.part][1]
        out = np.empty(tuple(self.context.get_tensor_shape(output)), dtype=self.tensors[output])
        self.cuda.copy_to_host(out, self.buffers[output], self.stream)
        self.cuda.synchronize(self.stream)
        return out[:n].astype(np.float32)

    def close(self):
        for pointer in getattr(self, "buffers", {}).values():
            self.cuda.free(pointer)
        self.buffers = {}

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class TensorRTModel(DeployedModel):
    """TensorRT engines: MODEL.engine, and MODEL.embed.engine and MODEL.head.engine beside it."""

    def __init__(self, path, *, trt=None, cuda=None):
        from .cuda_memory import default_cuda
        from .trt import import_tensorrt

        self.trt = trt or import_tensorrt()
        self.cuda = cuda or default_cuda()
        super().__init__(path)
        self.min_batch = self.pair.min_batch

    def open_part(self, path, part):
        return _EnginePart(path, part, trt=self.trt, cuda=self.cuda)


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
    if batch_size is not None:
        raise UserError(f"--batch-size applies to .onnx files on ONNX Runtime; the batches of the engine '{path}' were "
                        f"fixed when it was built (onnx_to_trt.py --max-batch): leave --batch-size out")
    return TensorRTModel(path)
