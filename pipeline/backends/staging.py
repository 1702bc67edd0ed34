"""The batch stage every backend that assembles batches on the host ends with: host batch → device batch.

It holds :class:`HostBatch` (a batch as a worker assembles it on the host, with its stage seconds),
:func:`normalize_on_device` (``N×H×W×3`` uint8 → ``N×3×H×W`` channels-last on the device, ImageNet-
normalised float32 or the uint8 values), :func:`upload` (a :class:`HostBatch` → a
:class:`~pipeline.backends.Batch`), and the one CUDA side-stream prefetcher, :func:`prefetched`, which
:func:`to_device_prefetched` (the ``cpu`` and ``folder`` backends) and the ``nvjpeg`` backend (its decode on the
device) both run on.

The prefetcher's stream and allocator rules (timm's PrefetchLoader idea, made safe for decoders that write on
streams of their own): batch ``i+1`` is made with a side stream current as soon as batch ``i`` is handed out
(so its copy / decode overlaps the training step); each batch records an event on the side stream when it is
made, and the consumer's stream waits for that event only (not for the later batches queued behind it); the
batch's tensors are recorded on the consumer's stream (``record_stream``), so the caching allocator does not
reuse their blocks while the consumer still reads them. With ``host_sync`` the host also waits for the side
stream (``Stream.synchronize``, not a device-wide sync) right before it makes the next batch: no block freed on
the side stream is still in use when a decoder that ignores the current stream writes into a new one (see
:mod:`pipeline.backends.nvjpeg`). Off CUDA each batch is made when it is asked for.

Threaded form (``depth`` >= 1, the ``nvjpeg`` backend's): ONE background thread (so the order is the inline
form's) makes the batches and hands them over through a queue; it may run at most ``depth`` batches ahead of
the one the consumer holds (a slot is claimed before the next item is drawn and freed when the consumer takes
a batch). On CUDA the same rules hold per thread: the producer calls ``torch.cuda.set_device`` and makes its
own side stream current in its own thread (the current stream is per thread in torch), waits for that stream
on the host before each batch when ``host_sync``, and records one event per batch; the consumer waits on that
event only and records the tensors on its own stream. Off CUDA the thread runs too. What the producer raises
(``SampleDecodeError``, ``ShardReadError``, ``ValueError``, ...) is raised again in the consumer, the same
object (type and message); when the consumer stops early (the generator closed, a ``break``, an exception or
``KeyboardInterrupt`` in the consumer), the thread is stopped and joined before the generator ends and the
source iterator is closed (a generator) and released, so the next ``iter()`` of a DataLoader is the only
reader. The producer runs under ``torch.no_grad`` (grad mode is per thread too). The host and the GPU gain
only when the work releases the GIL (torch kernels, the JPEG decoder do); the ``cpu`` and ``folder`` backends
stay inline: their decode already runs in DataLoader worker processes and what is left per batch (a pinned
copy and a normalisation, queued) costs microseconds of host time, less than a thread hand-off.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, NamedTuple, TypeVar

import torch

from pipeline.backends import IMAGENET_MEAN_255, IMAGENET_STD_255, Batch, StageSeconds, StageTimes
from pipeline.compat import cache

Item = TypeVar("Item")


@dataclass(frozen=True)
class HostBatch:
    """One batch assembled on the host by a worker, before the device copy.

    Attributes:
        images: ``N×H×W×3`` uint8 (shared / pinned memory where the worker allocated it so).
        labels: ``N`` int64 class indices.
        keys: the samples' keys (shard keys, or file paths).
        skipped: ``"<where>: cannot decode (...)"`` of the samples of this batch that failed to decode.
        stages: seconds this batch cost per stage in its worker (:class:`StageSeconds`).
        samples: samples those seconds cover (read and tried, skipped ones included).
    """

    images: torch.Tensor
    labels: torch.Tensor
    keys: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    stages: StageSeconds = StageSeconds()
    samples: int = 0

    def times(self) -> StageTimes:
        """This batch's stage seconds and the samples they cover."""
        return StageTimes(self.stages, self.samples)

    def pin_memory(self) -> "HostBatch":
        """This batch with images and labels in pinned memory (what a DataLoader with ``pin_memory`` calls)."""
        return dataclasses.replace(self, images=self.images.pin_memory(), labels=self.labels.pin_memory())


