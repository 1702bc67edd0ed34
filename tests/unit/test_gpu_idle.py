"""The GPU idle share beside the host's data wait (issue 22 item 3): ``1 - sum of the steps' event time / train wall
time`` over the steady window, in ``events`` mode only (None with host step times), in the metrics JSON, the
console summary, the step log and TensorBoard; event timings are scripted, never measured."""

from __future__ import annotations

import json
import time

import pytest
import torch

from train.clock import EventStepClock, Stopwatch, Timing, gpu_idle_fraction, make_clock, times_device
from train.metrics import RunTimes
from train.report import MeasuredTimes


def scripted_events(starts, busy_s: float):
    """An event factory (the clock's ``event_factory`` seam) for steps starting at device times ``starts`` (s), each
    ``busy_s`` s on the device: the n-th ``record()`` takes the n-th timestamp, as a CUDA event stamps the stream."""
    stamps = iter([t for start in starts for t in (start, start + busy_s)])

    class ScriptedEvent:
        def record(self) -> None:
            self.t = next(stamps)

        def elapsed_time(self, end: "ScriptedEvent") -> float:
            return (end.t - self.t) * 1000.0  # ms, as CUDA events report

        def synchronize(self) -> None:
            pass

        def query(self) -> bool:
            return True

    return ScriptedEvent


class HostEvent:
    """A CUDA timing event's stand-in on the host clock (a CPU run's events-mode seam)."""

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: "HostEvent") -> float:
        return (end.t - self.t) * 1000.0

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


def test_idle_is_one_minus_event_time_over_train_wall_time():
    events = scripted_events([0.05 * k for k in range(10)], 0.03)  # 10 steps of 30 ms on the device
    clock = make_clock(Timing.EVENTS, torch.device("cpu"), event_factory=events)
    step = clock.compute.wrap(lambda: None)
    for _ in range(10):
        step()
    assert clock.device_step_times and clock.compute.total == pytest.approx(0.3)
    # the steady window: loop 0.6 s of which 0.1 s evaluation -> 0.5 s of train time, 0.2 s of it data wait
    times = RunTimes(e2e=1.0, loop=0.6, eval=0.1, compute=clock.compute.total, data=0.2)
    measured = MeasuredTimes.of("events", 3, times, times, device_step_times=True)
    assert measured.gpu_idle_fraction == pytest.approx(1 - 0.3 / 0.5)
    assert measured.data_wait_fraction == pytest.approx(0.2 / 0.5)
    line = measured.gpu_idle_line()
    assert line == "GPU idle: 40.0% of train time, beside data wait 40.0% (1 - steps' CUDA-event time / train time, " \
                   "max over ranks)"
    # host step times (sync mode, or events off CUDA): not measured, and the line says why
    assert MeasuredTimes.of("sync", 3, times, times, device_step_times=False).gpu_idle_fraction is None
    assert MeasuredTimes.of("sync", 3, times, times, False).gpu_idle_line() == (
        "GPU idle: not measured (timing sync: step times include the device waits; --timing events on CUDA "
        "measures it)")
    assert MeasuredTimes.of("events", 0, times, times, False).gpu_idle_line() == (
        "GPU idle: not measured (no CUDA events: the step times are host times)")


def test_idle_is_clamped_to_a_fraction_and_none_without_an_interval():
    assert gpu_idle_fraction(0.25, 1.0) == pytest.approx(0.75)
    assert gpu_idle_fraction(1.2, 1.0) == 0.0  # event time over the host interval (skew, queued steps)
    assert gpu_idle_fraction(0.0, 2.0) == 1.0
    assert gpu_idle_fraction(-1.0, 2.0) == 1.0
    assert gpu_idle_fraction(0.5, 0.0) is None and gpu_idle_fraction(0.5, -1.0) is None


def test_only_an_event_clock_times_the_device():
    cpu = torch.device("cpu")
    assert make_clock(Timing.EVENTS, cpu, event_factory=HostEvent).device_step_times
    assert not make_clock(Timing.EVENTS, cpu).device_step_times  # events off CUDA: host times
    assert not make_clock(Timing.SYNC, cpu).device_step_times
    assert times_device(EventStepClock(HostEvent)) and not times_device(Stopwatch())


