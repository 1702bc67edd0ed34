"""What the ``cuda`` device really is: an NVIDIA GPU, a MetaX GPU (MetaX's torch presents its C500 as ``cuda``),
an AMD GPU (a ROCm build of torch, ``torch.version.hip``), another CUDA-like accelerator, or none.

The answer is an :class:`Accelerator` (vendor, device name, driver version, the vendor tool's name and version, the
MACA version on MetaX): the one place the rest of the project learns the vendor from; memory reading
(:mod:`train.memory`), the environment block (:mod:`train.environment`), the loader check (:mod:`train.build`)
and TF32 (:mod:`train.precision`) ask here.

How the vendor is told (first match wins):

1. ``torch.version.hip`` set: AMD (ROCm).
2. the device name (``torch.cuda.get_device_name``; it starts CUDA) contains ``MetaX``: MetaX; an NVIDIA product
   name (``NVIDIA``, ``Tesla``, ``GeForce``, ``Quadro``, ``TITAN``, or a bare ``A100-...``-style model): NVIDIA;
3. torch's version carries MetaX's build tag (``2.0.0+mc2.18.0.8``, ``2.6.0+metax3.2.1.3``): MetaX;
4. MetaX's ``mx-smi`` is on PATH while no NVIDIA driver is visible: MetaX;
5. an NVIDIA driver is visible (``/proc/driver/nvidia/version``, ``nvidia-smi`` on PATH, or NVML initialises):
   NVIDIA; else another CUDA-like device (``other-cuda``).

:func:`vendor_hint` applies 1, 3 and 4 only, without any CUDA call: the TF32 switch of MetaX's torch is an
environment variable that has to be set before CUDA starts.

The training device (``train --device auto|cpu|cuda|cuda:N``) is chosen here too (:func:`choose_device`): ``auto``
takes a GPU where torch can use one (any vendor's ``cuda`` device) and the CPU otherwise; a GPU asked for by
name, or a GPU-only choice left to ``auto`` on a machine without one (:func:`gpu_only_refusal`), is a one-line
error saying why torch cannot use a GPU here (:func:`cuda_unavailable_reason`) and that ``--device cpu`` runs it
on the CPU.

Vendor tools, each run with a timeout; a missing, failing or unreadable tool gives :class:`ToolError` (callers
fall back, a run never stops for it): plain ``mx-smi`` (MX-SMI 2.2.8 prints ``mx-smi  version: 2.2.8``, ``Kernel
Mode Driver Version: 3.0.11`` and ``MACA Version: 3.1.0.14``; FlagPerf's ``metax_monitor.py`` samples the same
command every 5 s), ``nvidia-smi --query-gpu=driver_version``, and NVML through ``nvidia-ml-py`` for the NVIDIA
driver.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch

MXSMI = "mx-smi"
NVIDIA_SMI = "nvidia-smi"
TOOL_TIMEOUT_S = 10.0  # s, the longest a vendor tool may take before it counts as failed
NVIDIA_DRIVER_PROC = "/proc/driver/nvidia/version"

_METAX_TAG = re.compile(r"\+(mc|metax)\d", re.IGNORECASE)
_NVIDIA_NAME = re.compile(r"\b(nvidia|tesla|geforce|quadro|titan|jetson)\b|^(a|b|h|l|t|v|gh|gb)\d+[a-z]?\b",
                          re.IGNORECASE)
_COLON = "[:\uff1a]"  # mx-smi may print a full-width colon in a Chinese locale


class Vendor(str, Enum):
    """Who made the device torch calls ``cuda`` (``none``: no such device)."""

    NVIDIA = "nvidia"
    METAX = "metax"
    AMD = "amd"
    OTHER_CUDA = "other-cuda"
    NONE = "none"


class ToolError(RuntimeError):
    """A vendor tool is not on PATH, failed (exit status, timeout) or printed something unreadable."""


@dataclass(frozen=True)
class Accelerator:
    """What the ``cuda`` device is; ``None``: not readable here.

    Attributes:
        vendor: :class:`Vendor`.
        name: the device name torch reports (``MetaX C500``, ``NVIDIA H100 80GB HBM3``).
        driver: the kernel driver's version (MetaX: ``Kernel Mode Driver Version`` of ``mx-smi``; NVIDIA: NVML,
            else ``nvidia-smi``).
        tool: the vendor tool and its version, e.g. ``mx-smi 2.2.8``, ``nvidia-smi 550.54.15``.
        maca: MetaX's MACA software stack version (``mx-smi``'s ``MACA Version``); None on other vendors.
    """

    vendor: Vendor
    name: str | None = None
    driver: str | None = None
    tool: str | None = None
    maca: str | None = None

    @property
    def is_nvidia(self) -> bool:
        return self.vendor is Vendor.NVIDIA

    def describe(self, device: torch.device) -> str:
        """How a message names the device: ``MetaX C500 (cuda:0)``."""
        return f"{self.name or self.vendor.value} ({device})"


def run_tool(name: str, *args: str, timeout: float = TOOL_TIMEOUT_S) -> str:
    """The standard output of vendor tool ``name`` run with ``args``.

    Raises:
        ToolError: ``name`` is not on PATH, could not start, ran longer than ``timeout`` s or exited non-zero.
    """
    exe = shutil.which(name)
    if exe is None:
        raise ToolError(f"{name}: not on PATH")
    try:
        out = subprocess.run([exe, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True, errors="replace", timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolError(f"{name} {' '.join(args)}: {exc}") from None
    if out.returncode != 0:
        raise ToolError(f"{name} {' '.join(args)}: exit status {out.returncode}")
    return out.stdout


def has_tool(name: str) -> bool:
    return shutil.which(name) is not None


def nvidia_driver_visible() -> bool:
    """An NVIDIA kernel driver is visible: ``/proc/driver/nvidia/version``, ``nvidia-smi`` on PATH, or NVML
    initialises (no CUDA call)."""
    if Path(NVIDIA_DRIVER_PROC).exists() or has_tool(NVIDIA_SMI):
        return True
    return nvml_driver_version() is not None


def metax_build() -> bool:
    """torch's version carries MetaX's build tag (``+mc2.18.0.8``, ``+metax3.2.1.3``)."""
    return _METAX_TAG.search(str(torch.__version__)) is not None


def vendor_hint() -> Vendor | None:
    """The vendor as far as it can be told without starting CUDA (ROCm build, MetaX build tag, ``mx-smi`` without
    an NVIDIA driver), else None (undecided: it takes the device name)."""
    if getattr(torch.version, "hip", None):
        return Vendor.AMD
    if metax_build() or (has_tool(MXSMI) and not nvidia_driver_visible()):
        return Vendor.METAX
    return None


def classify(name: str | None) -> Vendor:
    """The vendor of a ``cuda`` device named ``name`` (None: its name could not be read); see the module
    docstring for the order of the rules."""
    if getattr(torch.version, "hip", None):
        return Vendor.AMD
    if name and "metax" in name.lower():
        return Vendor.METAX
    if name and _NVIDIA_NAME.search(name.strip()):
        return Vendor.NVIDIA
    hint = vendor_hint()
    if hint is not None:
        return hint
    return Vendor.NVIDIA if nvidia_driver_visible() else Vendor.OTHER_CUDA


def _cuda_index(device: torch.device | None) -> int:
    if device is not None and device.index is not None:
        return device.index
    return torch.cuda.current_device() if torch.cuda.is_initialized() else 0


def device_name(device: torch.device | None = None) -> str | None:
    """``torch.cuda.get_device_name`` of ``device`` (None: the current one), None where it cannot be read."""
    try:
        return str(torch.cuda.get_device_name(_cuda_index(device)))
    except Exception:  # noqa: BLE001 - no device, a driver error: the name is unknown
        return None


def _is_cuda(device: torch.device | None) -> bool:
    return (device is None or device.type == "cuda") and torch.cuda.is_available()


def vendor_of(device: torch.device | None = None) -> Vendor:
    """The vendor of ``device`` (None: the current ``cuda`` device); ``none`` for a CPU device or without CUDA.
    Reads the device name (starts CUDA), runs no vendor tool."""
    return classify(device_name(device)) if _is_cuda(device) else Vendor.NONE


def identify(device: torch.device | None = None) -> Accelerator:
    """Vendor and name of ``device`` without running a vendor tool (driver, tool and MACA left None)."""
    if not _is_cuda(device):
        return Accelerator(Vendor.NONE)
    name = device_name(device)
    return Accelerator(classify(name), name)


def detect(device: torch.device | None = None) -> Accelerator:
    """Everything known of ``device`` (None: the current ``cuda`` device): vendor, name and, from the vendor's
    tools, driver, tool version and (MetaX) MACA version; a tool that fails leaves its fields None."""
    acc = identify(device)
    if acc.vendor is Vendor.METAX:
        info = _try(mxsmi_info)
        if info is not None:
            return Accelerator(acc.vendor, acc.name, info.driver, info.tool, info.maca)
    elif acc.vendor is Vendor.NVIDIA:
        smi = _try(nvidia_smi_driver)
        return Accelerator(acc.vendor, acc.name, nvml_driver_version() or smi,
                           f"{NVIDIA_SMI} {smi}" if smi else None)
    return acc


def driver_version(device: torch.device | None = None) -> str | None:
    """The accelerator's driver version (NVIDIA: NVML, else ``nvidia-smi``; MetaX: ``mx-smi``), None where
    there is none or it cannot be read. Runs a tool only where the vendor's library cannot tell."""
    vendor = vendor_of(device)
    if vendor is Vendor.NVIDIA:
        return nvml_driver_version() or _try(nvidia_smi_driver)
    if vendor is Vendor.METAX:
        info = _try(mxsmi_info)
        return info.driver if info is not None else None
    return None


