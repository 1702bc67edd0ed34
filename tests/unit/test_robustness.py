"""Inputs a real user has that once broke things (found by a new-user review)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pipeline.read.info import load_info
from pipeline.shard.run import ShardConfig, shard_tree
from tools import shard_imagenet
from tools import train as train_cli

SMALL = ["--batch-size", "4", "--image-size", "32", "--workers", "1"]


def write_jpeg(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path, "JPEG")


def test_out_inside_source_is_refused_and_foreign_tmp_files_survive(tmp_path, capsys):
    write_jpeg(tmp_path / "src" / "train" / "a" / "x.JPEG")
    assert shard_imagenet.main([str(tmp_path / "src"), "--out", str(tmp_path / "src" / "train" / "shards"),
                                "--no-progress"]) == 2
    assert "inside the source" in capsys.readouterr().err
    out = tmp_path / "out"
    out.mkdir()
    (out / "session.tmp").write_text("mine")
    assert shard_imagenet.main([str(tmp_path / "src"), "--out", str(out), "--no-progress"]) == 0
    assert (out / "session.tmp").read_text() == "mine"


def test_symlink_loop_and_odd_names_are_sharded_once(tmp_path):
    src = tmp_path / "src"
    write_jpeg(src / "train" / "a" / "one.JPEG")
    os.symlink("..", src / "train" / "a" / "up")  # a loop back to train/
    write_jpeg(src / "train" / " b " / "two.JPEG", 1)  # class name with spaces
    bad = os.fsencode(str(src / "train" / "a")) + b"/caf\xe9.jpg"  # not valid UTF-8
    write_jpeg(Path(os.fsdecode(bad)), 2)
    out = tmp_path / "out"
    summary = shard_tree(ShardConfig(src=src, out=out, workers=1, progress=False))
    assert summary.files == 3 and summary.rejects == []
    info = load_info(out)
    assert info.classes == (" b ", "a")
    paths = sorted(json.loads(s["json"])["path"] for s in wds.WebDataset(info.shard_paths("train"),
                                                                        shardshuffle=False))
    assert len(paths) == 3 and any(p.startswith("train/a/caf") for p in paths)


def test_truncated_shard_and_wrong_class_file_are_one_line_errors(demo_shards, tmp_path, capsys):
    import shutil

    data = tmp_path / "copy"
    shutil.copytree(demo_shards, data)
    tar = data / "imagenet-train-000001.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    assert train_cli.main(["--data", str(data), *SMALL, "--max-steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "imagenet-train-000001.tar" in err and "manifest" in err

    shutil.copy(demo_shards / "imagenet-train-000001.tar", tar)
    (data / "classes.txt").write_text("only\none\n")
    assert train_cli.main(["--data", str(data), *SMALL, "--max-steps", "2"]) == 2
    assert "classes.txt: 2 classes" in capsys.readouterr().err


def test_no_eval_reports_no_accuracy(demo_shards, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert train_cli.main(["--data", str(demo_shards), *SMALL, "--max-steps", "2", "--no-eval",
                           "--metrics-json", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["acc1"] is None and m["eval_images"] == 0 and m["p_train"] == pytest.approx(m["p_whole"], rel=0.05)
    assert "| / |" in capsys.readouterr().out


def test_resume_rewrites_a_shard_whose_file_changed_in_place(tmp_path):
    src = tmp_path / "src"
    for i in range(4):
        write_jpeg(src / "train" / "a" / f"{i}.JPEG", i)
    out = tmp_path / "out"
    shard_tree(ShardConfig(src=src, out=out, shard_size=2, workers=1, progress=False))
    victim = src / "train" / "a" / "2.JPEG"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2:] = b"\x00" * (len(data) - len(data) // 2)  # same size, broken content
    victim.write_bytes(bytes(data))
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    resumed = shard_tree(ShardConfig(src=src, out=out, shard_size=2, workers=1, progress=False))
    fresh = shard_tree(ShardConfig(src=src, out=tmp_path / "fresh", shard_size=2, workers=1, progress=False))
    assert [r.relpath for r in resumed.rejects] == [r.relpath for r in fresh.rejects] == ["train/a/2.JPEG"]
    for f in sorted(p.name for p in (tmp_path / "fresh").glob("*.tar")):
        assert (out / f).read_bytes() == (tmp_path / "fresh" / f).read_bytes()


def test_hard_link_in_a_per_class_tar_is_read_through(tmp_path):
    import io
    import tarfile

    jpg = io.BytesIO()
    Image.new("RGB", (20, 20), (10, 200, 30)).save(jpg, "JPEG")
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("n00000001_1.JPEG")
        info.size = len(jpg.getvalue())
        tf.addfile(info, io.BytesIO(jpg.getvalue()))
        link = tarfile.TarInfo("n00000001_2.JPEG")
        link.type, link.linkname = tarfile.LNKTYPE, "n00000001_1.JPEG"
        tf.addfile(link)
    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(src / "ILSVRC2012_img_train.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("n00000001.tar")
        info.size = len(inner.getvalue())
        tf.addfile(info, io.BytesIO(inner.getvalue()))
    summary = shard_tree(ShardConfig(src=src, out=tmp_path / "out", workers=1, progress=False))
    assert summary.rejects == [] and summary.counts["train"].written == 2


def test_verify_names_a_changed_key_and_goes_on_past_a_missing_shard(demo_shards, tmp_path, capsys):
    import shutil

    data = tmp_path / "copy"
    shutil.copytree(demo_shards, data)
    tar = data / "imagenet-train-000000.tar"
    raw = bytearray(tar.read_bytes())
    at = raw.find(b"\xff\xda") + 40  # inside the first image's scan data: still decodes, bytes differ
    raw[at] ^= 0x55
    tar.write_bytes(bytes(raw))
    (data / "imagenet-train-000002.tar").unlink()
    assert shard_imagenet.main(["verify", str(data), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "imagenet-train-000000.tar: 0000" in err and "sha256 recorded" in err
    assert "imagenet-train-000002.tar: cannot read" in err


def test_corrupt_sample_in_a_shard_is_skipped_counted_and_named(tmp_path, capsys):
    """A JPEG broken after sharding: train keeps full batches, eval leaves it out, both name it."""
    import tarfile

    src = tmp_path / "src"
    for c in ("a", "b"):
        for i in range(6):
            write_jpeg(src / "train" / c / f"{c}{i}.JPEG", i)
        for i in range(3):
            write_jpeg(src / "val" / c / f"{c}v{i}.JPEG", 10 + i)
    out = tmp_path / "out"
    shard_tree(ShardConfig(src=src, out=out, shard_size=100, workers=1, progress=False))
    for split in ("train", "val"):  # replace the first sample's jpg with garbage of the same size
        tar = out / f"imagenet-{split}-000000.tar"
        raw = bytearray(tar.read_bytes())
        with tarfile.open(tar) as tf:
            first = next(m for m in tf.getmembers() if m.name.endswith(".jpg"))
        raw[first.offset_data:first.offset_data + first.size] = b"\x00" * first.size
        tar.write_bytes(bytes(raw))
        for e in json.loads((out / "_info.json").read_text())["manifest"][split]:
            assert e["bytes"] == len(raw)
    m_path = tmp_path / "m.json"
    assert train_cli.main(["--data", str(out), "--batch-size", "4", "--image-size", "32", "--workers", "1",
                           "--epochs", "1", "--metrics-json", str(m_path)]) == 0
    m = json.loads(m_path.read_text())
    assert m["steps"] == 3 and m["skipped_samples"] == 2 and m["eval_images"] == 5
    err = capsys.readouterr().err
    assert "warning: skipped sample" in err and "imagenet-train-000000.tar: 00000" in err
