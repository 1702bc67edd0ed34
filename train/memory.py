"""Memory a run used: FlagPerf's ``mem`` (the device's used / total memory) and torch's own peaks beside it.

FlagPerf reads the vendor tool's used memory of the accelerator while the case runs (``nvidia-smi`` on NVIDIA;
its MetaX monitor, ``metax_monitor.py``, samples plain ``mx-smi`` every 5 s). Here, on a ``cuda`` device, a daemon
thread samples the device's used memory and keeps the maximum: it counts what the caching allocator holds, the
device context, cuDNN's workspaces and what DALI allocates outside torch's allocator. The source depends on what
the device is (:mod:`train.accelerator`), each named by :attr:`MemoryUse.kind`:

* NVIDIA: NVML through ``nvidia-ml-py`` (the ``[gpu]`` extra) every :data:`NVML_INTERVAL_S` s: its v2 memory
  query (``nvml-v2-device-used``: ``used`` without the memory the driver reserves, as ``nvidia-smi`` shows it;
  v1's ``used`` counts that reserve too, about 0.3-0.6 GiB more), else v1 (``nvml-device-used``) where the
  library or the driver lacks v2 (see :func:`nvml_memory_query`); without nvidia-ml-py
  ``nvidia-smi --query-gpu=memory.used,memory.total`` every :data:`TOOL_INTERVAL_S` s (``nvidia-smi-device-used``);
* MetaX (no NVML): ``mx-smi --show-memory -i <physical index>`` every :data:`TOOL_INTERVAL_S` s
  (``mx-smi-device-used``): the ``vram used`` / ``vram total`` KB lines of that GPU's block, else its
  ``vis_vram`` lines;
* anything else, and wherever a tool is missing, fails, prints something unreadable or the torch index cannot be
  mapped to the tool's (``CUDA_VISIBLE_DEVICES`` / ``MACA_VISIBLE_DEVICES`` holding UUIDs):
  ``cudaMemGetInfo`` through ``torch.cuda.mem_get_info``, the same device-wide figure
  (``cuda-meminfo-device-used``). A tool that fails :data:`TOOL_FAILURES_BEFORE_FALLBACK` samples in a row during
  the run is replaced by ``mem_get_info`` too (the kind then says so); a run never stops for it.

A tool is a process per sample, so it is sampled less often than NVML: every 1 s (FlagPerf: 5 s; at 1 s an
evaluation's or a checkpoint's short peak is still seen), plus a last sample when the monitor stops. With a tool the
total is the tool's too (the same source for both numbers); otherwise it is torch's ``total_memory``. Beside it:
torch's peak allocated and peak reserved bytes, reset at the end of warm-up (so cuDNN's autotuning trials do not
inflate them). On a CPU: the training process's peak RSS over physical RAM.
"""

from __future__ import annotations

import os
import re
import resource
import threading
from dataclasses import dataclass
from typing import Callable

import torch

from pipeline.compat import cuda_device_uuid
from train import accelerator
from train.accelerator import MXSMI, NVIDIA_SMI, ToolError, Vendor

GIB = 1024 ** 3
NVML_INTERVAL_S = 0.5  # s between NVML samples (a library call)
TOOL_INTERVAL_S = 1.0  # s between vendor-tool samples (a process each; FlagPerf's MetaX monitor: 5 s)
TOOL_TIMEOUT_S = 5.0  # s a sampling tool call may take
TOOL_FAILURES_BEFORE_FALLBACK = 3  # failed tool samples in a row before mem_get_info takes over
NVML_V2_KIND = "nvml-v2-device-used"  # nvmlDeviceGetMemoryInfo_v2: used without the driver's reserve
NVML_V1_KIND = "nvml-device-used"  # nvmlDeviceGetMemoryInfo (v1): used includes the driver's reserve


