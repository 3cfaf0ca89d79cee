"""torchrun support: one process per device, NCCL on GPUs and gloo on CPUs (which device, and
mixed precision on it: device.py).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a single process.
"""

import ctypes
import os
import signal
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .device import resolve_device
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
