"""The ``dali`` backend (CPU pipeline here): contract, exact epochs per rank, val coverage, parity with ``cpu``."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import webdataset as wds

pytest.importorskip("nvidia.dali")

from pipeline.backends import LoaderConfig, LoaderKind, Split, build_loader  # noqa: E402
from pipeline.backends.dali import DaliLoader, rank_share  # noqa: E402
from pipeline.info import load_info  # noqa: E402
from pipeline.plan import train_steps_per_epoch  # noqa: E402

CPU = torch.device("cpu")
CFG = LoaderConfig(batch_size=4, image_size=32, workers=1, shuffle_buffer=8)


def epoch(loader, e):
    loader.set_epoch(e)
    return list(loader)


def shard_labels(info, split):
    out = []
    for url in info.shard_paths(split):
        out += [int(s["cls"]) for s in wds.tariterators.tarfile_samples([{"url": url}])]
    return out


def check_batch(b, info, size=32):
    assert b.images.dtype == torch.float32 and b.images.shape[1:] == (3, size, size)
    assert b.images.is_contiguous(memory_format=torch.channels_last)
    assert b.labels.dtype == torch.int64 and b.labels.shape == (b.images.shape[0],)
    assert 0 <= int(b.labels.min()) and int(b.labels.max()) < info.num_classes


def test_dali_contract_and_two_train_epochs(demo_shards):
    info = load_info(demo_shards)
    loader = build_loader(LoaderKind.DALI, CFG, Split.TRAIN, info, CPU)
    assert isinstance(loader, DaliLoader) and len(loader) == 45 // 4
    e0, e1 = epoch(loader, 0), epoch(loader, 1)
    for batches in (e0, e1):
        assert len(batches) == len(loader)
        for b in batches:
            check_batch(b, info)
            assert b.images.shape[0] == 4
    x = torch.cat([b.images for b in e0])
    assert -3 < float(x.mean()) < 3 and 0.2 < float(x.std()) < 3  # normalised, not 0..255
    assert not torch.equal(x, torch.cat([b.images for b in e1]))  # new crops / order each epoch


def test_dali_train_two_ranks_run_equal_steps(demo_shards):
    info = load_info(demo_shards)
    cfg = LoaderConfig(batch_size=3, image_size=32, workers=1, shuffle_buffer=8)
    steps = train_steps_per_epoch(45, 2, 3)
    loaders = [DaliLoader(cfg, Split.TRAIN, info, CPU, rank=r, world_size=2) for r in range(2)]
    for e in range(2):
        for loader in loaders:
            batches = epoch(loader, e)
            assert len(loader) == len(batches) == steps == 7
            assert all(b.images.shape[0] == 3 for b in batches)


@pytest.mark.parametrize("world_size", [2, 3])
def test_dali_val_every_image_once_over_ranks(demo_shards, world_size):
    info = load_info(demo_shards)
    expected = shard_labels(info, "val")
    seen = []
    for r in range(world_size):
        loader = DaliLoader(CFG, Split.VAL, info, CPU, rank=r, world_size=world_size)
        lo, hi = rank_share(13, r, world_size)
        for e in range(2):  # the same share, trimmed, in both epochs
            batches = epoch(loader, e)
            assert len(batches) == len(loader)
            labels = [int(v) for b in batches for v in b.labels]
            assert labels == expected[lo:hi]  # DALI's shard r is [13*r//n, 13*(r+1)//n), in shard order
            for b in batches:
                check_batch(b, info)
        seen += labels
    assert len(seen) == 13 and Counter(seen) == Counter(expected)


def test_dali_val_matches_cpu_backend(demo_shards):
    info = load_info(demo_shards)
    # At 128 px (not 32) so the cpu backend's reduced JPEG decoding (draft) and DALI's antialiased resize
    # agree closely: measured mean abs diff 0.023 at 128 px, 0.11 at 32 px; a mirrored image gives 0.5.
    cfg = LoaderConfig(batch_size=4, image_size=128, workers=1)
    cpu = torch.cat([b.images for b in epoch(build_loader(LoaderKind.CPU, cfg, Split.VAL, info, CPU), 0)])
    cpu_labels = torch.cat([b.labels for b in epoch(build_loader(LoaderKind.CPU, cfg, Split.VAL, info, CPU), 0)])
    dali_batches = epoch(build_loader(LoaderKind.DALI, cfg, Split.VAL, info, CPU), 0)
    dali = torch.cat([b.images for b in dali_batches])
    dali_labels = torch.cat([b.labels for b in dali_batches])
    assert torch.equal(cpu_labels, dali_labels)
    assert cpu.shape == dali.shape == (13, 3, 128, 128)
    assert float((cpu - dali).abs().mean()) < 0.1  # same geometry and normalisation; resize filters differ


def test_dali_early_stop_keeps_epochs_aligned(demo_shards):
    info = load_info(demo_shards)
    loader = DaliLoader(CFG, Split.VAL, info, CPU)
    first = next(iter(loader))
    assert first.images.shape[0] == 4
    labels = [int(v) for b in epoch(loader, 1) for v in b.labels]
    assert labels == shard_labels(info, "val")


def test_dali_needs_data():
    with pytest.raises(ValueError, match="needs --data"):
        DaliLoader(CFG, Split.TRAIN, None, CPU)


def test_dali_missing_is_one_line_error(monkeypatch, demo_shards):
    import builtins

    real_import = builtins.__import__

    def no_dali(name, *args, **kwargs):
        if name.startswith("nvidia.dali"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dali)
    with pytest.raises(ValueError, match=r"needs NVIDIA DALI: pip install 'imagenet-pipeline\[dali\]'"):
        DaliLoader(CFG, Split.VAL, load_info(demo_shards), CPU)
