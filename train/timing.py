"""Timers that wrap the data iterator and the training step, so the loop body holds none.

Device work is asynchronous on CUDA: every timer edge synchronises the device (``sync``), so a
step's time is the time until its kernels finished, and a batch's wait includes its host→device copy.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TypeVar

import torch

T = TypeVar("T")


def device_sync(device: torch.device) -> Callable[[], None]:
    """A function that waits for all queued work on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@dataclass
class Stopwatch:
    """Accumulated wall time (s, ``time.perf_counter``) over ``count`` timed intervals."""

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


def timed_iter(items: Iterable[T], stopwatch: Stopwatch, limit: int,
               sync: Callable[[], None] = lambda: None) -> Iterator[T]:
    """Yield the first ``limit`` items of ``items``, adding the time each ``next()`` took to ``stopwatch``.

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
        sync()
        stopwatch.add(time.perf_counter() - t0)
        yield item
    close = getattr(it, "close", None)
    if close is not None:
        close()


def timed_call(fn: Callable[..., T], stopwatch: Stopwatch, sync: Callable[[], None] = lambda: None) -> Callable[..., T]:
    """Wrap ``fn`` so each call's wall time, device-synchronised at both edges, is added to ``stopwatch``."""

    def wrapped(*args, **kwargs):
        with stopwatch.timing(sync):
            return fn(*args, **kwargs)

    return wrapped


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
    """Readings of the run's clocks at one instant: wall time (``perf_counter``) and stopwatch totals (s)."""

    time: float
    data: float
    compute: float
    eval: float