@dataclass(frozen=True)
class MemoryUse:
    """Memory of a run (GiB).

    Attributes:
        used_gib / total_gib: the FlagPerf ``mem`` pair: on CUDA the device's peak used memory (sampled) over its
            total; on CPU the process's peak RSS over RAM.
        kind: what ``used_gib`` measures: ``nvml-v2-device-used``, ``nvml-device-used`` (NVML's v1 query),
            ``nvidia-smi-device-used``, ``mx-smi-device-used``, ``cuda-meminfo-device-used`` or ``cpu-rss``.
        allocated_gib / reserved_gib: torch's peak allocated / reserved since the end of warm-up (CUDA; else None).
        device_used_gib: the sampled device-wide peak (CUDA; None on CPU), the same value as ``used_gib`` there.
    """

    used_gib: float
    total_gib: float
    kind: str
    allocated_gib: float | None = None
    reserved_gib: float | None = None
    device_used_gib: float | None = None


@dataclass(frozen=True)
class NvmlReader:
    """Reads one device's used memory through NVML: calling it returns bytes; ``kind`` names the query
    (:data:`NVML_V2_KIND` or :data:`NVML_V1_KIND`)."""

    read: Callable[[], int]
    kind: str

    def __call__(self) -> int:
        return self.read()


def nvml_memory_query(pynvml: object, handle: object) -> NvmlReader:
    """The used-memory reader of NVML device ``handle``: the v2 query (``nvmlDeviceGetMemoryInfo(handle,
    version=pynvml.nvmlMemory_v2)``, nvidia-ml-py >= 11.510, driver >= 510), whose ``used`` leaves out the
    memory the driver reserves, as ``nvidia-smi`` does; else v1, whose ``used`` includes that reserve. Sources:
    NVML API reference (docs.nvidia.com/deploy/nvml-api), ``nvmlMemory_t.used`` "Sum of Reserved and Allocated",
    ``nvmlMemory_v2_t.used`` "Allocated device memory" beside ``reserved``; gpustat issue 141 and nvml-wrapper
    issue 57 (v2's ``used`` equals nvidia-smi's, v1's is higher by the reserve).
    v2 is tried once here: an nvidia-ml-py without ``nvmlMemory_v2`` or without the ``version`` argument
    (TypeError), a driver without the v2 entry point (``NVMLError_FunctionNotFound``) or that refuses it
    (``NVMLError_NotSupported``, any ``NVMLError``), or a reply without ``used``, means v1.

    Raises:
        pynvml.NVMLError: v1 fails too (the caller falls back to ``cudaMemGetInfo``).
    """
    version = getattr(pynvml, "nvmlMemory_v2", None)
    if version is not None:
        nvml_error = getattr(pynvml, "NVMLError", RuntimeError)
        try:
            int(pynvml.nvmlDeviceGetMemoryInfo(handle, version=version).used)
        except (nvml_error, TypeError, AttributeError):
            pass
        else:
            return NvmlReader(lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle, version=version).used),
                              NVML_V2_KIND)
    int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    return NvmlReader(lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used), NVML_V1_KIND)


def nvml_used_reader(device: torch.device) -> Callable[[], int] | None:
    """A function returning the device's used memory in bytes through NVML (an :class:`NvmlReader`: its
    ``kind`` says whether NVML's v2 or v1 query answers, :func:`nvml_memory_query`), or None when NVML is
    unavailable.

    The NVML device is found by the CUDA device's UUID (so ``CUDA_VISIBLE_DEVICES`` renumbering is harmless);
    where torch does not tell the UUID (torch 2.0 / 2.1), by its index mapped through ``CUDA_VISIBLE_DEVICES``.
    """
    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = cuda_device_uuid(device)
        if uuid is not None:
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid.encode())  # bytes: older nvidia-ml-py take no str
        else:
            index = accelerator.physical_index(device.index if device.index is not None
                                               else torch.cuda.current_device(), Vendor.NVIDIA)
            if index is None:
                return None
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return nvml_memory_query(pynvml, handle)
    except Exception:  # noqa: BLE001 - not installed, no driver library, unknown UUID: use cudaMemGetInfo
        return None


