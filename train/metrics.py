"""FlagPerf's ResNet50 metrics, defined as its training case defines them.

FlagPerf (github.com/FlagOpen/FlagPerf, training/nvidia/resnet50-pytorch/README.md) reports:

==========  =====================================================================================
e2e_time    s, the whole process, from process start to the end of the run
p_whole     trained images / time of the train loop, per-epoch evaluation included (img/s)
p_train     trained images / time of the train loop without the evaluation (img/s)
p_core      trained images / pure compute time: from a batch on the device to its optimizer step
            done, excluding data-loader wait and host→device copy (img/s)
acc1        top-1 accuracy (%) of the last evaluation, every val image counted once over all ranks
mem         peak device memory used / device total (GiB); on CPU, peak process RSS / physical RAM
==========  =====================================================================================

Trained images = steps × world size × per-rank batch size. Times are the maximum over ranks.
Since compute ⊂ (loop − eval) ⊂ loop, p_core ≥ p_train ≥ p_whole always holds.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import asdict, dataclass

import torch

GIB = 1024 ** 3
_IMPORT_TIME = time.time()


def process_start_time() -> float:
    """Unix time (s) at which this process started: from /proc (Linux), else the time this module loaded."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of proc(5): starttime, clock ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])  # seconds since boot, 10 ms resolution
        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORT_TIME


@dataclass(frozen=True)
class MemoryUse:
    """Peak memory (GiB): ``used`` (the FlagPerf ``mem`` numerator) and the device's ``total``; ``kind`` says what
    ``used`` measures. ``allocated`` / ``reserved``: torch's peak allocated tensors and peak caching-allocator
    reservation (CUDA; None on CPU). ``device_used``: the whole device's memory in use by every process at the end,
    from NVML (None where NVML is not available)."""

    used_gib: float
    total_gib: float
    kind: str
    allocated_gib: float | None = None
    reserved_gib: float | None = None
    device_used_gib: float | None = None


def peak_memory(device: torch.device) -> MemoryUse:
    """Peak memory of this process on ``device``.

    CUDA: ``used`` = ``torch.cuda.max_memory_reserved`` (what the caching allocator held, as nvidia-smi would
    show for this process) over the device's total, plus peak allocated and NVML's device-wide figure. CPU: peak
    resident set size of the training process (``ru_maxrss``; loader worker processes not included) over
    physical RAM.
    """
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        try:
            nvml = torch.cuda.device_memory_used(device) / GIB  # NVML through torch (pynvml / amdsmi)
        except Exception:  # noqa: BLE001 - NVML missing or not initialisable: the field stays empty
            nvml = None
        reserved = torch.cuda.max_memory_reserved(device) / GIB
        return MemoryUse(reserved, total / GIB, "cuda-reserved", torch.cuda.max_memory_allocated(device) / GIB,
                         reserved, nvml)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return MemoryUse(rss_kib * 1024 / GIB, total / GIB, "cpu-rss")


@dataclass(frozen=True)
class RunTimes:
    """Measured times of one run (s), each the maximum over ranks.

    Attributes:
        e2e: process start → end of run.
        loop: train loop wall time, evaluation included.
        eval: per-epoch evaluation time, summed.
        compute: training steps (device-synchronised), summed.
        data: waits for the next train batch (incl. host→device copy), summed.
    """

    e2e: float
    loop: float
    eval: float
    compute: float
    data: float


@dataclass(frozen=True)
class FlagPerfMetrics:
    """The FlagPerf row (see module docstring) plus what it was computed from."""

    e2e_time: float
    p_whole: float
    p_train: float
    p_core: float
    acc1: float | None  # None when the run did not evaluate
    mem_used_gib: float
    mem_total_gib: float
    trained_images: int

    @property
    def mem(self) -> str:
        return f"{self.mem_used_gib:.1f}/{self.mem_total_gib:.1f}"

    def to_json(self) -> dict:
        d = asdict(self)
        d["mem"] = self.mem
        return d


def flagperf_metrics(trained_images: int, times: RunTimes, acc1: float | None, mem: MemoryUse) -> FlagPerfMetrics:
    """Compute the FlagPerf metrics from measured times.

    Raises:
        ValueError: a time that the formulas divide by is not positive.
    """
    train_only = times.loop - times.eval
    for name, value in (("loop", times.loop), ("loop - eval", train_only), ("compute", times.compute)):
        if value <= 0:
            raise ValueError(f"{name} time must be > 0 s, got {value}")
    return FlagPerfMetrics(
        e2e_time=times.e2e,
        p_whole=trained_images / times.loop,
        p_train=trained_images / train_only,
        p_core=trained_images / times.compute,
        acc1=acc1,
        mem_used_gib=mem.used_gib,
        mem_total_gib=mem.total_gib,
        trained_images=trained_images,
    )


TABLE_HEADER = ("| config | precision | fix_hp | e2e_time | p_whole | p_train | p_core | acc | mem |\n"
                "| ------ | --------- | ------ | -------- | ------- | ------- | ------ | --- | --- |")


def flagperf_row(m: FlagPerfMetrics, config: str, precision: str, fix_hp: str) -> str:
    """One row of FlagPerf's results table (its README's columns), markdown."""
    return (f"| {config} | {precision} | {fix_hp} | {m.e2e_time:.0f} | {m.p_whole:.1f} | {m.p_train:.1f} "
            f"| {m.p_core:.1f} | {'/' if m.acc1 is None else f'{m.acc1:.1f}%'} | {m.mem} |")
