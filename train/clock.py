"""Timers that wrap the data iterator and the training step, so the loop body holds none.

Two ways to time a CUDA run (``train --timing``), identical on a CPU, where work is synchronous:

* ``events`` (default on CUDA): each step is bracketed by two CUDA events recorded on the training stream;
  their elapsed times are read (one host synchronisation) only when a total is asked for: at the end of
  warm-up, once per ``--log-every`` window and once per epoch. The data wait is host time around ``next()``.
  The CPU queues work ahead of the GPU as it would without timers, the host→device copy on the side stream
  and DALI's own decode streams overlap the step, and the step's time is the GPU's time for its kernels. Under
  DDP a rank that waits for a slower rank's gradients waits inside its step (NCCL all-reduce), so that wait
  counts as compute here. Only this mode measures what the GPU lost: the share of train time in which the
  training stream ran no step (:func:`gpu_idle_fraction`, issue 22 item 3; which steps and interval:
  :mod:`train.metrics`); :attr:`RunClock.device_step_times` says whether it is measured.
* ``sync`` (FlagPerf's way): every timer edge calls ``torch.cuda.synchronize()`` (a device-wide wait), and under
  DDP a barrier after each batch arrives puts another rank's loading time into data wait; the CPU can never
  run ahead, so the run itself is slower than untimed training.

Also :func:`process_start_time`, the origin of the steady figures' ``e2e_time``.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterable, Iterator, Protocol, TypeVar

import torch

T = TypeVar("T")
_IMPORT_TIME = time.time()


def process_start_time() -> float:
    """Unix time (s) at which this process started (the origin of the steady ``e2e_time``): from /proc (Linux),
    else the time this module loaded."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of proc(5): starttime, clock ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])  # seconds since boot, 10 ms resolution
        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORT_TIME


class Timing(str, Enum):
    """How step and data times are taken on CUDA (see module docstring)."""

    EVENTS = "events"
    SYNC = "sync"


def resolve_timing(requested: Timing | None, device: torch.device) -> Timing:
    """``None`` → ``events`` on CUDA, ``sync`` elsewhere (where both are the same host timing)."""
    if requested is None:
        return Timing.EVENTS if device.type == "cuda" else Timing.SYNC
    return Timing(requested)


