"""TensorRT (10.x and 11.x API only): building engines from the exported ONNX parts, and running
them (TensorRTModel, a DeployedModel; runtime.load_deployed_model opens one by its file).

No torch here. The `trt` module (and the CUDA memory helper) are parameters, so the control flow
is tested without a GPU against a fake TensorRT.
"""

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from .contract import PARTS, engine_metadata_path, feature_dim, int8_target, parse_metadata, part_of, tensor_shapes
from .cuda_memory import default_cuda
from .deployed import DeployedModel, Part, note
from .errors import UserError, check_at_least, import_optional
from .files import atomic_open
from .lineage import derived_from, sha256_of


def import_tensorrt():
    return import_optional("tensorrt", "TensorRT is not installed: pip install tensorrt (needs an NVIDIA GPU and driver), "
                                       "or run the .onnx file with ONNX Runtime instead")


def read_engine_metadata(engine_path):
    path = engine_metadata_path(engine_path)
    if not os.path.isfile(engine_path):
        raise UserError(f"engine '{engine_path}' does not exist")
    if not os.path.isfile(path):
        raise UserError(f"'{path}' is missing: it holds the engine's preprocessing; keep it beside the engine or rebuild "
                        f"the engine with onnx_to_trt.py")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read engine metadata '{path}' ({error}); rebuild the engine with onnx_to_trt.py") from None


def _onnx_facts(onnx_path):
    """(metadata dict, input element type name) without loading the weights into memory twice."""
    import onnx

    model = onnx.load(onnx_path, load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "siamese.image_size" not in meta:
        raise UserError(f"'{onnx_path}' lacks the toolkit's metadata; export it with torch_to_onnx.py")
    elem = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    return meta, {n: onnx.TensorProto.DataType.Name(t) for n, t in elem.items()}


def _attach_timing_cache(config, timing_cache, log):
    """The timing cache from the file, or a fresh one when TensorRT refuses it (a cache from other
    hardware or another TensorRT version): set_timing_cache returns False then and attaches nothing."""
    data = open(timing_cache, "rb").read() if os.path.isfile(timing_cache) else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        log(f"warning: TensorRT did not accept the timing cache '{timing_cache}' (made on other hardware or another "
            f"TensorRT version); building with a fresh one, which replaces it")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)


@dataclass(frozen=True)
class EngineBuild:
    """How an engine is built (onnx_to_trt.py's options): FP16, the builder's workspace in MiB,
    the batch profile, and a timing cache file reused and updated across builds."""

    fp16: bool = False
    workspace_mib: int = 2048
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    timing_cache: str = None

    def check(self):
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise UserError(f"need 1 <= --min-batch <= --opt-batch <= --max-batch, got {self.min_batch}, "
                            f"{self.opt_batch}, {self.max_batch}")
        check_at_least(self.workspace_mib, 1, "--workspace (MiB)")