def normalize_on_device(images_nhwc_u8: torch.Tensor, device: torch.device, normalize: bool = True) -> torch.Tensor:
    """``N×H×W×3`` uint8 (host, ideally pinned; or already on ``device``) → ``N×3×H×W`` on ``device`` with
    channels-last strides: float32 ImageNet-normalised, or the uint8 values themselves when ``normalize`` is False.

    The NHWC buffer permuted to NCHW already has channels-last strides, so no layout copy is made.
    """
    x = images_nhwc_u8.to(device, non_blocking=True).permute(0, 3, 1, 2)
    if not normalize:
        return x
    mean, inv_std = _normalization_constants(device)
    return x.float().sub_(mean).mul_(inv_std)


def to_device_pinned(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (labels, indices, boxes) → ``device``, queued on the current stream: on CUDA copied
    into pinned memory first, so that the non-blocking copy is a real asynchronous DMA (from pageable memory the
    copy is staged through a driver buffer with the host waiting); elsewhere ``host.to(device)``."""
    if device.type == "cuda" and not host.is_pinned():
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


def upload(host: HostBatch, device: torch.device, normalize: bool = True) -> Batch:
    """One host batch → :class:`Batch` on ``device`` (non-blocking copies, queued on the current stream)."""
    return Batch(normalize_on_device(host.images, device, normalize), host.labels.to(device, non_blocking=True),
                 tuple(host.keys))


def prefetched(items: Iterable[Item], device: torch.device, to_batch: Callable[[Item], Batch],
               host_sync: bool = False, depth: int = 0) -> Iterator[Batch]:
    """``to_batch`` over ``items``, in order (the rules are in the module docstring).

    ``depth`` 0: made on the consumer's thread, on CUDA one batch ahead on a side stream, elsewhere each when it
    is asked for; ``depth`` >= 1: made by one background thread at most ``depth`` batches ahead of the one
    handed out (on any device). ``host_sync``: the host waits for the side stream before making each batch.
    Nothing runs before the first ``next()``. Raises what ``items`` or ``to_batch`` raise, where they raise it
    (threaded: the same exception object, in the consumer).
    """
    if depth < 0:
        raise ValueError(f"prefetch depth must be >= 0, got {depth}")
    if depth:
        return _threaded(items, device, to_batch, host_sync, depth)
    return _inline(items, device, to_batch, host_sync)


def _prepare(item: Item, to_batch: Callable[[Item], Batch], side, host_sync: bool) -> tuple[Batch, object]:
    """Make one batch with the side stream ``side`` current (in the calling thread) and record its event on it;
    ``side`` None (off CUDA): just ``to_batch(item)``, no event."""
    if side is None:
        return to_batch(item), None
    if host_sync:
        side.synchronize()
    with torch.cuda.stream(side):
        batch = to_batch(item)
    done = torch.cuda.Event()
    done.record(side)
    return batch, done


def _hand_over(batch: Batch, done, device: torch.device) -> Batch:
    """The consumer's stream waits for the batch's own event; its tensors are recorded on that stream. Off
    CUDA (``done`` None) the batch as it is."""
    if done is None:
        return batch
    current = torch.cuda.current_stream(device)
    current.wait_event(done)
    batch.images.record_stream(current)
    batch.labels.record_stream(current)
    return batch


def _inline(items: Iterable[Item], device: torch.device, to_batch: Callable[[Item], Batch],
            host_sync: bool) -> Iterator[Batch]:
    """:func:`prefetched` with ``depth`` 0."""
    if device.type != "cuda":
        yield from map(to_batch, items)
        return
    side = torch.cuda.Stream(device=device)
    pending = None
    for item in items:
        ready = _prepare(item, to_batch, side, host_sync)  # batch i+1 is queued before batch i is handed out
        if pending is not None:
            yield _hand_over(*pending, device)
        pending = ready
    if pending is not None:
        yield _hand_over(*pending, device)


class _Failed(NamedTuple):
    """What the producer raised, carried to the consumer."""

    exc: BaseException


_END = "end of the items"  # the producer's last message (a str: never a batch)


class _Handoff:
    """The producer thread's side of the threaded prefetcher: ``depth`` slots (claimed before an item is drawn,
    freed when the consumer takes a batch), a queue of made batches, and the consumer's stop flag."""

    def __init__(self, depth: int) -> None:
        self.slots = threading.Semaphore(depth)
        self.made: queue.Queue = queue.Queue()
        self.stopped = threading.Event()

    def claim(self) -> bool:
        """Block until a slot is free; False once the consumer has stopped."""
        self.slots.acquire()
        return not self.stopped.is_set()

    def take(self):
        """The next message for the consumer (a made batch, :class:`_Failed` or ``_END``); frees its slot."""
        got = self.made.get()
        self.slots.release()
        return got

    def stop(self) -> None:
        """The consumer is done: the producer stops before its next item (woken if it waits for a slot)."""
        self.stopped.set()
        self.slots.release()

    def drop_made(self) -> None:
        """Drop the batches made but never taken (after the producer is joined: their memory is freed now, not
        when a traceback that holds this object goes)."""
        while not self.made.empty():
            self.made.get_nowait()


