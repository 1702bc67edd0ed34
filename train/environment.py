"""The machine a run ran on, as FlagPerf's vendor pages describe it (硬件环境 / 软件环境).

Every field is read from the running system; a field that cannot be read is ``None`` (the report then says
"unknown" rather than guess). Sources: ``/etc/os-release`` (OS), ``platform.release()`` (kernel),
``/proc/cpuinfo`` (CPU model), ``/sys/class/dmi/id`` (machine model), torch's CUDA runtime (accelerator model,
count, CUDA version), :mod:`train.accelerator` (what the ``cuda`` device is: vendor; driver from NVML or
``nvidia-smi`` on NVIDIA, from plain ``mx-smi``'s "Kernel Mode Driver Version" on MetaX; the vendor tool's version;
MetaX's MACA version), :func:`train.precision.tf32_state` (how TF32 was set and whether it is on),
``/.dockerenv`` / ``/proc/1/cgroup`` (inside a container; the Docker version is the host's and cannot be read from
inside, so it stays unknown there unless ``docker`` is on PATH), ``/sys/class/infiniband`` (multi-node network:
InfiniBand / RoCE port rate). Software versions: :func:`software_versions` (the metrics JSON's ``versions``).

Also what identifies one run (:class:`RunIdentity`, :func:`run_identity`): its start time, the host, this project's
version and git commit, and :func:`manifest_sha256`, the identity of the shards' manifest.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from train import accelerator
from train.accelerator import Accelerator, Vendor
from train.memory import driver_version
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


def collect(world_size: int, processes_per_node: int, versions: dict) -> Environment:
    """This process's :class:`Environment` for a run of ``world_size`` ranks, ``processes_per_node`` per node;
    ``versions`` as :func:`software_versions` returns them (its ``driver`` is used where the
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


# --- what identifies a run ---------------------------------------------------------------------------------------

DISTRIBUTION = "imagenet-pipeline"  # pyproject.toml's [project] name
UNKNOWN = "unknown"
_CHECKOUT = Path(__file__).resolve().parents[1]  # the folder holding train/ (and pyproject.toml, .git in a checkout)


@dataclass(frozen=True)
class RunIdentity:
    """Which run a metrics JSON reports (its keys stand at the JSON's top level, beside ``argv``).

    ``start_time``: when the run started, ISO-8601 in UTC (``2026-12-07T10:15:02.123+00:00``); ``host``: the
    machine's host name (rank 0's); ``project_version``: this project's version (pyproject.toml's);
    ``git_commit``: the 40-hex commit of the checkout the code runs from, ``unknown`` outside a git checkout."""

    start_time: str
    host: str
    project_version: str
    git_commit: str

    def to_json(self) -> dict:
        return asdict(self)


def iso_utc(unix_s: float) -> str:
    """``unix_s`` (s since the epoch) as ISO-8601 UTC with milliseconds and an explicit ``+00:00`` offset (which
    ``datetime.fromisoformat`` reads back on every Python)."""
    return datetime.datetime.fromtimestamp(unix_s, datetime.timezone.utc).isoformat(timespec="milliseconds")


def host_name() -> str:
    """This machine's host name (``socket.gethostname()``), ``unknown`` where it has none."""
    try:
        return socket.gethostname() or UNKNOWN
    except OSError:
        return UNKNOWN


def project_version(checkout: Path = _CHECKOUT) -> str:
    """This project's version: the installed distribution's (``importlib.metadata``), else, in a checkout that was
    never installed, the ``version`` of ``checkout/pyproject.toml``'s ``[project]`` table; ``unknown`` when
    neither says."""
    import importlib.metadata

    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        text = (checkout / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return UNKNOWN
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)  # the [project] table's lines
    found = re.search(r'^version\s*=\s*["\']([^"\']+)["\']', project.group(1), re.M) if project else None
    return found.group(1) if found else UNKNOWN


def git_commit(checkout: Path = _CHECKOUT) -> str:
    """The commit (40 hex digits) of the git checkout the code runs from (``checkout`` holds ``.git``): from
    ``git rev-parse HEAD`` (5 s at most), with ``-dirty`` appended where tracked files differ from it (as ``git
    describe --dirty``: the run's code is not that commit's), else read from ``.git`` itself (``HEAD``, its loose
    ref or ``packed-refs``; changes then unknown); ``unknown`` outside a checkout or where neither works. Never
    raises."""
    dot_git = checkout / ".git"
    if not dot_git.exists():  # an installed copy: site-packages may sit inside some other repository
        return UNKNOWN
    exe = shutil.which("git")
    if exe is not None:
        try:
            out = subprocess.run([exe, "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                                 timeout=5)
            commit = out.stdout.strip()
            if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit):
                changed = subprocess.run([exe, "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                                         capture_output=True, text=True, timeout=5)
                return commit + ("-dirty" if changed.returncode == 0 and changed.stdout.strip() else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return _commit_from_files(dot_git)


def _commit_from_files(dot_git: Path) -> str:
    """HEAD's commit read from a ``.git`` folder (or a worktree's ``.git`` file pointing at one); ``unknown``."""
    try:
        if dot_git.is_file():  # a worktree or submodule: "gitdir: PATH"
            dot_git = (dot_git.parent / dot_git.read_text().split(":", 1)[1].strip()).resolve()
        head = (dot_git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head if re.fullmatch(r"[0-9a-f]{40}", head) else UNKNOWN
        ref = head.split(":", 1)[1].strip()
        common = dot_git / "commondir"
        roots = [dot_git] + ([(dot_git / common.read_text().strip()).resolve()] if common.is_file() else [])
        for root in roots:
            loose = root / ref
            if loose.is_file():
                return loose.read_text().strip()
            packed = root / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[1] == ref:
                        return parts[0]
    except (OSError, IndexError, UnicodeDecodeError):
        pass
    return UNKNOWN


def run_identity(start_unix_s: float) -> RunIdentity:
    """The :class:`RunIdentity` of a run that started at ``start_unix_s`` (s since the epoch)."""
    return RunIdentity(iso_utc(start_unix_s), host_name(), project_version(), git_commit())


def manifest_sha256(data: Path | str | None) -> str | None:
    """SHA-256 (hex) of the bytes of the shard folder's manifest file, ``_info.json`` (its ``manifest`` lists
    every shard's name, count, size and SHA-256: see :mod:`pipeline.dataset`), at a local folder or URL prefix
    ``data``; None where there is none: synthetic data (``data`` None), an ImageFolder tree, an ``_info.json``
    written without a manifest, or one that cannot be read or parsed now. Never raises."""
    if data is None:
        return None
    from pipeline.dataset import INFO_FILE
    from pipeline.read.tarstream import ShardReadError, is_url, join, read_location

    try:
        raw = read_location(join(data, INFO_FILE)) if is_url(data) else (Path(data) / INFO_FILE).read_bytes()
        has_manifest = bool(json.loads(raw.decode("utf-8")).get("manifest"))
    except (OSError, ShardReadError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return hashlib.sha256(raw).hexdigest() if has_manifest else None
