"""CUDA-like accelerators that are not NVIDIA (MetaX's C500 is torch's ``cuda`` there): vendor detection, memory from
the vendor's tool (a fake ``mx-smi`` / ``nvidia-smi`` first on PATH, printing the real formats), its fallbacks, the
environment block and the vendor page, the one-line refusal of dali / nvjpeg, and TF32's MetaX variable.

All on a CPU-only machine: torch's CUDA calls are monkeypatched stand-ins.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
import torch

from train import accelerator, memory
from train.accelerator import Vendor

GIB = 1024 ** 3

MXSMI_PLAIN = """mx-smi  version: 2.2.8

=================== MetaX System Management Interface Log ===================
Timestamp                                         : Tue Mar 10 09:14:02 2026

Attached GPUs                                     : 2
+---------------------------------------------------------------------------------+
| MX-SMI 2.2.8                        Kernel Mode Driver Version: 3.0.11          |
| MACA Version: 3.1.0.14              BIOS Version: 1.26.1.0                      |
|------------------------------------+---------------------+----------------------+
| GPU     NAME         Persistence-M | Bus-id              | GPU-Util      sGPU-M |
| Temp    Pwr:Usage/Cap         Perf | Memory-Usage        | GPU-State            |
|====================================+=====================+======================|
| 0       MetaX C500             Off | 0000:01:00.0        | 3%            Native |
| 41C     71W / 350W              P0 | 4096/65536 MiB      | Available            |
+------------------------------------+---------------------+----------------------+
| 1       MetaX C500             Off | 0000:21:00.0        | 0%            Native |
| 36C     30W / 350W              P0 | 812/65536 MiB       | Available            |
+------------------------------------+---------------------+----------------------+

End of Log
"""

TOTAL_KB = 67108864  # 64 GiB
USED_KB = {0: 4194304, 1: 831488}  # 4 GiB on GPU 0, 812 MiB on GPU 1
VIS_USED_KB = {0: 4190000, 1: 830000}


def mem_block(gpu: int, vram: bool = True) -> str:
    lines = [f"GPU#{gpu}  MXC500  0000:{1 + 32 * gpu:02x}:00.0",
             f"    vis_vram total        : {TOTAL_KB} KB",
             f"    vis_vram used         : {VIS_USED_KB[gpu]} KB",
             "    vis_vram usage        : 6 %"]
    if vram:
        lines += [f"    vram total            : {TOTAL_KB} KB",
                  f"    vram used             : {USED_KB[gpu]} KB",
                  "    vram usage            : 6 %"]
    return "\n".join(lines) + "\n\n"


MEM_ALL = mem_block(0) + mem_block(1)


def fake_tool(bin_dir: Path, name: str, outputs: dict, rc: int = 0) -> Path:
    """An executable ``bin_dir/name`` that prints ``outputs[" ".join(args)]`` and exits ``rc`` (2 with a message
    on stderr for arguments it does not know), logging each call's arguments to ``bin_dir/name.calls``."""
    bin_dir.mkdir(exist_ok=True)
    lines = ["#!/bin/sh", f'echo "$*" >> "{bin_dir / name}.calls"', 'case "$*" in']
    for i, (args, text) in enumerate(outputs.items()):
        out = bin_dir / f"{name}.out{i}"
        out.write_text(text)
        lines.append(f'  "{args}") cat "{out}" ;;')
    lines += ['  *) echo "unknown option: $*" >&2; exit 2 ;;', "esac", f"exit {rc}"]
    script = bin_dir / name
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return script


def calls(bin_dir: Path, name: str) -> list:
    path = bin_dir / f"{name}.calls"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(autouse=True)
