"""Verify: check a finished shard folder (``shard-imagenet verify OUT``): re-read every shard and check it against
what the sharder recorded.

Per shard: size and sha256 against the ``_info.json`` manifest; sample count against ``shard_lengths``;
every sample has ``jpg``, ``cls``, ``lbl`` and ``json`` members, adjacent; ``cls``, ``lbl`` and the json
label agree and index ``classes.txt``; the JPEG matches the sha256 recorded in its json and decodes to
3-channel RGB; the ``.idx`` file lists exactly the tar's member offsets and sizes. Every shard is checked,
whatever was found in the others.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO, Tuple

from PIL import Image

from pipeline.dataset import INFO_FILE, DatasetInfo, ShardEntry, index_header, index_name, read_info
from pipeline.progress import CountProgress
from pipeline.shard.lifetime import die_with_parent

REQUIRED = ("jpg", "cls", "lbl", "json")
_Member = Tuple[str, str, int, int]  # sample key, extension, data offset, size
_Bad = Callable[[str, str], None]  # records a problem: (sample key or "", what)


@dataclass(frozen=True)
class ShardProblem:
    """One thing wrong with a shard: the shard file, the sample key (or "" for the whole shard), what."""

    shard: str
    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.shard}: {self.key + ': ' if self.key else ''}{self.problem}"


def _check_shard(args: tuple[str, str, int, ShardEntry | None, int]) -> list[ShardProblem]:
    """Every problem of one shard: ``args`` is (dataset folder, shard file name, samples _info.json lists, its
    manifest entry or None, number of classes)."""
    root, filename, expected_len, manifest, num_classes = args
    path = Path(root) / filename
    problems: list[ShardProblem] = []

    def bad(key: str, what: str) -> None:
        problems.append(ShardProblem(filename, key, what))

    try:
        data = path.read_bytes()
    except OSError as exc:
        return [ShardProblem(filename, "", f"cannot read ({exc.strerror or exc})")]
    if manifest:
        if len(data) != manifest.bytes:
            bad("", f"size {len(data)} bytes, manifest says {manifest.bytes}")
        if hashlib.sha256(data).hexdigest() != manifest.sha256:
            bad("", "sha256 differs from the manifest")
    try:
        samples, order, members = _read_members(data, bad)
    except tarfile.TarError as exc:
        return [ShardProblem(filename, "", f"not a readable tar ({exc})")]
    if len(samples) != expected_len:
        bad("", f"{len(samples)} samples, _info.json says {expected_len}")
    for key in order:
        _check_sample(key, samples[key], num_classes, bad)
    problems += _check_index(path, filename, members)
    return problems


def _read_members(data: bytes, bad: _Bad) -> tuple[dict[str, dict[str, bytes]], list[str], list[_Member]]:
    """The samples of the tar ``data``: (key → {ext: bytes}, keys in tar order, (key, ext, data offset, size) of
    every member); members DALI cannot read or that break a sample apart go to ``bad``.

    Raises:
        tarfile.TarError: not a readable tar.
    """
    samples: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    members: list[_Member] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for m in tf:
            if not m.isfile():
                continue
            if m.pax_headers:
                bad("", f"member {m.name} has PAX headers (DALI cannot read them)")
            base = m.name.rsplit("/", 1)[-1]
            if "." not in base:
                bad("", f"member {m.name} has no extension")
                continue
            key, ext = m.name.split(".", 1)
            if order and order[-1] != key and key in samples:
                bad(key, "members of the sample are not adjacent")
            if not order or order[-1] != key:
                order.append(key)
            samples.setdefault(key, {})[ext] = data[m.offset_data:m.offset_data + m.size]
            members.append((key, ext, m.offset_data, m.size))
    return samples, order, members


def _check_sample(key: str, sample: dict[str, bytes], num_classes: int, bad: _Bad) -> None:
    """One sample: its four members, labels that agree and index the classes, its JPEG's sha256 and decode."""
    missing = [e for e in REQUIRED if e not in sample]
    if missing:
        bad(key, f"missing member(s) {', '.join(missing)}")
        return
    try:
        cls = int(str(sample["cls"], "ascii"))
        (lbl,) = struct.unpack("<i", sample["lbl"])
        meta = json.loads(sample["json"])
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        bad(key, f"unreadable label/json member ({exc})")
        return
    if not (cls == lbl == meta.get("label")):
        bad(key, f"labels disagree: cls={cls} lbl={lbl} json={meta.get('label')}")
    if not 0 <= cls < num_classes:
        bad(key, f"label {cls} outside 0..{num_classes - 1}")
    recorded = meta.get("jpg_sha256")
    if recorded is not None and hashlib.sha256(sample["jpg"]).hexdigest() != recorded:
        bad(key, "jpg bytes differ from the sha256 recorded when the shard was written")
    try:
        img = Image.open(io.BytesIO(sample["jpg"]))
        img.load()
        if img.format != "JPEG" or img.mode != "RGB":
            bad(key, f"image is {img.format} {img.mode}, expected JPEG RGB")
    except Exception as exc:
        bad(key, f"image does not decode ({type(exc).__name__}: {exc})")