def _parse(trt, onnx_path):
    """(logger, builder, network) of the ONNX file, or a UserError saying why not. The caller
    keeps the logger alive as long as the builder: they log through it."""
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except TypeError:  # how the bindings report a missing GPU or driver
        raise UserError("TensorRT found no usable NVIDIA GPU/driver on this machine; build the engine on the GPU "
                        "machine that will run it") from None
    network = builder.create_network()  # explicit batch is the only mode in TensorRT 10/11
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.path.abspath(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise UserError(f"TensorRT could not parse '{onnx_path}': " + " | ".join(errors or ["unknown error"]))
    return logger, builder, network


def _set_precision(trt, config, fp16, meta):
    """Configure the precision; returns its name."""
    onnx_precision = meta.get("siamese.precision", "fp32")
    if onnx_precision == "int8":
        return _set_int8(trt, config, fp16)
    if not (fp16 or onnx_precision == "fp16"):
        # TF32 is on by default on Ampere and newer: an "fp32" engine would round its products to TF32
        config.clear_flag(trt.BuilderFlag.TF32)
        return "fp32"
    if hasattr(trt.BuilderFlag, "FP16"):  # TensorRT 10.x
        config.set_flag(trt.BuilderFlag.FP16)
    elif onnx_precision != "fp16":  # TensorRT 11: strongly typed, the ONNX model's types decide
        raise UserError(f"TensorRT {trt.__version__} has no FP16 builder flag (networks are strongly typed): export "
                        f"an FP16 model with 'torch_to_onnx.py --fp16' and build from that")
    return "fp16"


def _set_int8(trt, config, fp16):
    """An INT8 engine from a QDQ model quantized for TensorRT (explicit quantization): the Q/DQ
    pairs say what runs in INT8, the rest in float32."""
    if fp16:
        raise UserError("--fp16 does not apply to an INT8 model (its layers outside the Q/DQ pairs run in float32); "
                        "leave --fp16 out")
    if hasattr(trt.BuilderFlag, "INT8"):  # TensorRT 10.x: weakly typed networks need it for the INT8 kernels
        config.set_flag(trt.BuilderFlag.INT8)
    config.clear_flag(trt.BuilderFlag.TF32)  # the float layers in true float32, as an fp32 engine
    return "int8"


def _add_profile(builder, network, config, build, part, meta, onnx_path):
    """The batch profile over the part's inputs."""
    dim = int(meta["siamese.feature_dim"]) if part != "pair" else None
    shapes = tensor_shapes(part, int(meta["siamese.image_size"]), dim)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in PARTS[part][0]:
            raise UserError(f"'{onnx_path}' has an unexpected input '{name}'; export it with torch_to_onnx.py")
        profile.set_shape(name, *((batch, *shapes[name]) for batch in (build.min_batch, build.opt_batch, build.max_batch)))
    config.add_optimization_profile(profile)


def _write_engine(engine_path, blob, engine_meta):
    """ENGINE and ENGINE.json, both written whole before either takes its name; the sidecar names
    the engine's hash, so an engine and a sidecar of different builds (a kill between the two
    renames) are told apart."""
    try:
        with atomic_open(engine_metadata_path(engine_path), "w") as sidecar, atomic_open(engine_path, "wb") as engine:
            json.dump(engine_meta, sidecar, indent=2)
            engine.write(blob)
    except BaseException:
        with contextlib.suppress(OSError):
            if sha256_of(engine_path) == engine_meta["engine_sha256"]:  # the engine took its name, its sidecar did not
                os.remove(engine_path)
        raise


def build_engine_file(onnx_path, engine_path, build=EngineBuild(), *, trt=None, gpu_name=None, log=print,
                      extra_metadata=None):
    """Parse, configure, build, serialize; writes ENGINE and ENGINE.json and returns the metadata.
    The ONNX file may be any deployed part (pair model, embedder, head): the profile follows its
    inputs."""
    if not os.path.isfile(onnx_path):
        raise UserError(f"ONNX file '{onnx_path}' does not exist; make one with torch_to_onnx.py")
    build.check()
    meta, input_types = _onnx_facts(onnx_path)
    parse_metadata(meta, onnx_path)  # what the runtime would refuse in the engine is refused before the build
    part = part_of(meta, onnx_path)
    lineage = derived_from(onnx_path, engine_path, meta)  # hashed before TensorRT reads it
    if meta.get("siamese.precision") == "int8" and int8_target(meta) != "tensorrt":
        raise UserError(f"'{onnx_path}' was quantized for ONNX Runtime (unsigned activations with a zero point, which "
                        f"TensorRT does not take); quantize the float export for TensorRT with 'onnx_to_int8.py "
                        f"MODEL.onnx --calibration FOLDER --target tensorrt' and build from that")
    trt = trt or import_tensorrt()
    _logger, builder, network = _parse(trt, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, build.workspace_mib * 2**20)
    precision = _set_precision(trt, config, build.fp16, meta)
    _add_profile(builder, network, config, build, part, meta, onnx_path)
    if build.timing_cache:
        _attach_timing_cache(config, build.timing_cache, log)
    log(f"building a {precision} {'engine' if part == 'pair' else part + ' engine'} for batches "
        f"{build.min_batch}-{build.max_batch} (optimised for {build.opt_batch}); this takes a while")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError("TensorRT failed to build the engine (see its messages above); try a larger --workspace or "
                        "a smaller --max-batch")
    blob = bytes(serialized)
    engine_meta = dict(meta, **lineage, tensorrt_version=trt.__version__, gpu=gpu_name or "unknown", precision=precision,
                       tf32=precision == "fp16", min_batch=build.min_batch, opt_batch=build.opt_batch,
                       max_batch=build.max_batch, onnx=os.path.basename(onnx_path), input_types=input_types,
                       engine_sha256=hashlib.sha256(blob).hexdigest(), **(extra_metadata or {}))
    _write_engine(engine_path, blob, engine_meta)
    if build.timing_cache:
        cache = config.get_timing_cache()  # None when the build kept none: nothing to save
        if cache is not None:
            with atomic_open(build.timing_cache, "wb") as f:
                f.write(bytes(cache.serialize()))
    return engine_meta


class _EnginePart(Part):
    """A serialized TensorRT engine (10.x/11.x API) with device buffers sized for its largest batch."""

    def __init__(self, path, part, *, trt, cuda):
        meta = read_engine_metadata(path)
        sidecar = engine_metadata_path(path)
        self.preprocessing, self.threshold, self.metadata = parse_metadata(meta, sidecar)
        self.part, self.files = part_of(meta, sidecar), (path, sidecar)
        if self.part != part:
            raise UserError(f"'{path}' is the {self.part} part of a deployment, not the {part} engine; give the "
                            f"model's engine (the one without .embed or .head in its name)")
        self.cuda, self.trt = cuda, trt
        with open(path, "rb") as f:
            blob = f.read()
        if "engine_sha256" not in meta:  # nothing ties it to this engine but its name
            raise UserError(f"'{sidecar}' does not record the SHA-256 of the engine it describes (an engine built by an "
                            f"earlier version), so it cannot be told to be '{path}''s own; rebuild the engine with "
                            f"onnx_to_trt.py")
        if meta["engine_sha256"] != hashlib.sha256(blob).hexdigest():
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
        self.trt = trt or import_tensorrt()
        self.cuda = cuda or default_cuda()
        super().__init__(path)
        self.min_batch = self.pair.min_batch

    def open_part(self, path, part):
        return _EnginePart(path, part, trt=self.trt, cuda=self.cuda)

    def read_metadata(self, path, part):
        return read_engine_metadata(path)
