"""Devices: which one to use (--device), mixed precision on it (--amp), TF32 and cuDNN's set-up,
channels_last and torch.compile: what every script that runs PyTorch sets up, one process or
many (distributed.py)."""

import functools
import importlib
import shutil

import torch

from .errors import UserError


def resolve_device(name):
    """'auto' -> cuda when available, else cpu; 'cuda'/'cuda:N' must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got '{name}'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is usable here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) present")
    elif device.type != "cpu":
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got '{name}'")
    return device


def amp_dtype(device, capability=None):
    """The half precision --amp computes in on `device`: bfloat16 on CPUs and on GPUs of compute
    capability 8.0 (Ampere) and newer, which run it natively (torch.cuda.is_bf16_supported()
    without emulation) and need no gradient scaler, since it keeps float32's exponent range;
    float16 with a scaler on older GPUs. capability: (major, minor), default the device's."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.bfloat16
    capability = capability or _capability(device)
    if capability >= (8, 0):
        return torch.bfloat16
    if capability >= (5, 3):
        return torch.float16
    raise UserError(f"--amp: this GPU (compute capability {capability[0]}.{capability[1]}) has no half precision "
                    f"arithmetic; train or evaluate without --amp")


@functools.cache
def _capability(device):
    return torch.cuda.get_device_capability(device)


def autocast(device, enabled):
    """Mixed precision for --amp, in amp_dtype(device)."""
    device = torch.device(device)
    dtype = amp_dtype(device) if enabled else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def grad_scaler(device, amp, capability=None):
    """The loss scaler train.py steps through: active only for float16 (--amp on a GPU older
    than Ampere); bfloat16 needs none."""
    device = torch.device(device)
    enabled = amp and device.type == "cuda" and amp_dtype(device, capability) == torch.float16
    return torch.amp.GradScaler("cuda", enabled=enabled)


def configure_cuda(device, tf32=True, capability=None):
    """On a GPU: cuDNN picks its fastest convolution for each input shape (cudnn.benchmark), and
    with `tf32` float32 convolutions and matrix products use TF32 tensor cores on compute
    capability 8.0 and newer (10 mantissa bits in the products, float32 sums; --no-tf32 keeps
    full float32). Returns whether TF32 is on. Nothing changes on a CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    on = bool(tf32) and (capability or _capability(device)) >= (8, 0)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on
    return on


def channels_last_for(device, requested=None):
    """--channels-last as given, else (None) on GPUs only: their convolutions run faster in it, a
    CPU's not."""
    return bool(requested) if requested is not None else torch.device(device).type == "cuda"


def check_compile(device):
    """Refuse --compile in one line where torch.compile cannot work: no torch.compile, no
    TorchDynamo on this platform, no C++ compiler (for CPUs) or no Triton (for GPUs)."""
    if not callable(getattr(torch, "compile", None)):
        raise UserError(f"--compile needs torch.compile (PyTorch 2.0 or newer; this is {torch.__version__}); "
                        f"run without --compile")
    try:
        supported = importlib.import_module("torch._dynamo").is_dynamo_supported()
    except Exception:
        supported = False
    if not supported:
        raise UserError("--compile: torch.compile is not supported on this platform or Python; run without --compile")
    if torch.device(device).type == "cuda":
        try:
            from torch.utils._triton import has_triton

            ready = has_triton()
        except Exception:
            ready = False
        if not ready:
            raise UserError("--compile on a GPU needs Triton (pip install triton); run without --compile")
    elif not any(shutil.which(name) for name in ("c++", "g++", "clang++", "cl")):
        raise UserError("--compile on a CPU needs a C++ compiler (g++ or clang++) on the PATH; install one or run "
                        "without --compile")


def compile_module(module, device, log=None, what="model"):
    """torch.compile(module), checked first; the compiled module shares the original's parameters
    (save, average and export the original: a compiled module's state_dict keys carry
    '_orig_mod.'). Compiling happens at the first call; `log` is told so."""
    check_compile(device)
    if log is not None:
        log(f"compiling the {what} with torch.compile: the first batches wait for it")
    return torch.compile(module)


def cpu_has_bfloat16():
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX); without them bfloat16
    autocast is emulated and slower than float32. Linux only; elsewhere this says no."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