def _try(read):
    try:
        return read()
    except (ToolError, ValueError):
        return None


# --- the training device (--device) ---------------------------------------------------------------------------

DEVICE_AUTO = "auto"
DEVICE_FORMS = "auto, cpu, cuda or cuda:N"  # what --device takes, as messages say it
FALLBACK_HINT = "--device cpu runs it on the CPU"


def parse_device(text: str) -> str:
    """``--device`` as given: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (N >= 0), lower-cased and without spaces
    (``CUDA:01`` -> ``cuda:1``).

    Raises:
        ValueError: any other text (one line naming the forms).
    """
    t = str(text).strip().lower()
    m = re.fullmatch(r"cuda:(\d+)", t)
    if m is not None:
        return f"cuda:{int(m.group(1))}"
    if t in (DEVICE_AUTO, "cpu", "cuda"):
        return t
    raise ValueError(f"--device takes {DEVICE_FORMS}, got {text!r}")


def cuda_unavailable_reason() -> str:
    """Why torch cannot use CUDA here, in a few words: a torch built without CUDA, the warning torch gives when it
    cannot use the driver (a CUDA-13 torch on an older driver: ``The NVIDIA driver on your system is too old``),
    or no GPU visible. Call it where ``torch.cuda.is_available()`` is False."""
    if torch.version.cuda is None and not getattr(torch.version, "hip", None):
        return f"torch {torch.__version__} is built without CUDA"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.is_available()
    for caught_warning in caught:
        text = " ".join(str(caught_warning.message).split())
        if text:
            text = re.sub(r"^CUDA initialization: ", "", text)
            first = re.split(r"(?<=[.!])\s", text, maxsplit=1)[0]
            return (first[:157] + "...") if len(first) > 160 else first.rstrip(".")
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) is not None and not os.environ["CUDA_VISIBLE_DEVICES"].strip():
        return "CUDA_VISIBLE_DEVICES is empty"
    return "no GPU visible" + (" (the NVIDIA driver is there, torch cannot use it)" if nvidia_driver_visible() else "")


