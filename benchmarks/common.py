"""Shared set-up of the benchmark scripts: the real sample images as an ImageFolder tree and as shards."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLES = REPO.parent / "shared" / "data" / "imagenet-samples"


def sample_tree(samples: Path, out: Path, copies: int) -> list[str]:
    """Symlink every ``*.JPEG`` of ``samples`` ``copies`` times into ``out/train/<wnid>/`` (wnid = the first 9
    characters of the file name, as in imagenet-samples); returns the links. Copies make epochs long enough to
    show a loader's steady state rather than its epoch start-up.

    Raises:
        ValueError: ``samples`` holds no ``.JPEG`` file.
    """
    originals = sorted(f for f in Path(samples).iterdir() if f.suffix == ".JPEG")
    if not originals:
        raise ValueError(f"{samples}: no .JPEG files; pass --samples DIR of <wnid>_<name>.JPEG files")
    links = []
    for copy in range(copies):
        for f in originals:
            d = out / "train" / f.name[:9]
            d.mkdir(parents=True, exist_ok=True)
            link = d / f"c{copy}_{f.name}"
            os.symlink(f.resolve(), link)
            links.append(str(link))
    return links


def shard_sample_tree(tree: Path, out: Path, workers: int, shard_size: int = 100) -> Path:
    """Shard ``tree`` into ``out`` with this project's sharder; returns ``out``."""
    from pipeline.shard.run import ShardConfig, shard_tree

    shard_tree(ShardConfig(src=tree, out=out, shard_size=shard_size, workers=workers, progress=False))
    return out
