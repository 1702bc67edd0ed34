"""Summary: what a sharding run did, counted from the part records present: :class:`ShardSummary` (with one
:class:`SplitSummary` per split) built by :func:`summarise`, ``report.json``'s dict (:func:`report_dict`) and the
printed table (:func:`format_summary`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pipeline import dataset as dsinfo
from pipeline.shard.config import ShardConfig
from pipeline.shard.jsonsafe import escape_text, json_safe
from pipeline.shard.plan import PartRecord, Reject, ShardTask, part_rejects
from pipeline.source import SourceTree


@dataclass
class SplitSummary:
    """Counts of one split: files seen, samples written, rejects, conversions by kind, shards written."""

    files: int = 0
    written: int = 0
    rejected: int = 0
    conversions: Counter = field(default_factory=Counter)
    shards: list[PartRecord] = field(default_factory=list)


@dataclass(frozen=True)
class RunTotals:
    """What this run (this job) did, beside the counts the part records hold.

    Attributes:
        elapsed_s: wall time of this run (s).
        bytes_in / bytes_out: bytes read from the source / written into shards by this run.
        images_done: input files processed by this run (excluding shards kept by --resume).
        pending: shard tasks not yet done (by other jobs).
        kept: complete shards kept by --resume.
    """

    elapsed_s: float
    bytes_in: int
    bytes_out: int
    images_done: int
    pending: int
    kept: int


@dataclass
class ShardSummary:
    """Result of :func:`pipeline.shard.run.shard_tree`.

    Attributes:
        layout: the detected source layout, in words.
        notes: what the layout scan noticed (label files not used, folders ignored, ...).
        splits: split name → :class:`pipeline.dataset.SplitInfo` as written (empty until every job finished).
        counts: split name → :class:`SplitSummary` over all shards (this job's and, when complete, all).
        rejects: every rejected input file.
        elapsed_s: wall time of this run (s).
        bytes_in / bytes_out: bytes read from the source / written into shards by this run.
        images_done: input files processed by this run (excluding shards kept by --resume).
        complete: every shard of every job exists and the metadata files were written.
        pending: shard tasks not yet done (by other jobs).
        kept: complete shards kept by --resume.
    """

    layout: str
    notes: list[str]
    splits: dict[str, dsinfo.SplitInfo]
    counts: dict[str, SplitSummary]
    rejects: list[Reject]
    elapsed_s: float
    bytes_in: int
    bytes_out: int
    images_done: int
    complete: bool
    pending: int
    kept: int

    @property
    def unusable(self) -> int:
        """Rejected files that belong to no split's sample list (no class folder, no label)."""
        return len(self.rejects) - sum(c.rejected for c in self.counts.values())

    @property
    def files(self) -> int:
        return sum(c.files for c in self.counts.values()) + self.unusable


def summarise(tree: SourceTree, tasks: list[ShardTask], parts: dict[str, PartRecord | None],
              totals: RunTotals) -> ShardSummary:
    """The counts over every part record present (``parts``: task name → its record, None where the shard is not
    done) and the scan's unusable files, as a :class:`ShardSummary` (not yet ``complete``)."""
    counts = {split: SplitSummary(files=len(items)) for split, items in tree.items.items()}
    rejects = [Reject(u.item.relpath, u.reason, u.detail) for u in tree.unusable]
    splits: dict[str, dsinfo.SplitInfo] = {}
    for task in tasks:
        part = parts[task.name]
        if part is None:
            continue
        split_counts = counts[task.split]
        split_counts.written += part.num_samples
        split_counts.rejected += len(part.rejects)
        split_counts.conversions.update(part.conversions)
        if part.filename is not None:
            split_counts.shards.append(part)
        rejects += part_rejects(part, task)
    if totals.pending == 0:
        for split, split_counts in counts.items():
            shards = split_counts.shards
            splits[split] = dsinfo.SplitInfo(split, sum(p.num_samples for p in shards),
                                             tuple(p.filename for p in shards), tuple(p.num_samples for p in shards))
    rejects.sort(key=lambda r: r.relpath)
    return ShardSummary(tree.layout, list(tree.notes), splits, counts, rejects, totals.elapsed_s, totals.bytes_in,
                        totals.bytes_out, totals.images_done, False, totals.pending, totals.kept)


def report_dict(summary: ShardSummary, cfg: ShardConfig, tree: SourceTree) -> dict:
    """The counts of a complete run as a JSON-able dict (``report.json``); no timings, so every job writes the same.
    Names that are not valid UTF-8 (the source path, layout notes) are escaped (:mod:`jsonsafe`)."""
    counts = summary.counts
    return json_safe({
        "source": str(tree.root), "layout": tree.kind, "layout_detail": tree.layout, "layout_notes": tree.notes,
        "files": summary.files,
        "written": sum(c.written for c in counts.values()), "rejected": len(summary.rejects),
        "splits": {split: {"files": c.files, "written": c.written, "rejected": c.rejected,
                           "conversions": dict(sorted(c.conversions.items()))} for split, c in counts.items()},
        "conversions": dict(sorted(sum((c.conversions for c in counts.values()), Counter()).items())),
        "rejects_by_reason": dict(sorted(Counter(r.reason.value for r in summary.rejects).items())),
        "seed": cfg.seed, "shard_size": cfg.shard_size, "quality": cfg.quality, "max_size": cfg.max_size,
        "max_pixels": cfg.max_pixels,
    })


def format_summary(summary: ShardSummary) -> str:
    """Human-readable summary table with this run's throughput (img/s, MB/s); names that are not valid UTF-8
    are shown escaped (:mod:`jsonsafe`), so that any terminal can print them."""
    lines = [f"layout: {summary.layout}", *(f"note: {n}" for n in summary.notes),
             f"{'split':<6} {'files':>8} {'written':>8} {'rejected':>8} {'shards':>6}  conversions"]
    for split, counts in summary.counts.items():
        conv = ", ".join(f"{k}: {v}" for k, v in sorted(counts.conversions.items())) or "-"
        lines.append(f"{split:<6} {counts.files:>8} {counts.written:>8} {counts.rejected:>8} "
                     f"{len(counts.shards):>6}  {conv}")
    folders = sum(r.reason is dsinfo.RejectReason.UNREADABLE_FOLDER for r in summary.rejects)
    if summary.unusable:
        n, what = summary.unusable, "files without a class" + (", unreadable folders" if folders else "")
        lines.append(f"{'other':<6} {n:>8} {0:>8} {n:>8} {0:>6}  ({what}: see rejects.tsv)")
    total_written = sum(c.written for c in summary.counts.values())
    if summary.complete:
        unknown = f" (of them {folders} unreadable folder(s): their files are not counted)" if folders else ""
        lines.append(f"total: {summary.files} files = {total_written} in shards + {len(summary.rejects)} "
                     f"rejected{unknown}")
    else:
        lines.append(f"this job is done; {summary.pending} shard(s) of other jobs still missing: _info.json is "
                     f"written by the job that finishes last (or re-run any job)")
    if summary.rejects:
        by_reason = Counter(r.reason.value for r in summary.rejects)
        lines.append("rejects by reason: " + ", ".join(f"{k}: {v}" for k, v in sorted(by_reason.items())))
    seconds = max(summary.elapsed_s, 1e-9)
    kept = f", {summary.kept} complete shard(s) kept (--resume)" if summary.kept else ""
    lines.append(f"time: {summary.elapsed_s:.1f} s, {summary.images_done / seconds:.0f} img/s, "
                 f"{summary.bytes_in / seconds / 1e6:.1f} MB/s read, {summary.bytes_out / 1e6:.1f} MB written{kept}")
    return escape_text("\n".join(lines))
