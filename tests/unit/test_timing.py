"""Timing that does not perturb the device: CUDA-event step clocks read lazily, host-timed data wait, no
device synchronisation per step in ``events`` mode (counted), FlagPerf's synchronous mode kept as ``sync``."""

from __future__ import annotations

import json
import time

import pytest

from train.clock import EventStepClock, Timing, make_clock, resolve_timing


class HostEvent:
    """Stand-in for ``torch.cuda.Event(enable_timing=True)`` on the host clock; counts synchronisations."""

    syncs = 0

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: "HostEvent") -> float:
        return (end.t - self.t) * 1000.0  # ms, as CUDA events report

    def synchronize(self) -> None:
        HostEvent.syncs += 1

    def query(self) -> bool:  # recorded on the host: always complete
        return True


def test_event_clock_waits_only_when_its_total_is_read():
    HostEvent.syncs = 0
    clock = EventStepClock(HostEvent)
    step = clock.wrap(lambda: time.sleep(0.01))
    for _ in range(5):
        step()
    assert HostEvent.syncs == 0 and len(clock.pending) == 5  # nothing waited while stepping
    first = clock.total
    assert HostEvent.syncs == 1 and not clock.pending and clock.count == 5
    assert first >= 5 * 0.01  # the sleeps lie between the events (a lower bound only: no upper bound on a busy box)
    assert clock.total == first and HostEvent.syncs == 1  # nothing pending: no second wait
    step()
    assert clock.total > first and HostEvent.syncs == 2
    drained = EventStepClock(HostEvent, drain_every=4)  # a long epoch: finished events are read without waiting
    step = drained.wrap(lambda: None)
    for _ in range(10):
        step()
    assert len(drained.pending) == 2 and drained.count == 8 and HostEvent.syncs == 2


def test_modes_resolve_per_device_and_cpu_events_take_no_waits():
    import torch

    cpu = torch.device("cpu")
    assert resolve_timing(None, cpu) is Timing.SYNC
    assert resolve_timing(None, torch.device("cuda", 0)) is Timing.EVENTS
    events = make_clock(Timing.EVENTS, cpu)
    sync = make_clock(Timing.SYNC, cpu, barrier=lambda: None)
    for clock in (events, sync):
        step = clock.compute.wrap(lambda: None)
        for _ in range(3):
            step()
            clock.data_ready()
    assert events.sync.count == 0  # host timing only
    assert sync.sync.count == 3 * 2 + 3 * 2  # both edges of every step + around the barrier after every batch
    assert isinstance(make_clock(Timing.EVENTS, cpu, event_factory=HostEvent).compute, EventStepClock)


@pytest.mark.parametrize("steps", [4, 12])
def test_train_in_events_mode_synchronises_per_epoch_not_per_step(steps, tmp_path):
    from tools import train as train_cli

    counts = {}
    for timing in ("events", "sync"):
        out = tmp_path / f"{timing}.json"
        assert train_cli.main(["--loader", "synthetic", "--synthetic-train-samples", "48", "--no-eval", "--epochs",
                               "100", "--max-steps", str(steps), "--batch-size", "4", "--image-size", "32",
                               "--workers", "0", "--timing", timing, "--metrics-json", str(out)]) == 0
        m = json.loads(out.read_text())
        assert m["timing"] == timing and m["p_core"] >= m["p_train"] > 0
        counts[timing] = m["device_syncs_rank0"]
    epochs = -(-steps // 12)
    # events: loop start, warm-up mark, once per epoch, loop end; sync: two per step on top
    assert counts["events"] <= 3 + epochs
    assert counts["sync"] >= 2 * steps
