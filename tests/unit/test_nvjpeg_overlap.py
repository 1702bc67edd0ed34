"""The nvjpeg backend makes its batches in one background thread (pipeline/backends/staging.py, ``prefetched`` with
``depth``), on CPU here: its work overlaps the training step, it runs at most 2 batches ahead, what it raises
reaches the consumer unchanged, and a consumer that stops early (break, close, Ctrl-C) stops and joins it.

No timing is asserted: the overlap test is a handshake (the step of batch i waits until the producer has STARTED
batch i+1, which a serial loader can never do), with generous timeouts that only a broken loader reaches."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest
import torch

from pipeline.backends import LoaderConfig, LoaderKind, Split, build_loader
from pipeline.backends import nvjpeg as nv
from pipeline.backends.shards import SampleDecodeError
from pipeline.backends.staging import prefetched
from pipeline.read.info import load_info
from pipeline.read.tarstream import ShardReadError

CPU = torch.device("cpu")
PATIENCE = 60.0  # seconds a handshake may take on a loaded machine before the test calls the loader serial


def producers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "batch-producer"]


class Starts:
    """Wraps NvjpegLoader._to_batch: counts the batches the producer has started, and in which thread."""

    def __init__(self, monkeypatch):
        self.started, self.threads, self.cond = 0, set(), threading.Condition()
        original = nv.NvjpegLoader._to_batch

        def to_batch(loader, item, rng):
            with self.cond:
                self.started += 1
                self.threads.add(threading.current_thread().name)
                self.cond.notify_all()
            return original(loader, item, rng)

        monkeypatch.setattr(nv.NvjpegLoader, "_to_batch", to_batch)

    def wait_for(self, count: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.started >= count, timeout=PATIENCE)


def train_loader(demo_shards, workers: int = 1):
    cfg = LoaderConfig(batch_size=4, image_size=16, workers=workers)
    return build_loader(LoaderKind.NVJPEG, cfg, Split.TRAIN, load_info(demo_shards), CPU)


def test_the_next_batch_is_made_while_the_step_runs(demo_shards, monkeypatch):
    starts = Starts(monkeypatch)
    loader = train_loader(demo_shards)
    n = 0
    for i, batch in enumerate(loader):  # the "training step" of batch i: blocks until batch i+1 is being made
        assert batch.images.shape == (4, 3, 16, 16)
        if i + 1 < len(loader):
            assert starts.wait_for(i + 2), f"batch {i + 1} was not started while batch {i} trained: serial loader"
        n += 1
    assert n == len(loader) == 11 and starts.threads == {"batch-producer"}
    assert not producers()
    loader.close()


def test_the_producer_runs_at_most_two_batches_ahead(demo_shards, monkeypatch):
    """Batch k may start only after the consumer has asked for batch k-2 (it then holds it): 2 ahead at most."""
    asked, seen = [0], []
    original = nv.NvjpegLoader._to_batch

    def to_batch(loader, item, rng):
        seen.append((len(seen), asked[0]))
        return original(loader, item, rng)

    monkeypatch.setattr(nv.NvjpegLoader, "_to_batch", to_batch)
    loader = train_loader(demo_shards)
    it = iter(loader)
    for i in range(len(loader)):
        asked[0] += 1
        next(it)
        deadline = time.monotonic() + PATIENCE
        while len(seen) < min(i + 3, len(loader)):  # the producer fills its 2 slots while batch i "trains"
            assert time.monotonic() < deadline, f"batch {i + 2} was not started while batch {i} was held"
            time.sleep(0.01)
        time.sleep(0.05)  # time for a producer without a bound to run further (never asserted on)
    assert len(seen) == len(loader)
    assert all(asked_then >= k - 1 for k, asked_then in seen), seen
    assert max(k - asked_then for k, asked_then in seen) == 1  # and it does use its 2 slots
    loader.close()


def test_an_error_in_the_producer_reaches_the_consumer_unchanged(demo_shards, monkeypatch):
    original = nv.NvjpegLoader._to_batch
    error = ValueError("bad option discovered while making batch 3")

    def to_batch(loader, item, rng):
        if to_batch.calls == 3:
            raise error
        to_batch.calls += 1
        return original(loader, item, rng)

    to_batch.calls = 0
    monkeypatch.setattr(nv.NvjpegLoader, "_to_batch", to_batch)
    loader = train_loader(demo_shards)
    got = []
    with pytest.raises(ValueError) as caught:
        for batch in loader:
            got.append(batch)
    assert caught.value is error and len(got) == 3 and not producers()
    loader.close()


def test_a_shard_read_error_in_the_producer_keeps_its_type_and_message(demo_shards, monkeypatch):
    def broken(chunk, shared):
        raise ShardReadError("imagenet-train-000001.tar: truncated member; re-run shard-imagenet")

    monkeypatch.setattr(nv, "pack_batch", broken)
    loader = train_loader(demo_shards, workers=0)  # the dataset runs in the producer thread itself
    with pytest.raises(ShardReadError, match=r"^imagenet-train-000001.tar: truncated member; re-run"):
        list(loader)
    assert not producers()


def test_a_decode_error_of_the_policy_keeps_its_type(tmp_path):
    from test_nvjpeg import build_shards

    info = load_info(build_shards(tmp_path, "val", {0: b"\x00" * 64}))
    cfg = LoaderConfig(batch_size=4, image_size=16, workers=0, on_bad_sample="error")
    with pytest.raises(SampleDecodeError, match=r"^bad sample .*imagenet-val-000000.*--on-bad-sample skip"):
        list(build_loader(LoaderKind.NVJPEG, cfg, Split.VAL, info, CPU))
    assert not producers()


def test_stopping_early_joins_the_producer_and_the_next_epoch_is_whole(demo_shards):
    loader = train_loader(demo_shards, workers=2)
    loader.set_epoch(0)
    full = [b.keys for b in loader]
    loader.set_epoch(0)
    for i, _ in enumerate(loader):
        if i == 1:
            break  # the for loop drops the generator: it is closed, its thread stopped and joined
    assert not producers()
    it = iter(loader)
    next(it)
    assert producers()
    it.close()  # closed explicitly (what preemption or the trainer's exit does)
    assert not producers()
    loader.set_epoch(0)
    again = [b.keys for b in loader]  # the DataLoader's persistent workers serve a whole epoch again
    assert again == full and len(full) == 11
    loader.close()


def test_a_new_pass_stops_the_unfinished_one_first(demo_shards):
    loader = train_loader(demo_shards, workers=0)
    first = iter(loader)
    next(first)  # suspended, its producer alive and maybe waiting for a slot
    assert len(producers()) == 1
    second = iter(loader)
    next(second)
    assert len(producers()) == 1  # the first pass's thread was joined before the second started reading
    assert list(first) == []  # the first pass is over
    loader.close()
    assert not producers()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_while_the_consumer_waits_stops_the_producer():
    have0, started, release = threading.Event(), threading.Event(), threading.Event()

    def slow(i):
        if i == 1:
            have0.wait(PATIENCE)
            started.set()
            release.wait(PATIENCE)  # batch 1 is slow: the consumer is blocked waiting for it
        return i

    def interrupt():
        started.wait(PATIENCE)
        os.kill(os.getpid(), signal.SIGINT)
        release.wait(1.0)  # not asserted on: lets the main thread take the signal first
        release.set()

    helper = threading.Thread(target=interrupt)
    helper.start()
    got = []
    with pytest.raises(KeyboardInterrupt):
        for batch in prefetched(range(10), CPU, slow, depth=2):
            got.append(batch)
            have0.set()
    helper.join()
    assert got == [0] and not producers()


def test_thread_off_cuda_keeps_order_and_rejects_a_negative_depth():
    assert list(prefetched(range(20), CPU, lambda i: i * 2, depth=2)) == list(range(0, 40, 2))
    assert list(prefetched([], CPU, lambda i: i, depth=1)) == []
    with pytest.raises(ValueError, match="prefetch depth must be >= 0, got -1"):
        prefetched(range(3), CPU, lambda i: i, depth=-1)
