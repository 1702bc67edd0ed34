"""What the shard backends (``cpu``, ``nvjpeg``) share, in a module neither owns: reading one rank's share of a
split of webdataset shards and the loader half around it, and the policy for samples that do not decode (which
the ``folder`` backend applies too).

It holds:

* reading: :func:`read_segments` (the samples of an epoch plan's segments, labels checked by
  :func:`class_index`), :func:`shuffled` (the train shuffle buffer), :class:`ShardSamples` (one rank's share as
  the raw samples of whole batches; DataLoader workers split it by plan; each backend's dataset subclasses it);
* the loader half: :class:`ShardLoaderBase` (option checks, epoch length, :meth:`~ShardLoaderBase.set_epoch`,
  persistent forked DataLoader workers, skipped samples, :meth:`~ShardLoaderBase.close`);
* bad samples: :class:`BadSamplePolicy` (skip and count, or stop, as ``LoaderConfig.on_bad_sample`` says),
  :class:`SampleDecodeError`, the lines that name a skipped sample (:func:`skip_reason`, :func:`decode_failure`,
  :func:`warn_skipped`);
* :func:`batch_buffer`: a uint8 batch allocated in shared memory by a worker; :class:`StageTally`: the stage
  seconds of the batch it is decoding, added to in place by the decode functions.

A sample whose ``.jpg`` / ``.cls`` member is missing, or whose ``.cls`` is not a class index, is a one-line error
(:func:`class_index`): the shard was damaged or hand-made, and its label cannot be trusted.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Iterator

import PIL
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.backends import LoaderConfig, LoaderStats, OnBadSample, Split, StageSeconds
from pipeline.backends.replay import ReplayResume
from pipeline.compat import new_shared_uint8
from pipeline.dataset import DatasetInfo
from pipeline.read import plan as epoch_plan
from pipeline.read.tarstream import RemoteOptions, ShardReadError, iter_samples


class StageTally:
    """A mutable accumulator of one batch's stage seconds, which the decode functions of
    :mod:`pipeline.read.transforms` add to in place (``tally.decode += s``, ``tally.augment += s``); made where a
    batch is assembled and frozen into a :class:`StageSeconds` with :meth:`seconds` when it is done."""

    __slots__ = ("read", "decode", "augment", "collate")

    def __init__(self, read: float = 0.0) -> None:
        self.read, self.decode, self.augment, self.collate = read, 0.0, 0.0, 0.0

    def seconds(self) -> StageSeconds:
        """The seconds added so far, frozen."""
        return StageSeconds(self.read, self.decode, self.augment, self.collate)


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


@dataclass(frozen=True)
class BadSamplePolicy:
    """What a batch does with its samples that did not decode.

    Attributes:
        train: train split (a failed row is replaced, so the batch stays full) or val (it is left out).
        on_bad: ``skip`` (replace / leave out, counted by the caller) or ``error`` (stop at once).
    """

    train: bool
    on_bad: OnBadSample

    def keep_decoded(self, images: torch.Tensor, labels: torch.Tensor, keys: list[str], ok: list[int],
                     skipped: list[str], rng: random.Random) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Apply the policy to one batch whose rows ``ok`` decoded (the others hold garbage).

        ``skip``: in train every other row is overwritten by a random decoded row of the same batch (image, label
        and key, drawn from ``rng``), so the batch stays full and every rank runs the same number of steps; in val
        the other rows are left out. ``images`` is ``N×…`` on any device, ``labels`` ``N`` int64, ``keys`` ``N``
        keys; ``skipped`` names the failures (only the first is used, in the error).

        Raises:
            SampleDecodeError: ``on_bad`` is ``error`` and a row did not decode, or not one row decoded (the
                message names the first failure).
        """
        if skipped and self.on_bad is OnBadSample.ERROR:
            raise SampleDecodeError(f"bad sample {skipped[0]}; --on-bad-sample skip would skip and count it")
        if not ok:
            raise SampleDecodeError(f"no sample of a batch decodes; first: {skipped[0]}")
        if len(ok) == len(keys):
            return images, labels, keys
        if not self.train:  # eval: leave them out (the eval count shows it)
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
        self.policy = BadSamplePolicy(split is Split.TRAIN, cfg.on_bad_sample)
        # shared with persistent DataLoader workers (inherited at fork): set_epoch reaches them
        self._epoch = multiprocessing.get_context("fork").Value("q", 0, lock=False)

    @property
    def epoch(self) -> int:
        return self._epoch.value

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.value = value

    def worker_plan(self, worker: int, num_workers: int) -> epoch_plan.WorkerPlan:
        cfg = self.cfg
        slot = epoch_plan.ReaderSlot(self.rank, self.world_size, worker, num_workers)
        if self.split is Split.TRAIN:
            return epoch_plan.plan_train(self.lengths, cfg.batch_size, slot, cfg.seed, self.epoch)
        return epoch_plan.plan_eval(self.lengths, cfg.batch_size, slot)

    def chunks(self) -> Iterator[tuple[random.Random, list[tuple[str, str, bytes, int]], float]]:
        """Yield ``(rng, chunk, read_s)`` for each batch of this worker's plan in the current epoch.

        ``chunk`` holds up to ``batch_size`` samples ``(shard, key, jpg bytes, label)`` (train: shuffled through
        the buffer), ``read_s`` the seconds spent reading them; ``rng`` is the worker's generator, seeded by
        (seed, epoch, rank, worker, split), which also drew the shuffle (callers draw crops from it).
        """
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = self.worker_plan(worker, num_workers)
        rng = random.Random(f"{self.cfg.seed}/{self.epoch}/{self.rank}/{worker}/{self.split.value}")  # stable
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


