"""``_info.json`` counts that no manifest can catch (issue 20, item 7): a folder without a manifest, or with one
edited along, whose ``shard_lengths`` say more or fewer samples than a shard holds. Checked at start against each
shard's ``.idx`` (or its tar headers where there is none) by :func:`pipeline.read.info.load_info`, the check every
shard backend (cpu, nvjpeg, dali) goes through; remote shards are checked as they are read.

On the old code a raised count died after an epoch with a traceback ("loader yielded 8 batches, expected 9") and a
lowered one trained on fewer samples without a word; ``load_info`` accepted both."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.backends import LoaderConfig, LoaderKind, Split, build_loader
from pipeline.dataset import INFO_FILE, DatasetError
from pipeline.read.info import load_info
from pipeline.read.tarstream import ShardReadError, iter_samples
from tools import train as train_cli
from train import build
from train.config import TrainConfig

CPU = torch.device("cpu")
SHARD = "imagenet-train-000001.tar"  # 12 samples in demo_shards
SMALL = ["--batch-size", "4", "--image-size", "32", "--workers", "1", "--max-steps", "2", "--no-eval"]


def edited(demo_shards: Path, tmp_path: Path, by: int, manifest: str) -> Path:
    """A copy of ``demo_shards`` whose ``_info.json`` lists ``SHARD`` with ``12 + by`` samples; ``manifest``:
    ``"none"`` (removed) or ``"edited"`` (its entry edited the same way)."""
    root = shutil.copytree(demo_shards, tmp_path / "copy")
    obj = json.loads((root / INFO_FILE).read_text())
    train = obj["splits"]["train"]
    train["shard_lengths"][1] += by
    train["num_samples"] += by
    if manifest == "none":
        del obj["manifest"]
    else:
        obj["manifest"]["train"][1]["num_samples"] += by
    (root / INFO_FILE).write_text(json.dumps(obj))
    return root


@pytest.mark.parametrize("manifest", ["none", "edited"])
@pytest.mark.parametrize("by", [2, -2], ids=["too-high", "too-low"])
def test_counts_are_checked_against_the_idx_at_start(demo_shards, tmp_path, capsys, by, manifest):
    root = edited(demo_shards, tmp_path, by, manifest)
    expected = (f"{root / SHARD}: holds 12 samples, _info.json says {12 + by} (split 'train'; edited?); "
                f"run `shard-imagenet verify {root}`, then re-run shard-imagenet into it")
    with pytest.raises(DatasetError) as err:
        load_info(root)
    assert str(err.value).startswith(expected)
    assert train_cli.main(["--data", str(root), "--loader", "cpu", *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith(f"train: error: {expected}")


@pytest.mark.parametrize("kind", [LoaderKind.CPU, LoaderKind.NVJPEG, LoaderKind.DALI])
def test_every_shard_backend_gets_the_check_before_it_is_built(demo_shards, tmp_path, kind):
    root = edited(demo_shards, tmp_path, 2, "none")
    with pytest.raises(DatasetError, match=rf"{SHARD}: holds 12 samples, _info.json says 14 \(split"):
        build.dataset(TrainConfig(data=root, loader=kind))


def test_the_tar_decides_where_its_idx_is_missing_or_wrong(demo_shards, tmp_path):
    root = edited(demo_shards, tmp_path, -2, "none")
    idx = (root / SHARD).with_suffix(".idx")
    idx.unlink()
    with pytest.raises(DatasetError, match=rf"{SHARD}: holds 12 samples, _info.json says 10"):
        load_info(root)
    idx.write_text("not an index\n")  # malformed: the tar's headers are counted too
    with pytest.raises(DatasetError, match=rf"{SHARD}: holds 12 samples, _info.json says 10"):
        load_info(root)
    clean = shutil.copytree(demo_shards, tmp_path / "clean")
    (clean / SHARD).with_suffix(".idx").write_text("v1.2 11\n")  # a damaged .idx beside a tar that agrees: DALI's
    assert load_info(clean).split("train").shard_lengths[1] == 12  # shardcheck names it, cpu does not read it


def test_verify_still_reads_an_edited_folder(demo_shards, tmp_path):
    """``check_files=False`` (``shard-imagenet verify``) reports the problem itself: load_info does not refuse."""
    root = edited(demo_shards, tmp_path, 2, "none")
    assert load_info(root, check_files=False).split("train").shard_lengths[1] == 14


def test_a_read_checks_the_count_it_was_given(demo_shards):
    """The check of remote shards (not fetched at start): the reader stops in one line where the shard ends
    before its count, or goes on past it."""
    tar = str(demo_shards / SHARD)
    assert len(list(iter_samples(tar, length=12))) == 12
    with pytest.raises(ShardReadError, match=rf"{SHARD}: holds 12 samples, _info.json says 14 \(edited"):
        list(iter_samples(tar, 10, 4, length=14))
    with pytest.raises(ShardReadError, match=rf"{SHARD}: holds more than 10 samples, _info.json says 10"):
        list(iter_samples(tar, 8, 2, length=10))
    assert len(list(iter_samples(tar, 0, 5, length=10))) == 5  # a segment inside the count: nothing to check


@pytest.mark.parametrize("by", [2, -2], ids=["too-high", "too-low"])
def test_remote_counts_are_checked_as_the_shards_are_read(demo_shards, tmp_path, by):
    """A URL folder (here a ``pipe:`` one, read through the same download stream): its ``.idx`` files are not
    fetched at start, so ``load_info`` passes; the epoch's read stops in one line naming the shard."""
    root = edited(demo_shards, tmp_path, by, "none")
    info = load_info(f"pipe:cat {root}")
    assert info.remote
    loader = build_loader(LoaderKind.CPU, LoaderConfig(batch_size=4, image_size=32, workers=0), Split.TRAIN, info, CPU)
    held = "12" if by > 0 else "more than 10"
    with pytest.raises(ShardReadError, match=rf"{SHARD}: holds {held} samples, _info.json says {12 + by}"):
        list(loader)