def _check_index(path: Path, filename: str, members: list[_Member]) -> list[ShardProblem]:
    idx = path.with_name(index_name(path.name))
    if not idx.is_file():
        return [ShardProblem(filename, "", f"index file {idx.name} missing")]
    lines = idx.read_text().splitlines()
    want_samples = len({m[0] for m in members})
    if not lines or lines[0] != index_header(want_samples):
        return [ShardProblem(filename, "", f"{idx.name}: header {lines[:1]} != '{index_header(want_samples)}'")]
    listed = []
    for line in lines[1:]:
        parts = line.split(" ")
        for i in range(0, len(parts) - 3, 4):
            listed.append((parts[i + 3].split(".", 1)[0], parts[i], int(parts[i + 1]), int(parts[i + 2])))
    if listed != members:
        return [ShardProblem(filename, "", f"{idx.name}: offsets/sizes do not match the tar")]
    return []


def verify_dataset(root: str | Path, workers: int = 1,
                   progress: TextIO | None = None) -> tuple[DatasetInfo, list[ShardProblem]]:
    """Check every shard of the dataset at ``root``; returns the info and every problem found.

    ``progress``: where to show the shards checked so far with rate and ETA (``sys.stderr``: a tqdm bar on a
    terminal, a plain line every 30 s otherwise, see :mod:`pipeline.progress`); None: nothing.

    Raises:
        pipeline.dataset.DatasetError: ``_info.json`` / ``classes.txt`` missing or malformed, a shard missing.
    """
    info = read_info(root)  # unchecked: a missing or truncated shard is reported below, not fatal
    manifest = info.shard_entries()
    jobs = [(str(info.root), f, n, manifest.get(f), info.num_classes)
            for s in info.splits.values() for f, n in zip(s.filenames, s.shard_lengths)]
    shown = CountProgress(len(jobs), f"verify {root}", "shards", stream=progress, enabled=progress is not None)
    results: list[list[ShardProblem]] = []
    finished = False
    try:
        if workers > 1 and len(jobs) > 1:
            with multiprocessing.get_context("fork").Pool(min(workers, len(jobs)), die_with_parent,
                                                          (os.getpid(),)) as pool:
                for r in pool.imap(_check_shard, jobs):  # in order: the problems come out as the shards are listed
                    results.append(r)
                    shown.update()
        else:
            for j in jobs:
                results.append(_check_shard(j))
                shown.update()
        finished = True
    finally:
        shown.close(done=finished)
    problems = [p for r in results for p in r]
    if not manifest:
        problems.insert(0, ShardProblem(INFO_FILE, "", "no manifest: checksums not checked"))
    return info, problems
