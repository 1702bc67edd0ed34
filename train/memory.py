"""Memory a run used: FlagPerf's ``mem`` (the device's used / total memory) and torch's own peaks beside it.

FlagPerf reads ``nvidia-smi``'s used memory of the accelerator while the case runs. Here, on CUDA, a daemon
thread samples the device's used memory every ``interval`` s (NVML through ``nvidia-ml-py``, the ``[gpu]``
extra; without it ``cudaMemGetInfo`` through ``torch.cuda.mem_get_info``, which reads the same device-wide
figure) and keeps the maximum: it counts what the caching allocator holds, the CUDA context, cuDNN's
workspaces and what DALI allocates outside torch's allocator. Beside it: torch's peak allocated and peak
reserved bytes, reset at the end of warm-up (so cuDNN's autotuning trials do not inflate them). On a CPU:
the training process's peak RSS over physical RAM.
"""

from __future__ import annotations

import os
import resource
import threading
from dataclasses import dataclass
from typing import Callable

import torch

GIB = 1024 ** 3


@dataclass(frozen=True)
class MemoryUse:
    """Memory of a run (GiB).

    Attributes:
        used_gib / total_gib: the FlagPerf ``mem`` pair: on CUDA the device's peak used memory (sampled) over its
            total; on CPU the process's peak RSS over RAM.
        kind: what ``used_gib`` measures: ``nvml-device-used``, ``cuda-meminfo-device-used`` or ``cpu-rss``.
        allocated_gib / reserved_gib: torch's peak allocated / reserved since the end of warm-up (CUDA; else None).
        device_used_gib: the sampled device-wide peak (CUDA; None on CPU), the same value as ``used_gib`` there.
    """

    used_gib: float
    total_gib: float
    kind: str
    allocated_gib: float | None = None
    reserved_gib: float | None = None
    device_used_gib: float | None = None


def nvml_used_reader(device: torch.device) -> Callable[[], int] | None:
    """A function returning the device's used memory in bytes through NVML, or None when NVML is unavailable.

    The NVML device is found by the CUDA device's UUID (so ``CUDA_VISIBLE_DEVICES`` renumbering is harmless).
    """
    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = f"GPU-{torch.cuda.get_device_properties(device).uuid}"
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid.encode())  # bytes: older nvidia-ml-py take no str
        pynvml.nvmlDeviceGetMemoryInfo(handle)
    except Exception:  # noqa: BLE001 - not installed, no driver library, unknown UUID: use cudaMemGetInfo
        return None
    return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


def meminfo_used_reader(device: torch.device) -> Callable[[], int]:
    """Device-wide used bytes from ``cudaMemGetInfo`` (total − free)."""
    def used() -> int:
        free, total = torch.cuda.mem_get_info(device)
        return int(total - free)
    return used


class DeviceMemoryMonitor:
    """Samples ``read()`` (bytes) every ``interval`` s on a daemon thread and keeps the maximum.

    ``start()`` takes a first sample at once; ``stop()`` takes a last one, ends the thread and returns the peak
    (bytes). Sampling costs one driver call per interval on another thread: the training stream never waits.
    """

    def __init__(self, read: Callable[[], int], kind: str, interval: float = 0.5):
        self.read, self.kind, self.interval = read, kind, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        try:
            self.peak = max(self.peak, self.read())
        except Exception:  # noqa: BLE001 - a failed sample leaves the peak as it is
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> "DeviceMemoryMonitor":
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="device-memory-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sample()
        return self.peak


def start_monitor(device: torch.device) -> DeviceMemoryMonitor | None:
    """A started monitor of ``device``'s used memory (NVML, else cudaMemGetInfo); None on a CPU."""
    if device.type != "cuda":
        return None
    nvml = nvml_used_reader(device)
    if nvml is not None:
        return DeviceMemoryMonitor(nvml, "nvml-device-used").start()
    return DeviceMemoryMonitor(meminfo_used_reader(device), "cuda-meminfo-device-used").start()


def reset_peaks(device: torch.device) -> None:
    """Forget torch's peak allocated / reserved so far (called at the end of warm-up)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device, monitor: DeviceMemoryMonitor | None = None) -> MemoryUse:
    """Peak memory of this run on ``device`` (see :class:`MemoryUse`); stops ``monitor``."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / GIB
        allocated = torch.cuda.max_memory_allocated(device) / GIB
        reserved = torch.cuda.max_memory_reserved(device) / GIB
        if monitor is None:  # no sampling: the end-of-run device reading is the best there is
            monitor = DeviceMemoryMonitor(meminfo_used_reader(device), "cuda-meminfo-device-used")
        used = monitor.stop() / GIB
        return MemoryUse(used, total, monitor.kind, allocated, reserved, used)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return MemoryUse(rss_kib * 1024 / GIB, total / GIB, "cpu-rss")


def driver_version() -> str | None:
    """The NVIDIA driver version (NVML), or None where NVML is not available."""
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001
        return None
