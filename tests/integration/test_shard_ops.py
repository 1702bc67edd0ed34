"""Sharder operations: dirty-file policy, DALI index files, resume after kill -9, multi-job, verify."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pipeline.shard.clean import ImageRejected, RejectReason, normalize_image
from pipeline.read.info import load_info
from pipeline.shard.run import ShardConfig, shard_tree
from tools import shard_imagenet

REPO = Path(__file__).resolve().parents[2]


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


RGB = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8), "RGB")


def test_ycck_corrupt_exif_tiny_and_huge_files():
    cmyk = bytearray(_jpeg(RGB.convert("CMYK")))
    adobe = cmyk.find(b"Adobe")
    cmyk[adobe + 11] = 2  # Adobe APP14 transform 2: the 4 components are YCCK
    r = normalize_image(bytes(cmyk))
    assert r.conversion == "ycck->rgb" and Image.open(io.BytesIO(r.jpeg)).mode == "RGB"

    clean = _jpeg(RGB)
    corrupt_exif = clean[:2] + b"\xff\xe1\x00\x10Exif\x00\x00II*\x00\xff\xff\xff\xff" + clean[2:]
    r = normalize_image(corrupt_exif)
    assert (r.width, r.height) == (60, 40)  # corrupt EXIF is ignored, the image kept

    tiny = _jpeg(Image.new("RGB", (1, 1), (9, 9, 9)))
    assert normalize_image(tiny).jpeg == tiny

    huge = _jpeg(Image.new("L", (20000, 20000), 77), quality=50)  # 400 Mpx: over the bomb limit
    r = normalize_image(huge)
    assert r.width * r.height <= 89_478_485 and r.width == r.height
    assert r.conversion == "grayscale->rgb+downscaled"
    png = io.BytesIO()
    Image.new("1", (20000, 20000)).save(png, "PNG")
    with pytest.raises(ImageRejected) as exc:
        normalize_image(png.getvalue())
    assert exc.value.reason is RejectReason.TOO_LARGE

    header_only = bytearray(_jpeg(Image.new("RGB", (64, 64), (90, 90, 90))))
    sof = header_only.find(b"\xff\xc0")
    header_only[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2  # claims 60000x60000 in 700 bytes
    with pytest.raises(ImageRejected, match="truncated"):
        normalize_image(bytes(header_only))

    tiff = io.BytesIO()
    Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32), "F").save(tiff, "TIFF")
    r = normalize_image(tiff.getvalue())
    assert 120 < np.asarray(Image.open(io.BytesIO(r.jpeg))).mean() < 135  # 0.5 → mid grey, not black

    small = normalize_image(_jpeg(Image.new("RGB", (300, 200))), max_size=64)
    assert (small.width, small.height) == (64, 42) and small.conversion == "downscaled"


def test_index_files_match_dali_wds2idx(demo_tree, tmp_path):
    wds2idx = pytest.importorskip("wds2idx")
    out = tmp_path / "shards"
    shard_tree(ShardConfig(src=demo_tree, out=out, shard_size=7, workers=2, progress=False))
    tars = sorted(out.glob("*.tar"))
    assert tars
    for tar in tars:
        ref = tmp_path / (tar.stem + ".ref.idx")
        with wds2idx.IndexCreator(str(tar), str(ref), verbose=False) as ic:
            ic.create_index()
        assert tar.with_suffix(".idx").read_text() == ref.read_text(), tar.name


def test_dali_reader_on_cpu_reads_same_samples_as_webdataset(demo_tree, tmp_path):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    out = tmp_path / "shards"
    shard_tree(ShardConfig(src=demo_tree, out=out, shard_size=7, workers=1, progress=False))
    info = load_info(out)
    paths = info.shard_paths("train")
    n = info.split("train").num_samples

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def read():
        meta, label = fn.readers.webdataset(paths=paths, index_paths=[p[:-4] + ".idx" for p in paths],
                                            ext=["json", "lbl"], dtypes=[types.UINT8, types.INT32],
                                            missing_component_behavior="error")
        return meta, label

    pipe = read()
    pipe.build()
    metas, labels = pipe.run()
    dali = sorted((json.loads(bytes(np.asarray(metas[i])))["path"], int(np.asarray(labels[i])[0])) for i in range(n))
    plain = sorted((json.loads(s["json"])["path"], int(s["cls"]))
                   for s in wds.WebDataset(paths, shardshuffle=False))
    assert dali == plain and len(plain) == n


def test_kill_and_resume_is_byte_identical(samples_tree, tmp_path):
    # 800 real images re-encoded at --max-size: slow enough to kill the run between shards
    args = [str(samples_tree), "--shard-size", "50", "--workers", "1", "--max-size", "96", "--no-progress"]
    ref = tmp_path / "ref"
    assert shard_imagenet.main(args + ["--out", str(ref)]) == 0

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tools.shard_imagenet", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(out.glob("_parts/*.json"))) < 2:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(out.glob("_parts/*.json"))) >= 2
    assert not (out / "_info.json").exists()  # the run was cut short
    # a torn tar left behind by the kill must never be kept
    (out / "imagenet-train-000003.tar.tmp").write_bytes(b"torn")

    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "complete shard(s) kept (--resume)" in res.stdout
    names = sorted(p.name for p in ref.iterdir() if p.is_file())
    assert names == sorted(p.name for p in out.iterdir() if p.is_file())
    for name in names:
        assert (ref / name).read_bytes() == (out / name).read_bytes(), name


def test_two_jobs_equal_one_job(demo_tree, tmp_path):
    base = [str(demo_tree), "--shard-size", "9", "--workers", "2", "--no-progress"]
    assert shard_imagenet.main(base + ["--out", str(tmp_path / "one")]) == 0
    two = tmp_path / "two"
    assert shard_imagenet.main(base + ["--out", str(two), "--num-jobs", "2", "--job-index", "1"]) == 0
    assert not (two / "_info.json").exists()
    assert shard_imagenet.main(base + ["--out", str(two), "--num-jobs", "2", "--job-index", "0"]) == 0
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (two / f).read_bytes(), f


def test_verify_passes_then_names_the_bad_shard_and_key(demo_tree, tmp_path, capsys):
    out = tmp_path / "shards"
    shard_tree(ShardConfig(src=demo_tree, out=out, shard_size=8, workers=1, progress=False))
    assert shard_imagenet.main(["verify", str(out), "--workers", "2"]) == 0
    assert "verify: OK" in capsys.readouterr().out

    tar = out / "imagenet-val-000000.tar"
    data = bytearray(tar.read_bytes())
    first_jpg = data.find(b"\xff\xd8\xff")
    data[first_jpg + 200:first_jpg + 1200] = b"\x00" * 1000  # wipe the middle of the first image
    data[first_jpg:first_jpg + 2] = b"\x00\x00"  # and its SOI: undecodable
    tar.write_bytes(bytes(data))
    assert shard_imagenet.main(["verify", str(out), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "imagenet-val-000000.tar: sha256 differs" in err
    first_key = json.loads(json.dumps(load_info(out).split("val").filenames))  # shard still listed
    assert "imagenet-val-000000.tar: 00000000_" in err and "does not decode" in err, err
    assert first_key


def test_max_size_is_recorded_and_applied(demo_tree, tmp_path):
    out = tmp_path / "small"
    shard_tree(ShardConfig(src=demo_tree, out=out, shard_size=50, max_size=48, quality=80, workers=1,
                           progress=False))
    info = load_info(out)
    assert info.extra["max_size"] == 48 and info.extra["quality"] == 80
    for s in wds.WebDataset(info.shard_paths("train"), shardshuffle=False):
        assert max(Image.open(io.BytesIO(s["jpg"])).size) <= 48


def test_timm_reads_the_same_samples_through_info_json(demo_tree, tmp_path):
    timm_data = pytest.importorskip("timm.data")
    out = tmp_path / "shards"
    shard_tree(ShardConfig(src=demo_tree, out=out, shard_size=7, workers=1, progress=False))
    info = load_info(out)
    for split in ("train", "val"):
        ds = timm_data.create_dataset("wds/imagenet", root=str(out), split=split, is_training=False, batch_size=1)
        timm_labels = sorted(int(target) for _, target in ds)
        plain = sorted(int(s["cls"]) for s in wds.WebDataset(info.shard_paths(split), shardshuffle=False))
        assert timm_labels == plain and len(plain) == info.split(split).num_samples