class CountedSync:
    """A device-wide wait (``torch.cuda.synchronize``; nothing on CPU) that counts its calls (``count``), so a
    run reports how often it stopped the host (metrics ``device_syncs``)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@dataclass
class Stopwatch:
    """Accumulated host wall time (s, ``time.perf_counter``) over ``count`` timed intervals."""

    total: float = 0.0
    count: int = 0

    def add(self, seconds: float) -> None:
        self.total += seconds
        self.count += 1

    @contextmanager
    def timing(self, sync: Callable[[], None] = lambda: None):
        """Time the ``with`` block, synchronising the device at both edges."""
        sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync()
            self.add(time.perf_counter() - t0)


class StepClock(Protocol):
    """What the loop needs of the step timer: a wrapper for the step and the total so far (s)."""

    @property
    def total(self) -> float: ...

    def wrap(self, fn: Callable[..., T]) -> Callable[..., T]: ...


@dataclass
class SyncStepClock:
    """Step time as host wall time with the device synchronised at both edges of every step (``sync``)."""

    sync: Callable[[], None]
    watch: Stopwatch = field(default_factory=Stopwatch)

    @property
    def total(self) -> float:
        return self.watch.total

    def wrap(self, fn: Callable[..., T]) -> Callable[..., T]:
        def timed(*args, **kwargs):
            with self.watch.timing(self.sync):
                return fn(*args, **kwargs)
        return timed


def cuda_timing_event():
    return torch.cuda.Event(enable_timing=True)


@dataclass
class EventStepClock:
    """Step time from a pair of events per step on the training stream, read lazily (``events``).

    ``wrap`` records a start event before and an end event after each call; nothing waits. Reading ``total``
    waits for the last end event (one host synchronisation), adds up ``start.elapsed_time(end)`` (ms) of the
    steps since the previous read, and frees those events. ``event_factory`` makes one event
    (``torch.cuda.Event(enable_timing=True)``; tests pass a host-clock stand-in).
    """

    event_factory: Callable[[], object] = cuda_timing_event
    resolved: float = 0.0
    count: int = 0
    pending: list = field(default_factory=list)
    drain_every: int = 256  # steps between non-blocking reads of finished events (bounds the pending list)

    def _resolve(self, n: int) -> None:
        self.resolved += sum(start.elapsed_time(end) for start, end in self.pending[:n]) / 1000.0
        self.count += n
        del self.pending[:n]

    @property
    def total(self) -> float:
        if self.pending:
            self.pending[-1][1].synchronize()  # events of one stream complete in order: all are done now
            self._resolve(len(self.pending))
        return self.resolved

    def _drain_finished(self) -> None:
        """Resolve the leading steps whose end event has completed (``query()``: no waiting)."""
        n = 0
        while n < len(self.pending) and self.pending[n][1].query():
            n += 1
        if n:
            self._resolve(n)

    def wrap(self, fn: Callable[..., T]) -> Callable[..., T]:
        def timed(*args, **kwargs):
            start, end = self.event_factory(), self.event_factory()
            start.record()
            out = fn(*args, **kwargs)
            end.record()
            self.pending.append((start, end))
            if len(self.pending) % self.drain_every == 0:
                self._drain_finished()
            return out
        return timed


def gpu_idle_fraction(step_s: float, wall_s: float) -> float | None:
    """The share of ``wall_s`` in which the device ran no training step: ``1 - step_s / wall_s`` (issue 22 item 3),
    clamped to 0..1 (event times can exceed a host interval by timer skew, or by steps still queued when a log
    window's host clock is read). ``step_s``: the steps' summed device time (s, CUDA events); ``wall_s``: the host
    wall time over the same steps (s). None when ``wall_s`` is not positive (nothing to divide by)."""
    if wall_s <= 0:
        return None
    return min(1.0, max(0.0, 1.0 - step_s / wall_s))


def times_device(step_clock: object) -> bool:
    """Whether ``step_clock`` reads each step's time from the device's own events (:class:`EventStepClock`:
    ``events`` mode on CUDA, or a test's injected events), so its total is the training stream's busy time; a
    :class:`SyncStepClock` (``sync`` mode, or ``events`` off CUDA) times the host."""
    return isinstance(step_clock, EventStepClock)


def timed_iter(items: Iterable[T], stopwatch: Stopwatch, limit: int,
               ready: Callable[[], None] = lambda: None) -> Iterator[T]:
    """Yield the first ``limit`` items of ``items``, adding the time each ``next()`` (and ``ready()``) took to
    ``stopwatch``, then close the underlying iterator.

    Raises:
        RuntimeError: ``items`` ran out before ``limit`` (a loader that broke its step-count promise;
            under DDP that would otherwise hang the other ranks).
    """
    it = iter(items)
    for i in range(limit):
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            raise RuntimeError(f"loader yielded {i} batches, expected {limit}") from None
        ready()
        stopwatch.add(time.perf_counter() - t0)
        yield item
    close = getattr(it, "close", None)  # a generator: run its clean-up now, not at garbage collection
    if close is not None:
        close()


def after_calls(fn: Callable[..., T], n: int, hook: Callable[[], None]) -> Callable[..., T]:
    """Wrap ``fn`` so ``hook()`` runs once, right after its ``n``-th call returns (never when ``n`` is 0)."""
    calls = 0

    def wrapped(*args, **kwargs):
        nonlocal calls
        out = fn(*args, **kwargs)
        calls += 1
        if calls == n:
            hook()
        return out

    return wrapped


@dataclass(frozen=True)
class Mark:
    """Readings of the run's clocks at one instant: wall time (``perf_counter``) and totals (s)."""

    time: float
    data: float
    compute: float
    eval: float
    excluded: float  # checkpoint writes + resume replay so far


@dataclass
class RunClock:
    """Every clock of one training run.

    Attributes:
        timing: the resolved mode; sync: the counted device-wide wait; compute: the step clock;
        data: host time in ``next()`` of the train iterator (plus, in ``sync`` mode, the device wait and the DDP
        barrier after it); eval / checkpoint / resume_skip: host time of evaluations, checkpoint writes and the
        replay of already-trained batches on resume (each bracketed by ``sync``: once per event, not per step);
        data_ready: what runs after each ``next()``.
    """

    timing: Timing
    sync: CountedSync
    compute: StepClock
    data_ready: Callable[[], None]
    data: Stopwatch = field(default_factory=Stopwatch)
    eval: Stopwatch = field(default_factory=Stopwatch)
    checkpoint: Stopwatch = field(default_factory=Stopwatch)
    resume_skip: Stopwatch = field(default_factory=Stopwatch)

    @property
    def excluded(self) -> float:
        """Seconds inside the loop that p_whole / p_train leave out (checkpoint writes, resume replay)."""
        return self.checkpoint.total + self.resume_skip.total

    @property
    def device_step_times(self) -> bool:
        """Whether the step times are the device's (CUDA events): only then is the GPU idle share measured."""
        return times_device(self.compute)

    def mark(self) -> Mark:
        """Synchronise once and read every clock (e.g. at the end of warm-up)."""
        self.sync()
        return Mark(time.perf_counter(), self.data.total, self.compute.total, self.eval.total, self.excluded)


def make_clock(timing: Timing, device: torch.device, barrier: Callable[[], None] | None = None,
               event_factory: Callable[[], object] | None = None) -> RunClock:
    """The clocks of a run in ``timing`` mode on ``device``; ``barrier`` (DDP) runs after each batch arrives in
    ``sync`` mode; ``event_factory`` overrides the CUDA event maker (tests)."""
    sync = CountedSync(device)
    if timing is Timing.EVENTS:
        if device.type == "cuda" or event_factory is not None:
            return RunClock(timing, sync, EventStepClock(event_factory or cuda_timing_event), lambda: None)
        return RunClock(timing, sync, SyncStepClock(lambda: None), lambda: None)  # CPU: host time, no waits
    if barrier is None:
        ready = sync
    else:
        def ready() -> None:
            sync()
            barrier()
            sync()
    return RunClock(timing, sync, SyncStepClock(sync), ready)
