"""Where this process sits in a torchrun job: process-group setup, the node's share of CPU cores, and the few
collectives the loop needs.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; without them the run is a single process. Backend: NCCL when CUDA is present, gloo otherwise.
The one place in train/ that reads torchrun's environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.compat import init_process_group


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job.

    Attributes:
        rank / world_size / local_rank: torchrun's numbering (0 / 1 / 0 for a single process).
        device: the training device of this rank (``cuda:<local_rank>`` or ``cpu``).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistEnv:
    """Read torchrun's environment, pick the device and join the process group if ``WORLD_SIZE > 1``.

    Raises:
        RuntimeError: the environment variables are inconsistent (e.g. RANK >= WORLD_SIZE).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = global_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not 0 <= rank < world_size:
        raise RuntimeError(f"RANK={rank} is not in [0, WORLD_SIZE={world_size}); launch with torchrun")
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPU(s); "
                               f"use --nproc-per-node <= the GPU count")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # cuDNN's algorithm choice: train.precision.set_cudnn, from the run's config
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        init_process_group("nccl" if device.type == "cuda" else "gloo", device if device.type == "cuda" else None)
    return DistEnv(rank, world_size, local_rank, device)


def all_reduce(values: list[float], op: str, env: DistEnv) -> list[float]:
    """Reduce a short list of floats over all ranks (``op`` = ``"sum"`` or ``"max"``); one collective.

    Float64 on the device so integer counts up to 2**53 stay exact.
    """
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t.tolist()


def all_gather_objects(obj: object, env: DistEnv) -> list:
    """Every rank's ``obj`` (picklable), by rank; ``[obj]`` for a single process."""
    if not env.distributed:
        return [obj]
    out: list = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def average_buffers(module: torch.nn.Module, env: DistEnv) -> None:
    """Replace every floating-point buffer of ``module`` (BatchNorm running mean / var) by its mean over ranks.

    DDP keeps parameters equal on every rank but broadcasts buffers from rank 0 only at the start of the next
    forward, so after the last step every rank holds the running statistics of its own batches: ranks would
    evaluate with different BN statistics and rank 0's checkpoint would not hold what the others evaluated.
    The mean over ranks (timm's ``distribute_bn`` with ``reduce=True``) uses the statistics of every rank's
    data, rather than rank 0's alone; afterwards every rank holds the same values. One all-reduce per dtype;
    integer buffers (``num_batches_tracked``, equal on every rank) are left alone. No-op for one process.
    """
    if not env.distributed:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for b in module.buffers():
        if b.is_floating_point():
            by_dtype.setdefault(b.dtype, []).append(b)
    for buffers in by_dtype.values():
        flat = torch.cat([b.reshape(-1) for b in buffers])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(env.world_size)
        offset = 0
        for b in buffers:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()


def global_rank() -> int:
    """This process's rank over all nodes (torchrun's ``RANK``; 0 without torchrun), before any process group."""
    return int(os.environ.get("RANK", "0"))


def local_world_size() -> int:
    """Ranks on this node (torchrun's ``LOCAL_WORLD_SIZE``; 1 without torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def cores_per_rank() -> int:
    """CPU cores available to this process (its affinity mask) divided by the ranks on this node, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // local_world_size())


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op for a single process)."""
    if env.distributed:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    """Leave the process group."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
