"""The ``dali`` backend (CPU pipeline here): contract, exact epochs per rank, val coverage, parity with ``cpu``,
exact resume from ``state_dict`` (bitwise, no replay) and one-line errors for states that do not fit."""

from __future__ import annotations

import hashlib
import io
import time
from collections import Counter
from itertools import islice

import pytest
import torch
import webdataset as wds

pytest.importorskip("nvidia.dali")

from pipeline.backends import Loader, LoaderConfig, LoaderKind, Split, build_loader  # noqa: E402
from pipeline.backends.dali import DaliLoader, rank_share  # noqa: E402
from pipeline.read.info import load_info  # noqa: E402
from pipeline.read.plan import train_steps_per_epoch  # noqa: E402

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
    assert isinstance(loader, DaliLoader) and isinstance(loader, Loader) and len(loader) == 45 // 4
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


# ------------------------------------------------------------------------------------------------ exact resume

def same(a, b):
    """Bitwise equal batch lists (images and labels)."""
    return len(a) == len(b) and all(torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
                                    for x, y in zip(a, b))


def saved(state):
    """``state`` through torch.save / torch.load(weights_only=True), as a checkpoint stores it (its bytes as
    uint8 tensors: torch 2.0 / 2.1's weights_only loader refuses pickled bytes)."""
    from train.checkpoint import bytes_as_tensors, tensors_as_bytes

    buf = io.BytesIO()
    torch.save(bytes_as_tensors(state), buf)
    buf.seek(0)
    return tensors_as_bytes(torch.load(buf, weights_only=True))


def count_runs(loader, monkeypatch):
    """A list that grows by one for every batch ``loader`` takes from its DALI pipeline."""
    runs, real = [], loader._run
    monkeypatch.setattr(loader, "_run", lambda: runs.append(1) or real())
    return runs


def run_until(info, cfg, stop_epoch, k, rank=0, world_size=1):
    """Run a train loader through epochs ``0..stop_epoch-1`` and ``k`` batches of ``stop_epoch``: (the state
    taken there, the rest of that epoch and the whole next epoch as this original loader yields them)."""
    loader = DaliLoader(cfg, Split.TRAIN, info, CPU, rank=rank, world_size=world_size)
    for e in range(stop_epoch):
        epoch(loader, e)
    loader.set_epoch(stop_epoch)
    it = iter(loader)
    head = list(islice(it, k))
    state = saved(loader.state_dict())  # the generator is suspended after batch k, as in the training loop
    rest = list(it)
    assert len(head) == k and len(rest) == len(loader) - k
    return state, rest, epoch(loader, stop_epoch + 1)


@pytest.mark.parametrize("stop_epoch,k,rank,world_size,batch", [(0, 3, 0, 1, 4), (1, 3, 0, 1, 4), (1, 1, 0, 1, 4),
                                                                 (2, 5, 1, 2, 3), (1, 4, 2, 3, 3)])
def test_dali_resume_mid_epoch_is_bitwise_exact_without_replay(demo_shards, monkeypatch, stop_epoch, k, rank,
                                                               world_size, batch):
    info = load_info(demo_shards)
    cfg = LoaderConfig(batch_size=batch, image_size=32, workers=1, shuffle_buffer=8)
    state, rest, following = run_until(info, cfg, stop_epoch, k, rank, world_size)
    assert state["epoch"] == stop_epoch and state["batch"] == k and isinstance(state["pipeline"], bytes)
    more_threads = LoaderConfig(**{**vars(cfg), "workers": 2})  # DALI's thread count does not change its output
    resumed = DaliLoader(more_threads, Split.TRAIN, info, CPU, rank=rank, world_size=world_size)
    runs = count_runs(resumed, monkeypatch)
    resumed.set_epoch(stop_epoch)
    resumed.load_state_dict(state)
    got = list(resumed.iter_from(k))
    assert len(runs) == resumed._batches_per_epoch - k  # continued: no batch before k read again
    assert same(got, rest)
    assert same(epoch(resumed, stop_epoch + 1), following)
    if stop_epoch > 0:  # what the exact state buys: a fresh pipeline replaying the epoch yields other batches
        fresh = DaliLoader(cfg, Split.TRAIN, info, CPU, rank=rank, world_size=world_size)
        fresh.set_epoch(stop_epoch)
        assert not same(list(fresh.iter_from(k)), rest)


