"""The node's share of CPU cores for one rank (torchrun's LOCAL_WORLD_SIZE)."""

from __future__ import annotations

import os

from train import distributed


def test_cores_per_rank_divides_the_affinity_mask_by_the_local_ranks(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert distributed.local_world_size() == 1 and distributed.cores_per_rank() == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert distributed.local_world_size() == 3 and distributed.cores_per_rank() == 5
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert distributed.cores_per_rank() == 1  # never 0
