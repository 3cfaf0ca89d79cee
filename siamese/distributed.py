"""Devices: which one to use, mixed precision on it, and torchrun support (one process per
device, NCCL on GPUs and gloo on CPUs).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a single process.
"""

import ctypes
import functools
import importlib
import os
import shutil
import signal
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


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


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def stop_with_parent(parent_pid):
    """Have the kernel kill this process when its parent dies (Linux; elsewhere this does nothing
    and returns False), and exit at once if parent_pid, the process that started it, has died
    already. (Started through a fork server, the parent is that server, which ends with
    parent_pid.) The kernel's signal follows the thread that started this process: start it from
    a thread that lives as long."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent_pid and not _running(parent_pid):  # died before the request: no signal will come
        os._exit(1)
    return True


def _running(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether it exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def setup(device_name):
    """Start the process group when launched by torchrun; return this process's context. Each
    process stops when the launcher does, however the launcher ends (torchrun starts them in
    sessions of their own, so a kill of its process group would not reach them)."""
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context(device=device)
    stop_with_parent(os.getppid())
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(minutes=60), **({"device_id": device} if device.type == "cuda" else {}))
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def all_reduce_sum(values, context):
    """Sum a list of numbers across processes."""
    if not context.distributed:
        return list(values)
    device = context.device if context.device.type == "cuda" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def on_main(context, work):
    """Run work() on the main process only; under torchrun every process then learns whether it
    failed, and all raise the same UserError, instead of the others waiting in their next
    collective for a process that has gone (and dying with a backend's traceback). Returns work()'s
    result on the main process, None on the others. Acts as a barrier."""
    result = None
    if context.is_main:
        try:
            result = work()
        except Exception as error:
            if context.distributed:
                _broadcast(str(error) if isinstance(error, UserError) else
                           "the main process of this run stopped; its message says why")
            raise
    if context.distributed:
        message = _broadcast(None)
        if message is not None:
            raise UserError(message)
    return result


def _broadcast(message):
    """Rank 0's message (or None) on every rank."""
    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]



def cleanup(context):
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()