@pytest.mark.parametrize("exhausted", [True, False])
def test_dali_resume_after_an_epoch_end_is_bitwise_exact(demo_shards, exhausted):
    info = load_info(demo_shards)
    original = DaliLoader(CFG, Split.TRAIN, info, CPU)
    epoch(original, 0)
    original.set_epoch(1)
    it = iter(original)
    head = list(islice(it, len(original)))  # every batch of epoch 1 yielded, the generator not yet finished
    if exhausted:
        assert next(it, None) is None  # the epoch ended: the reader epoch's tail was read and dropped
    state = saved(original.state_dict())
    assert (state["epoch"], state["batch"]) == (2, 0) and len(head) == len(original)
    following = epoch(original, 2)
    resumed = DaliLoader(CFG, Split.TRAIN, info, CPU)
    resumed.set_epoch(2)
    resumed.load_state_dict(state)
    assert same(list(resumed.iter_from(0)), following)
    again = DaliLoader(CFG, Split.TRAIN, info, CPU)  # the same position asked as "epoch 1 after all its batches"
    again.set_epoch(1)
    again.load_state_dict(state)
    assert list(again.iter_from(len(again))) == []
    assert same(epoch(again, 2), following)


def test_dali_state_is_small_and_cheap(demo_shards):
    loader = DaliLoader(CFG, Split.TRAIN, load_info(demo_shards), CPU)
    loader.set_epoch(0)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(100):
        state = loader.state_dict()
    per_call = (time.perf_counter() - start) / 100
    assert per_call < 0.01 and len(state["pipeline"]) < 4096  # measured here: ~0.1 ms, ~0.4 KB


def test_dali_state_from_another_run_shape_is_a_one_line_error(demo_shards):
    info = load_info(demo_shards)
    cfg = LoaderConfig(batch_size=3, image_size=32, workers=1, shuffle_buffer=8)
    state, _, _ = run_until(info, cfg, 1, 2, rank=0, world_size=2)
    cases = [(dict(rank=1, world_size=2), r"rank 0 \(this loader: 1\)"),
             (dict(rank=0, world_size=1), r"world_size 2 \(this loader: 1\)"),
             (dict(rank=0, world_size=2, seed=5), r"seed 0 \(this loader: 5\)"),
             (dict(rank=0, world_size=2, batch_size=4), r"batch_size 3 \(this loader: 4\)"),
             (dict(rank=0, world_size=2, image_size=48), r"image_size 32 \(this loader: 48\)")]
    for opts, message in cases:
        rank, world_size = opts.pop("rank"), opts.pop("world_size")
        other = DaliLoader(LoaderConfig(**{**vars(cfg), **opts}), Split.TRAIN, info, CPU, rank, world_size)
        other.set_epoch(1)
        with pytest.raises(ValueError, match=message) as err:
            other.load_state_dict(state)
        assert "\n" not in str(err.value) and "does not fit this loader" in str(err.value)


