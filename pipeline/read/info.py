"""Load a shard folder for reading, checked: :func:`load_info` reads ``_info.json`` and ``classes.txt`` from disk or
from a URL prefix (downloaded with :mod:`pipeline.read.tarstream`, bounded by :class:`RemoteOptions`), parses them
with the dataset contract (:func:`pipeline.dataset.read_info`) and checks the shards against them at start: the
manifest, each local shard's size, and each local shard's sample count (its ``.idx``'s first line, or where that is
missing, malformed or disagrees, the tar's own headers, which decide).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.dataset import (INFO_FILE, DatasetError, DatasetInfo, check_manifest, check_shard_files,
                              index_sample_count, read_info)
from pipeline.read.tarstream import RemoteOptions, ShardReadError, count_samples, is_url, read_location


def load_info(root: str | os.PathLike, check_files: bool = True, remote: RemoteOptions | None = None) -> DatasetInfo:
    """Read a shard folder written by ``shard-imagenet``, from disk or from a URL prefix.

    Args:
        root: the folder, or an ``http(s)://`` / ``s3://`` URL of a copy of it.
        check_files: also check the listed shards against the manifest (when ``_info.json`` has one): the same
            file names and sample counts (``shard-imagenet verify`` reads an edited file itself, so it passes
            False), and, for local folders, that every shard exists with the manifest's size (a stat each) and
            holds the samples ``shard_lengths`` says (its ``.idx``'s first line; where that is missing or disagrees,
            its tar headers); remote shards are checked as they are read.
        remote: timeout and retries of the downloads of a URL folder (None: :class:`RemoteOptions`' defaults).

    Raises:
        DatasetError: ``_info.json`` or ``classes.txt`` missing or malformed, or (with ``check_files``) a
            split whose shard names or counts disagree with the manifest, a listed shard missing, of the
            wrong size or holding another count than ``shard_lengths``; a URL that gives no byte in time or fails.
    """
    info = read_info(root, fetch=lambda location: _fetch(location, remote))
    if check_files:
        check_manifest(info)
    if check_files and not is_url(info.root):
        check_shard_files(info)
        _check_shard_counts(info)
    return info


def _fetch(location: str, remote: RemoteOptions | None) -> bytes:
    """The bytes at the URL ``location``; DatasetError ``<location>: cannot fetch: <why>; <what to do>`` from the
    download's error (which names ``location`` and what to do already: a timeout after the retries, an HTTP error,
    a missing download command)."""
    try:
        return read_location(location, remote)
    except ShardReadError as exc:
        detail = str(exc)
        if detail.startswith(location + ": "):
            detail = detail[len(location) + 2:]
        raise DatasetError(f"{location}: cannot fetch: {detail}") from None


def _check_shard_counts(info: DatasetInfo) -> None:
    """Every listed shard holds the samples ``shard_lengths`` says; DatasetError naming the first that does not (a
    hand-edited ``_info.json`` of a folder without a manifest, or one whose manifest was edited too, trains on other
    samples than it says, or stops after an epoch).

    A shard's ``.idx`` tells its count cheaply (:func:`pipeline.dataset.index_sample_count`); where that agrees,
    nothing else is read. Where it does not, or there is no usable ``.idx``, the tar's own headers are counted (one
    512-byte read per member) and decide: a damaged ``.idx`` beside a tar that agrees is left to the reader that
    uses it (DALI's :mod:`pipeline.read.shardcheck` names it)."""
    root = Path(info.root)
    for split in info.splits.values():
        for f, listed in zip(split.filenames, split.shard_lengths):
            tar = root / f
            if index_sample_count(tar) == listed:
                continue
            try:
                held = count_samples(str(tar))
            except ShardReadError as exc:
                raise DatasetError(str(exc)) from None
            if held != listed:
                raise DatasetError(f"{tar}: holds {held} samples, {INFO_FILE} says {listed} (split '{split.name}'; "
                                   f"edited?); run `shard-imagenet verify {root}`, then re-run shard-imagenet into it "
                                   f"(it keeps complete shards and rewrites {INFO_FILE})")
