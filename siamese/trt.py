"""Building TensorRT engines from the exported ONNX model (TensorRT 10.x and 11.x API only).

No torch here. The `trt` module is a parameter so the control flow can be tested without a GPU.
"""

import json
import os

from .errors import UserError, check_at_least
from .files import atomic_open
from .runtime import INPUT_NAMES, engine_metadata_path


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise UserError("TensorRT is not installed: pip install tensorrt (needs an NVIDIA GPU and driver), or run the "
                        ".onnx file with ONNX Runtime instead") from None
    return tensorrt


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


def build_engine_file(onnx_path, engine_path, *, fp16=False, workspace_mib=2048, min_batch=1, opt_batch=8, max_batch=32,
                 timing_cache=None, trt=None, gpu_name=None, log=print):
    """Parse, configure, build, serialize; writes ENGINE and ENGINE.json; returns the metadata."""
    if not os.path.isfile(onnx_path):
        raise UserError(f"ONNX file '{onnx_path}' does not exist; make one with torch_to_onnx.py")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise UserError(f"need 1 <= --min-batch <= --opt-batch <= --max-batch, got {min_batch}, {opt_batch}, {max_batch}")
    check_at_least(workspace_mib, 1, "--workspace (MiB)")
    meta, input_types = _onnx_facts(onnx_path)
    trt = trt or import_tensorrt()
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

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib * 2**20)
    precision = "fp32"
    onnx_fp16 = meta.get("siamese.precision") == "fp16"
    if fp16 or onnx_fp16:
        if hasattr(trt.BuilderFlag, "FP16"):  # TensorRT 10.x
            config.set_flag(trt.BuilderFlag.FP16)
            precision = "fp16"
        elif onnx_fp16:  # TensorRT 11: strongly typed, the ONNX model's types decide
            precision = "fp16"
        else:
            raise UserError(f"TensorRT {trt.__version__} has no FP16 builder flag (networks are strongly typed): export "
                            f"an FP16 model with 'torch_to_onnx.py --fp16' and build from that")

    size = int(meta["siamese.image_size"])
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in INPUT_NAMES:
            raise UserError(f"'{onnx_path}' has an unexpected input '{name}'; export it with torch_to_onnx.py")
        profile.set_shape(name, (min_batch, 3, size, size), (opt_batch, 3, size, size), (max_batch, 3, size, size))
    config.add_optimization_profile(profile)

    cache = None
    if timing_cache:
        data = open(timing_cache, "rb").read() if os.path.isfile(timing_cache) else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, False)

    log(f"building a {precision} engine for batches {min_batch}-{max_batch} (optimised for {opt_batch}); "
        "this takes a while")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError("TensorRT failed to build the engine (see its messages above); try a larger --workspace or "
                        "a smaller --max-batch")
    with atomic_open(engine_path, "wb") as f:
        f.write(bytes(serialized))
    if cache is not None:
        with atomic_open(timing_cache, "wb") as f:
            f.write(bytes(config.get_timing_cache().serialize()))
    engine_meta = dict(meta, tensorrt_version=trt.__version__, gpu=gpu_name or "unknown", precision=precision,
                       min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                       onnx=os.path.basename(onnx_path), input_types=input_types)
    with atomic_open(engine_metadata_path(engine_path), "w") as f:
        json.dump(engine_meta, f, indent=2)
    return engine_meta
