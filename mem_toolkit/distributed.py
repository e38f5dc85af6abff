"""Several processes on one machine (`torchrun --nproc-per-node N`): init, rank, barriers, sharding, gathers.

Everything here is a no-op in a single process (no process group): the library works unchanged
without torchrun. Under torchrun the group uses gloo for CPU tensors and, where CUDA is present,
NCCL for CUDA tensors (one GPU per process, chosen by LOCAL_RANK). Every collective below is
called by all ranks at the same point; none may sit in a branch that depends on the rank
(the official MEM code's multi-GPU generation deadlocks that way).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Callable, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .models import resolve_device

T = TypeVar("T")


def launched() -> bool:
    """Whether this process was started by torchrun (its environment names a rank and a world size)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device: str | torch.device = "auto") -> None:
    """Join the process group torchrun describes; nothing happens outside torchrun or if already joined.

    Refuses several machines: the protection's noise is one memory map that every process writes
    its own units into, which needs one page cache. On CUDA each process takes GPU LOCAL_RANK.
    """
    if not launched() or dist.is_initialized():
        return
    if os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]) != os.environ["WORLD_SIZE"]:
        raise RuntimeError("mem_toolkit runs its processes on one machine (torchrun --nnodes 1): they share the noise memory map")
    _die_with_launcher()
    if resolve_device(device).type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        dist.init_process_group("cpu:gloo,cuda:nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo")


def _die_with_launcher() -> None:
    """Ask Linux to kill this worker when torchrun dies: torchrun starts workers in their own sessions, so
    a SIGKILL to the launcher would otherwise leave them running, writing into a folder a resumed run uses."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the request took effect
        os._exit(1)


def close() -> None:
    """Leave the process group (end of a torchrun command)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the process that writes checkpoints and artifacts and shows progress."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here."""
    if dist.is_initialized():
        dist.barrier()


def main_first(work: Callable[[], T]) -> T:
    """Run `work` on rank 0, then on the others (e.g. filling an on-disk cache that the others then read)."""
    result = work() if is_main() else None
    barrier()
    if not is_main():
        result = work()
    return result  # type: ignore[return-value]


def main_only(work: Callable[[], T]) -> T:
    """Run `work` on rank 0 only (writing results, figures, caches) and give its picklable result to every rank."""
    return broadcast_object(work() if is_main() else None)


def shard_bounds(n: int) -> list[int]:
    """Start offsets (and the end) of the contiguous slices `n` items split into, one per rank, sizes differing by at most 1."""
    size, extra = divmod(n, world_size())
    return [r * size + min(r, extra) for r in range(world_size() + 1)]


def shard(items: np.ndarray) -> np.ndarray:
    """This rank's contiguous slice of a global batch (slices in rank order make up the batch)."""
    if len(items) < world_size():
        raise ValueError(f"a batch of {len(items)} rows cannot be split over {world_size()} processes; use a batch of at least {world_size()}")
    bounds = shard_bounds(len(items))
    return items[bounds[rank()]:bounds[rank() + 1]]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for the local slice (all_reduce), so the
    rank's parameters get the gradient of the loss every rank computes, summed over the ranks."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, total: int) -> torch.Tensor:
        bounds = shard_bounds(total)
        width = bounds[1] - bounds[0]  # the largest slice: gather needs equal sizes, so pad
        padded = tensor.new_zeros((width, *tensor.shape[1:]))
        padded[:len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in range(world_size())]
        dist.all_gather(parts, padded)
        ctx.bounds = bounds
        return torch.cat([part[:bounds[r + 1] - bounds[r]] for r, part in enumerate(parts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone(memory_format=torch.contiguous_format)  # reduced in place: never the engine's own buffer
        dist.all_reduce(grad)
        return grad[ctx.bounds[rank()]:ctx.bounds[rank() + 1]], None


def gather_with_grad(local: torch.Tensor, total: int) -> torch.Tensor:
    """The global batch (total rows, in rank order) from every rank's slice, differentiable.

    Each rank then computes the loss over the whole global batch, exactly the single-process
    loss: a per-rank loss over its own slice would contrast every pair with only total/N
    negatives and compute a different (easier) objective. The backward all-reduces the gradient
    of the gathered batch, so a rank's slice gets the sum over ranks of d(loss)/d(slice), N times
    the gradient of the one loss; DDP's mean over ranks then gives each parameter exactly the
    single-process gradient, the logit scale (which every rank differentiates directly) included.
    """
    if not dist.is_initialized():
        return local
    return _GatherWithGrad.apply(local, total)


def all_gather_object(value: T) -> list[T]:
    """Every rank's (picklable, small) value, in rank order."""
    if not dist.is_initialized():
        return [value]
    values: list = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast_object(value: T) -> T:
    """Rank 0's (picklable, small) value on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(array: np.ndarray) -> np.ndarray:
    """Elementwise sum of an integer array over the ranks (merges disjoint per-rank updates given as differences)."""
    if not dist.is_initialized():
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
    dist.all_reduce(tensor)
    return tensor.numpy()


def replicate(model: nn.Module) -> nn.Module:
    """The model wrapped in DistributedDataParallel (gradients averaged over ranks), or the model itself in one process."""
    if not dist.is_initialized():
        return model
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so all ranks hold one model.

    BatchNorm normalises each rank's slice with that slice's statistics (open_clip's behaviour
    without SyncBatchNorm, which does not run on CPU); the running statistics then differ per rank.
    """
    if not dist.is_initialized():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)
