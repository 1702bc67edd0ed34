"""``folder`` backend (issue 22 item 1, for gpu_check's folder leg): its DataLoader workers persist across epochs,
as the shard backends' do (an epoch boundary inside the measured steps no longer re-forks them), and an epoch's
crops still depend on (seed, epoch, rank) alone, so a loader that starts at epoch 1 (a resume) sees the crops a
loader that went through epoch 0 first sees."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pipeline.backends import FolderConfig, LoaderConfig, LoaderKind, Split, build_loader
from pipeline.backends import folder as folder_backend

CPU = torch.device("cpu")


class PidLogging:
    """A transform that appends the worker's pid to ``path`` (one line per sample), then applies ``inner``."""

    def __init__(self, inner, path: Path):
        self.inner, self.path = inner, path

    def __call__(self, img):
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()}\n")
        return self.inner(img)


def _train_loader(tree: Path, workers: int = 2):
    cfg = LoaderConfig(batch_size=4, image_size=32, workers=workers, normalize=False,
                       options=(FolderConfig(tree),))
    return build_loader(LoaderKind.FOLDER, cfg, Split.TRAIN, None, CPU)


def _epoch(loader, epoch: int) -> list[torch.Tensor]:
    loader.set_epoch(epoch)
    return [b.images.clone() for b in loader]


def test_two_epochs_reuse_the_same_worker_processes(demo_shards, tmp_path):
    """Fails on the old code: without persistent workers epoch 1 forked new workers, which log to ``pids1``."""
    loader = _train_loader(demo_shards.parent / "tree")
    dataset = loader._torch_loader.dataset
    plain = dataset.transform
    try:
        dataset.transform = PidLogging(plain, tmp_path / "pids0")  # the workers fork with this at epoch 0
        n0 = sum(b.images.shape[0] for b in (loader.set_epoch(0), *loader)[1:])
        dataset.transform = PidLogging(plain, tmp_path / "pids1")  # only a worker forked from now on sees it
        n1 = sum(b.images.shape[0] for b in (loader.set_epoch(1), *loader)[1:])
    finally:
        loader.close()
    assert not (tmp_path / "pids1").exists(), "epoch 1 ran in freshly forked workers"
    pids = (tmp_path / "pids0").read_text().split()
    assert len(pids) == n0 + n1 > 0 and len(set(pids)) == 2 and str(os.getpid()) not in pids
    assert loader._torch_loader._iterator is None  # close() stopped them


def test_an_epochs_crops_do_not_depend_on_the_epochs_before(demo_shards):
    """A loader that goes through epoch 0 then epoch 1 with persistent workers yields in epoch 1 exactly the crops
    of a fresh loader set to epoch 1 (what a resume replays), and epoch 0 differs from epoch 1."""
    tree = demo_shards.parent / "tree"
    through, fresh = _train_loader(tree), _train_loader(tree)
    try:
        first, second = _epoch(through, 0), _epoch(through, 1)
        direct = _epoch(fresh, 1)
    finally:
        through.close()
        fresh.close()
    assert len(second) == len(direct) > 0
    assert all(torch.equal(a, b) for a, b in zip(second, direct))
    assert not all(torch.equal(a, b) for a, b in zip(first, second))


def test_worker_seed_follows_torchs_rule_for_a_loader_made_for_the_epoch():
    """The per-epoch worker seed is what a DataLoader built with the epoch's generator gives its worker."""
    generator = torch.Generator()
    generator.manual_seed(folder_backend.epoch_seed(3, 2, 1))
    base = int(torch.empty((), dtype=torch.int64).random_(generator=generator))
    assert folder_backend.worker_seed(3, 2, 1, worker=5) == base + 5
    assert folder_backend.worker_seed(3, 2, 1, 0) != folder_backend.worker_seed(3, 3, 1, 0)


def test_an_epoch_read_twice_in_one_process_gives_the_same_crops(demo_shards):
    """Persistent workers reseed per pass, not per epoch number: epoch 0 again (after a partial pass and after a
    whole one) gives epoch 0's crops, as a fresh loader would."""
    loader = _train_loader(demo_shards.parent / "tree")
    try:
        whole = _epoch(loader, 0)
        loader.set_epoch(0)
        next(iter(loader))  # a partial pass, left behind
        again = _epoch(loader, 0)
    finally:
        loader.close()
    assert len(whole) == len(again) > 0
    assert all(torch.equal(a, b) for a, b in zip(whole, again))
