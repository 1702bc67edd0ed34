"""Plan: the shard tasks of a source tree and their resume records. :func:`plan_tasks` cuts every split's ordered
input into :class:`ShardTask` s (train shuffled with the seed, val sorted), each with a fingerprint of its inputs
and options; a finished task leaves a :class:`PartRecord` (``_parts/NAME.json``, written last), which
:func:`complete_part` matches against the task so that ``--resume`` keeps the shard; :func:`todo` picks this job's
tasks still to write. Also the sample keys (:func:`sample_key`) and the rows of ``rejects.tsv`` (:class:`Reject`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.dataset import RejectReason, index_name, shard_name
from pipeline.shard.config import ShardConfig
from pipeline.shard.jsonsafe import escape_text, needs_escape
from pipeline.shard.writer import TMP_SUFFIX
from pipeline.source import SourceItem, SourceTree

FORMAT_VERSION = 3  # bump when the bytes written for the same input change
PARTS_DIR = "_parts"
_KEY_STEM_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_KEY_STEM_MAX = 64


@dataclass(frozen=True)
class Reject:
    """One row of ``rejects.tsv``: an input file that is in no shard.

    Attributes:
        relpath: its path relative to the source root, as a shard's ``.json`` would have recorded it.
        reason: why it is in no shard.
        detail: what was wrong, in one line.
    """

    relpath: str
    reason: RejectReason
    detail: str

    @classmethod
    def from_row(cls, row: list[str]) -> "Reject":
        """From its ``[relpath, reason, detail]`` form in a part record."""
        return cls(row[0], RejectReason(row[1]), row[2])

    def row(self) -> list[str]:
        """Its ``[relpath, reason, detail]`` form in a part record (JSON)."""
        return [self.relpath, self.reason.value, self.detail]

    def tsv_line(self) -> str:
        """Its line of ``rejects.tsv``: backslashes, tabs and newlines of the path and detail escaped."""
        return f"{_tsv(self.relpath)}\t{self.reason.value}\t{_tsv(self.detail)}\n"


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its split, file name, and its input files with their sorted-order indices."""

    split: str
    name: str
    items: tuple[tuple[int, SourceItem], ...]
    fingerprint: str


@dataclass
class PartRecord:
    """What a finished shard task produced (persisted as ``_parts/NAME.json``).

    ``filename`` is None when every input of the task was rejected (no tar is written).
    """

    name: str
    split: str
    fingerprint: str
    filename: str | None
    num_samples: int
    num_bytes: int
    sha256: str
    bytes_in: int
    conversions: dict[str, int]
    rejects: list[list[str]]  # Reject.row(): [relpath, reason, detail]

    @classmethod
    def load(cls, path: Path) -> "PartRecord | None":
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def sample_key(index: int, relpath: str) -> str:
    """Shard key of the ``index``-th file (sorted order) of a split: ``00000042_n01440764_10026``.

    The file name without its last extension, every character outside ``[A-Za-z0-9_-]`` replaced by ``_``
    (so ``a.b.JPEG`` → ``a_b``), cut to 64 characters, after the index that keeps keys unique.
    """
    name = relpath.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{index:08d}_{_KEY_STEM_CHARS.sub('_', stem)[:_KEY_STEM_MAX]}"


def _tsv(text: str) -> str:
    """Escape backslash, tab and newlines so one reject stays one TSV row."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def plan_tasks(tree: SourceTree, cfg: ShardConfig) -> list[ShardTask]:
    """Cut every split's ordered input into shard tasks (train shuffled with the seed, val sorted)."""
    settings = json.dumps([FORMAT_VERSION, cfg.seed, cfg.shard_size, cfg.quality, cfg.max_pixels, cfg.max_size,
                           tree.classes])
    tasks = []
    for split, items in tree.items.items():
        indexed = list(enumerate(items))
        if split == "train":
            random.Random(cfg.seed).shuffle(indexed)
        for k in range(0, len(indexed), cfg.shard_size):
            chunk = tuple(indexed[k:k + cfg.shard_size])
            digest = hashlib.sha256(settings.encode("utf-8", "surrogateescape"))
            for index, item in chunk:
                digest.update(f"\0{index}\0{item.relpath}\0{item.label}\0{_source_stamp(item)}".encode(
                    "utf-8", "surrogateescape"))
                if needs_escape(item.relpath) or needs_escape(tree.classes[item.label]):
                    digest.update(b"\0json-escaped")  # such names are now stored escaped: an older shard is rewritten
            tasks.append(ShardTask(split, shard_name(split, k // cfg.shard_size), chunk, digest.hexdigest()))
    return tasks


def _source_stamp(item: SourceItem) -> str:
    """Size and modification time (ns) of the file, or of the archive holding the member: a changed
    input (even one of the same size) changes its shard's fingerprint, so --resume rewrites that shard."""
    try:
        stat = os.stat(item.path)
    except OSError:
        return "missing"
    return f"{item.offset}:{item.size if item.size >= 0 else stat.st_size}:{stat.st_mtime_ns}"


def part_rejects(part: PartRecord, task: ShardTask) -> list[Reject]:
    """The rejects of ``part``, each under the source's own path: a part record stores the paths that are not
    valid UTF-8 escaped (:mod:`jsonsafe`), and ``rejects.tsv`` keeps their original bytes."""
    original = {escape_text(it.relpath): it.relpath for _, it in task.items if needs_escape(it.relpath)}
    return [Reject.from_row([original.get(row[0], row[0]), *row[1:]]) for row in part.rejects]


def complete_part(out: Path, task: ShardTask) -> PartRecord | None:
    """The part record of ``task`` when its shard is complete on disk (matching fingerprint and size)."""
    part = PartRecord.load(out / PARTS_DIR / f"{task.name}.json")
    if part is None or part.fingerprint != task.fingerprint:
        return None
    if part.filename is not None:
        tar = out / part.filename
        if not tar.is_file() or tar.stat().st_size != part.num_bytes or not (out / index_name(part.filename)).is_file():
            return None
    return part


def discard(out: Path, task: ShardTask) -> None:
    """Remove every file of ``task`` (record first, so a half-removed shard is never taken as complete)."""
    index = index_name(task.name)
    for path in (out / PARTS_DIR / f"{task.name}.json", out / task.name, out / index,
                 out / (task.name + TMP_SUFFIX), out / (index + TMP_SUFFIX)):
        path.unlink(missing_ok=True)


def todo(out: Path, tasks: list[ShardTask], cfg: ShardConfig) -> tuple[list[ShardTask], int]:
    """This job's tasks still to write (their old files removed), and how many complete shards --resume keeps."""
    to_write, kept = [], 0
    for task in (t for i, t in enumerate(tasks) if i % cfg.num_jobs == cfg.job_index):
        if cfg.resume and complete_part(out, task) is not None:
            kept += 1
        else:
            discard(out, task)
            to_write.append(task)
    return to_write, kept