class ShardLoaderBase(ReplayResume):
    """What the shard backends (``cpu``, ``nvjpeg``) share for one split on one rank: option checks, the epoch
    length (train: equal full-batch steps on every rank; val: this rank's batches), :meth:`set_epoch`, the
    persistent forked DataLoader workers over :meth:`make_dataset` (:meth:`worker_loader`) and :meth:`close`.
    Subclasses set :attr:`kind` and implement :meth:`make_dataset` and ``__iter__``.

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
        """The samples this rank's workers read (each shard backend says what its workers hand over: decoded
        batches for ``cpu``, JPEG bytes for ``nvjpeg``); the base class has none of its own.

        Raises:
            NotImplementedError: always, here; every subclass overrides it.
        """
        raise NotImplementedError(f"{type(self).__name__} must say what its workers read (make_dataset)")

    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        self.dataset.epoch = epoch

    def close(self) -> None:
        """Stop the persistent DataLoader workers (they would otherwise stop at interpreter exit)."""
        iterator = getattr(self._loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._loader = None

    def worker_loader(self) -> DataLoader:
        """The DataLoader over :attr:`dataset`, built once: its workers persist across epochs (no re-fork)."""
        if self._loader is None:
            workers = self.cfg.workers
            self._loader = DataLoader(self.dataset, batch_size=None, num_workers=workers,
                                      pin_memory=self.pin_memory and self.device.type == "cuda",
                                      persistent_workers=workers > 0,
                                      multiprocessing_context="fork" if workers > 0 else None,
                                      prefetch_factor=2 if workers > 0 else None)
        return self._loader

    def note_skipped(self, what: str) -> None:
        """Record a sample that did not decode and name it on stderr."""
        self._skipped.append(what)
        warn_skipped(what)

    def stats(self) -> LoaderStats:
        return LoaderStats(skipped=tuple(self._skipped))


__all__ = ["BadSamplePolicy", "SampleDecodeError", "ShardLoaderBase", "ShardSamples", "StageTally", "batch_buffer",
           "class_index",
           "decode_failure", "read_segments", "shuffled", "skip_reason", "warn_skipped"]