def test_dali_garbled_state_is_a_one_line_error(demo_shards):
    info = load_info(demo_shards)
    state, _, _ = run_until(info, CFG, 1, 2)
    blob = state["pipeline"]
    flipped = blob[:40] + bytes([blob[40] ^ 0x01]) + blob[41:]
    junk = b"\x00not a DALI checkpoint"
    cases = [(["a list"], r"garbled: a list, not a dict"),
             ({**state, "format": 99}, r"format 99"),
             ({k: v for k, v in state.items() if k != "pipeline"}, r"'pipeline' is NoneType, not bytes"),
             ({**state, "batch": "2"}, r"'batch' is str"),
             ({**state, "pipeline": flipped}, r"does not match its sha256"),
             ({**state, "pipeline": junk, "sha256": hashlib.sha256(junk).hexdigest()}, r"could not restore"),
             ({**state, "batch": 99}, r"cannot occur in an epoch of 11 batches"),
             ({**state, "dali": "0.0.1"}, r"written by DALI 0\.0\.1")]
    loader = DaliLoader(CFG, Split.TRAIN, info, CPU)
    loader.set_epoch(1)
    for bad, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            loader.load_state_dict(bad)
        assert "\n" not in str(err.value)
    loader.load_state_dict(state)  # still usable after the errors
    assert len(list(loader.iter_from(2))) == len(loader) - 2


def test_dali_resume_at_another_position_is_an_error(demo_shards):
    info = load_info(demo_shards)
    state, _, _ = run_until(info, CFG, 1, 4)
    loader = DaliLoader(CFG, Split.TRAIN, info, CPU)
    loader.set_epoch(1)
    loader.load_state_dict(state)
    with pytest.raises(ValueError, match=r"state is for epoch 1 after 4 batches, the resume asks for epoch 1 after 3"):
        loader.iter_from(3)
    loader.load_state_dict(state)
    loader.set_epoch(2)
    with pytest.raises(ValueError, match=r"asks for epoch 2 after 4"):
        loader.iter_from(4)
    with pytest.raises(RuntimeError, match="has 11 batches on this rank, cannot resume after 12"):
        loader.iter_from(12)


def test_dali_empty_state_replays(demo_shards):
    info = load_info(demo_shards)
    _, rest, _ = run_until(info, CFG, 0, 3)
    loader = DaliLoader(CFG, Split.TRAIN, info, CPU)
    loader.set_epoch(0)
    loader.load_state_dict({})  # a checkpoint from before the state: exact in the first epoch
    assert same(list(loader.iter_from(3)), rest)
    later = DaliLoader(CFG, Split.TRAIN, info, CPU)
    later.set_epoch(2)
    with pytest.warns(UserWarning, match="resumed epoch 2 replays from a fresh pipeline, whose data order differs"):
        later.load_state_dict({})
    assert len(list(later.iter_from(3))) == len(later) - 3


def test_dali_new_image_size_at_an_epoch_start_starts_fresh(demo_shards):
    # Progressive resizing builds a new loader when the size changes: an epoch-end state of the old-size loader
    # resumes as that new loader ran, from a fresh pipeline.
    info = load_info(demo_shards)
    small = DaliLoader(CFG, Split.TRAIN, info, CPU)
    epoch(small, 0)
    state = saved(small.state_dict())
    bigger = LoaderConfig(**{**vars(CFG), "image_size": 48})
    reference = epoch(DaliLoader(bigger, Split.TRAIN, info, CPU), 1)
    resumed = DaliLoader(bigger, Split.TRAIN, info, CPU)
    resumed.set_epoch(1)
    resumed.load_state_dict(state)
    assert same(list(resumed.iter_from(0)), reference)


def test_dali_val_keeps_no_state_and_replays(demo_shards):
    info = load_info(demo_shards)
    val = DaliLoader(CFG, Split.VAL, info, CPU)
    assert val.state_dict() == {}
    val.load_state_dict({})
    val.set_epoch(3)
    labels = [int(v) for b in val.iter_from(2) for v in b.labels]
    assert labels == shard_labels(info, "val")[8:]  # batches of 4: the last 5 of 13, the padding cut
    train_state, _, _ = run_until(info, CFG, 0, 1)
    with pytest.raises(ValueError, match="val DALI loader keeps no state"):
        val.load_state_dict(train_state)
    val.close()
