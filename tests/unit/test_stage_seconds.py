"""The backend contract's typed pieces: stage seconds and their arithmetic, the per-backend sub-configs, the
workers default, and the host batch a worker hands over."""

from __future__ import annotations

import random

import pytest
import torch

from pipeline.hostinfo import cores_per_local_rank
from pipeline.backends import (H2D_COPY, STAGES, FolderConfig, LoaderConfig, LoaderKind, OnBadSample, StageSeconds,
                               StageTimes, SyntheticConfig, backend_spec)
from pipeline.backends.shards import BadSamplePolicy, SampleDecodeError, StageTally
from pipeline.backends.staging import HostBatch, prefetched, to_device_prefetched


def test_stage_seconds_arithmetic_and_views():
    a, b = StageSeconds(1.0, 2.0, 3.0, 4.0), StageSeconds(0.5, 0.5, 0.5, 0.5, h2d=1.0)
    assert a + b == StageSeconds(1.5, 2.5, 3.5, 4.5, 1.0) and a - b == StageSeconds(0.5, 1.5, 2.5, 3.5, -1.0)
    assert a * 2 == 2 * a == StageSeconds(2.0, 4.0, 6.0, 8.0) and a / 4 == StageSeconds(0.25, 0.5, 0.75, 1.0)
    assert a.total == 10.0 and b.total == 3.0
    assert tuple(name for name, _ in a.items()) == STAGES
    assert list(b.as_dict(with_h2d=True)) == [*STAGES, H2D_COPY] == ["read", "decode", "augment", "collate",
                                                                    "h2d copy"]
    assert a.with_h2d(0.1).h2d == 0.1 and a.with_h2d(0.1).as_dict() == a.as_dict()
    assert StageSeconds.from_named(b.as_dict(with_h2d=True)) == b
    assert StageSeconds.from_named([("decode", 2)]) == StageSeconds(decode=2.0)
    with pytest.raises(ValueError, match="unknown stage 'resize'"):
        StageSeconds.from_named({"resize": 1.0})
    with pytest.raises(ZeroDivisionError):
        a / 0


def test_stage_times_differences_and_per_image():
    later, earlier = StageTimes(StageSeconds(4.0, 8.0, 0.0, 2.0), 8), StageTimes(StageSeconds(2.0, 4.0, 0.0, 1.0), 4)
    assert later - earlier == StageTimes(StageSeconds(2.0, 4.0, 0.0, 1.0), 4) == earlier
    assert earlier + earlier == later
    assert later.per_image() == StageSeconds(0.5, 1.0, 0.0, 0.25) and StageTimes().per_image() is None


def test_tally_and_host_batch_carry_the_batch_seconds():
    tally = StageTally(read=0.5)
    tally.decode += 1.0
    tally.augment += 2.0
    tally.collate = 0.25
    images = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    host = HostBatch(images, torch.tensor([1, 2]), ("a", "b"), (), tally.seconds(), 2)
    assert host.times() == StageTimes(StageSeconds(0.5, 1.0, 2.0, 0.25), 2)
    batch = next(iter(to_device_prefetched([host], torch.device("cpu"), normalize=False)))
    assert batch.images.shape == (2, 3, 4, 4) and batch.images.is_contiguous(memory_format=torch.channels_last)
    assert batch.keys == ("a", "b") and batch.labels.tolist() == [1, 2]
    assert list(prefetched(range(3), torch.device("cpu"), lambda i: i * 2)) == [0, 2, 4]  # off CUDA: made on demand


def test_sub_configs_are_named_by_the_registry_and_read_with_defaults():
    assert backend_spec(LoaderKind.SYNTHETIC).options is SyntheticConfig
    assert backend_spec(LoaderKind.FOLDER).options is FolderConfig and backend_spec(LoaderKind.CPU).options is None
    cfg = LoaderConfig(options=[SyntheticConfig(train_samples=10), FolderConfig("a"), FolderConfig("b")])
    assert isinstance(cfg.options, tuple) and cfg.options_for(FolderConfig).data_root == "b"  # the last one wins
    assert backend_spec(LoaderKind.SYNTHETIC).options_of(cfg).train_samples == 10
    assert LoaderConfig().options_for(SyntheticConfig) == SyntheticConfig()
    assert backend_spec("cpu").options_of(cfg) is None
    with pytest.raises(ValueError, match="--synthetic-val-samples must be >= 1, got 0"):
        SyntheticConfig(val_samples=0)


def test_workers_default_is_the_cores_per_rank(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert cores_per_local_rank() == 2 and LoaderConfig().workers == 2 and LoaderConfig(workers=0).workers == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert LoaderConfig().workers == 1


def test_bad_sample_policy_fills_train_rows_and_drops_val_rows():
    images, labels, keys = torch.arange(4).view(4, 1), torch.arange(4), ["k0", "k1", "k2", "k3"]
    train = BadSamplePolicy(True, OnBadSample.SKIP)
    _, got_labels, got_keys = train.keep_decoded(images.clone(), labels.clone(), list(keys), [0, 2], ["x", "y"],
                                                 random.Random(0))
    assert set(got_labels.tolist()) <= {0, 2} and len(got_keys) == 4
    val = BadSamplePolicy(False, OnBadSample.SKIP)
    assert val.keep_decoded(images, labels, list(keys), [1], ["x"], random.Random(0))[2] == ["k1"]
    with pytest.raises(SampleDecodeError, match="bad sample x"):
        BadSamplePolicy(True, OnBadSample.ERROR).keep_decoded(images, labels, list(keys), [0], ["x"], random.Random(0))
