"""CPU decode backend: webdataset shards → DataLoader workers (libjpeg-turbo / PIL) → uint8 batches → device.

Each worker reads its part of the epoch (see :mod:`pipeline.read.plan`) with :mod:`pipeline.read.tarstream` (local
files, or http(s):// / s3:// URLs streamed by a ``curl`` / ``aws s3 cp`` subprocess),
shuffles train samples through a buffer, decodes and crops with :mod:`pipeline.read.transforms`, and
collates whole batches itself as ``N×H×W×3`` uint8. Workers decode straight into shared memory, so the
hand-off copies nothing; the training process only copies the batch to the device (pinned memory,
non-blocking, one batch ahead on a side stream on CUDA) and normalises it there, in channels-last layout.

The reading half (epoch plan, tar reading, shuffle buffer, batch-sized chunks: :class:`ShardSamples`), the
loader half (option checks, epoch length, persistent workers: :class:`ShardLoaderBase`) and the policy for
samples that do not decode (:func:`keep_decoded`: skip and count, or stop, as ``LoaderConfig.on_bad_sample``
says) are shared with the ``nvjpeg`` backend; the ``folder`` backend applies the same policy. A sample whose
``.jpg`` / ``.cls`` member is missing, or whose ``.cls`` is not a class index, is a one-line error
(:func:`class_index`): the shard was damaged or hand-made, and its label cannot be trusted.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import sys
import time
from typing import Iterator

import PIL
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.compat import new_shared_uint8
from pipeline.read import plan as epoch_plan
from pipeline.backends import (STAGES, Batch, LoaderConfig, LoaderStats, OnBadSample, ReplayResume, Split,
                               StageTimes, to_device_prefetched)
from pipeline.dataset import DatasetInfo
from pipeline.read.tarstream import RemoteOptions, ShardReadError, iter_samples
from pipeline.read.transforms import decode_train, decode_val



class SampleDecodeError(RuntimeError):
    """A sample in a shard could not be decoded; the message names the shard and the key."""


def read_segments(paths: list[str], segments, num_classes: int, lengths: list[int] | None = None,
                  remote: RemoteOptions | None = None) -> Iterator[tuple[str, str, bytes, int]]:
    """Yield ``(shard path or URL, key, jpg bytes, label)`` for every sample of ``segments``, in order.

    ``lengths``: each shard's sample count by ``_info.json``, checked as far as each segment reads (see
    :func:`pipeline.read.tarstream.iter_samples`); ``remote``: the timeout and retries of URL shards.

    Raises:
        ShardReadError: a shard cannot be read (a URL: after the retries) or holds another count than
            ``lengths`` says, or a sample lacks its ``jpg`` / ``cls`` member or its ``cls`` is not a class index
            below ``num_classes`` (names the shard, the key and what the member holds).
    """
    for seg in segments:
        url = paths[seg.shard]
        length = None if lengths is None else lengths[seg.shard]
        for key, members in iter_samples(url, seg.skip, seg.take, remote, length):
            yield url, key, _member(url, key, members, "jpg"), class_index(url, key, members, num_classes)


def _fix_hint(url: str) -> str:
    """``run `shard-imagenet verify <the shard's folder>```: what an error about a shard's content suggests."""
    return f"run `shard-imagenet verify {os.path.dirname(url) or '.'}`"


def _member(url: str, key: str, members: dict[str, bytes], ext: str) -> bytes:
    """Member ``.ext`` of sample ``key``; ShardReadError naming the members it has when it has none."""
    if ext not in members:
        raise ShardReadError(f"{url}: sample {key}: no .{ext} member (has {', '.join('.' + e for e in members)}); "
                             f"{_fix_hint(url)}")
    return members[ext]


def class_index(url: str, key: str, members: dict[str, bytes], num_classes: int) -> int:
    """The label of sample ``key``: its ``.cls`` member, ASCII decimal in ``[0, num_classes)``.

    Raises:
        ShardReadError: no ``.cls`` member, or one that is not such a number (the message shows its bytes).
    """
    raw = _member(url, key, members, "cls")
    try:
        label = int(raw)
    except ValueError:
        label = None
    if label is not None and 0 <= label < num_classes:
        return label
    shown = repr(raw[:20]) + ("..." if len(raw) > 20 else "")
    of = "" if label is None else f" of the {num_classes} classes"
    raise ShardReadError(f"{url}: sample {key}: member .cls holds {shown}, not a class index{of}; {_fix_hint(url)}")


