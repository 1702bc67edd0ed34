"""io-bench's loader-only worker sweep: img/s of every backend at every worker count (batches on the device,
normalised, no model), after warm-up batches, in ``repeat`` timed windows (:func:`time_windows`: median and
spread), and at 1 worker of :data:`~train.iobench.config.PRIMARY` the check that the backend's stage timers add up
to the windows' wall time (:func:`fidelity_hooks`)."""

from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

import torch

from pipeline.backends import LoaderKind, Split, build_loader
from train.iobench.config import PRIMARY
from train.iobench.results import IoBenchResult, RateStats, StageFidelity
from train.iobench.setup import BenchSetup


def batches_forever(loader) -> Iterator:
    """The loader's batches across epochs (``set_epoch`` 0, 1, 2, ...), never stopping."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def time_windows(batches: Iterator, n: int, warmup: int, repeat: int, sync: Callable[[], None],
                 on_window_start: Callable[[], None] | None = None,
                 on_window_end: Callable[[float], None] | None = None) -> RateStats:
    """img/s of ``repeat`` windows of ``n`` batches each after ``warmup`` untimed batches (median + spread).

    ``on_window_start`` / ``on_window_end(wall_s)`` let a caller read the backend's counters per window.
    """
    for _ in range(warmup):
        next(batches)
    sync()
    rates = []
    for _ in range(repeat):
        if on_window_start:
            on_window_start()
        t0 = time.perf_counter()
        images = 0
        for _ in range(n):
            images += next(batches).labels.shape[0]
        sync()
        wall = time.perf_counter() - t0
        if on_window_end:
            on_window_end(wall)
        rates.append(images / wall)
    return RateStats(tuple(rates))


def fidelity_hooks(loader, result: IoBenchResult) -> dict:
    """:func:`time_windows` hooks adding each window's stage seconds (summed over the stages) and wall time to
    ``result.stage_fidelity``: at 1 worker the worker's stage seconds of a window's batches should add up to the
    window's wall time."""
    at_start = []

    def start():
        at_start[:] = [loader.stats().stages]

    def end(wall: float):
        spent = (loader.stats().stages - at_start[0]).seconds.total
        result.stage_fidelity = (result.stage_fidelity or StageFidelity()).add(spent, wall)

    return {"on_window_start": start, "on_window_end": end}


def _device_sync(device: torch.device) -> Callable[[], None]:
    """Wait for ``device``'s queued work (CUDA), or nothing (CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _sweep_point(setup: BenchSetup, result: IoBenchResult, kind: LoaderKind, workers: int) -> RateStats:
    """Loader-only img/s of backend ``kind`` with ``workers`` workers (fidelity hooks at 1 worker of PRIMARY)."""
    config = setup.config
    info, root = setup.inputs(kind)
    loader = build_loader(kind, config.loader_config(workers, root), Split.TRAIN, info, setup.device)
    hooks = fidelity_hooks(loader, result) if kind is PRIMARY and workers == 1 else {}
    # a window must hold many batches per worker: the batches the other workers finished while the first was
    # awaited would otherwise inflate the rate (by up to workers / window batches)
    window = max(config.loader_batches, 5 * workers)
    batches = batches_forever(loader)
    try:
        return time_windows(batches, window, config.warmup_batches + workers, config.repeat,
                            _device_sync(setup.device), **hooks)
    finally:
        batches.close()
        loader.close()


def sweep_loaders(setup: BenchSetup, result: IoBenchResult, loaders: Sequence[LoaderKind]) -> None:
    """Loader-only img/s of every backend at every worker count into ``result.sweep``."""
    for kind in loaders:
        result.sweep[kind.value] = {}
        for workers in setup.sweep:
            setup.progress(f"loader-only: {kind.value}, {workers} worker(s)")
            result.sweep[kind.value][workers] = _sweep_point(setup, result, kind, workers)


__all__ = ["batches_forever", "fidelity_hooks", "sweep_loaders", "time_windows"]
