"""shard-imagenet on real data (hymenoptera_data, imagenet-samples) and on generated dirty files."""

from __future__ import annotations

import io
import json
import struct
import tarfile
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from conftest import shared
from pipeline.read.info import load_info
from pipeline.shard.run import ShardConfig, sample_key, shard_tree
from tools import shard_imagenet


def read_all(shard_dir: Path, split: str) -> list[dict]:
    """Every sample of a split through plain webdataset, in shard order."""
    info = load_info(shard_dir)
    ds = wds.WebDataset(info.shard_paths(split), shardshuffle=False)
    return list(ds)


def rejects_of(shard_dir: Path) -> dict[str, str]:
    lines = (shard_dir / "rejects.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "path\treason\tdetail"
    return {line.split("\t")[0]: line.split("\t")[1] for line in lines[1:]}


def test_hymenoptera_every_file_accounted(tmp_path, capsys):
    src = shared("hymenoptera_data")
    out = tmp_path / "shards"
    assert shard_imagenet.main([str(src), "--out", str(out), "--shard-size", "100", "--workers", "2",
                                "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "total: 398 files = 398 in shards + 0 rejected" in printed

    info = load_info(out)
    assert info.classes == ("ants", "bees")
    assert info.split("train").num_samples == 245 and info.split("val").num_samples == 153
    assert info.split("train").shard_lengths == (100, 100, 45)
    assert rejects_of(out) == {}  # the GIF decodes: it is converted, not rejected

    report = json.loads((out / "report.json").read_text())
    assert report["splits"]["train"]["conversions"] == {"gif->jpeg+palette->rgb": 1}

    for split, counts in (("train", {0: 124, 1: 121}), ("val", {0: 70, 1: 83})):
        samples = read_all(out, split)
        labels = [int(s["cls"]) for s in samples]
        assert {c: labels.count(c) for c in (0, 1)} == counts
        for s in samples:
            meta = json.loads(s["json"])
            assert meta["path"].startswith(f"{split}/{info.classes[int(s['cls'])]}/")
            assert "." not in s["__key__"] and " " not in s["__key__"]
            if meta["conversion"] == "":
                assert s["jpg"] == (src / meta["path"]).read_bytes()  # clean JPEGs are passed through untouched
        paths = {json.loads(s["json"])["path"] for s in samples}
        assert len(paths) == len(samples)
        if split == "train":
            assert "train/ants/ant photos.jpg" in paths and "train/ants/formica.jpeg" in paths
            gif = next(s for s in samples if json.loads(s["json"])["path"] == "train/ants/imageNotFound.gif")
            img = Image.open(io.BytesIO(gif["jpg"]))
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (300, 300)


def test_imagenet_samples_read_back_with_webdataset_and_tarfile(samples_tree, tmp_path):
    out = tmp_path / "shards"
    summary = shard_tree(ShardConfig(src=samples_tree, out=out, shard_size=300, seed=3, workers=2, progress=False))
    info = load_info(out)
    wnids = sorted(p.name for p in (samples_tree / "train").iterdir())
    assert len(wnids) == 800 and info.classes == tuple(wnids)
    assert info.split("train").shard_lengths == (300, 300, 200) and info.split("val").num_samples == 100
    # 18 grayscale JPEGs; can_opener carries EXIF Orientation=6 (392x294 stored, shown upright as 294x392)
    assert summary.counts["train"].conversions == {"grayscale->rgb": 18, "exif-rotated": 1}
    assert summary.rejects == []

    samples = read_all(out, "train")
    assert len({s["__key__"] for s in samples}) == 800
    for s in samples:
        meta = json.loads(s["json"])
        name = meta["path"].split("/")[-1]
        assert int(s["cls"]) == wnids.index(name[:9]) == meta["label"]
        if name == "n02951585_can_opener.JPEG":
            assert meta["conversion"] == "exif-rotated" and Image.open(io.BytesIO(s["jpg"])).size == (294, 392)
    # train is globally shuffled: labels are not in sorted order; val keeps sorted order
    assert [int(s["cls"]) for s in samples] != sorted(int(s["cls"]) for s in samples)
    val_paths = [json.loads(s["json"])["path"] for s in read_all(out, "val")]
    assert val_paths == sorted(val_paths)

    # plain tarfile: GNU format members, four per sample, adjacent, fixed metadata
    with tarfile.open(out / "imagenet-train-000000.tar") as tf:
        members = tf.getmembers()
        assert len(members) == 1200
        for i in range(0, 1200, 4):
            keys = {m.name.split(".", 1)[0] for m in members[i:i + 4]}
            exts = [m.name.split(".", 1)[1] for m in members[i:i + 4]]
            assert len(keys) == 1 and exts == ["jpg", "cls", "lbl", "json"]
            label = tf.extractfile(members[i + 1]).read()
            assert tf.extractfile(members[i + 2]).read() == struct.pack("<i", int(label))
        assert all(m.mtime == members[0].mtime and m.uid == 0 for m in members)
        assert not any(m.pax_headers for m in members)
        for m in members:
            if m.name.endswith(".jpg"):
                img = Image.open(tf.extractfile(m))
                img.load()
                assert img.mode == "RGB"
    raw = (out / "imagenet-train-000000.tar").read_bytes()
    assert b"ustar  \x00" in raw[:512]  # GNU magic, not POSIX/PAX


def test_apostrophe_names_keep_their_path(samples_tree, tmp_path):
    out = tmp_path / "shards"
    shard_tree(ShardConfig(src=samples_tree, out=out, shard_size=1000, workers=1, progress=False))
    paths = {json.loads(s["json"])["path"]: s["__key__"] for s in read_all(out, "train")}
    key = paths["train/n03590841/n03590841_jack-o'-lantern.JPEG"]
    assert "'" not in key and "." not in key


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def make_dirty_tree(root: Path) -> dict[str, str]:
    """A class-folder tree with one clean and one dirty file of each kind; returns relpath → expectation."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "RGB")
    a, b = root / "train" / "n00000001", root / "train" / "n00000002"
    v = root / "val" / "n00000002"
    for d in (a, b, v):
        d.mkdir(parents=True)
    files = {
        "train/n00000001/clean.JPEG": (_jpeg(rgb), "passthrough"),
        "train/n00000001/gray.JPEG": (_jpeg(rgb.convert("L")), "grayscale->rgb"),
        "train/n00000001/cmyk.JPEG": (_jpeg(rgb.convert("CMYK")), "cmyk->rgb"),
        "train/n00000002/png as jpeg.JPEG": (None, "png->jpeg"),
        "train/n00000002/a.b.c.JPEG": (_jpeg(rgb), "passthrough"),
        "train/n00000002/truncated.JPEG": (_jpeg(rgb)[:400], "reject:undecodable"),
        "train/n00000002/empty.JPEG": (b"", "reject:empty"),
        "train/n00000002/notes.txt": (b"not an image\n", "reject:undecodable"),
        "train/stray.JPEG": (_jpeg(rgb), "reject:not-in-class-folder"),
        "val/n00000002/rotated.JPEG": (None, "exif-rotated"),
    }
    png = io.BytesIO()
    rgb.save(png, "PNG")
    files["train/n00000002/png as jpeg.JPEG"] = (png.getvalue(), "png->jpeg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    files["val/n00000002/rotated.JPEG"] = (_jpeg(rgb, exif=exif.tobytes()), "exif-rotated")
    for rel, (data, _) in files.items():
        (root / rel).write_bytes(data)
    return {rel: expect for rel, (_, expect) in files.items()}


def test_dirty_files_become_rgb_jpegs_or_named_rejects(tmp_path):
    expected = make_dirty_tree(tmp_path / "src")
    out = tmp_path / "shards"
    summary = shard_tree(ShardConfig(src=tmp_path / "src", out=out, shard_size=4, workers=2, progress=False))
    rejects = rejects_of(out)
    want_rejects = {rel: e.split(":", 1)[1] for rel, e in expected.items() if e.startswith("reject:")}
    assert rejects == want_rejects

    seen = {}
    for split in ("train", "val"):
        for s in read_all(out, split):
            meta = json.loads(s["json"])
            img = Image.open(io.BytesIO(s["jpg"]))
            img.load()
            assert img.format == "JPEG" and img.mode == "RGB", meta["path"]
            seen[meta["path"]] = (meta["conversion"] or "passthrough", img.size)
    want_written = {rel for rel, e in expected.items() if not e.startswith("reject:")}
    assert set(seen) == want_written
    assert len(seen) + len(rejects) == len(expected) == summary.files
    for rel in want_written:
        assert seen[rel][0] == expected[rel], rel
    assert seen["val/n00000002/rotated.JPEG"][1] == (48, 64)  # 64×48 turned upright
    assert seen["train/n00000001/clean.JPEG"][1] == (64, 48)
    # shards hold 4 input files each, minus rejects; no shard is empty
    lengths = load_info(out).split("train").shard_lengths
    assert sum(lengths) == 5 and len(lengths) == 2 and all(0 < n <= 4 for n in lengths)


def test_sharding_is_deterministic_and_seed_changes_only_order(tmp_path):
    make_dirty_tree(tmp_path / "src")
    runs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        shard_tree(ShardConfig(src=tmp_path / "src", out=tmp_path / name, shard_size=3, seed=seed, workers=1,
                               progress=False))
        runs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).glob("*.tar"))})
    assert runs[0] == runs[1]
    keys = [sorted(s["__key__"] for s in read_all(tmp_path / name, "train")) for name in ("a", "c")]
    assert keys[0] == keys[1]


def test_rerun_replaces_stale_shards_and_leaves_no_temp_files(tmp_path):
    make_dirty_tree(tmp_path / "src")
    out = tmp_path / "shards"
    shard_tree(ShardConfig(src=tmp_path / "src", out=out, shard_size=1, workers=1, progress=False))
    assert len(list(out.glob("imagenet-train-*.tar"))) == 5  # 8 train files, 3 rejected: no empty shard
    (out / "imagenet-train-000009.tar.tmp").write_bytes(b"partial")
    shard_tree(ShardConfig(src=tmp_path / "src", out=out, shard_size=4, workers=1, progress=False))
    assert sorted(p.name for p in out.glob("imagenet-train-*")) == [
        "imagenet-train-000000.idx", "imagenet-train-000000.tar", "imagenet-train-000001.idx",
        "imagenet-train-000001.tar"]
    assert not list(out.glob("*.tmp"))


def test_unknown_val_class_and_missing_train_are_clear_errors(tmp_path, capsys):
    (tmp_path / "src" / "train" / "n1").mkdir(parents=True)
    (tmp_path / "src" / "train" / "n1" / "a.JPEG").write_bytes(_jpeg(Image.new("RGB", (8, 8))))  # not empty
    (tmp_path / "src" / "val" / "n2").mkdir(parents=True)
    assert shard_imagenet.main([str(tmp_path / "src"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "class 'n2'" in err and len(err.strip().splitlines()) == 1
    assert shard_imagenet.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_sample_key_has_no_dots_and_is_unique_per_index():
    assert sample_key(7, "train/x/n0_1.tar.JPEG") == "00000007_n0_1_tar"
    assert sample_key(6, "train/x/.hidden.JPEG") == "00000006__hidden"
    assert sample_key(8, "train/x/ant photos.jpg") == "00000008_ant_photos"
    assert sample_key(9, "val/y/jack-o'-lantern.JPEG") == "00000009_jack-o_-lantern"