def choose_device(requested: str, local_rank: int = 0, ranks_per_node: int = 1) -> torch.device:
    """This rank's training device for ``--device requested`` (:func:`parse_device`'s forms): ``auto`` is
    ``cuda:<local_rank>`` where torch can use CUDA, else the CPU; ``cpu`` the CPU (also on a machine with GPUs);
    ``cuda`` ``cuda:<local_rank>``; ``cuda:N`` GPU N (one process per node). Starts no CUDA context.

    Raises:
        ValueError: one line: a GPU asked for where torch can use none (why, and that ``--device cpu`` runs on
            the CPU), a GPU index or ``LOCAL_RANK`` beyond the GPU count, ``cuda:N`` for several ranks per node.
    """
    requested = parse_device(requested)
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if requested == DEVICE_AUTO:
            return torch.device("cpu")
        raise ValueError(f"--device {requested}: no usable GPU here ({cuda_unavailable_reason()}); {FALLBACK_HINT}")
    count = torch.cuda.device_count()
    if requested.startswith("cuda:"):
        index = int(requested.split(":")[1])
        if ranks_per_node > 1:
            raise ValueError(f"--device {requested} would put all {ranks_per_node} ranks of a node on one GPU; "
                             f"under torchrun use --device cuda (rank i on cuda:i)")
        if index >= count:
            raise ValueError(f"--device {requested}: this node has {count} GPU(s) (cuda:0 to cuda:{count - 1})")
        return torch.device("cuda", index)
    if local_rank >= count:
        raise ValueError(f"LOCAL_RANK={local_rank} but this node has {count} GPU(s); use --nproc-per-node <= the GPU "
                         f"count")
    return torch.device("cuda", local_rank)


