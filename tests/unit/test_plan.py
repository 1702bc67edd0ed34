"""Epoch plans: disjoint, complete, equal steps on every rank."""

from __future__ import annotations


import pytest

from pipeline.read.plan import (ReaderSlot, eval_batches_per_rank, plan_eval, plan_train, segments_for_range,
                                shard_order, train_steps_per_epoch)


def positions(lengths, segments):
    """(shard, index-in-shard) pairs a segment list covers."""
    return [(s.shard, s.skip + i) for s in segments for i in range(s.take)]


@pytest.mark.parametrize("lengths,world,workers,batch", [
    ([12, 12, 12, 9], 2, 1, 4), ([45], 2, 3, 4), ([5, 5, 5, 5, 5], 2, 3, 2), ([3, 3, 3], 4, 2, 1),
    ([100, 100, 37], 3, 4, 8)])
def test_train_plan_equal_steps_disjoint(lengths, world, workers, batch):
    for epoch in range(3):
        seen = []
        steps = train_steps_per_epoch(sum(lengths), world, batch)
        for rank in range(world):
            plans = [plan_train(lengths, batch, ReaderSlot(rank, world, w, workers), seed=1, epoch=epoch) for w in range(workers)]
            assert sum(p.num_batches for p in plans) == steps  # every rank: the same number of steps
            for p in plans:
                assert p.num_samples == p.num_batches * batch == sum(s.take for s in p.segments)
                seen += positions(lengths, p.segments)
        assert len(seen) == len(set(seen)) == steps * batch * world  # disjoint
        assert sum(lengths) - len(seen) <= world * (batch + 1)  # little dropped


def test_train_shard_order_changes_per_epoch_and_is_seeded():
    orders = [shard_order(20, seed=3, epoch=e, shuffle=True) for e in range(3)]
    assert orders[0] != orders[1] != orders[2]
    assert orders[0] == shard_order(20, seed=3, epoch=0, shuffle=True)
    assert sorted(orders[0]) == list(range(20))


@pytest.mark.parametrize("lengths,world,workers,batch", [
    ([13], 2, 1, 4), ([5, 5, 3], 2, 3, 4), ([1], 4, 2, 8), ([7, 7, 7, 7, 7, 7, 7], 3, 2, 5)])
def test_eval_plan_covers_every_sample_once(lengths, world, workers, batch):
    seen = []
    for rank in range(world):
        plans = [plan_eval(lengths, batch, ReaderSlot(rank, world, w, workers)) for w in range(workers)]
        assert eval_batches_per_rank(lengths, batch, rank, world, workers) == sum(p.num_batches for p in plans)
        for p in plans:
            seen += positions(lengths, p.segments)
    assert sorted(seen) == [(s, i) for s, n in enumerate(lengths) for i in range(n)]


def test_segments_for_range_crosses_shards():
    segs = segments_for_range([4, 4, 4], [2, 0, 1], 3, 9)
    assert [(s.shard, s.skip, s.take) for s in segs] == [(2, 3, 1), (0, 0, 4), (1, 0, 1)]


def test_too_small_train_split_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than world size"):
        plan_train([3], 4, ReaderSlot(0, 1, 0, 1), 0, 0)
