"""Facts about the machine this process runs on: :func:`available_cores`, the one core counter of the project
(``shard-imagenet``'s default ``--workers``), and :func:`cores_per_local_rank`, its share for one of torchrun's
ranks on this node (``train``'s default ``--workers`` and its cores per rank)."""

from __future__ import annotations

import os


def available_cores() -> int:
    """CPU cores this process may run on: the size of its affinity mask (``os.sched_getaffinity``: what taskset,
    cgroups' cpusets and Slurm grant), else ``os.cpu_count()`` where that call does not exist (macOS, Windows);
    at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def local_world_size() -> int:
    """Ranks on this node: torchrun's ``LOCAL_WORLD_SIZE`` (1 without torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def cores_per_local_rank() -> int:
    """:func:`available_cores` divided by the ranks on this node (:func:`local_world_size`), at least 1."""
    return max(1, available_cores() // local_world_size())


__all__ = ["available_cores", "cores_per_local_rank", "local_world_size"]