def gpu_only_refusal(requested: str, device: torch.device, asked: tuple[str, ...]) -> str | None:
    """Why the run stops at its start, in one line, or None: ``asked`` (the flags that only make sense on a GPU,
    as typed, e.g. ``("--loader nvjpeg", "--precision amp")``) with ``--device auto`` left to fall back to the CPU
    (``device``). An explicit ``--device cpu`` accepts the fallback: None."""
    if not asked or device.type != "cpu" or parse_device(requested) != DEVICE_AUTO:
        return None
    return (f"{' and '.join(asked)} asked for a GPU, but there is no usable one here ({cuda_unavailable_reason()}); "
            f"{FALLBACK_HINT}")


# --- MetaX: mx-smi -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MxSmiInfo:
    """What plain ``mx-smi`` says of the machine: ``tool`` (``mx-smi 2.2.8``), ``driver`` (Kernel Mode Driver
    Version), ``maca`` (MACA Version); None for a line it did not print."""

    tool: str | None
    driver: str | None
    maca: str | None


def parse_mxsmi(text: str) -> MxSmiInfo:
    """Parse plain ``mx-smi``'s output (MX-SMI 2.2.8's format; tolerant of spacing).

    Raises:
        ValueError: none of the version lines is there (not ``mx-smi``'s output).
    """
    def find(pattern: str) -> str | None:
        m = re.search(pattern, text, re.IGNORECASE)
        return m.group(1) if m else None

    version = find(rf"mx-smi\s+version\s*{_COLON}\s*(\d[\w.\-]*)") or find(r"\bMX-SMI\s+(\d[\w.\-]*)")
    info = MxSmiInfo(f"{MXSMI} {version}" if version else None,
                     find(rf"Kernel\s+Mode\s+Driver\s+Version\s*{_COLON}\s*(\d[\w.\-]*)"),
                     find(rf"MACA\s+Version\s*{_COLON}\s*(\d[\w.\-]*)"))
    if info == MxSmiInfo(None, None, None):
        raise ValueError("no version line in mx-smi's output")
    return info


def mxsmi_info() -> MxSmiInfo:
    """Plain ``mx-smi``, parsed.

    Raises:
        ToolError: not on PATH, failed or timed out. ValueError: unreadable output.
    """
    return parse_mxsmi(run_tool(MXSMI))


# --- NVIDIA: NVML, nvidia-smi ------------------------------------------------------------------------------------

def nvml_driver_version() -> str | None:
    """The NVIDIA driver version through NVML (``nvidia-ml-py``), None where NVML is not available."""
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - not installed, no driver library
        return None


def nvidia_smi_driver() -> str:
    """The driver version ``nvidia-smi`` reports (the same as ``nvidia-smi``'s own version).

    Raises:
        ToolError: not on PATH, failed or timed out. ValueError: unreadable output.
    """
    lines = [ln.strip() for ln in run_tool(NVIDIA_SMI, "--query-gpu=driver_version",
                                           "--format=csv,noheader").splitlines() if ln.strip()]
    if not lines or not re.fullmatch(r"\d[\w.\-]*", lines[0]):
        raise ValueError(f"nvidia-smi printed no driver version: {lines[:1]}")
    return lines[0]


# --- device numbering ----------------------------------------------------------------------------------------

def visible_devices_variables(vendor: Vendor) -> tuple[str, ...]:
    """The variables that renumber devices for ``vendor``'s runtime, the first set one used: MetaX's
    ``MACA_VISIBLE_DEVICES``, then ``CUDA_VISIBLE_DEVICES``."""
    if vendor is Vendor.METAX:
        return ("MACA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")
    return ("CUDA_VISIBLE_DEVICES",)


def physical_index(index: int, vendor: Vendor) -> int | None:
    """The index the vendor tool knows device ``cuda:index`` by: ``index`` itself when no visible-devices
    variable is set, the variable's ``index``-th entry when it holds plain integers, None where it cannot be
    told (UUIDs, MIG names, fewer entries)."""
    for var in visible_devices_variables(vendor):
        text = os.environ.get(var)
        if text is None:
            continue
        entries = [e.strip() for e in text.split(",")]
        if not all(e.isdigit() for e in entries) or index >= len(entries):
            return None
        return int(entries[index])
    return index


__all__ = ["Accelerator", "MxSmiInfo", "ToolError", "Vendor", "choose_device", "classify", "cuda_unavailable_reason",
           "detect", "device_name", "driver_version", "gpu_only_refusal", "identify", "mxsmi_info",
           "nvidia_driver_visible", "parse_device", "physical_index", "run_tool", "vendor_hint", "vendor_of"]