def meminfo_used_reader(device: torch.device) -> Callable[[], int]:
    """Device-wide used bytes from ``cudaMemGetInfo`` (total − free)."""
    def used() -> int:
        free, total = torch.cuda.mem_get_info(device)
        return int(total - free)
    return used


_KB_LINE = re.compile(r"^\s*(vis_vram|vram)\s+(used|total)\s*[:\uff1a]\s*(\d+)\s*K(?:i)?B\b", re.IGNORECASE)
_GPU_BLOCK = re.compile(r"^\s*GPU\s*#\s*(\d+)\b", re.IGNORECASE)


def parse_mxsmi_memory(text: str, physical: int) -> tuple[int, int]:
    """(used, total) bytes of GPU ``physical`` from ``mx-smi --show-memory`` output: the ``vram used`` /
    ``vram total`` lines (KB = KiB) of the block headed ``GPU#<physical>``, else its ``vis_vram`` lines. Output
    without any ``GPU#`` header is read as one GPU's block.

    Raises:
        ValueError: no such block, no used/total pair in it, or used > total or total 0.
    """
    lines = text.splitlines()
    blocks: dict[int, dict[tuple[str, str], int]] = {}
    current = None if any(_GPU_BLOCK.match(line) for line in lines) else physical
    for line in lines:
        header = _GPU_BLOCK.match(line)
        if header:
            current = int(header.group(1))
            continue
        m = _KB_LINE.match(line)
        if m and current is not None:
            blocks.setdefault(current, {})[(m.group(1).lower(), m.group(2).lower())] = int(m.group(3)) * 1024
    if physical not in blocks:
        raise ValueError(f"mx-smi --show-memory: no memory lines for GPU#{physical}")
    found = blocks[physical]
    for prefix in ("vram", "vis_vram"):
        used, total = found.get((prefix, "used")), found.get((prefix, "total"))
        if used is not None and total is not None:
            if total <= 0 or used > total:
                raise ValueError(f"mx-smi --show-memory: GPU#{physical} {prefix} used {used} > total {total} bytes")
            return used, total
    raise ValueError(f"mx-smi --show-memory: GPU#{physical}: no used/total pair")


def mxsmi_memory(physical: int) -> tuple[int, int]:
    """(used, total) bytes of MetaX GPU ``physical`` through ``mx-smi --show-memory -i <physical>``.

    Raises:
        ToolError: ``mx-smi`` missing, failing or timing out. ValueError: unreadable output.
    """
    out = accelerator.run_tool(MXSMI, "--show-memory", "-i", str(physical), timeout=TOOL_TIMEOUT_S)
    return parse_mxsmi_memory(out, physical)


def parse_nvidia_smi_memory(text: str) -> tuple[int, int]:
    """(used, total) bytes from ``nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader,nounits``
    (one line ``used, total`` in MiB).

    Raises:
        ValueError: not two integers, or used > total or total 0.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    m = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", lines[0]) if lines else None
    if m is None:
        raise ValueError(f"nvidia-smi memory query: unreadable {lines[:1]}")
    used, total = int(m.group(1)) * 1024 ** 2, int(m.group(2)) * 1024 ** 2
    if total <= 0 or used > total:
        raise ValueError(f"nvidia-smi memory query: used {used} > total {total} bytes")
    return used, total


def nvidia_smi_memory(physical: int) -> tuple[int, int]:
    """(used, total) bytes of NVIDIA GPU ``physical`` through ``nvidia-smi``.

    Raises:
        ToolError: ``nvidia-smi`` missing, failing or timing out. ValueError: unreadable output.
    """
    out = accelerator.run_tool(NVIDIA_SMI, "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits",
                               "-i", str(physical), timeout=TOOL_TIMEOUT_S)
    return parse_nvidia_smi_memory(out)


def tool_memory_reader(device: torch.device,
                       vendor: Vendor) -> tuple[Callable[[], int], str, int] | None:
    """``(read used bytes, kind, total bytes)`` of ``device`` through its vendor's tool (MetaX: ``mx-smi``; NVIDIA:
    ``nvidia-smi``), checked with one sample; None where there is no such tool on PATH, the torch index cannot be
    mapped to the tool's, or the sample fails."""
    tools = {Vendor.METAX: (MXSMI, mxsmi_memory, "mx-smi-device-used"),
             Vendor.NVIDIA: (NVIDIA_SMI, nvidia_smi_memory, "nvidia-smi-device-used")}
    if vendor not in tools or not accelerator.has_tool(tools[vendor][0]):
        return None
    _, query, kind = tools[vendor]
    index = device.index if device.index is not None else torch.cuda.current_device()
    physical = accelerator.physical_index(index, vendor)
    if physical is None:
        return None
    try:
        _, total = query(physical)
    except (ToolError, ValueError):
        return None
    return (lambda: query(physical)[0]), kind, total


