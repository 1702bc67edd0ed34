"""FlagPerf metric formulas and the timers, with controlled timings."""

from __future__ import annotations

import time

import pytest

from train.memory import MemoryUse, peak_memory
from train.clock import process_start_time
from train.metrics import RunTimes, flagperf_row, steady_figures
from train.clock import Stopwatch, SyncStepClock, timed_iter


def test_steady_formulas():
    times = RunTimes(e2e=100.0, loop=80.0, eval=16.0, compute=40.0, data=20.0)
    m = steady_figures(6400, times, acc1=71.5, mem=MemoryUse(28.6, 40.0, "cuda-reserved"))
    assert m.p_whole == pytest.approx(6400 / 80)
    assert m.p_train == pytest.approx(6400 / 64)
    assert m.p_core == pytest.approx(6400 / 40)
    assert m.p_core >= m.p_train >= m.p_whole > 0
    assert m.e2e_time == 100.0 and m.mem == "28.6/40.0"
    row = flagperf_row(m, "CPUx1x1", "fp32", "bs=32,lr=0.1", m.mem)
    assert row == "| CPUx1x1 | fp32 | bs=32,lr=0.1 | 100 | 80.0 | 100.0 | 160.0 | 71.5% | 28.6/40.0 |"
    with pytest.raises(ValueError, match="compute"):
        steady_figures(1, RunTimes(1, 1, 0, 0, 0), 0, MemoryUse(0, 1, "x"))


def test_timers_measure_data_wait_and_compute_separately():
    def slow_batches():
        for i in range(5):
            time.sleep(0.02)  # loader work
            yield i

    data, compute = Stopwatch(), SyncStepClock(lambda: None)
    step = compute.wrap(lambda b: time.sleep(0.05))
    t0 = time.perf_counter()
    for b in timed_iter(slow_batches(), data, limit=4):
        step(b)
    wall = time.perf_counter() - t0
    assert data.count == 4 and compute.watch.count == 4
    assert data.total == pytest.approx(0.08, abs=0.03)
    assert compute.total == pytest.approx(0.20, abs=0.05)
    assert data.total + compute.total == pytest.approx(wall, rel=0.1)


def test_timed_iter_raises_when_loader_breaks_its_promise():
    with pytest.raises(RuntimeError, match="yielded 2 batches, expected 3"):
        list(timed_iter(iter([1, 2]), Stopwatch(), limit=3))


def test_process_start_is_in_the_past_and_memory_is_measured():
    import torch

    start = process_start_time()
    assert 0 < time.time() - start < 3600
    mem = peak_memory(torch.device("cpu"))
    assert 0 < mem.used_gib < mem.total_gib and mem.kind == "cpu-rss"


def test_device_memory_monitor_keeps_the_peak_of_its_samples():
    from train.memory import DeviceMemoryMonitor

    readings = iter([3, 9, 4] + [5] * 1000)
    monitor = DeviceMemoryMonitor(lambda: next(readings), "test", interval=0.001).start()
    deadline = time.monotonic() + 30
    while monitor.peak < 9 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert monitor.stop() == 9 and monitor.kind == "test"
    failing = DeviceMemoryMonitor(lambda: 1 / 0, "broken").start()  # a failing reader leaves the peak at 0
    assert failing.stop() == 0
