"""Dataset: the typed contract between the sharder and every reader: ``_info.json`` (splits and the manifest of
:class:`ShardEntry`), ``classes.txt``, and, in :mod:`pipeline.dataset.formats` (its names re-exported here), the
shard and ``.idx`` formats, the names of the report files (``report.json``, ``rejects.tsv``) written next to the
shards and the reject reasons. One job: write it and read it back, checked. It imports only the base stage: the
sharder (source → shard) and the readers (read → backends) meet here and never import each other.

``_info.json`` follows timm's webdataset reader (timm/data/readers/reader_wds.py)::

    {"name": ..., "splits": {"train": {"name": "train", "num_samples": N,
                                       "filenames": [...], "shard_lengths": [...]}, ...}, ...}

It is the last file the sharder writes, so its presence means the shards are complete.
``classes.txt`` holds one class name (the wnid for ImageNet) per line; line i is class index i.

A dataset may also live behind a URL prefix (``http(s)://host/path``, ``s3://bucket/prefix``): the same files,
fetched by the reader (:func:`read_info` takes its fetch function; only the ``cpu`` backend streams shards from
URLs).

:func:`read_info` reads and parses ``_info.json`` and ``classes.txt``; :func:`check_manifest` and
:func:`check_shard_files` are the checks that need no reader. :func:`pipeline.read.info.load_info` (the loader
every trainer uses) adds the one that does, and so checks, at start, what a reader would otherwise find only after
an epoch, or never: each split's shard names and counts against the manifest (where there is one), and, for a local
folder, every shard's count against the shard itself: the ``v1.2 <samples>`` first line of its ``.idx``
(:func:`index_sample_count`, one small read per shard: 0.1-0.2 s for ImageNet's 1,332 shards from the page cache,
measured on a busy 2-core machine), and, where that is missing, malformed or disagrees, the tar's own headers
(which decide). The shards of a URL are not fetched at start: their
counts are checked as they are read (:func:`pipeline.read.tarstream.iter_samples` with ``length``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.dataset.formats import (CLASSES_FILE, IDX_VERSION, INFO_FILE, REJECTS_FILE, REPORT_FILE,  # noqa: F401
                                      SHARD_PATTERN, LayoutKind, RejectReason, index_entry, index_header, index_name,
                                      is_shard_file, is_url, join, parse_index_header, shard_name)


class DatasetError(Exception):
    """A shard folder that cannot be used as it is (message names the file and what to do)."""


@dataclass(frozen=True)
class ShardEntry:
    """One shard of the manifest (``_info.json``'s ``"manifest"``: split → list of these, as JSON objects).

    Attributes:
        filename: the tar's name, relative to the dataset folder.
        num_samples: samples in it.
        bytes: its size in bytes.
        sha256: hex digest of the whole file.
    """

    filename: str
    num_samples: int
    bytes: int
    sha256: str

    def to_json(self) -> dict:
        return {"filename": self.filename, "num_samples": self.num_samples, "bytes": self.bytes,
                "sha256": self.sha256}

    @classmethod
    def from_json(cls, obj: dict) -> "ShardEntry":
        """Raises KeyError / ValueError / TypeError for a malformed entry."""
        return cls(str(obj["filename"]), int(obj["num_samples"]), int(obj["bytes"]), str(obj["sha256"]))


@dataclass(frozen=True)
class SplitInfo:
    """One split (``train`` or ``val``) of a sharded dataset.

    Attributes:
        name: split name.
        num_samples: total samples, equal to ``sum(shard_lengths)``.
        filenames: shard file names, relative to the dataset folder, in order.
        shard_lengths: samples per shard, aligned with ``filenames``.
    """

    name: str
    num_samples: int
    filenames: tuple[str, ...]
    shard_lengths: tuple[int, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "num_samples": self.num_samples,
                "filenames": list(self.filenames), "shard_lengths": list(self.shard_lengths)}


@dataclass(frozen=True)
class DatasetInfo:
    """A sharded dataset folder: its splits and classes.

    Attributes:
        root: the folder (a ``Path``), or its URL prefix (a ``str``).
        splits: split name → :class:`SplitInfo`.
        classes: class names; the label of class ``classes[i]`` is ``i``.
        extra: the other top-level keys of ``_info.json`` (seed, source, layout, ...), the manifest excepted.
        manifest: split → its shards' :class:`ShardEntry` (empty for folders written without one).
    """

    root: Path | str
    splits: dict[str, SplitInfo]
    classes: tuple[str, ...]
    extra: dict
    manifest: dict[str, tuple[ShardEntry, ...]] = field(default_factory=dict)

    def shard_entries(self) -> dict[str, ShardEntry]:
        """Shard file name → its manifest entry, over all splits."""
        return {e.filename: e for entries in self.manifest.values() for e in entries}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> SplitInfo:
        """Return split ``name``.

        Raises:
            DatasetError: the dataset has no such split.
        """
        if name not in self.splits:
            raise DatasetError(f"{self.root / INFO_FILE}: no '{name}' split (has: {', '.join(self.splits)}); "
                               f"shard a tree with a {name}/ folder")
        return self.splits[name]

    @property
    def remote(self) -> bool:
        """True when the dataset is read from a URL (shards are streamed, not opened as files)."""
        return is_url(self.root)

    def shard_paths(self, name: str) -> list[str]:
        """Absolute paths (or URLs) of the shards of split ``name``, in order."""
        return [join(self.root, f) for f in self.split(name).filenames]


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_info(root: Path, splits: list[SplitInfo], manifest: dict[str, list[ShardEntry]], **extra) -> None:
    """Write ``_info.json`` (timm format, the ``manifest`` and ``extra`` top-level keys) into ``root``."""
    obj = {"name": extra.pop("name", "imagenet"), **extra,
           "manifest": {split: [e.to_json() for e in entries] for split, entries in manifest.items()},
           "splits": {split.name: split.to_json() for split in splits}}
    write_json_atomic(Path(root) / INFO_FILE, obj)


def read_info(root: str | os.PathLike, fetch: Callable[[str], bytes] | None = None) -> DatasetInfo:
    """Read and parse a shard folder's ``_info.json`` and ``classes.txt``, from disk or from a URL prefix; nothing
    is checked against the shards (:func:`check_manifest`, :func:`check_shard_files` and
    :func:`pipeline.read.info.load_info` do that).

    Args:
        root: the folder, or an ``http(s)://`` / ``s3://`` URL of a copy of it.
        fetch: the bytes at a URL location (the reader's download; it raises :class:`DatasetError` saying why it
            cannot); needed for a URL ``root`` only.

    Raises:
        DatasetError: ``_info.json`` or ``classes.txt`` missing or malformed, or a URL ``root`` without ``fetch``.
    """
    root = str(root).rstrip("/") if is_url(root) else Path(root)
    info_loc = join(root, INFO_FILE)
    url_fetch = fetch if is_url(root) else None
    if is_url(root) and fetch is None:
        raise DatasetError(f"{info_loc}: a URL; read it with pipeline.read.info.load_info (only local folders here)")
    obj, splits, manifest = _parse_info(_read_info_text(root, info_loc, url_fetch), info_loc)
    classes = _read_classes(root, url_fetch, obj)
    extra = {k: v for k, v in obj.items() if k not in ("splits", "manifest")}
    return DatasetInfo(root=root, splits=splits, classes=classes, extra=extra, manifest=manifest)


def check_manifest(info: DatasetInfo) -> None:
    """Each split's ``filenames`` and ``shard_lengths`` are the manifest's names and counts (a hand-edited
    ``_info.json`` otherwise trains on other samples than it says); nothing to check without a manifest.

    Raises:
        DatasetError: naming the first difference.
    """
    if not info.manifest:
        return
    info_loc = join(info.root, INFO_FILE)
    for split in info.splits.values():
        _check_against_manifest(split, info.manifest.get(split.name, ()), info_loc, info.root)


def _read_info_text(root: Path | str, info_loc: str, fetch: Callable[[str], bytes] | None) -> str:
    """The text of ``_info.json`` (``fetch``: a URL's download); DatasetError saying what to run when it is not
    there."""
    if fetch is not None:
        try:
            return fetch(info_loc).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{info_loc}: cannot fetch ({exc}); check the URL (it must hold the files "
                               f"shard-imagenet wrote)") from None
    if not Path(info_loc).is_file():
        if (Path(root) / "train").is_dir():  # an image tree, not shards: never suggest writing shards into it
            raise DatasetError(f"{info_loc}: not found: {root} looks like an ImageFolder tree, not shards; train on it "
                               f"with --loader folder, or shard it first: shard-imagenet {root} --out OTHER_DIR")
        raise DatasetError(f"{info_loc}: not found; run `shard-imagenet SRC --out {root}` first "
                           f"(or point --data at the folder that holds the shards)")
    return Path(info_loc).read_text()


def _parse_info(info_text: str, info_loc: str) -> tuple[dict, dict[str, SplitInfo],
                                                        dict[str, tuple[ShardEntry, ...]]]:
    """(the whole object, its splits, its manifest) of ``_info.json``'s text; DatasetError when malformed."""
    try:
        obj = json.loads(info_text)
        splits = {}
        for name, entry in obj["splits"].items():
            split = SplitInfo(name=entry.get("name", name), num_samples=int(entry["num_samples"]),
                              filenames=tuple(entry["filenames"]),
                              shard_lengths=tuple(int(n) for n in entry["shard_lengths"]))
            if len(split.filenames) != len(split.shard_lengths) or sum(split.shard_lengths) != split.num_samples:
                raise ValueError(f"split '{name}': filenames, shard_lengths and num_samples disagree")
            splits[name] = split
        manifest = {split: tuple(ShardEntry.from_json(e) for e in entries)
                    for split, entries in obj.get("manifest", {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{info_loc}: malformed ({exc}); re-run shard-imagenet") from None
    return obj, splits, manifest


def _read_classes(root: Path | str, fetch: Callable[[str], bytes] | None, obj: dict) -> tuple[str, ...]:
    """The class names of ``classes.txt``, kept exactly (one per line); DatasetError when it is missing or its
    count differs from ``_info.json``'s ``num_classes``."""
    classes_loc = join(root, CLASSES_FILE)
    if fetch is not None:
        raw = fetch(classes_loc)
    elif not Path(classes_loc).is_file():
        raise DatasetError(f"{classes_loc}: not found; re-run shard-imagenet")
    else:
        raw = Path(classes_loc).read_bytes()
    text = raw.decode("utf-8", errors="surrogateescape")
    classes = tuple(text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"))  # names kept exactly
    if "num_classes" in obj and obj["num_classes"] != len(classes):
        raise DatasetError(f"{classes_loc}: {len(classes)} classes, {INFO_FILE} says {obj['num_classes']}; "
                           f"re-run shard-imagenet")
    return classes


def check_shard_files(info: DatasetInfo) -> None:
    """Every listed shard of the local folder ``info.root`` exists with the manifest's size (a stat each).

    Raises:
        DatasetError: naming the first shard that does not.
    """
    root = Path(info.root)
    sizes = {e.filename: e.bytes for entries in info.manifest.values() for e in entries}
    for split in info.splits.values():
        for f in split.filenames:
            path = root / f
            if not path.is_file():
                raise DatasetError(f"{path}: listed in {INFO_FILE} but missing; re-run shard-imagenet")
            if f in sizes and path.stat().st_size != sizes[f]:
                raise DatasetError(f"{path}: {path.stat().st_size} bytes, the manifest says {sizes[f]} (truncated "
                                   f"or replaced); run `shard-imagenet verify {root}`, then re-shard")


def index_sample_count(tar: Path) -> int | None:
    """The sample count on the first line of the ``.idx`` beside the local shard ``tar`` (``v1.2 <samples>``, at
    most 64 bytes read), or None where that file is missing, unreadable or does not start so."""
    try:
        with open(tar.with_name(index_name(tar.name)), "rb") as f:
            return parse_index_header(f.readline(64))
    except OSError:
        return None


def _check_against_manifest(split: SplitInfo, entries: tuple[ShardEntry, ...], info_loc: str,
                            root: Path | str) -> None:
    """``split``'s ``filenames`` and ``shard_lengths`` are the manifest's names and counts (a hand-edited
    ``_info.json`` otherwise trains on other samples than it says); DatasetError naming the first difference."""
    fix = f"run `shard-imagenet verify {root}`, then re-shard"
    if len(entries) != len(split.filenames):
        raise DatasetError(f"{info_loc}: split '{split.name}' lists {len(split.filenames)} shards, the manifest "
                           f"{len(entries)} (edited?); {fix}")
    for i, (name, count, entry) in enumerate(zip(split.filenames, split.shard_lengths, entries)):
        if name != entry.filename:
            raise DatasetError(f"{info_loc}: split '{split.name}': shard {i + 1} is {name} by filenames but "
                               f"{entry.filename} by the manifest (edited?); {fix}")
        if count != entry.num_samples:
            raise DatasetError(f"{info_loc}: split '{split.name}': {name} holds {count} samples by shard_lengths "
                               f"but {entry.num_samples} by the manifest (edited?); {fix}")
