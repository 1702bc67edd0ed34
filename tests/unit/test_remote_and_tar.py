"""The shard tar reader (pipeline.read.tarstream) and remote shards: http from a loopback server, s3 via the AWS CLI."""

from __future__ import annotations

import functools
import http.server
import io
import os
import stat
import tarfile
import threading

import pytest
import torch
import webdataset as wds

from pipeline.backends import FolderConfig, LoaderConfig, LoaderKind, Split, build_loader
from pipeline.dataset import DatasetError
from pipeline.read.info import load_info
from pipeline.read.tarstream import ShardReadError, iter_samples, split_name

CPU = torch.device("cpu")


def all_keys(loader, epoch=0):
    loader.set_epoch(epoch)
    return [k for b in loader for k in b.keys]


def test_reader_matches_webdataset_on_every_shard(demo_shards):
    for tar in sorted(demo_shards.glob("*.tar")):
        ours = list(iter_samples(str(tar)))
        ref = list(wds.tariterators.tarfile_samples([{"url": str(tar)}]))
        assert [k for k, _ in ours] == [s["__key__"] for s in ref]
        for (_, members), s in zip(ours, ref):
            assert members == {k: v for k, v in s.items() if not k.startswith("__")}
        n = len(ours)
        assert [k for k, _ in iter_samples(str(tar), 2, 3)] == [k for k, _ in ours[2:5]]
        assert [k for k, _ in iter_samples(str(tar), n - 1, 10)] == [ours[-1][0]]
        assert list(iter_samples(str(tar), n, 5)) == []


def _tar_bytes(members: dict[str, bytes], fmt=tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_reader_handles_long_names_pax_and_directories(tmp_path):
    long_key = "d/" + "k" * 150  # beyond the 100-byte name field: a GNU long name / pax path record
    members = {f"{long_key}.jpg": b"J" * 700, f"{long_key}.cls": b"3", "a.b.jpg": b"x", "a.b.cls": b"1"}
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT):
        if fmt == tarfile.USTAR_FORMAT:
            members = {"d/x.jpg": b"J", "d/x.cls": b"2"}
        path = tmp_path / f"t{fmt}.tar"
        path.write_bytes(_tar_bytes(members, fmt))
        got = list(iter_samples(str(path)))
        ref = [(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")})
               for s in wds.tariterators.tarfile_samples([{"url": str(path)}])]
        assert got == ref
    assert split_name("dir.x/key.seg.jpg") == ("dir.x/key", "seg.jpg")


def test_truncated_and_corrupt_shards_are_named(tmp_path, demo_shards):
    tar = sorted(demo_shards.glob("*.tar"))[0]
    data = tar.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(ShardReadError, match="cut.tar: truncated"):
        list(iter_samples(str(cut)))
    bad = tmp_path / "bad.tar"
    bad.write_bytes(data[:100] + b"\x07" * 50 + data[150:])  # the first header's mode/size/checksum fields
    with pytest.raises(ShardReadError, match="bad.tar: not a tar file or corrupt header"):
        list(iter_samples(str(bad)))
    with pytest.raises(ShardReadError, match="missing.tar: cannot open"):
        list(iter_samples(str(tmp_path / "missing.tar")))


@pytest.fixture()
def http_root(demo_shards):
    """The demo shard folder served by a loopback HTTP server; yields its URL."""
    handler = functools.partial(_QuietHandler, directory=str(demo_shards))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_cpu_loader_streams_every_sample_over_http(http_root, demo_shards):
    remote, local = load_info(http_root), load_info(demo_shards)
    assert remote.remote and not local.remote
    assert remote.classes == local.classes and remote.splits == local.splits
    assert remote.shard_paths("train")[0].startswith(http_root)
    cfg = LoaderConfig(batch_size=4, image_size=32, workers=2)
    for split in Split:
        r = build_loader(LoaderKind.CPU, cfg, split, remote, CPU)
        lo = build_loader(LoaderKind.CPU, cfg, split, local, CPU)
        assert all_keys(r) == all_keys(lo)  # same samples in the same order, read through curl
    val = build_loader(LoaderKind.CPU, cfg, Split.VAL, remote, CPU)
    batches = list(val)
    assert sum(len(b.keys) for b in batches) == 13
    ref = list(build_loader(LoaderKind.CPU, cfg, Split.VAL, local, CPU))
    assert all(torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) for a, b in zip(batches, ref))


def test_http_errors_are_one_line(http_root):
    with pytest.raises(DatasetError, match="_info.json: cannot fetch"):
        load_info(http_root + "no-such-folder")
    with pytest.raises(ShardReadError, match="nope.tar"):
        list(iter_samples(http_root + "nope.tar"))


def test_dali_and_folder_refuse_urls_with_a_hint(http_root):
    info = load_info(http_root)
    pytest.importorskip("nvidia.dali")
    with pytest.raises(ValueError, match="--loader cpu"):
        build_loader(LoaderKind.DALI, LoaderConfig(batch_size=4, image_size=32), Split.TRAIN, info, CPU)
    with pytest.raises(ValueError, match="local ImageFolder"):
        build_loader(LoaderKind.FOLDER, LoaderConfig(batch_size=4, image_size=32, options=(FolderConfig(http_root),)),
                     Split.TRAIN, None, CPU)


def test_s3_urls_go_through_the_aws_cli(tmp_path, demo_shards, monkeypatch):
    """s3:// is read with `aws s3 cp URL -`; a stand-in `aws` on PATH serves the demo folder as bucket 'b'."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.txt"
    fake = bindir / "aws"
    fake.write_text(f"""#!/bin/sh
# usage seen: aws s3 cp --quiet s3://b/KEY -
echo "$@" >> {log}
[ "$1 $2 $3" = "s3 cp --quiet" ] && [ "$5" = "-" ] || exit 2
path="{demo_shards}/${{4#s3://b/}}"
[ -f "$path" ] || {{ echo "not found: $4" >&2; exit 1; }}
exec cat "$path"
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    info = load_info("s3://b/")
    cfg = LoaderConfig(batch_size=4, image_size=32, workers=1)
    keys = all_keys(build_loader(LoaderKind.CPU, cfg, Split.VAL, info, CPU))
    assert len(keys) == len(set(keys)) == 13
    assert "s3 cp --quiet s3://b/_info.json -" in log.read_text()
    with pytest.raises(DatasetError, match="s3://b/missing/_info.json: cannot fetch"):
        load_info("s3://b/missing")


def test_train_cli_accepts_a_url(http_root, tmp_path):
    import json

    from tools import train as train_cli

    out = tmp_path / "m.json"
    assert train_cli.main(["--data", http_root, "--loader", "cpu", "--max-steps", "2", "--batch-size", "4",
                           "--image-size", "32", "--workers", "1", "--metrics-json", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["steps"] == 2 and m["eval_images"] == 13
