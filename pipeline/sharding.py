"""Shard an ImageNet-style class-folder tree into webdataset tars.

Every input file ends either in a shard or in ``rejects.tsv`` with its reason. Train samples are
shuffled globally with the seed; val samples keep sorted order. Each sample is three members::

    <key>.jpg    clean RGB JPEG bytes (see pipeline.images)
    <key>.cls    class index, ASCII decimal (as webdataset and timm read it)
    <key>.json   {"path": original relative path, "size": original bytes, "class": name, ...}

Keys are ``<8-digit index in sorted order>_<file stem with every character outside [A-Za-z0-9_-]
replaced by _>``, so they are unique, stable for a given input whatever the seed, and contain no dot.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipeline import info as dsinfo
from pipeline.images import DEFAULT_MAX_PIXELS, DEFAULT_QUALITY, ImageRejected, RejectReason, normalize_image
from pipeline.layout import SourceItem, SourceTree, scan_class_folders
from pipeline.shardwriter import TMP_SUFFIX, ShardRecord, ShardWriter

_KEY_STEM_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_KEY_STEM_MAX = 64


def default_workers() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class ShardConfig:
    """Options of one sharding run.

    Attributes:
        src: source tree root (holds ``train/`` and optionally ``val/``).
        out: output folder (created if needed).
        shard_size: samples per tar (the last tar of a split may hold fewer).
        seed: seed of the global train shuffle.
        workers: processes that read, check and convert images.
        quality: JPEG quality for images that must be re-encoded.
        max_pixels: decompression-bomb limit; larger images are rejected.
        progress: show a tqdm bar.
    """

    src: Path
    out: Path
    shard_size: int = 1000
    seed: int = 0
    workers: int = field(default_factory=default_workers)
    quality: int = DEFAULT_QUALITY
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = True


@dataclass(frozen=True)
class Reject:
    """An input file that is in no shard: its relative path, reason and one-line detail."""

    relpath: str
    reason: RejectReason
    detail: str


@dataclass
class SplitSummary:
    """Counts of one split: files seen, samples written, conversions by kind, shards written."""

    files: int = 0
    written: int = 0
    rejected: int = 0
    conversions: Counter = field(default_factory=Counter)
    shards: list[ShardRecord] = field(default_factory=list)


@dataclass
class ShardSummary:
    """Result of :func:`shard_tree`.

    Attributes:
        splits: split name → its :class:`pipeline.info.SplitInfo` as written.
        counts: split name → :class:`SplitSummary`.
        rejects: every rejected input file.
        elapsed_s: wall time of the run (s).
        bytes_in / bytes_out: bytes read from the source / written into shards.
    """

    splits: dict[str, dsinfo.SplitInfo]
    counts: dict[str, SplitSummary]
    rejects: list[Reject]
    elapsed_s: float
    bytes_in: int
    bytes_out: int

    @property
    def files(self) -> int:
        return sum(c.files for c in self.counts.values()) + self.unusable

    @property
    def unusable(self) -> int:
        """Rejected files that belong to no split's sample list (no class folder, no label)."""
        return len(self.rejects) - sum(c.rejected for c in self.counts.values())


def sample_key(index: int, relpath: str) -> str:
    """Shard key of the ``index``-th file (sorted order) of a split: ``00000042_n01440764_10026``."""
    stem = relpath.rsplit("/", 1)[-1].split(".", 1)[0]
    return f"{index:08d}_{_KEY_STEM_CHARS.sub('_', stem)[:_KEY_STEM_MAX]}"


def _convert(job: tuple[SourceItem, int, int]):
    """Worker: read and normalise one file. Returns (bytes read, NormalizedImage | ImageRejected)."""
    item, quality, max_pixels = job
    try:
        data = item.read_bytes()
    except OSError as exc:
        return 0, ImageRejected(RejectReason.UNDECODABLE, f"cannot read: {exc.strerror or exc}")
    try:
        return len(data), normalize_image(data, quality=quality, max_pixels=max_pixels)
    except ImageRejected as exc:
        return len(data), exc


def _order(items: list[SourceItem], split: str, seed: int) -> list[tuple[int, SourceItem]]:
    """Pair each item with its sorted-order index; shuffle train with ``seed``, keep val sorted."""
    indexed = list(enumerate(items))
    if split == "train":
        random.Random(seed).shuffle(indexed)
    return indexed


def _remove_stale(out: Path, written: set[str]) -> None:
    """Delete temporary files and shards of an earlier run that this run did not write."""
    pattern = re.compile(r"imagenet-(train|val)-\d{6}\.tar")
    for p in out.iterdir():
        if p.name.endswith(TMP_SUFFIX) or (pattern.fullmatch(p.name) and p.name not in written):
            p.unlink()


