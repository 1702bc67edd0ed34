"""Ranges checked at the door (issue 20, item 9): a crop side no backend should be asked for, and downscale limits
that would store every image as a few pixels, are one line each (exit code 2), never a traceback or a silently
ruined dataset."""

from __future__ import annotations

import pytest
from PIL import Image

from pipeline.backends import LoaderConfig
from pipeline.read.transforms import IMAGE_SIZE_RANGE
from pipeline.shard.clean import MIN_MAX_PIXELS, MIN_MAX_SIZE, check_limits
from tools import shard_imagenet
from tools import train as train_cli


@pytest.mark.parametrize("argv, line", [
    (["--image-size", "100000"], "--image-size must be <= 2048 (px), got 100000"),
    (["--eval-size", "100000"], "--eval-size must be <= 2048 (px), got 100000"),
    (["--min-train-size", "4", "--image-size", "64"], "--min-train-size must be >= 8, got 4"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_train_refuses_a_crop_side_out_of_range_in_one_line(argv, line, capsys, tmp_path, monkeypatch):
    """Old code: --image-size 100000 got to the DataLoader workers (a shared-memory traceback)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        train_cli.main(argv + ["--loader", "synthetic", "--max-steps", "1", "--batch-size", "2",  # small if run
                               "--synthetic-train-samples", "4", "--synthetic-val-samples", "2"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert f"train: error: {line}" in err.strip().splitlines()


def test_the_range_is_the_schemas():
    assert IMAGE_SIZE_RANGE == (8, 2048)
    assert LoaderConfig(image_size=2048).image_size == 2048 and LoaderConfig(image_size=8).image_size == 8
    with pytest.raises(ValueError, match=r"^--image-size must be <= 2048 \(px\), got 2049$"):
        LoaderConfig(image_size=2049)


@pytest.mark.parametrize("flag, value, line", [
    ("--max-size", "1", "--max-size 1: must be >= 64 (px, the longer side kept); smaller would store every image "
                        "below the smallest train crop"),
    ("--max-pixels", "1", "--max-pixels 1: must be >= 4096 (64x64); smaller would store every image below the "
                          "smallest train crop"),
    ("--max-size", "63", "--max-size 63: must be >= 64"),
    ("--max-pixels", "4095", "--max-pixels 4095: must be >= 4096"),
])
def test_shard_imagenet_refuses_limits_that_ruin_every_image(flag, value, line, tmp_path, capsys):
    """Old code: --max-size 1 / --max-pixels 1 stored every image as 1x1 and exited 0."""
    (tmp_path / "src" / "train" / "n01440764").mkdir(parents=True)
    Image.new("RGB", (96, 80), (200, 40, 40)).save(tmp_path / "src" / "train" / "n01440764" / "a.JPEG")
    rc = shard_imagenet.main([str(tmp_path / "src"), "--out", str(tmp_path / "out"), flag, value, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"shard-imagenet: error: {line}")
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_limits_at_the_minimum_are_accepted():
    check_limits(MIN_MAX_PIXELS, MIN_MAX_SIZE)
    check_limits(MIN_MAX_PIXELS, None)
