"""Shared fixtures: the real data in ../shared/data and small generated shard sets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))


def shared(name: str) -> Path:
    """Path of a shared data set; skips the test when it is absent (fails under CI, where it must exist)."""
    path = SHARED_DATA / name
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI must run with ../shared/data beside the checkout")
        pytest.skip(f"{path} not present (set SHARED_DATA to the shared/data folder)")
    return path


@pytest.fixture(scope="session")
def samples_tree(tmp_path_factory) -> Path:
    """ImageFolder tree from imagenet-samples: train/<wnid>/<file> for all 800, val/<wnid>/ for every 8th."""
    src = shared("imagenet-samples")
    root = tmp_path_factory.mktemp("samples_tree")
    files = sorted(p for p in src.iterdir() if p.suffix == ".JPEG")
    for i, f in enumerate(files):
        wnid = f.name[:9]
        for split in ("train",) + (("val",) if i % 8 == 0 else ()):
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            os.symlink(f, d / f.name)
    return root


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """The embedded demo dataset (small variant), sharded in uneven shards: train 45 in 4 tars, val 13."""
    from pipeline.shard.run import ShardConfig, shard_tree
    from tools.make_demo_imagenet import DEMO_WNIDS, write_demo_tree

    base = tmp_path_factory.mktemp("demo")
    write_demo_tree(base / "tree", train_per_class=5, val_per_class=2, seed=1)
    # Make the split sizes uneven: drop some files so train = 45, val = 13 (both prime to the rank count).
    for wnid in DEMO_WNIDS[:5]:
        (base / "tree" / "train" / wnid / f"{wnid}_00004.JPEG").unlink()
    for wnid in DEMO_WNIDS[:7]:
        (base / "tree" / "val" / wnid / f"{wnid}_00001.JPEG").unlink()
    shard_tree(ShardConfig(src=base / "tree", out=base / "shards", shard_size=12, workers=1, progress=False))
    return base / "shards"


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=False)
    return dst


@pytest.fixture(scope="session")
def demo_tree(tmp_path_factory) -> Path:
    """A small demo ImageNet tree (10 classes × 4 train + 2 val, with gray, CMYK and PNG-named-JPEG files)."""
    from tools.make_demo_imagenet import write_demo_tree

    root = tmp_path_factory.mktemp("demo_tree")
    write_demo_tree(root, train_per_class=4, val_per_class=2, seed=2)
    return root
