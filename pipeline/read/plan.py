"""Which samples each rank and each loader worker reads in an epoch.

The shards of a split, in an epoch's shard order, are seen as one sequence of samples (their lengths
are known from ``_info.json``). Every rank takes one contiguous, disjoint range of it, and every
loader worker of a rank one contiguous, disjoint part of the rank's range, so:

* train: every rank gets exactly ``steps_per_epoch × batch_size`` samples in whole batches, the
  same number of steps on every rank whatever the shard count (no DDP hang); at most
  ``world_size × (batch_size + 1)`` samples per epoch are left out (like ``drop_last``), and the shard
  order is reshuffled every epoch with the same seed on every rank;
* val: the ranges cover every sample exactly once; batches may be partial.

A range may start or end inside a shard: the reader skips the leading samples of that shard.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    """Read ``take`` samples of shard ``shard`` after skipping its first ``skip`` samples."""

    shard: int
    skip: int
    take: int


@dataclass(frozen=True)
class ReaderSlot:
    """Which reader a plan is for: loader worker ``worker`` of ``num_workers`` (0-based) on rank ``rank`` of
    ``world_size``."""

    rank: int
    world_size: int
    worker: int
    num_workers: int


@dataclass(frozen=True)
class WorkerPlan:
    """What one loader worker of one rank reads in one epoch.

    Attributes:
        segments: shard segments, read in order.
        num_samples: ``sum(s.take for s in segments)``.
        num_batches: batches it yields (full batches for train; the last may be partial for val).
    """

    segments: tuple[Segment, ...]
    num_samples: int
    num_batches: int


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """Shard indices in the order an epoch reads them: a permutation seeded by (seed, epoch), same on all ranks."""
    order = list(range(num_shards))
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def segments_for_range(lengths: list[int], order: list[int], start: int, stop: int) -> tuple[Segment, ...]:
    """Segments covering positions ``[start, stop)`` of the shards concatenated in ``order``."""
    out = []
    pos = 0
    for shard in order:
        n = lengths[shard]
        lo, hi = max(start, pos), min(stop, pos + n)
        if lo < hi:
            out.append(Segment(shard, lo - pos, hi - lo))
        pos += n
        if pos >= stop:
            break
    return tuple(out)


def split_even(total: int, parts: int, index: int) -> tuple[int, int]:
    """``[start, stop)`` of part ``index`` when ``total`` items are cut into ``parts`` near-equal runs.

    Also how every backend (and DALI's reader) shares a split's samples between ranks.
    """
    return total * index // parts, total * (index + 1) // parts


def train_steps_per_epoch(num_samples: int, world_size: int, batch_size: int) -> int:
    """Steps every rank runs per train epoch: ``(num_samples // world_size) // batch_size``."""
    return (num_samples // world_size) // batch_size


def plan_train(lengths: list[int], batch_size: int, slot: ReaderSlot, seed: int, epoch: int) -> WorkerPlan:
    """Train plan of the reader ``slot`` (rank, worker): whole batches only, shards reshuffled per epoch (by
    ``seed`` and ``epoch``, the same on every rank).

    Raises:
        ValueError: fewer samples than ``world_size × batch_size`` (not one step per rank).
    """
    rank, world_size = slot.rank, slot.world_size
    total = sum(lengths)
    steps = train_steps_per_epoch(total, world_size, batch_size)
    if steps == 0:
        raise ValueError(f"train split has {total} samples, fewer than world size × batch size = "
                         f"{world_size} × {batch_size}; lower --batch-size")
    per_rank = total // world_size
    b_lo, b_hi = split_even(steps, slot.num_workers, slot.worker)
    start = rank * per_rank + b_lo * batch_size
    stop = rank * per_rank + b_hi * batch_size
    order = shard_order(len(lengths), seed, epoch, shuffle=True)
    return WorkerPlan(segments_for_range(lengths, order, start, stop), stop - start, b_hi - b_lo)


def plan_eval(lengths: list[int], batch_size: int, slot: ReaderSlot) -> WorkerPlan:
    """Eval plan of the reader ``slot`` (rank, worker): every sample once over all ranks and workers, shards in
    order."""
    total = sum(lengths)
    r_lo, r_hi = split_even(total, slot.world_size, slot.rank)
    w_lo, w_hi = split_even(r_hi - r_lo, slot.num_workers, slot.worker)
    start, stop = r_lo + w_lo, r_lo + w_hi
    n = stop - start
    order = list(range(len(lengths)))
    return WorkerPlan(segments_for_range(lengths, order, start, stop), n, -(-n // batch_size))


def eval_batches_per_rank(lengths: list[int], batch_size: int, rank: int, world_size: int, num_workers: int) -> int:
    """Eval batches rank ``rank`` yields (sum over its workers; ranks may differ by a few)."""
    return sum(plan_eval(lengths, batch_size, ReaderSlot(rank, world_size, w, num_workers)).num_batches
               for w in range(num_workers))
