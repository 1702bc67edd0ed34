"""The machine a run ran on, as FlagPerf's vendor pages describe it (硬件环境 / 软件环境).

Every field is read from the running system; a field that cannot be read is ``None`` (the report then says
"unknown" rather than guess). Sources: ``/etc/os-release`` (OS), ``platform.release()`` (kernel),
``/proc/cpuinfo`` (CPU model), ``/sys/class/dmi/id`` (machine model), torch's CUDA runtime (accelerator model,
count, CUDA version), :mod:`train.accelerator` (what the ``cuda`` device is: vendor; driver from NVML or
``nvidia-smi`` on NVIDIA, from plain ``mx-smi``'s "Kernel Mode Driver Version" on MetaX; the vendor tool's version;
MetaX's MACA version), :func:`train.precision.tf32_state` (how TF32 was set and whether it is on),
``/.dockerenv`` / ``/proc/1/cgroup`` (inside a container; the Docker version is the host's and cannot be read from
inside, so it stays unknown there unless ``docker`` is on PATH), ``/sys/class/infiniband`` (multi-node network:
InfiniBand / RoCE port rate). Software versions come from :func:`train.metrics.software_versions`.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from train import accelerator
from train.accelerator import Accelerator, Vendor
from train.precision import tf32_state


@dataclass(frozen=True)
class Environment:
    """Hardware and software of one run; ``None``: not readable here. ``nodes``: torchrun nodes of the run
    (world size / processes per node); ``interconnect``: e.g. ``"InfiniBand, 200 Gb/s (mlx5_0)"``.

    ``accelerator_vendor``: :class:`train.accelerator.Vendor`'s value (``nvidia``, ``metax``, ``amd``,
    ``other-cuda``; ``none`` on a CPU run); ``driver``: the accelerator's driver version; ``accelerator_tool``: the
    vendor tool and its version (``mx-smi 2.2.8``, ``nvidia-smi 550.54.15``); ``maca``: MetaX's MACA version;
    ``tf32`` / ``tf32_mechanism``: whether TF32 math is on and how it was set (``torch.backends`` or
    ``METAX_USE_TF32``; both None on a CPU run)."""

    machine: str | None
    cpu: str | None
    cpu_cores: int
    accelerator: str | None
    accelerator_vendor: str
    accelerator_count: int
    nodes: int
    processes_per_node: int
    interconnect: str | None
    os: str | None
    kernel: str | None
    driver: str | None
    accelerator_tool: str | None
    docker: str | None
    framework: str
    cuda: str | None
    maca: str | None
    tf32: bool | None
    tf32_mechanism: str | None
    dependencies: dict

    def to_json(self) -> dict:
        return asdict(self)


def _read(path: str) -> str | None:
    try:
        text = Path(path).read_text(errors="replace").strip()
    except OSError:
        return None
    return text or None


def os_name() -> str | None:
    """``PRETTY_NAME`` of ``/etc/os-release`` (e.g. ``Ubuntu 22.04.4 LTS``), else ``platform.platform()``."""
    text = _read("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"') or None
    return platform.platform() or None


def cpu_model() -> str | None:
    """The first ``model name`` of ``/proc/cpuinfo`` (x86), else ``platform.processor()``."""
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip() or None
    return platform.processor() or None


def machine_model() -> str | None:
    """Vendor and product name from DMI (``/sys/class/dmi/id``), None where absent or a placeholder."""
    parts = [_read(f"/sys/class/dmi/id/{f}") for f in ("sys_vendor", "product_name")]
    name = " ".join(p for p in parts if p and "to be filled" not in p.lower() and p.lower() != "none")
    return name or None


def docker_version() -> str | None:
    """``docker --version`` where the client is on PATH; None otherwise (inside a container the host's version
    is not visible)."""
    exe = shutil.which("docker")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def interconnect() -> str | None:
    """InfiniBand / RoCE HCAs and their first port's rate from ``/sys/class/infiniband`` (``rate`` reads e.g.
    ``200 Gb/sec (4X HDR)``; ``link_layer`` ``InfiniBand`` or ``Ethernet`` = RoCE); None without one."""
    root = Path("/sys/class/infiniband")
    if not root.is_dir():
        return None
    found = []
    for hca in sorted(root.iterdir()):
        ports = sorted((hca / "ports").glob("*")) if (hca / "ports").is_dir() else []
        if not ports:
            continue
        layer = _read(str(ports[0] / "link_layer")) or "InfiniBand"
        rate = _read(str(ports[0] / "rate")) or "rate unknown"
        found.append(f"{'RoCE' if layer == 'Ethernet' else 'InfiniBand'}, {rate} ({hca.name})")
    return "; ".join(found) or None


def collect(world_size: int, processes_per_node: int, versions: dict) -> Environment:
    """This process's :class:`Environment` for a run of ``world_size`` ranks, ``processes_per_node`` per node;
    ``versions`` as :func:`train.metrics.software_versions` returns them (its ``driver`` is used where the
    accelerator's tools give none)."""
    cuda = torch.cuda.is_available()
    per_node = max(1, processes_per_node)
    deps = {k: versions.get(k) for k in ("python", "torchvision", "cudnn", "dali")}
    acc = accelerator.detect() if cuda else Accelerator(Vendor.NONE)
    tf32 = tf32_state(acc.vendor)
    return Environment(
        machine=machine_model(), cpu=cpu_model(), cpu_cores=os.cpu_count() or 1,
        accelerator=acc.name, accelerator_vendor=acc.vendor.value,
        accelerator_count=torch.cuda.device_count() if cuda else 0,
        nodes=max(1, world_size // per_node), processes_per_node=per_node, interconnect=interconnect(),
        os=os_name(), kernel=platform.release() or None, driver=acc.driver or versions.get("driver"),
        accelerator_tool=acc.tool, docker=docker_version(), framework=f"pytorch-{torch.__version__}",
        cuda=versions.get("cuda"), maca=acc.maca, tf32=tf32.enabled if tf32 is not None else None,
        tf32_mechanism=tf32.mechanism.value if tf32 is not None else None, dependencies=deps)