class DeviceMemoryMonitor:
    """Samples ``read()`` (bytes) every ``interval`` s on a daemon thread and keeps the maximum.

    ``start()`` takes a first sample at once; ``stop()`` takes a last one, ends the thread and returns the peak
    (bytes). Sampling costs one driver call (or one tool process) per interval on another thread: the training
    stream never waits. ``total``: the device's total bytes from the same source (None: torch's figure is used).
    ``fallback``: ``(read, kind)`` that takes over, total dropped, after :data:`TOOL_FAILURES_BEFORE_FALLBACK`
    failed samples in a row (a failed sample otherwise leaves the peak as it is).
    """

    def __init__(self, read: Callable[[], int], kind: str, interval: float = NVML_INTERVAL_S,
                 total: int | None = None, fallback: tuple[Callable[[], int], str] | None = None):
        self.read, self.kind, self.interval, self.total, self.fallback = read, kind, interval, total, fallback
        self.peak = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        try:
            self.peak = max(self.peak, self.read())
            self.failures = 0
        except Exception:  # noqa: BLE001 - a failed sample leaves the peak as it is
            self.failures += 1
            if self.fallback is not None and self.failures >= TOOL_FAILURES_BEFORE_FALLBACK:
                (self.read, self.kind), self.fallback, self.total = self.fallback, None, None
                self._sample()

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
            self._thread.join(timeout=self.interval + TOOL_TIMEOUT_S + 1.0)  # a tool call in flight ends first
        self._sample()
        return self.peak


def start_monitor(device: torch.device) -> DeviceMemoryMonitor | None:
    """A started monitor of ``device``'s used memory (see the module docstring for the source by vendor); None on
    a CPU."""
    if device.type != "cuda":
        return None
    vendor = accelerator.vendor_of(device)
    meminfo = (meminfo_used_reader(device), "cuda-meminfo-device-used")
    nvml = nvml_used_reader(device) if vendor is not Vendor.METAX else None  # MetaX has no NVML
    if nvml is not None:  # a plain function (a stand-in) is read as NVML's v1 query
        return DeviceMemoryMonitor(nvml, getattr(nvml, "kind", NVML_V1_KIND), NVML_INTERVAL_S).start()
    tool = tool_memory_reader(device, vendor)
    if tool is not None:
        read, kind, total = tool
        return DeviceMemoryMonitor(read, kind, TOOL_INTERVAL_S, total, fallback=meminfo).start()
    return DeviceMemoryMonitor(*meminfo, NVML_INTERVAL_S).start()


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
        if monitor.total is not None:  # used and total from the same tool
            total = monitor.total / GIB
        return MemoryUse(used, total, monitor.kind, allocated, reserved, used)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return MemoryUse(rss_kib * 1024 / GIB, total / GIB, "cpu-rss")


def driver_version() -> str | None:
    """The accelerator's driver version (NVIDIA: NVML, else ``nvidia-smi``; MetaX: ``mx-smi``'s Kernel Mode Driver
    Version; see :func:`train.accelerator.driver_version`), or None where it cannot be read."""
    return accelerator.driver_version()
