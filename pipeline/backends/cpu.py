"""CPU decode backend: webdataset shards → DataLoader workers (libjpeg-turbo / PIL) → uint8 batches → device.

Each worker reads its part of the epoch (see :mod:`pipeline.read.plan`) with :mod:`pipeline.read.tarstream` (local
files, or http(s):// / s3:// URLs streamed by a ``curl`` / ``aws s3 cp`` subprocess),
shuffles train samples through a buffer, decodes and crops with :mod:`pipeline.read.transforms`, and
collates whole batches itself as ``N×H×W×3`` uint8 (a :class:`~pipeline.backends.staging.HostBatch`, with its
stage seconds). Workers decode straight into shared memory, so the hand-off copies nothing; the training process only
copies the batch to the device (pinned memory, non-blocking, one batch ahead on a side stream on CUDA:
:mod:`pipeline.backends.staging`) and normalises it there, in channels-last layout.

The reading half (epoch plan, tar reading, shuffle buffer, batch-sized chunks), the loader half (option checks,
epoch length, persistent workers) and the policy for samples that do not decode are shared with the ``nvjpeg``
backend in :mod:`pipeline.backends.shards`. This module holds :class:`ShardBatches` (the workers' decode) and
:class:`CpuLoader`.
"""

from __future__ import annotations

import time
from typing import Iterator

import torch
from torch.utils.data import DataLoader, get_worker_info

from pipeline.backends import Batch, LoaderConfig, LoaderStats, Split, StageTimes
from pipeline.backends.shards import ShardLoaderBase, ShardSamples, StageTally, batch_buffer, skip_reason
from pipeline.backends.staging import HostBatch, to_device_prefetched
from pipeline.dataset import DatasetInfo
from pipeline.read.transforms import decode_train, decode_val


class ShardBatches(ShardSamples):
    """Iterable dataset of whole uint8 batches for one rank; DataLoader workers split it by plan.

    Yields :class:`~pipeline.backends.staging.HostBatch`: ``N×S×S×3`` uint8 images, ``N`` int64 labels, the keys, the
    samples that failed to decode (``skipped``) and the batch's stage seconds in its worker (read, decode, augment,
    collate) with the samples they cover. A sample that fails to decode is named in ``skipped``; in train its slot
    is filled with another sample of the same batch (so every rank still runs the same number of full steps), in
    eval it is left out (:class:`~pipeline.backends.shards.BadSamplePolicy`).

    Raises:
        SampleDecodeError: not one sample of a batch decodes, or one does not with ``on_bad_sample`` ``error``.
    """

    def __iter__(self) -> Iterator[HostBatch]:
        in_worker = get_worker_info() is not None
        clock = time.perf_counter
        for rng, chunk, read_s in self.chunks():
            t0 = clock()
            tally = StageTally(read=read_s)  # decode_train / decode_val add decode and augment seconds to it
            images = batch_buffer(len(chunk), self.cfg.image_size, shared=in_worker)
            ok, skipped = self._decode_into(images, chunk, rng, tally)
            labels = torch.tensor([sample[3] for sample in chunk], dtype=torch.int64)
            images, labels, keys = self.policy.keep_decoded(images, labels, [sample[1] for sample in chunk], ok,
                                                            skipped, rng)
            tally.collate = clock() - t0 - tally.decode - tally.augment  # allocation, labels, bad samples, the loop
            yield HostBatch(images, labels, tuple(keys), tuple(skipped), tally.seconds(), len(chunk))

    def _decode_into(self, images: torch.Tensor, chunk, rng, tally: StageTally) -> tuple[list[int], list[str]]:
        """Decode each sample of ``chunk`` into its slot of ``images`` (the resize writes there itself: no
        per-sample tensor, no copy); returns the rows that decoded and the lines naming those that did not."""
        size, train = self.cfg.image_size, self.split is Split.TRAIN
        ok, skipped = [], []
        for i, (url, key, data, _) in enumerate(chunk):
            try:
                if train:
                    decode_train(data, size, rng, tally, out=images[i])
                else:
                    decode_val(data, size, self.cfg.crop_pct, tally, out=images[i])
                ok.append(i)
            except Exception as exc:
                skipped.append(skip_reason(url, key, exc))
        return ok, skipped


class CpuLoader(ShardLoaderBase):
    """The ``cpu`` backend for one split on one rank (see module docstring). Implements ``Loader``."""

    kind = "cpu"

    def __init__(self, cfg: LoaderConfig, split: Split, info: DatasetInfo | None, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        super().__init__(cfg, split, info, device, rank, world_size)
        # per-stage CPU seconds summed over this rank's workers since the loader was built, and the samples
        # they cover (read = tar reading + shuffle buffer; decode = JPEG → RGB; augment = crop, resize into the
        # batch slot, flip there; collate = the shared-memory batch's allocation, labels, bad-sample policy)
        self._stages = StageTimes()

    def make_dataset(self, info: DatasetInfo, split: Split, cfg: LoaderConfig, rank: int,
                     world_size: int) -> ShardBatches:
        return ShardBatches(info, split, cfg, rank, world_size)

    def stats(self) -> LoaderStats:
        """Skipped samples and the workers' per-stage seconds of the batches handed out so far."""
        return LoaderStats(tuple(self._skipped), self._stages)

    def __iter__(self) -> Iterator[Batch]:
        loader = self.worker_loader()
        yield from to_device_prefetched(self._host_batches(loader), self.device, self.cfg.normalize)

    def _host_batches(self, loader: DataLoader) -> Iterator[HostBatch]:
        for host in loader:
            for what in host.skipped:
                self.note_skipped(what)
            self._stages = self._stages + host.times()
            yield host
