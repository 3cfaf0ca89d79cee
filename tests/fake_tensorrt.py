"""A small stand-in for the `tensorrt` module offering only TensorRT 10/11 names, and a fake
device-memory adapter. The fake engine really computes: it runs the ONNX model it was "built"
from with ONNX Runtime on the bytes found at the tensor addresses, so batching, shapes and
addresses are checked end to end. Any call of an API that TensorRT removed fails with
AttributeError, as it would on a real installation."""

import json
import types

import numpy as np

DEVICE_MEMORY = {}  # pointer -> bytearray, shared by FakeCuda and the fake engine


class FakeCuda:
    def __init__(self, name="Fake GPU (compute 9.0)"):
        self.name = name
        self.next_pointer = 4096
        self.freed = []

    def malloc(self, nbytes):
        pointer = self.next_pointer
        self.next_pointer += nbytes + 256
        DEVICE_MEMORY[pointer] = bytearray(nbytes)
        return pointer

    def free(self, pointer):
        DEVICE_MEMORY.pop(pointer, None)
        self.freed.append(pointer)

    def create_stream(self):
        return 77

    def copy_to_device(self, pointer, array, stream):
        assert stream == 77
        DEVICE_MEMORY[pointer][:array.nbytes] = array.tobytes()

    def copy_to_host(self, array, pointer, stream):
        array[...] = np.frombuffer(bytes(DEVICE_MEMORY[pointer][:array.nbytes]), dtype=array.dtype).reshape(array.shape)

    def synchronize(self, stream):
        pass

    def device_name(self):
        return self.name


def compute_capability(gpu_name):
    return gpu_name.rsplit("(compute ", 1)[-1].rstrip(")")


def make_fake_tensorrt(version="10.9.0", *, gpu_present=True, current_gpu="Fake GPU (compute 9.0)", fail_build=False,
                       cache_from_other_hardware=False, keeps_no_timing_cache=False):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []
    major = int(version.split(".")[0])

    class Logger:
        ERROR, WARNING, INFO = 1, 2, 3

        def __init__(self, severity=None):
            self.severity = severity

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class BuilderFlag:
        TF32 = "TF32"  # on by default, as on Ampere and newer

    if major < 11:  # 11.x removed the precision flags (strongly typed networks)
        BuilderFlag.FP16 = "FP16"
        BuilderFlag.INT8 = "INT8"

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class DataType:
        FLOAT, HALF = "FLOAT", "HALF"

    def nptype(data_type):
        return {DataType.FLOAT: np.float32, DataType.HALF: np.float16}[data_type]

    class _Input:
        def __init__(self, name):
            self.name = name

    class Network:
        def __init__(self):
            self.inputs = []
            self.onnx_path = None

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.errors = []

        def parse_from_file(self, path):
            import onnx
            import onnx.numpy_helper

            try:
                model = onnx.load(path)
            except Exception as error:
                self.errors = [f"In node -1: failed to parse: {error}"]
                return False
            # as TensorRT's parser: Q/DQ must be symmetric, signed 8-bit with a zero point of 0
            constants = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
            for node in model.graph.node:
                if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
                    zero_point = constants.get(node.input[2])
                    if zero_point is not None and (zero_point.dtype != np.int8 or np.any(zero_point != 0)):
                        self.errors = [f"In node {node.name}: TensorRT only supports symmetric quantization: the "
                                       f"zero point must be INT8 and 0"]
                        return False
            self.network.inputs = [_Input(i.name) for i in model.graph.input]
            self.network.onnx_path = path
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, minimum, optimum, maximum):
            self.shapes[name] = (tuple(minimum), tuple(optimum), tuple(maximum))

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"timing-cache:" + self.data

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.pools, self.cache = {BuilderFlag.TF32}, [], {}, None

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.flags.discard(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data):
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            if cache_from_other_hardware and cache.data:  # real TensorRT: False, and nothing attached
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return None if keeps_no_timing_cache else self.cache

    class Builder:
        def __init__(self, logger):
            if not gpu_present:
                raise TypeError("pybind11::init(): factory function returned nullptr")

        def create_network(self, *flags):
            assert not flags, "TensorRT 10/11 networks take no creation flags"
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.calls.append(("build", sorted(config.flags), dict(config.pools)))
            if fail_build or len(config.profiles) != 1:
                return None
            shapes = config.profiles[0].shapes
            assert set(shapes) == {i.name for i in network.inputs}, "every dynamic input needs a profile shape"
            return json.dumps({"onnx": network.onnx_path, "shapes": {k: list(v) for k, v in shapes.items()},
                               "gpu": current_gpu, "version": version, "tf32": "TF32" in config.flags}).encode()

    class Context:
        def __init__(self, engine):
            self.engine = engine
            self.addresses, self.input_shapes = {}, {}

        def set_input_shape(self, name, shape):
            minimum, _, maximum = self.engine.spec["shapes"][name]
            assert all(lo <= s <= hi for lo, s, hi in zip(minimum, shape, maximum)), f"{name} {shape} outside profile"
            self.input_shapes[name] = tuple(shape)
            return True

        def set_tensor_address(self, name, pointer):
            self.addresses[name] = pointer
            return True

        def get_tensor_shape(self, name):
            if name in self.engine.inputs:
                return self.input_shapes[name]
            batch = self.input_shapes[self.engine.inputs[0]][0]
            return (batch, *self.engine.output_shape[1:])

        def execute_async_v3(self, stream_handle):
            assert set(self.addresses) == set(self.engine.names), "every tensor needs an address"
            feeds = {}
            for name in self.engine.inputs:
                shape = self.input_shapes[name]
                count = int(np.prod(shape))
                raw = bytes(DEVICE_MEMORY[self.addresses[name]][:count * 4])
                feeds[name] = np.frombuffer(raw, dtype=np.float32).reshape(shape)
            assert len({x.shape[0] for x in feeds.values()}) == 1
            out = self.engine.session.run([self.engine.output], feeds)[0].astype(np.float32)
            DEVICE_MEMORY[self.addresses[self.engine.output]][:out.nbytes] = out.tobytes()
            trt.calls.append(("execute", next(iter(feeds.values())).shape[0]))
            return True

    class Engine:
        def __init__(self, spec):
            import onnxruntime

            self.spec = spec
            self.session = onnxruntime.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
            self.inputs = [i.name for i in self.session.get_inputs()]
            (output,) = self.session.get_outputs()
            self.output, self.output_shape = output.name, output.shape
            self.names = [*self.inputs, self.output]

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.OUTPUT if name == self.output else TensorIOMode.INPUT

        def get_tensor_dtype(self, name):
            return DataType.FLOAT

        def get_tensor_profile_shape(self, name, profile_index):
            return self.spec["shapes"][name]

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            if not gpu_present:  # what the bindings raise when TensorRT cannot initialise CUDA
                raise TypeError("pybind11::init(): factory function returned nullptr")

        def deserialize_cuda_engine(self, blob):
            try:
                spec = json.loads(bytes(blob))
            except ValueError:
                return None
            if compute_capability(spec["gpu"]) != compute_capability(current_gpu) or spec["version"] != version:
                return None  # TensorRT refuses another compute capability or version; another GPU model loads
            return Engine(spec)

    for name, value in dict(Logger=Logger, MemoryPoolType=MemoryPoolType, BuilderFlag=BuilderFlag,
                            TensorIOMode=TensorIOMode, DataType=DataType, nptype=nptype, OnnxParser=OnnxParser,
                            Builder=Builder, Runtime=Runtime).items():
        setattr(trt, name, value)
    return trt
