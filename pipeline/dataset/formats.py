"""The file formats the sharder writes and every reader reads, as names and functions both sides import: shard
names (:data:`SHARD_PATTERN`, :func:`shard_name`, :func:`is_shard_file`), the ``.idx`` index of each shard
(:data:`IDX_VERSION`, :func:`index_name`, :func:`index_header`, :func:`index_entry`, :func:`parse_index_header`), the
files written next to the shards (:data:`INFO_FILE`, :data:`CLASSES_FILE`,
:data:`REJECTS_FILE`, :data:`REPORT_FILE`), the source layouts a report names (:class:`LayoutKind`), the reasons an
input file is rejected (:class:`RejectReason`), and where a dataset lives (:func:`is_url`, :func:`join`).

The ``.idx`` is the index DALI's ``fn.readers.webdataset`` takes, in the format of DALI's ``wds2idx`` tool (v1.2):
a line ``v1.2 <samples>``, then one line per sample listing ``<ext> <data offset> <size> <member name>`` for each
of its members, in tar order, separated by single spaces.
"""

from __future__ import annotations

import os
import re
from enum import Enum

INFO_FILE = "_info.json"
CLASSES_FILE = "classes.txt"
REJECTS_FILE = "rejects.tsv"
REPORT_FILE = "report.json"
SHARD_PATTERN = "imagenet-{split}-{index:06d}.tar"
IDX_VERSION = "v1.2"
_SHARD_FILE = re.compile(r"imagenet-(train|val)-\d{6}\.(tar|idx)")


class LayoutKind(str, Enum):
    """The layout of an ImageNet source: how ``shard-imagenet --layout`` reads it (``auto``: detect it) and, once
    detected, the ``layout`` that ``report.json`` records (io-bench finds a class-folder source's tree by it)."""

    AUTO = "auto"
    CLASS_FOLDERS = "class-folders"
    KAGGLE = "kaggle"
    ARCHIVES = "archives"

    def __str__(self) -> str:  # argparse shows and matches the value
        return self.value


class RejectReason(str, Enum):
    """Why an input file is not in any shard (the second column of ``rejects.tsv``)."""

    EMPTY = "empty"                  # zero-byte file
    UNDECODABLE = "undecodable"      # not an image PIL can identify or decode (also: truncated files)
    TOO_LARGE = "too-large"          # more pixels than the decompression-bomb limit
    NOT_IN_CLASS = "not-in-class-folder"  # a file directly under a split folder, outside any class folder
    NO_LABEL = "no-label"            # a flat-val image that the label file does not list
    NOT_A_FILE = "not-a-file"        # an archive member that is a symlink, device or unresolvable link
    UNREADABLE_FOLDER = "unreadable-folder"  # a folder that cannot be listed: its files are in no shard


def shard_name(split: str, index: int) -> str:
    """The tar name of shard ``index`` (0-based) of ``split``: ``imagenet-train-000042.tar``."""
    return SHARD_PATTERN.format(split=split, index=index)


def is_shard_file(name: str) -> bool:
    """True for a shard's tar or index name as the sharder writes them (``imagenet-{train,val}-NNNNNN.{tar,idx}``)."""
    return _SHARD_FILE.fullmatch(name) is not None


def index_name(tar_name: str) -> str:
    """``imagenet-train-000000.tar`` → ``imagenet-train-000000.idx`` (what ``wds2idx`` names it); a name without
    ``.tar`` gets ``.idx`` appended. Also for paths: only the end of the string changes."""
    return tar_name[:-4] + ".idx" if tar_name.endswith(".tar") else tar_name + ".idx"


def index_header(samples: int) -> str:
    """The first line of an ``.idx`` (no newline): ``v1.2 <samples>``."""
    return f"{IDX_VERSION} {samples}"


def index_entry(ext: str, offset: int, size: int, name: str) -> str:
    """One member's part of a sample line of an ``.idx``: ``<ext> <data offset> <size> <member name>`` (offset and
    size in bytes; a sample's parts are joined by single spaces)."""
    return f"{ext} {offset} {size} {name}"


def parse_index_header(line: bytes | str) -> int | None:
    """The sample count of an ``.idx`` first line (``v1.2 <samples>``, bytes or text), or None when the line does
    not read so."""
    head = line.split()
    version = IDX_VERSION.encode() if isinstance(line, bytes) else IDX_VERSION
    if len(head) == 2 and head[0] == version and head[1].isdigit():
        return int(head[1])
    return None


def is_url(location: str | os.PathLike) -> bool:
    """True for ``http://``, ``https://``, ``s3://`` and ``pipe:`` locations (read through a stream)."""
    text = str(location)
    return text.startswith(("http://", "https://", "s3://", "pipe:"))


def join(location: str | os.PathLike, name: str) -> str:
    """``location`` / ``name`` for a folder path or a URL prefix."""
    text = str(location)
    if is_url(text):
        return text.rstrip("/") + "/" + name
    return os.path.join(text, name)