def _log_windows(tmp_path, monkeypatch, compute, sink=None) -> list:
    """Step-log lines of 6 steps in windows of 3, each step 1 s of host time (and 0.25 s on the device)."""
    from train.steplog import StepLog, StepSources

    now = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    path = tmp_path / "steps.jsonl"
    log = StepLog(path, 3, 8, StepSources(Stopwatch(), compute, lambda: 0, lambda: 0.1), sink=sink)
    timed = log.wrap(compute.wrap(lambda: torch.tensor(1.0)))
    for _ in range(6):
        now[0] += 1.0
        timed()
    log.close()
    return [json.loads(x) for x in path.read_text().splitlines() if '"window_s"' in x]


def test_step_log_and_tensorboard_windows_carry_the_idle_share(tmp_path, monkeypatch):
    from train import sinks

    scalars = []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            pass

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(sinks, "tensorboard_writer_class", lambda: Writer)
    run_sinks = sinks.RunSinks(tensorboard=sinks.TensorBoardLog(tmp_path / "tb"))
    windows = _log_windows(tmp_path, monkeypatch, EventStepClock(scripted_events(range(6), 0.25)), run_sinks)
    assert [w["gpu_idle_fraction"] for w in windows] == pytest.approx([0.75, 0.75])  # 1 - 0.75 s / 3 s
    idle = [(value, step) for tag, value, step in scalars if tag == "train/gpu_idle_fraction"]
    assert [step for _, step in idle] == [3, 6] and [v for v, _ in idle] == pytest.approx([0.75, 0.75])
    assert sinks.Window.of(windows[0]).gpu_idle_fraction == pytest.approx(0.75)
    scalars.clear()
    host = _log_windows(tmp_path, monkeypatch, make_clock(Timing.SYNC, torch.device("cpu")).compute, run_sinks)
    assert [w["gpu_idle_fraction"] for w in host] == [None, None]  # host step times: null, key present
    assert scalars and not [t for t, _, _ in scalars if t == "train/gpu_idle_fraction"]  # and not written


def test_metrics_json_and_summary_say_what_the_gpu_did(tmp_path, monkeypatch, capsys):
    """A CPU run whose events-mode step clock reads host-clock events (the CUDA-event seam): the JSON's
    ``gpu_idle_fraction`` (right after ``data_wait_fraction``) is 1 - compute / (loop - eval) of its own times and
    the summary prints it beside the data wait (a ``sync`` run's None: tests/unit/test_run_report.py)."""
    from tools import train as train_cli
    from train import trainer

    real = make_clock
    monkeypatch.setattr(trainer, "make_clock", lambda mode, device, barrier=None: real(
        mode, device, barrier, event_factory=HostEvent if mode is Timing.EVENTS else None))
    out = tmp_path / "m.json"
    assert train_cli.main(["--loader", "synthetic", "--synthetic-train-samples", "24", "--no-eval", "--max-steps",
                           "5", "--batch-size", "4", "--image-size", "32", "--workers", "0", "--timing", "events",
                           "--metrics-json", str(out)]) == 0
    m = json.loads(out.read_text())
    keys, times = list(m), m["times_s"]
    assert keys[keys.index("data_wait_fraction") + 1] == "gpu_idle_fraction"
    assert m["timing"] == "events" and 0.0 <= m["gpu_idle_fraction"] <= 1.0
    assert m["gpu_idle_fraction"] == pytest.approx(max(0.0, 1 - times["compute"] / (times["loop"] - times["eval"])))
    shown = [x for x in capsys.readouterr().out.splitlines() if x.startswith("GPU idle: ")]
    assert len(shown) == 1 and shown[0].startswith(
        f"GPU idle: {100 * m['gpu_idle_fraction']:.1f}% of train time, beside data wait "
        f"{100 * m['data_wait_fraction']:.1f}%")
