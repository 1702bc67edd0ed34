"""FlagPerf's ResNet50 metrics, defined as its training case defines them.

FlagPerf (github.com/FlagOpen/FlagPerf, training/nvidia/resnet50-pytorch/README.md) reports:

==========  =====================================================================================
e2e_time    s, the whole process, from process start to the end of the run
p_whole     trained images / time of the train loop, per-epoch evaluation included (img/s)
p_train     trained images / time of the train loop without the evaluation (img/s)
p_core      trained images / pure compute time: from a batch on the device to its optimizer step
            done, excluding data-loader wait and host→device copy (img/s)
acc1        top-1 accuracy (%) of the last evaluation, every val image counted once over all ranks
mem         peak device memory used / device total (GiB; see train/memory.py); on CPU, peak process
            RSS / physical RAM
==========  =====================================================================================

Trained images = steps × world size × per-rank batch size. Times are the maximum over ranks.
Since compute ⊂ (loop − eval) ⊂ loop, p_core ≥ p_train ≥ p_whole always holds.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass

import torch

from train.memory import MemoryUse, driver_version

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
    """The FlagPerf row (see module docstring) plus what it was computed from: e2e_time in s, p_* in img/s, acc1
    in %, mem in GiB, trained_images the p_* numerator (warm-up left out). Field names are the metrics JSON's keys
    (:mod:`train.report`)."""

    e2e_time: float
    p_whole: float | None  # None: no training (``--test-only``)
    p_train: float | None
    p_core: float | None
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


def _cell(value: float | None, fmt: str) -> str:
    return "/" if value is None else format(value, fmt)


def flagperf_row(m: FlagPerfMetrics, config: str, precision: str, fix_hp: str) -> str:
    """One row of FlagPerf's results table (its README's columns), markdown; ``/`` where a figure does not exist."""
    acc = "/" if m.acc1 is None else f"{m.acc1:.1f}%"
    return (f"| {config} | {precision} | {fix_hp} | {m.e2e_time:.0f} | {_cell(m.p_whole, '.1f')} "
            f"| {_cell(m.p_train, '.1f')} | {_cell(m.p_core, '.1f')} | {acc} | {m.mem} |")


def software_versions() -> dict[str, str | None]:
    """Versions a run depends on: Python, torch, torchvision, CUDA / cuDNN of the torch build, the accelerator's
    driver (NVIDIA: NVML or ``nvidia-smi``; MetaX: ``mx-smi``'s kernel-mode driver; see :mod:`train.accelerator`)
    and DALI; None where absent."""
    import importlib.metadata

    import torchvision

    dali_version = None
    for dist in ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali"):
        try:  # the installed distribution's metadata: importing DALI would take ~0.5 s
            dali_version = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda, "cudnn": str(cudnn) if cudnn else None,
            "driver": driver_version() if torch.cuda.is_available() else None, "dali": dali_version}