def tf32_flags():
    """torch's TF32 flags as they were before each test (monkeypatch cannot restore them: torch's module objects)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def bin_dir(tmp_path, monkeypatch) -> Path:
    """An empty folder put first on PATH (the fake tools go there)."""
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ.get('PATH', '')}")
    return d


def cuda_stand_in(monkeypatch, name: str, count: int = 2, free_total=(60 * GIB, 64 * GIB)) -> None:
    """torch sees ``count`` ``cuda`` devices called ``name``; no NVIDIA driver is visible, no NVML."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: free_total)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: types.SimpleNamespace(total_memory=free_total[1], name=name, uuid="0"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 2 * GIB)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 3 * GIB)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(accelerator, "nvidia_driver_visible", lambda: False)
    monkeypatch.setattr(accelerator, "nvml_driver_version", lambda: None)
    monkeypatch.setattr(memory, "nvml_used_reader", lambda device: None)
    monkeypatch.setattr(torch.version, "hip", None)
    for var in ("CUDA_VISIBLE_DEVICES", "MACA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def metax(monkeypatch, bin_dir) -> Path:
    """A MetaX C500 stand-in: MetaX's torch build tag, two ``cuda`` devices named ``MetaX C500`` and a fake
    ``mx-smi`` (plain, ``--show-memory``, ``--show-memory -i N``); returns the fake tool's folder."""
    cuda_stand_in(monkeypatch, "MetaX C500")
    monkeypatch.setattr(torch, "__version__", "2.6.0+metax3.2.1.3")
    fake_tool(bin_dir, "mx-smi", {"": MXSMI_PLAIN, "--show-memory": MEM_ALL,
                                  "--show-memory -i 0": mem_block(0), "--show-memory -i 1": mem_block(1)})
    return bin_dir


# --- vendor detection --------------------------------------------------------------------------------------------

def test_metax_by_device_name(monkeypatch, bin_dir):
    cuda_stand_in(monkeypatch, "MetaX C500")
    monkeypatch.setattr(torch, "__version__", "2.6.0+cu124")
    assert accelerator.vendor_hint() is None  # no tag, no mx-smi: only the name tells
    assert accelerator.vendor_of() is Vendor.METAX
    acc = accelerator.identify(torch.device("cuda", 0))
    assert (acc.vendor, acc.name, acc.is_nvidia) == (Vendor.METAX, "MetaX C500", False)
    assert acc.describe(torch.device("cuda", 0)) == "MetaX C500 (cuda:0)"


@pytest.mark.parametrize("version", ["2.0.0+mc2.18.0.8", "2.6.0+metax3.2.1.3"])
def test_metax_by_torch_version_tag(monkeypatch, bin_dir, version):
    cuda_stand_in(monkeypatch, "C500")  # a name that does not say MetaX
    monkeypatch.setattr(torch, "__version__", version)
    assert accelerator.vendor_hint() is Vendor.METAX  # without any CUDA call
    assert accelerator.vendor_of() is Vendor.METAX


def test_metax_by_mxsmi_without_nvidia_driver(monkeypatch, bin_dir):
    cuda_stand_in(monkeypatch, "Device 0")
    monkeypatch.setattr(torch, "__version__", "2.4.0")
    assert accelerator.vendor_of() is Vendor.OTHER_CUDA  # nothing says MetaX yet
    fake_tool(bin_dir, "mx-smi", {"": MXSMI_PLAIN})
    assert accelerator.vendor_hint() is Vendor.METAX and accelerator.vendor_of() is Vendor.METAX
    monkeypatch.setattr(accelerator, "nvidia_driver_visible", lambda: True)  # an NVIDIA driver beside mx-smi
    assert accelerator.vendor_hint() is None and accelerator.vendor_of() is Vendor.NVIDIA


@pytest.mark.parametrize("name", ["NVIDIA H100 80GB HBM3", "Tesla V100-SXM2-32GB", "A100-SXM4-40GB",
                                  "NVIDIA GeForce RTX 4090"])
def test_nvidia(monkeypatch, bin_dir, name):
    cuda_stand_in(monkeypatch, name)
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu124")
    assert accelerator.vendor_of() is Vendor.NVIDIA and accelerator.identify().is_nvidia


def test_nvidia_by_driver_when_the_name_says_nothing(monkeypatch, bin_dir):
    cuda_stand_in(monkeypatch, "Graphics Device")
    assert accelerator.vendor_of() is Vendor.OTHER_CUDA
    monkeypatch.setattr(accelerator, "nvidia_driver_visible", lambda: True)
    assert accelerator.vendor_of() is Vendor.NVIDIA


def test_amd_rocm(monkeypatch, bin_dir):
    cuda_stand_in(monkeypatch, "AMD Instinct MI300X")
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")
    assert accelerator.vendor_hint() is Vendor.AMD and accelerator.vendor_of() is Vendor.AMD


def test_none_without_cuda_or_on_a_cpu_device(monkeypatch, bin_dir):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert accelerator.vendor_of() is Vendor.NONE
    assert accelerator.detect() == accelerator.Accelerator(Vendor.NONE)
    cuda_stand_in(monkeypatch, "MetaX C500")
    assert accelerator.vendor_of(torch.device("cpu")) is Vendor.NONE


def test_metax_details_from_plain_mxsmi(metax):
    acc = accelerator.detect()
    assert acc == accelerator.Accelerator(Vendor.METAX, "MetaX C500", "3.0.11", "mx-smi 2.2.8", "3.1.0.14")
    # tolerant of spacing and of a full-width colon
    info = accelerator.parse_mxsmi("mx-smi version:2.3.0\n| MX-SMI 2.3.0   Kernel Mode Driver Version\uff1a 3.1.2 |\n"
                                   "| MACA Version :   3.2.0.5  |")
    assert info == accelerator.MxSmiInfo("mx-smi 2.3.0", "3.1.2", "3.2.0.5")
    with pytest.raises(ValueError):
        accelerator.parse_mxsmi("Usage: mx-smi [OPTIONS]")


def test_nvidia_details_from_nvidia_smi(monkeypatch, bin_dir):
    cuda_stand_in(monkeypatch, "NVIDIA H100 80GB HBM3")
    fake_tool(bin_dir, "nvidia-smi", {"--query-gpu=driver_version --format=csv,noheader": "550.54.15\n550.54.15\n"})
    acc = accelerator.detect()
    assert acc == accelerator.Accelerator(Vendor.NVIDIA, "NVIDIA H100 80GB HBM3", "550.54.15", "nvidia-smi 550.54.15")
    monkeypatch.setattr(accelerator, "nvml_driver_version", lambda: "550.54.14")  # NVML first for the driver
    assert accelerator.detect().driver == "550.54.14"


def test_physical_index_from_visible_devices(monkeypatch):
    for var in ("CUDA_VISIBLE_DEVICES", "MACA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    assert accelerator.physical_index(1, Vendor.METAX) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "6, 3")
    assert accelerator.physical_index(1, Vendor.NVIDIA) == 3 and accelerator.physical_index(1, Vendor.METAX) == 3
    assert accelerator.physical_index(2, Vendor.NVIDIA) is None  # fewer entries than the index
    monkeypatch.setenv("MACA_VISIBLE_DEVICES", "5,4")
    assert accelerator.physical_index(1, Vendor.METAX) == 4 and accelerator.physical_index(1, Vendor.NVIDIA) == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f6c1b2e-0000,GPU-1234")
    assert accelerator.physical_index(0, Vendor.NVIDIA) is None  # UUIDs: not mapped


# --- memory -----------------------------------------------------------------------------------------------------

def test_mem_from_mxsmi_of_the_devices_own_block(metax):
    device = torch.device("cuda", 1)
    monitor = memory.start_monitor(device)
    assert (monitor.kind, monitor.interval) == ("mx-smi-device-used", memory.TOOL_INTERVAL_S)
    mem = memory.peak_memory(device, monitor)
    assert mem.kind == "mx-smi-device-used"
    assert mem.used_gib == pytest.approx(USED_KB[1] * 1024 / GIB) and mem.total_gib == pytest.approx(64.0)
    assert (mem.allocated_gib, mem.reserved_gib, mem.device_used_gib) == (2.0, 3.0, mem.used_gib)
    assert set(calls(metax, "mx-smi")) == {"--show-memory -i 1"}  # a first sample and a last one at stop
    assert len(calls(metax, "mx-smi")) >= 2


@pytest.mark.parametrize("var", ["CUDA_VISIBLE_DEVICES", "MACA_VISIBLE_DEVICES"])
def test_mem_from_mxsmi_for_a_remapped_index(metax, monkeypatch, var):
    """cuda:0 is GPU 1 to mx-smi; the fake prints every GPU's block whatever -i says: GPU#1's is read."""
    monkeypatch.setenv(var, "1")
    fake_tool(metax, "mx-smi", {"--show-memory -i 1": MEM_ALL})
    mem = memory.peak_memory(torch.device("cuda", 0), memory.start_monitor(torch.device("cuda", 0)))
    assert mem.kind == "mx-smi-device-used" and mem.used_gib == pytest.approx(USED_KB[1] * 1024 / GIB)
    assert calls(metax, "mx-smi")[0] == "--show-memory -i 1"


def test_mxsmi_memory_parsing():
    assert memory.parse_mxsmi_memory(MEM_ALL, 0) == (USED_KB[0] * 1024, TOTAL_KB * 1024)
    assert memory.parse_mxsmi_memory(MEM_ALL, 1) == (USED_KB[1] * 1024, TOTAL_KB * 1024)
    only_vis = mem_block(0, vram=False) + mem_block(1, vram=False)  # no vram lines: vis_vram's
    assert memory.parse_mxsmi_memory(only_vis, 1) == (VIS_USED_KB[1] * 1024, TOTAL_KB * 1024)
    squeezed = "GPU#3 MXC500 0000:61:00.0\nvram total:1024 KB\nvram used :  512KB\n"
    assert memory.parse_mxsmi_memory(squeezed, 3) == (512 * 1024, 1024 * 1024)
    for bad in ("", "GPU#0  MXC500\n    vram used : lots KB\n", mem_block(0),
                "GPU#1 MXC500\n vram total : 10 KB\n vram used : 20 KB\n"):
        with pytest.raises(ValueError):
            memory.parse_mxsmi_memory(bad, 1)


@pytest.mark.parametrize("case", ["malformed", "exit 1", "missing"])
def test_mem_falls_back_to_mem_get_info(metax, monkeypatch, case):
    if case == "malformed":
        fake_tool(metax, "mx-smi", {"--show-memory -i 0": "GPU#0  MXC500\n    vram used : n/a\n"})
    elif case == "exit 1":
        fake_tool(metax, "mx-smi", {"--show-memory -i 0": mem_block(0)}, rc=1)
    else:
        (metax / "mx-smi").unlink()
        monkeypatch.setenv("PATH", str(metax))  # no mx-smi anywhere
    device = torch.device("cuda", 0)
    mem = memory.peak_memory(device, memory.start_monitor(device))
    assert mem.kind == "cuda-meminfo-device-used"
    assert (mem.used_gib, mem.total_gib) == (pytest.approx(4.0), pytest.approx(64.0))  # 64 - 60 GiB free


def test_a_tool_that_fails_during_the_run_hands_over_to_mem_get_info():
    results = iter([5 * GIB])

    def flaky() -> int:
        value = next(results, None)
        if value is None:
            raise memory.ToolError("mx-smi: exit status 1")
        return value

    monitor = memory.DeviceMemoryMonitor(flaky, "mx-smi-device-used", total=64 * GIB,
                                         fallback=(lambda: 7 * GIB, "cuda-meminfo-device-used"))
    for _ in range(1 + memory.TOOL_FAILURES_BEFORE_FALLBACK - 1):
        monitor._sample()
    assert (monitor.kind, monitor.peak, monitor.total) == ("mx-smi-device-used", 5 * GIB, 64 * GIB)
    monitor._sample()  # the third failure in a row
    assert (monitor.kind, monitor.peak, monitor.total) == ("cuda-meminfo-device-used", 7 * GIB, None)


def test_mem_on_nvidia_without_nvml_from_nvidia_smi(monkeypatch, bin_dir):
    cuda_stand_in(monkeypatch, "NVIDIA A100-SXM4-80GB")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    fake_tool(bin_dir, "nvidia-smi", {
        "--query-gpu=memory.used,memory.total --format=csv,noheader,nounits -i 5": "10240, 81920\n"})
    device = torch.device("cuda", 1)
    mem = memory.peak_memory(device, memory.start_monitor(device))
    assert (mem.kind, mem.used_gib, mem.total_gib) == ("nvidia-smi-device-used", 10.0, 80.0)
    with pytest.raises(ValueError):
        memory.parse_nvidia_smi_memory("[N/A], [N/A]\n")


def test_mem_on_nvidia_prefers_nvml(monkeypatch, bin_dir):
    cuda_stand_in(monkeypatch, "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(memory, "nvml_used_reader", lambda device: lambda: 9 * GIB)
    fake_tool(bin_dir, "nvidia-smi", {})  # present, never asked
    device = torch.device("cuda", 0)
    monitor = memory.start_monitor(device)
    assert (monitor.kind, monitor.interval) == ("nvml-device-used", memory.NVML_INTERVAL_S)
    mem = memory.peak_memory(device, monitor)
    assert (mem.kind, mem.used_gib, mem.total_gib) == ("nvml-device-used", 9.0, 64.0)
    assert calls(bin_dir, "nvidia-smi") == []


def test_mem_on_another_cuda_device_from_mem_get_info(monkeypatch, bin_dir):
    cuda_stand_in(monkeypatch, "Iluvatar BI-V150")
    device = torch.device("cuda", 0)
    assert memory.peak_memory(device, memory.start_monitor(device)).kind == "cuda-meminfo-device-used"


# --- environment block and vendor page ----------------------------------------------------------------------------

def test_environment_of_a_metax_run_and_its_vendor_page(metax, monkeypatch, tmp_path):
    import json

    from train.environment import collect
    from train.flagperf_page import Lang, load_run, render

    monkeypatch.setenv("METAX_USE_TF32", "1")
    env = collect(1, 1, {"driver": None, "cuda": "12.4"}).to_json()
    assert (env["accelerator"], env["accelerator_vendor"], env["accelerator_count"]) == ("MetaX C500", "metax", 2)
    assert (env["driver"], env["accelerator_tool"], env["maca"]) == ("3.0.11", "mx-smi 2.2.8", "3.1.0.14")
    assert (env["tf32"], env["tf32_mechanism"]) == (True, "METAX_USE_TF32")
    from test_flagperf_page import faithful  # a complete metrics JSON of a MetaX run (tests/unit, same folder)

    run = {**faithful(vendor="metax", layout="1x1"), "environment": env, "device_name": "MetaX C500"}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(run))
    lines = render([load_run(path)], Lang.ZH).splitlines()
    assert "   - 加速卡驱动版本：3.0.11" in lines and "     - maca: 3.1.0.14" in lines
    assert "    - 加速卡型号：MetaX C500 x 2" in lines


def test_environment_of_an_nvidia_run(monkeypatch, bin_dir):
    from train.environment import collect

    cuda_stand_in(monkeypatch, "NVIDIA H100 80GB HBM3", count=8)
    fake_tool(bin_dir, "nvidia-smi", {"--query-gpu=driver_version --format=csv,noheader": "550.54.15\n"})
    torch.backends.cuda.matmul.allow_tf32 = False
    env = collect(1, 1, {"driver": None}).to_json()
    assert (env["accelerator_vendor"], env["driver"], env["accelerator_tool"], env["maca"]) == (
        "nvidia", "550.54.15", "nvidia-smi 550.54.15", None)
    assert (env["tf32"], env["tf32_mechanism"]) == (False, "torch.backends")


def test_environment_of_a_cpu_run(monkeypatch):
    from train.environment import collect

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    env = collect(1, 1, {"driver": None}).to_json()
    assert (env["accelerator"], env["accelerator_vendor"], env["driver"], env["accelerator_tool"]) == (
        None, "none", None, None)
    assert (env["maca"], env["tf32"], env["tf32_mechanism"]) == (None, None, None)


# --- dali / nvjpeg on a device that cannot run them ----------------------------------------------------------------

@pytest.mark.parametrize("loader", ["dali", "nvjpeg"])
def test_dali_and_nvjpeg_refused_on_metax_in_one_line(metax, monkeypatch, tmp_path, capsys, loader):
    from tools import train as train_cli

    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("METAX_USE_TF32", "1")  # FlagPerf's MetaX configs export it; --tf32 not given: 0
    out = tmp_path / "m.json"
    rc = train_cli.main(["--data", str(tmp_path), "--loader", loader, "--batch-size", "4", "--max-steps", "1",
                         "--metrics-json", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists()
    assert err[-1] == (f"train: error: --loader {loader} needs an NVIDIA GPU; this run's device is MetaX C500 "
                       f"(cuda:0): use --loader cpu")
    assert os.environ["METAX_USE_TF32"] == "0"  # set before anything started CUDA
    assert "METAX_USE_TF32=1 in the environment replaced by 0" in "\n".join(err)


@pytest.mark.parametrize("loader", ["dali", "nvjpeg"])
def test_dali_and_nvjpeg_not_refused_on_a_cpu_or_nvidia(monkeypatch, bin_dir, loader):
    from pipeline.backends import LoaderKind, backend_spec
    from train.build import check_loader_device

    check_loader_device(LoaderKind(loader), torch.device("cpu"))  # their CPU paths: the tests rely on them
    cuda_stand_in(monkeypatch, "NVIDIA H100 80GB HBM3")
    check_loader_device(LoaderKind(loader), torch.device("cuda", 0))
    cuda_stand_in(monkeypatch, "AMD Instinct MI300X")
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")
    with pytest.raises(ValueError, match=f"--loader {loader} needs an NVIDIA GPU; this run's device is AMD "
                                         r"Instinct MI300X \(cuda:0\): use --loader cpu"):
        check_loader_device(LoaderKind(loader), torch.device("cuda", 0))
    assert backend_spec(loader).needs_nvidia
    assert not any(backend_spec(k).needs_nvidia for k in ("cpu", "folder", "synthetic"))


def test_cpu_loader_not_refused_on_metax(metax):
    from pipeline.backends import LoaderKind
    from train.build import check_loader_device

    for kind in (LoaderKind.CPU, LoaderKind.FOLDER, LoaderKind.SYNTHETIC):
        check_loader_device(kind, torch.device("cuda", 0))


def test_iobench_skips_dali_on_metax_with_the_reason(metax):
    from pipeline.backends import LoaderKind
    from train.iobench.config import IoBenchConfig
    from train.iobench.setup import BenchSetup, why_not_measured

    setup = BenchSetup(IoBenchConfig(data="x"), types.SimpleNamespace(remote=False), torch.device("cuda", 0), 1,
                       (1,), None, print)
    assert why_not_measured(LoaderKind.DALI, setup) == ("--loader dali needs an NVIDIA GPU; this run's device is "
                                                     "MetaX C500 (cuda:0): use --loader cpu")
    assert why_not_measured(LoaderKind.CPU, setup) is None


# --- TF32 -------------------------------------------------------------------------------------------------------

def test_tf32_on_metax_sets_its_variable(metax, monkeypatch):
    from train.precision import Tf32Mechanism, Tf32State, prepare_tf32_env, set_tf32, tf32_state

    monkeypatch.setenv("METAX_USE_TF32", "x")
    monkeypatch.delenv("METAX_USE_TF32")  # absent, restored after the test
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    assert prepare_tf32_env(True) is Vendor.METAX and os.environ["METAX_USE_TF32"] == "1"
    assert set_tf32(False, Vendor.METAX) == Tf32State(Tf32Mechanism.METAX_ENV, False, False, False)
    assert os.environ["METAX_USE_TF32"] == "0" and not torch.backends.cudnn.allow_tf32  # torch's flags too
    assert tf32_state(Vendor.METAX) == Tf32State(Tf32Mechanism.METAX_ENV, False, False, False)
    # --tf32 default (FlagPerf's): PyTorch's own flags, the inherited variable kept
    monkeypatch.setenv("METAX_USE_TF32", "1")
    assert prepare_tf32_env("default") is Vendor.METAX and os.environ["METAX_USE_TF32"] == "1"
    assert set_tf32("default", Vendor.METAX) == Tf32State(Tf32Mechanism.METAX_ENV, True, False, True)


def test_tf32_elsewhere_leaves_the_metax_variable_alone(monkeypatch, bin_dir):
    from train.precision import Tf32Mechanism, Tf32State, prepare_tf32_env, set_tf32

    cuda_stand_in(monkeypatch, "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu124")
    monkeypatch.setenv("METAX_USE_TF32", "x")
    monkeypatch.delenv("METAX_USE_TF32")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    assert prepare_tf32_env(True) is None and "METAX_USE_TF32" not in os.environ
    assert set_tf32(True, Vendor.NVIDIA) == Tf32State(Tf32Mechanism.TORCH_BACKENDS, True, True, True)
    assert "METAX_USE_TF32" not in os.environ and torch.backends.cuda.matmul.allow_tf32
    # FlagPerf's NVIDIA runs: PyTorch's defaults, cuDNN convolutions in TF32, float32 matmuls not
    assert set_tf32("default", Vendor.NVIDIA) == Tf32State(Tf32Mechanism.TORCH_BACKENDS, False, False, True)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True


def test_driver_version_for_the_versions_block(metax, monkeypatch, bin_dir):
    assert memory.driver_version() == "3.0.11"  # MetaX: mx-smi's Kernel Mode Driver Version
    cuda_stand_in(monkeypatch, "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu124")
    monkeypatch.setattr(accelerator, "nvml_driver_version", lambda: "550.54.15")
    assert memory.driver_version() == "550.54.15" and calls(bin_dir, "nvidia-smi") == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert memory.driver_version() is None
