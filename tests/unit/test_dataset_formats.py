"""The dataset contract's formats (shard names, the ``.idx`` lines, locations), the one core counter and the one
page-cache hint (issue 21: formats in the contract, knowledge written once)."""

from __future__ import annotations

import os

import pytest

from pipeline import fsio, hostinfo
from pipeline.dataset import (IDX_VERSION, RejectReason, index_entry, index_header, index_name, is_shard_file, is_url,
                              join, parse_index_header, shard_name)


def test_shard_and_index_names():
    assert shard_name("train", 42) == "imagenet-train-000042.tar"
    assert index_name(shard_name("val", 0)) == "imagenet-val-000000.idx"
    assert index_name("/a/b/x.tar") == "/a/b/x.idx" and index_name("x") == "x.idx"
    assert is_shard_file("imagenet-train-000001.tar") and is_shard_file("imagenet-val-123456.idx")
    assert not is_shard_file("imagenet-test-000001.tar") and not is_shard_file("imagenet-train-000001.tar.tmp")


def test_index_lines_written_and_read_back():
    assert index_header(7) == f"{IDX_VERSION} 7" == "v1.2 7"
    assert index_entry("jpg", 512, 1000, "k.jpg") == "jpg 512 1000 k.jpg"
    assert parse_index_header(index_header(7)) == 7 and parse_index_header(b"v1.2 12\n") == 12
    for bad in ("v1.1 7", "v1.2", "v1.2 -3", "v1.2 7 8", "", b"v1.2 x"):
        assert parse_index_header(bad) is None, bad


def test_locations():
    assert is_url("s3://bucket/p") and is_url("https://h/p") and is_url("pipe:cat x") and not is_url("/data/x")
    assert join("https://h/p/", "_info.json") == "https://h/p/_info.json"
    assert join("/data/x", "_info.json") == os.path.join("/data/x", "_info.json")


def test_reject_reasons_are_the_rejects_tsv_words():
    assert RejectReason("unreadable-folder") is RejectReason.UNREADABLE_FOLDER
    from pipeline.shard.clean import RejectReason as from_clean
    assert from_clean is RejectReason  # one enum, the contract's


def test_available_cores_is_the_affinity_mask(monkeypatch):
    assert hostinfo.available_cores() >= 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert hostinfo.available_cores() == 3
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert hostinfo.available_cores() == 1


def test_drop_cache_says_why_it_cannot(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            assert fsio.drop_cache(fd) is None and fsio.drop_cache(fd, 0, 100, sync=True) is None

            def refuse(*args):
                raise OSError(22, "Invalid argument")

            monkeypatch.setattr(os, "posix_fadvise", refuse)
            assert fsio.drop_cache(fd) == "posix_fadvise failed (Invalid argument)"
        monkeypatch.delattr(os, "posix_fadvise", raising=False)
        assert fsio.drop_cache(fd) == "os.posix_fadvise is not available on this platform"
    finally:
        os.close(fd)


@pytest.mark.parametrize("pending", [0, 2])
def test_run_totals_make_the_summary(tmp_path, pending):
    from pipeline.shard.summary import RunTotals, summarise
    from pipeline.source import SourceTree

    tree = SourceTree(root=tmp_path, classes=["a"], items={"train": []})
    summary = summarise(tree, [], {}, RunTotals(1.5, 10, 20, 3, pending, 1))
    assert (summary.elapsed_s, summary.bytes_in, summary.bytes_out, summary.images_done) == (1.5, 10, 20, 3)
    assert (summary.pending, summary.kept, summary.complete) == (pending, 1, False)
    assert list(summary.splits) == (["train"] if pending == 0 else [])
