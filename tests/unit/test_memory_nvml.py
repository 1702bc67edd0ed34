"""NVML's memory query (train.memory): v2 (``used`` without the driver's reserve, as nvidia-smi shows it) where
nvidia-ml-py and the driver have it, v1 otherwise, named in the memory kind. A fake ``pynvml`` module stands in
for nvidia-ml-py (not installed here; no driver either)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from train import accelerator, memory
from train.accelerator import Vendor

GIB = 1024 ** 3
V2 = 0x02000028  # nvidia-ml-py's nvmlMemory_v2: sizeof(nvmlMemory_v2_t) | 2 << 24
V1_USED, V2_USED = 10 * GIB, 9 * GIB  # v1 counts the driver's reserve too


class FakeNVMLError(Exception):
    pass


class FunctionNotFound(FakeNVMLError):
    pass


class NotSupported(FakeNVMLError):
    pass


def fake_pynvml(v2: str = "ok") -> types.ModuleType:
    """A stand-in nvidia-ml-py. ``v2``: ``ok`` (library and driver have it), ``absent`` (nvidia-ml-py < 11.510:
    no ``nvmlMemory_v2``, no ``version`` argument), ``no-kwarg`` (the constant but the old signature),
    ``not-found`` / ``not-supported`` (a driver without the v2 entry point / refusing it), ``no-used`` (a reply
    without ``used``), ``v1-fails`` (v2 absent and v1 raising). ``mod.calls``: the ``version`` of each query."""
    mod = types.ModuleType("pynvml")
    mod.calls = []
    mod.NVMLError, mod.NVMLError_FunctionNotFound, mod.NVMLError_NotSupported = (FakeNVMLError, FunctionNotFound,
                                                                                 NotSupported)
    mod.nvmlInit = lambda: None
    mod.nvmlDeviceGetHandleByUUID = lambda uuid: ("handle", uuid)
    mod.nvmlDeviceGetHandleByIndex = lambda index: ("handle", index)
    if v2 not in ("absent", "v1-fails"):
        mod.nvmlMemory_v2 = V2

    def query(handle, version=None):
        assert handle[0] == "handle"
        mod.calls.append(version)
        if version is None:
            if v2 == "v1-fails":
                raise FakeNVMLError("Unknown Error")
            return types.SimpleNamespace(total=80 * GIB, free=70 * GIB, used=V1_USED)
        if v2 in ("not-found", "not-supported"):
            raise (FunctionNotFound if v2 == "not-found" else NotSupported)(v2)
        if v2 == "no-used":
            return types.SimpleNamespace(c_nvmlMemory_v2_t_used=V2_USED)
        return types.SimpleNamespace(version=version, total=80 * GIB, reserved=GIB, free=71 * GIB, used=V2_USED)

    def old_query(handle):
        return query(handle)

    mod.nvmlDeviceGetMemoryInfo = old_query if v2 in ("absent", "no-kwarg", "v1-fails") else query
    return mod


@pytest.fixture
def nvidia(monkeypatch):
    """torch sees one NVIDIA ``cuda`` device with a UUID (no real CUDA is touched)."""
    monkeypatch.setattr(memory, "cuda_device_uuid", lambda device: "GPU-0123")
    monkeypatch.setattr(accelerator, "vendor_of", lambda device=None: Vendor.NVIDIA)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(
        total_memory=80 * GIB))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 2 * GIB)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 3 * GIB)
    return torch.device("cuda", 0)


def test_v2_is_read_where_nvidia_ml_py_and_the_driver_have_it(monkeypatch, nvidia):
    fake = fake_pynvml("ok")
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    reader = memory.nvml_used_reader(nvidia)
    assert reader.kind == memory.NVML_V2_KIND == "nvml-v2-device-used"
    assert reader() == V2_USED and set(fake.calls) == {V2}  # v1 never asked
    mem = memory.peak_memory(nvidia, memory.start_monitor(nvidia))
    assert (mem.kind, mem.used_gib, mem.total_gib, mem.device_used_gib) == ("nvml-v2-device-used", 9.0, 80.0, 9.0)


@pytest.mark.parametrize("v2", ["absent", "no-kwarg", "not-found", "not-supported", "no-used"])
def test_v1_where_v2_is_missing_or_refused(monkeypatch, nvidia, v2):
    fake = fake_pynvml(v2)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    reader = memory.nvml_used_reader(nvidia)
    assert reader.kind == memory.NVML_V1_KIND == "nvml-device-used"
    tried = list(fake.calls)
    assert reader() == V1_USED and fake.calls[len(tried):] == [None]  # each sample: v1 only, v2 not retried
    assert tried == ([V2, None] if v2 in ("not-found", "not-supported", "no-used") else [None])
    mem = memory.peak_memory(nvidia, memory.start_monitor(nvidia))
    assert (mem.kind, mem.used_gib) == ("nvml-device-used", 10.0)


def test_no_nvml_reader_where_v1_fails_too(monkeypatch, nvidia):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml("v1-fails"))
    assert memory.nvml_used_reader(nvidia) is None


def test_a_plain_reader_counts_as_v1(monkeypatch, nvidia):
    """A stand-in that returns a bare function (as older tests do) is named as NVML's v1 query."""
    monkeypatch.setattr(memory, "nvml_used_reader", lambda device: lambda: 4 * GIB)
    mem = memory.peak_memory(nvidia, memory.start_monitor(nvidia))
    assert (mem.kind, mem.used_gib) == ("nvml-device-used", 4.0)
