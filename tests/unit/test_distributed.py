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


def test_ddp_settings_reach_ddp_under_the_name_this_torch_takes():
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    takes = inspect.signature(DistributedDataParallel.__init__).parameters
    defaults = distributed.DdpSettings()
    assert (defaults.broadcast_buffers, defaults.gradient_as_bucket_view) == (False, True)
    kwargs = distributed.ddp_kwargs(defaults)
    assert kwargs["gradient_as_bucket_view"] is True and set(kwargs) <= set(takes)
    # torch 2.13+: forward_sync_buffers (broadcast_buffers=False there would also skip the sync at construction)
    sync = "forward_sync_buffers" if "forward_sync_buffers" in takes else "broadcast_buffers"
    assert kwargs[sync] is False and len(kwargs) == 2
    old = distributed.ddp_kwargs(distributed.DdpSettings(broadcast_buffers=True, gradient_as_bucket_view=False))
    assert old == {sync: True, "gradient_as_bucket_view": False}
