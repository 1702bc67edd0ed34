"""Per-stage cost of a decode backend, measured with the backend's own code: the :class:`StageCosts` result and
:func:`probe_by_stats`, the probe of every backend that times its own stages (``Loader.stats().stages``).

A probe runs the backend in this process on one core (no worker processes, one torch thread, no shuffle buffer,
uint8 batches on the CPU) and reports seconds per image for each of :data:`pipeline.backends.STAGES` (a
:class:`~pipeline.backends.StageSeconds`, ``h2d`` 0: a probe copies nothing to a device). Backends
whose loader cannot time its stages while it trains (DALI) register a probe of their own (see
:class:`pipeline.backends.BackendSpec`'s ``stage_probe``); this module imports no backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Iterator

import torch

from pipeline.backends import (DataInput, LoaderConfig, LoaderKind, Split, StageSeconds, StageTimes, backend_spec,
                               build_loader)
from pipeline.dataset import DatasetInfo


@dataclass(frozen=True)
class StageCosts:
    """Per-stage cost of one backend.

    Attributes:
        backend: its ``--loader`` name (``"cpu"``, ``"folder"``, ``"dali"``).
        samples: images measured.
        seconds_per_image: seconds per image on one core for each stage (:class:`StageSeconds`; ``h2d`` 0).
        wall_seconds: wall time of the measured pass (single thread, in-process).
        note: how it was measured (one sentence).
    """

    backend: str
    samples: int
    seconds_per_image: StageSeconds
    wall_seconds: float
    note: str = ""

    @property
    def total(self) -> float:
        """Seconds per image over all stages (one core)."""
        return self.seconds_per_image.total

    def to_json(self) -> dict:
        """``backend``, ``samples``, ``seconds_per_image`` (stage name → seconds, in stage order), the total,
        ``wall_seconds`` and ``note``."""
        return {"backend": self.backend, "samples": self.samples, "seconds_per_image": self.seconds_per_image.as_dict(),
                "total_seconds_per_image": self.total, "wall_seconds": self.wall_seconds, "note": self.note}


def check_probe_options(cfg: LoaderConfig, max_samples: int) -> None:
    """Raises ValueError (one line) for ``max_samples`` below 1 (``cfg`` checks its own values)."""
    if max_samples < 1:
        raise ValueError(f"bad options: max_samples={max_samples}")


def profiling_config(cfg: LoaderConfig) -> LoaderConfig:
    """``cfg`` for a one-core probe: no worker processes (one DALI thread), no shuffle buffer (reads spread evenly
    over the batches instead of front-loaded into the buffer fill), uint8 batches (no normalisation)."""
    return dataclasses.replace(cfg, workers=0, shuffle_buffer=1, normalize=False)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch ops on one thread (as in a DataLoader worker), restoring the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _timed_pass(loader, before: StageTimes, max_samples: int, it: Iterator | None = None) -> float:
    """Draw batches (from ``it``, else a new epoch iterator) until the loader's stage counters hold ``max_samples``
    more images than the snapshot ``before``, or the epoch ends; returns the pass's wall seconds."""
    it = iter(loader) if it is None else it
    t0 = time.perf_counter()
    for _ in it:  # with workers=0 a batch's stages are counted before it is handed out
        if (loader.stats().stages - before).samples >= max_samples:
            break
    wall = time.perf_counter() - t0
    close = getattr(it, "close", None)
    if close is not None:  # a generator: stop it here, not when it is collected
        close()
    return wall


def probe_by_stats(kind: LoaderKind | str, cfg: LoaderConfig, split: Split | str, info: DatasetInfo | None,
                   max_samples: int) -> StageCosts:
    """Per-stage cost of backend ``kind`` read from its own loader's ``stats().stages``.

    The loader is built through the registry with :func:`profiling_config` on the CPU device and iterated under
    :func:`one_torch_thread`; one untimed batch warms it up (imports, first file opens, allocator), then batches
    are drawn until ``max_samples`` images are timed or the epoch ends. The figures are differences of
    ``stats()`` snapshots: the loader's counters are never reset. When the warm-up batch was the whole epoch,
    the next epoch is timed.

    Args:
        cfg: batch size, image size, seed, crop_pct and (image-tree backends) its ``FolderConfig``; its worker count,
            shuffle buffer and normalisation are replaced.
        info: the shard folder (shard backends); unused by image-tree backends.

    Raises:
        ValueError: bad options, missing inputs (the backend's own one-line error), a backend that times no
            stages, or a split that yields no batch.
    """
    kind, split = LoaderKind(kind), Split(split)
    check_probe_options(cfg, max_samples)
    spec = backend_spec(kind)
    reads = None if spec.needs is DataInput.IMAGE_TREE else info
    loader = build_loader(kind, profiling_config(cfg), split, reads, torch.device("cpu"))
    try:
        with one_torch_thread():
            before = loader.stats().stages
            if before is None:
                raise ValueError(f"the {kind.value} loader times no stages")
            it = iter(loader)
            next(it, None)  # warm-up
            before = loader.stats().stages
            wall = _timed_pass(loader, before, max_samples, it)
            if (loader.stats().stages - before).samples == 0:  # a one-batch epoch: time the next one
                loader.set_epoch(1)
                wall = _timed_pass(loader, before, max_samples)
        spent = loader.stats().stages - before
    finally:
        loader.close()
    if spent.samples == 0:
        raise ValueError(f"the {split.value} split yielded no batch to measure")
    buffer = ", no shuffle buffer" if spec.needs is DataInput.SHARDS else ""
    return StageCosts(kind.value, spent.samples, spent.per_image(), wall,
                      note=f"{kind.value}: in-process (workers=0, one torch thread{buffer}), the loader's own "
                           f"per-stage timers")


__all__ = ["StageCosts", "check_probe_options", "one_torch_thread", "probe_by_stats", "profiling_config"]
