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
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TypeVar

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


def upload(host: HostBatch, device: torch.device, normalize: bool = True) -> Batch:
    """One host batch → :class:`Batch` on ``device`` (non-blocking copies, queued on the current stream)."""
    return Batch(normalize_on_device(host.images, device, normalize), host.labels.to(device, non_blocking=True),
                 tuple(host.keys))


def prefetched(items: Iterable[Item], device: torch.device, to_batch: Callable[[Item], Batch],
               host_sync: bool = False) -> Iterator[Batch]:
    """``to_batch`` over ``items``, one batch ahead on a side CUDA stream (the rules are in the module docstring);
    elsewhere each batch is made when it is asked for. ``host_sync``: the host waits for the side stream before
    making each batch."""
    if device.type != "cuda":
        yield from map(to_batch, items)
        return
    side = torch.cuda.Stream(device=device)

    def prepare(item: Item) -> tuple[Batch, torch.cuda.Event]:
        if host_sync:
            side.synchronize()
        with torch.cuda.stream(side):
            batch = to_batch(item)
        done = torch.cuda.Event()
        done.record(side)
        return batch, done

    def hand_over(batch: Batch, done: torch.cuda.Event) -> Batch:
        current = torch.cuda.current_stream(device)
        current.wait_event(done)
        batch.images.record_stream(current)
        batch.labels.record_stream(current)
        return batch

    pending = None
    for item in items:
        ready = prepare(item)  # batch i+1 is queued before batch i is handed out
        if pending is not None:
            yield hand_over(*pending)
        pending = ready
    if pending is not None:
        yield hand_over(*pending)


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


__all__ = ["HostBatch", "normalize_on_device", "prefetched", "to_device_prefetched", "upload"]