def shuffled(items, buffer_size: int, rng: random.Random):
    """Buffer shuffle (as webdataset's ``shuffle``): keep ``buffer_size`` items, emit a random one per input."""
    if buffer_size <= 1:
        yield from items
        return
    buf = []
    for item in items:
        if len(buf) < buffer_size:
            buf.append(item)
            continue
        i = rng.randrange(len(buf))
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


def skip_reason(url: str, key: str, exc: BaseException) -> str:
    """``"<shard>: <key>: cannot decode (<error type>: <why>)"``: the line a skipped sample is named by."""
    return decode_failure(f"{url}: {key}", exc)


def decode_failure(where: str, exc: BaseException) -> str:
    """``"<where>: cannot decode (<error type>: <why>)"``, ``where`` naming the sample (shard and key, or file)."""
    why = "not a decodable image" if isinstance(exc, PIL.UnidentifiedImageError) else f"{exc}"
    return f"{where}: cannot decode ({type(exc).__name__}: {why})"


def warn_skipped(what: str) -> None:
    """Name a skipped sample on stderr: ``warning: skipped sample <what>``."""
    print(f"warning: skipped sample {what}", file=sys.stderr, flush=True)


def keep_decoded(images: torch.Tensor, labels: torch.Tensor, keys: list[str], ok: list[int], skipped: list[str],
                 train: bool, rng: random.Random,
                 on_bad: OnBadSample) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Apply the bad-sample policy ``on_bad`` to one batch whose rows ``ok`` decoded (the others hold garbage).

    ``skip``: in train every other row is overwritten by a random decoded row of the same batch (image, label and
    key), so the batch stays full and every rank runs the same number of steps; in val the other rows are left
    out. ``images`` is ``N×…`` on any device, ``labels`` ``N`` int64, ``keys`` ``N`` keys; ``skipped`` names the
    failures (only the first is used, in the error).

    Raises:
        SampleDecodeError: ``on_bad`` is ``error`` and a row did not decode, or not one row decoded (the message
            names the first failure).
    """
    if skipped and on_bad is OnBadSample.ERROR:
        raise SampleDecodeError(f"bad sample {skipped[0]}; --on-bad-sample skip would skip and count it")
    if not ok:
        raise SampleDecodeError(f"no sample of a batch decodes; first: {skipped[0]}")
    if len(ok) == len(keys):
        return images, labels, keys
    if not train:  # eval: leave them out (the eval count shows it)
        return images[ok], labels[ok], [keys[i] for i in ok]
    good = set(ok)
    for i in (i for i in range(len(keys)) if i not in good):  # train: reuse decoded samples in their place
        j = ok[rng.randrange(len(ok))]
        images[i], labels[i], keys[i] = images[j], labels[j], keys[j]
    return images, labels, keys


def batch_buffer(n: int, size: int, shared: bool) -> torch.Tensor:
    """An uninitialised ``n×size×size×3`` uint8 batch; with ``shared`` (in a DataLoader worker) allocated
    directly in shared memory, so that neither a ``share_memory_()`` copy nor the hand-off to the main process
    copies it."""
    shape = (n, size, size, 3)
    if not shared:
        return torch.empty(shape, dtype=torch.uint8)
    return new_shared_uint8(n * size * size * 3).view(shape)


class ShardSamples(IterableDataset):
    """One rank's share of a split, as the raw samples of whole batches; DataLoader workers split it by plan.

    Subclasses turn :meth:`chunks` into what their workers hand over. The epoch (:attr:`epoch`) lives in
    shared memory, so :meth:`set_epoch`-style updates reach persistent (forked) workers.
    """

    def __init__(self, info: DatasetInfo, split: Split, cfg: LoaderConfig, rank: int, world_size: int):
        self.paths = info.shard_paths(split.value)
        self.lengths = list(info.split(split.value).shard_lengths)
        self.num_classes = info.num_classes
        self.split = split
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        # shared with persistent DataLoader workers (inherited at fork): set_epoch reaches them
        self._epoch = multiprocessing.get_context("fork").Value("q", 0, lock=False)

    @property
    def epoch(self) -> int:
        return self._epoch.value

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.value = value

    def worker_plan(self, worker: int, num_workers: int) -> epoch_plan.WorkerPlan:
        c = self.cfg
        if self.split is Split.TRAIN:
            return epoch_plan.plan_train(self.lengths, c.batch_size, self.rank, self.world_size, worker,
                                         num_workers, c.seed, self.epoch)
        return epoch_plan.plan_eval(self.lengths, c.batch_size, self.rank, self.world_size, worker, num_workers)

    def chunks(self) -> Iterator[tuple[random.Random, list[tuple[str, str, bytes, int]], float]]:
        """Yield ``(rng, chunk, read_s)`` for each batch of this worker's plan in the current epoch.

        ``chunk`` holds up to ``batch_size`` samples ``(shard, key, jpg bytes, label)`` (train: shuffled through
        the buffer), ``read_s`` the seconds spent reading them; ``rng`` is the worker's generator, seeded by
        (seed, epoch, rank, worker, split), which also drew the shuffle (callers draw crops from it).
        """
        wi = get_worker_info()
        worker, num_workers = (wi.id, wi.num_workers) if wi is not None else (0, 1)
        plan = self.worker_plan(worker, num_workers)
        rng = random.Random(f"{self.cfg.seed}/{self.epoch}/{self.rank}/{worker}/{self.split.value}")  # str seeds are stable
        samples = read_segments(self.paths, plan.segments, self.num_classes, self.lengths, self.cfg.remote_options())
        if self.split is Split.TRAIN:
            samples = shuffled(samples, self.cfg.shuffle_buffer, rng)
        clock = time.perf_counter
        while True:
            t0 = clock()
            chunk = list(itertools.islice(samples, self.cfg.batch_size))
            if not chunk:
                return
            yield rng, chunk, clock() - t0


class ShardBatches(ShardSamples):
    """Iterable dataset of whole uint8 batches for one rank; DataLoader workers split it by plan.

    Yields ``(images N×S×S×3 uint8, labels N int64, keys list[str], skipped list[str], stage times)``, the stage
    times being ``(read_s, decode_s, augment_s, collate_s, samples)`` of that batch in its worker. A sample that fails
    to decode is named in ``skipped``; in train its slot is filled with another sample of the same batch
    (so every rank still runs the same number of full steps), in eval it is left out (:func:`keep_decoded`).

    Raises:
        SampleDecodeError: not one sample of a batch decodes, or one does not with ``on_bad_sample`` ``error``.
    """

    def __iter__(self):
        in_worker = get_worker_info() is not None
        train = self.split is Split.TRAIN
        size = self.cfg.image_size
        clock = time.perf_counter
        for rng, chunk, t_read in self.chunks():
            t0 = clock()
            images = batch_buffer(len(chunk), size, shared=in_worker)
            ok, skipped = [], []
            work = [0.0, 0.0]  # decode, augment (s), added to by decode_train / decode_val
            for i, (url, key, data, _) in enumerate(chunk):
                try:  # the resize writes into the batch's slot i itself (out=): no per-sample tensor, no copy
                    if train:
                        decode_train(data, size, rng, work, out=images[i])
                    else:
                        decode_val(data, size, self.cfg.crop_pct, work, out=images[i])
                    ok.append(i)
                except Exception as exc:
                    skipped.append(skip_reason(url, key, exc))
            labels = torch.tensor([c[3] for c in chunk], dtype=torch.int64)
            images, labels, keys = keep_decoded(images, labels, [c[1] for c in chunk], ok, skipped, train, rng,
                                                self.cfg.on_bad_sample)
            collate = clock() - t0 - work[0] - work[1]  # batch allocation, labels, skipped samples, the loop
            yield images, labels, keys, skipped, (t_read, work[0], work[1], collate, len(chunk))


class ShardLoaderBase(ReplayResume):
    """What the shard backends (``cpu``, ``nvjpeg``) share for one split on one rank: option checks, the epoch
    length (train: equal full-batch steps on every rank; val: this rank's batches), :meth:`set_epoch`, the
    persistent forked DataLoader workers over :meth:`make_dataset` (:meth:`worker_loader`) and :meth:`close`.

    Raises:
        ValueError: no dataset, or a train split too small for one step per rank (option values are checked by
            :class:`LoaderConfig` itself).
    """

    kind = "cpu"  # the --loader name, for messages
    pin_memory = True  # pin the workers' tensors before they are handed over (when the device is CUDA)

    def __init__(self, cfg: LoaderConfig, split: Split, info: DatasetInfo | None, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        if info is None:
            raise ValueError(f"--loader {self.kind} needs --data DIR (a folder written by shard-imagenet)")
        self.split = split
        self.device = device
        self.num_samples = info.split(split.value).num_samples
        self.num_classes = info.num_classes
        self.dataset = self.make_dataset(info, split, cfg, rank, world_size)
        self.cfg = cfg
        self.rank = rank
        if split is Split.TRAIN:
            self._len = epoch_plan.train_steps_per_epoch(self.num_samples, world_size, cfg.batch_size)
            self.dataset.worker_plan(0, 1)  # raises early when the split is too small for one step per rank
        else:
            self._len = epoch_plan.eval_batches_per_rank(self.dataset.lengths, cfg.batch_size, rank, world_size,
                                                         max(1, cfg.workers))
        self._skipped: list[str] = []  # "<shard>: <key>: <why>" of every sample that failed to decode
        self._loader: DataLoader | None = None

    def make_dataset(self, info: DatasetInfo, split: Split, cfg: LoaderConfig, rank: int,
                     world_size: int) -> ShardSamples:
        return ShardBatches(info, split, cfg, rank, world_size)

    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        self.dataset.epoch = epoch

    def close(self) -> None:
        """Stop the persistent DataLoader workers (they would otherwise stop at interpreter exit)."""
        it = getattr(self._loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader = None

    def worker_loader(self) -> DataLoader:
        """The DataLoader over :attr:`dataset`, built once: its workers persist across epochs (no re-fork)."""
        if self._loader is None:
            w = self.cfg.workers
            self._loader = DataLoader(self.dataset, batch_size=None, num_workers=w,
                                      pin_memory=self.pin_memory and self.device.type == "cuda",
                                      persistent_workers=w > 0, multiprocessing_context="fork" if w > 0 else None,
                                      prefetch_factor=2 if w > 0 else None)
        return self._loader

    def note_skipped(self, what: str) -> None:
        """Record a sample that did not decode and name it on stderr."""
        self._skipped.append(what)
        warn_skipped(what)

    def stats(self) -> LoaderStats:
        return LoaderStats(skipped=tuple(self._skipped))


class CpuLoader(ShardLoaderBase):
    """The ``cpu`` backend for one split on one rank (see module docstring). Implements ``Loader``."""

    def __init__(self, cfg: LoaderConfig, split: Split, info: DatasetInfo | None, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        super().__init__(cfg, split, info, device, rank, world_size)
        # per-stage CPU seconds summed over this rank's workers since the loader was built, and the samples
        # they cover (read = tar reading + shuffle buffer; decode = JPEG → RGB; augment = crop, resize into the
        # batch slot, flip there; collate = the shared-memory batch's allocation, labels, bad-sample policy)
        self._stage_seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._stage_samples = 0

    def stats(self) -> LoaderStats:
        """Skipped samples and the workers' per-stage seconds of the batches handed out so far."""
        return LoaderStats(tuple(self._skipped), StageTimes(dict(self._stage_seconds), self._stage_samples))

    def __iter__(self) -> Iterator[Batch]:
        loader = self.worker_loader()
        yield from to_device_prefetched(self._host_batches(loader), self.device, self.cfg.normalize)

    def _host_batches(self, loader: DataLoader):
        for images, labels, keys, skipped, stages in loader:
            for what in skipped:
                self.note_skipped(what)
            for name, seconds in zip(STAGES, stages[:4]):
                self._stage_seconds[name] += seconds
            self._stage_samples += stages[4]
            yield images, labels, tuple(keys)
