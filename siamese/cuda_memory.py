"""Device memory for TensorRT behind one small interface, with cuda-python (preferred, what
current TensorRT samples use) or pycuda. With pycuda we attach to the device's primary context
(pycuda.autoprimaryctx) rather than creating a private one, which would fight with other CUDA
users in the process, PyTorch among them.
"""

from .errors import UserError, not_installed


class CudaPython:
    """cuda-python's runtime API (package cuda-bindings, module cuda.bindings.runtime)."""

    def __init__(self):
        try:
            from cuda.bindings import runtime as cudart
        except ModuleNotFoundError as error:
            if not not_installed(error, "cuda.bindings.runtime"):
                raise
            from cuda import cudart  # cuda-python before 12.6
        self.cudart = cudart
        self._check(cudart.cudaFree(0))  # creates the context, fails clearly without a GPU

    def _check(self, result):
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, text = self.cudart.cudaGetErrorString(err)
            raise RuntimeError(f"CUDA error: {text.decode() if isinstance(text, bytes) else text}")
        return values[0] if len(values) == 1 else values

    def malloc(self, nbytes):
        return int(self._check(self.cudart.cudaMalloc(nbytes)))

    def free(self, pointer):
        self._check(self.cudart.cudaFree(pointer))

    def create_stream(self):
        return int(self._check(self.cudart.cudaStreamCreate()))

    def copy_to_device(self, pointer, array, stream):
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, stream))

    def copy_to_host(self, array, pointer, stream):
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, stream))

    def synchronize(self, stream):
        self._check(self.cudart.cudaStreamSynchronize(stream))

    def device_name(self):
        device = self._check(self.cudart.cudaGetDevice())
        props = self._check(self.cudart.cudaGetDeviceProperties(device))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return f"{name.strip(chr(0))} (compute {props.major}.{props.minor})"


class PyCuda:
    def __init__(self):
        import pycuda.autoprimaryctx  # noqa: F401  (the device's primary context, shared)
        import pycuda.driver as driver

        self.driver = driver
        self._allocations = {}

    def malloc(self, nbytes):
        allocation = self.driver.mem_alloc(nbytes)
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, pointer):
        allocation = self._allocations.pop(pointer, None)
        if allocation is not None:
            allocation.free()

    def create_stream(self):
        self._stream = self.driver.Stream()
        return self._stream.handle

    def copy_to_device(self, pointer, array, stream):
        self.driver.memcpy_htod_async(pointer, array, self._stream)

    def copy_to_host(self, array, pointer, stream):
        self.driver.memcpy_dtoh_async(array, pointer, self._stream)

    def synchronize(self, stream):
        self._stream.synchronize()

    def device_name(self):
        device = self.driver.Context.get_device()
        major, minor = device.compute_capability()
        return f"{device.name()} (compute {major}.{minor})"


def default_cuda():
    """cuda-python if installed, else pycuda; a clear error when neither works."""
    errors = []
    for adapter in (CudaPython, PyCuda):
        try:
            return adapter()
        except ModuleNotFoundError as error:  # anything else that fails the import is said as it is, below
            errors.append(f"{adapter.__name__}: not installed ({error.name})")
        except Exception as error:
            errors.append(f"{adapter.__name__}: {error}")
    raise UserError("TensorRT engines need a CUDA GPU and cuda-python (pip install cuda-python) or pycuda; "
                    + "; ".join(errors))