def shard_tree(cfg: ShardConfig, tree: SourceTree | None = None) -> ShardSummary:
    """Shard the class-folder tree ``cfg.src`` into ``cfg.out``.

    Writes the tars, ``classes.txt``, ``rejects.tsv``, ``report.json`` and, last, ``_info.json``.

    Raises:
        pipeline.layout.LayoutError: the source is not a class-folder tree.
        ValueError: bad option values.
    """
    if cfg.shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {cfg.shard_size}")
    if not 1 <= cfg.quality <= 100:
        raise ValueError(f"--quality must be in 1..100, got {cfg.quality}")
    start = time.perf_counter()
    tree = tree or scan_class_folders(cfg.src)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / dsinfo.INFO_FILE).unlink(missing_ok=True)  # the folder is incomplete until we finish
    _remove_stale(out, set())

    rejects = [Reject(u.item.relpath, u.reason, u.detail) for u in tree.unusable]
    counts: dict[str, SplitSummary] = {}
    split_infos: dict[str, dsinfo.SplitInfo] = {}
    bytes_in = bytes_out = 0
    workers = max(1, cfg.workers)
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    bar = tqdm(total=tree.num_files, unit="img", desc="shard-imagenet", disable=not cfg.progress,
               dynamic_ncols=True)
    bar.update(len(tree.unusable))
    try:
        for split, items in tree.items.items():
            summary = counts[split] = SplitSummary(files=len(items))
            ordered = _order(items, split, cfg.seed)
            writer = ShardWriter(out, dsinfo.SHARD_PATTERN.replace("{split}", split), cfg.shard_size)
            jobs = ((item, cfg.quality, cfg.max_pixels) for _, item in ordered)
            results = pool.imap(_convert, jobs, chunksize=8) if pool else map(_convert, jobs)
            for (index, item), (nbytes, result) in zip(ordered, results):
                bar.update(1)
                bytes_in += nbytes
                if isinstance(result, ImageRejected):
                    summary.rejected += 1
                    rejects.append(Reject(item.relpath, result.reason, result.detail))
                    continue
                meta = {"path": item.relpath, "size": nbytes, "label": item.label,
                        "class": tree.classes[item.label], "width": result.width, "height": result.height,
                        "conversion": result.conversion}
                writer.write(sample_key(index, item.relpath), {
                    "jpg": result.jpeg,
                    "cls": str(item.label).encode("ascii"),
                    "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
                })
                summary.written += 1
                if result.conversion:
                    summary.conversions[result.conversion] += 1
            records = summary.shards = writer.close()
            bytes_out += sum(r.num_bytes for r in records)
            split_infos[split] = dsinfo.SplitInfo(
                name=split, num_samples=sum(r.num_samples for r in records),
                filenames=tuple(r.filename for r in records),
                shard_lengths=tuple(r.num_samples for r in records))
    finally:
        bar.close()
        if pool:
            pool.close()
            pool.join()

    written = {f for s in split_infos.values() for f in s.filenames}
    _remove_stale(out, written)
    (out / dsinfo.CLASSES_FILE).write_text("".join(f"{c}\n" for c in tree.classes))
    rejects.sort(key=lambda r: r.relpath)
    with open(out / dsinfo.REJECTS_FILE, "w", encoding="utf-8") as f:
        f.write("path\treason\tdetail\n")
        for r in rejects:
            f.write(f"{r.relpath}\t{r.reason.value}\t{r.detail}\n")
    elapsed = time.perf_counter() - start
    summary = ShardSummary(split_infos, counts, rejects, elapsed, bytes_in, bytes_out)
    dsinfo.write_json_atomic(out / dsinfo.REPORT_FILE, report_dict(summary, cfg, tree))
    manifest = {s: [{"filename": r.filename, "num_samples": r.num_samples, "bytes": r.num_bytes,
                     "sha256": r.sha256} for r in c.shards]
                for s, c in counts.items()}
    dsinfo.write_info(out, list(split_infos.values()), name="imagenet", layout="class-folders",
                      source=str(tree.root), seed=cfg.seed, shard_size=cfg.shard_size,
                      num_classes=len(tree.classes), quality=cfg.quality, manifest=manifest)
    return summary


def report_dict(summary: ShardSummary, cfg: ShardConfig, tree: SourceTree) -> dict:
    """The run's counts as a JSON-able dict (written to ``report.json``)."""
    return {
        "source": str(tree.root), "layout": "class-folders", "files": tree.num_files,
        "written": sum(c.written for c in summary.counts.values()), "rejected": len(summary.rejects),
        "splits": {s: {"files": c.files, "written": c.written, "rejected": c.rejected,
                       "conversions": dict(sorted(c.conversions.items()))} for s, c in summary.counts.items()},
        "rejects_by_reason": dict(Counter(r.reason.value for r in summary.rejects)),
        "elapsed_s": round(summary.elapsed_s, 3), "bytes_in": summary.bytes_in, "bytes_out": summary.bytes_out,
        "seed": cfg.seed, "shard_size": cfg.shard_size, "workers": cfg.workers,
    }


def format_summary(summary: ShardSummary) -> str:
    """Human-readable summary table with throughput (img/s, MB/s)."""
    lines = [f"{'split':<6} {'files':>8} {'written':>8} {'rejected':>8} {'shards':>6}  conversions"]
    for split, c in summary.counts.items():
        conv = ", ".join(f"{k}: {v}" for k, v in sorted(c.conversions.items())) or "-"
        lines.append(f"{split:<6} {c.files:>8} {c.written:>8} {c.rejected:>8} "
                     f"{len(summary.splits[split].filenames):>6}  {conv}")
    if summary.unusable:
        n = summary.unusable
        lines.append(f"{'other':<6} {n:>8} {0:>8} {n:>8} {0:>6}  (files without a class: see rejects.tsv)")
    total_files = summary.files
    total_written = sum(c.written for c in summary.counts.values())
    lines.append(f"total: {total_files} files = {total_written} in shards + {len(summary.rejects)} rejected")
    if summary.rejects:
        by_reason = Counter(r.reason.value for r in summary.rejects)
        lines.append("rejects by reason: " + ", ".join(f"{k}: {v}" for k, v in sorted(by_reason.items())))
    s = max(summary.elapsed_s, 1e-9)
    lines.append(f"time: {summary.elapsed_s:.1f} s, {total_files / s:.0f} img/s, "
                 f"{summary.bytes_in / s / 1e6:.1f} MB/s read, {summary.bytes_out / 1e6:.1f} MB written")
    return "\n".join(lines)