def _produce(source: Iterator[Item], to_batch: Callable[[Item], Batch], handoff: _Handoff,
             device_index: int | None, host_sync: bool) -> None:
    """The producer thread: make a batch per item while a slot is free and the consumer has not stopped."""
    try:
        side = None
        if device_index is not None:
            torch.cuda.set_device(device_index)  # the current device and stream are per thread
            side = torch.cuda.Stream(device=device_index)
        with torch.no_grad():
            while handoff.claim():
                item = next(source, _END)
                if item is _END:
                    break
                handoff.made.put(_prepare(item, to_batch, side, host_sync))
    except BaseException as exc:  # re-raised in the consumer (KeyboardInterrupt only reaches the main thread)
        handoff.made.put(_Failed(exc))
    handoff.made.put(_END)


def _threaded(items: Iterable[Item], device: torch.device, to_batch: Callable[[Item], Batch], host_sync: bool,
              depth: int) -> Iterator[Batch]:
    """:func:`prefetched` with ``depth`` >= 1: one producer thread, the consumer here."""
    index = None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
    source = iter(items)  # made on the consumer's thread (a DataLoader iterator sets its signal handlers there)
    handoff = _Handoff(depth)
    thread = threading.Thread(target=_produce, args=(source, to_batch, handoff, index, host_sync),
                              name="batch-producer", daemon=True)
    thread.start()
    try:
        while True:
            got = handoff.take()
            if isinstance(got, _Failed):
                raise got.exc
            if got is _END:
                return
            yield _hand_over(*got, device)
    finally:
        handoff.stop()
        thread.join()
        handoff.drop_made()
        close = getattr(source, "close", None)
        if close is not None:
            close()
        del source


def to_device_prefetched(host_batches: Iterable[HostBatch], device: torch.device,
                         normalize: bool = True) -> Iterator[Batch]:
    """Host batches (``N×H×W×3`` uint8 images, ``N`` int64 labels, keys) → :class:`Batch` on ``device``, the copy
    and normalisation of the next batch overlapping the current one on CUDA (:func:`prefetched`)."""
    return prefetched(host_batches, device, lambda host: upload(host, device, normalize))


@cache
def _normalization_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and 1/std as ``1×3×1×1`` float32 on ``device``, made once per device."""
    mean = torch.tensor(IMAGENET_MEAN_255, device=device).view(1, 3, 1, 1)
    inv_std = (1.0 / torch.tensor(IMAGENET_STD_255, device=device)).view(1, 3, 1, 1)
    return mean, inv_std


__all__ = ["HostBatch", "normalize_on_device", "prefetched", "to_device_pinned", "to_device_prefetched", "upload"]
