"""Run: from a scanned tree to a complete shard folder (:func:`shard_tree`): lock the output, plan the tasks
(:mod:`pipeline.shard.plan`), write this job's share in a pool of workers (:mod:`pipeline.shard.pool`), count
what was done (:mod:`pipeline.shard.summary`) and, when every shard of every job is there, write the metadata
files, ``_info.json`` last. The options are :class:`~pipeline.shard.config.ShardConfig`; cleaning one image is
:mod:`pipeline.shard.clean`'s job, writing one tar :mod:`pipeline.shard.writer`'s. ``ShardConfig``,
``default_workers``, ``sample_key``, ``ShardSummary``, ``report_dict`` and ``format_summary`` are importable from
here too.

Every input file ends either in a shard or in ``rejects.tsv`` with its reason. Train samples are
shuffled globally with the seed; val samples keep sorted order. Each sample is four adjacent members::

    <key>.jpg    clean RGB JPEG bytes (see pipeline.shard.clean)
    <key>.cls    class index, ASCII decimal (as webdataset and timm read it)
    <key>.lbl    class index, 4-byte little-endian int32 (fixed width: DALI batches it, dtypes=INT32)
    <key>.json   {"path": original relative path, "size": original bytes, "class": name, ...}

Keys are ``<8-digit index in sorted order>_<file stem with every character outside [A-Za-z0-9_-]
replaced by _>``: unique, the same for a given input whatever the seed, free of dots.

The ordered input of a split is cut into shards of ``shard_size`` *input files*, so which files go into
which shard is known before any image is read. That makes each shard an independent task: workers write
whole shards, ``--num-jobs``/``--job-index`` split the shards between machines, and ``--resume`` skips a
shard whose tar and part record (``_parts/NAME.json``, written last) match the task. Rejected files make a
shard shorter; a shard whose files are all rejected is not written. The folder is complete when
``_info.json`` exists; it is written by whichever job finds every part record present.

Names that are not valid UTF-8 are stored escaped in every JSON file (:mod:`pipeline.shard.jsonsafe`);
``rejects.tsv`` and ``classes.txt`` keep their bytes. Workers die with the sharder process, even when it is
killed with ``kill -9``. An output that cannot be written (read-only, disk full, ``--out`` a file) is one
:class:`~pipeline.shard.writer.OutputError` line; what was written stays for the next run to resume.

A run locks its ``--out`` (:class:`pipeline.fsio.FolderLock` on ``.shard-imagenet.lock``, released by the kernel
when the process ends): a second run into the same folder stops at once with one line naming the first (pid, host,
start time), before it touches anything. The jobs of one ``--num-jobs N`` split share the folder (a shared lock,
which a run without ``--num-jobs`` cannot take while they run) and each holds ``.shard-imagenet.job<I>.lock``: two
jobs with the same ``--job-index`` are refused the same way.
"""


from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from pipeline import dataset as dsinfo
from pipeline.compat import remove_suffix
from pipeline.fsio import FolderLock, WriteFailed
from pipeline.shard.config import ShardConfig, default_workers  # noqa: F401  (importable from here)
from pipeline.shard.jsonsafe import escape_text
from pipeline.shard.plan import (FORMAT_VERSION, PARTS_DIR, PartRecord, Reject, ShardTask, complete_part,  # noqa: F401
                                 plan_tasks, sample_key, todo)
from pipeline.shard.pool import run_tasks
from pipeline.shard.summary import RunTotals, ShardSummary, format_summary, report_dict, summarise  # noqa: F401
from pipeline.shard.writer import TMP_SUFFIX, OutputError, output_error
from pipeline.source import SourceTree, scan_source


def shard_tree(cfg: ShardConfig, tree: SourceTree | None = None) -> ShardSummary:
    """Shard ``cfg.src`` into ``cfg.out`` (this job's share of the shards).

    Writes the tars with their DALI index files and part records; when every shard of every job exists,
    also ``classes.txt``, ``rejects.tsv``, ``report.json`` and, last, ``_info.json``.

    Raises:
        pipeline.source.LayoutError: the source is not a layout the sharder understands.
        ValueError: bad option values.
        OutputError: ``cfg.out`` cannot be written (names an existing file, read-only, no permission, disk
            full, ...): one line naming the path and what to do. Partial files stay under ``.tmp`` names and
            complete shards are kept, so the same run, once the cause is fixed, resumes.
    """
    cfg.validate()
    start = time.perf_counter()
    out = Path(cfg.out)
    src = Path(cfg.src).resolve()
    if out.resolve() == src or src in out.resolve().parents:
        raise ValueError(f"--out {out} is inside the source {cfg.src}: its shards would be read as input; "
                         f"choose a folder outside it")
    tree = tree or scan_source(cfg.src, cfg.layout)
    with _output_errors(out), _out_lock(out, cfg):
        _prepare_out(out)
        tasks = plan_tasks(tree, cfg)
        to_write, kept = todo(out, tasks, cfg)
        total_files = sum(len(t.items) for t in to_write)
        written = run_tasks(out, to_write, tree, cfg, total_files)
        parts = {t.name: complete_part(out, t) for t in tasks}
        pending = sum(p is None for p in parts.values())
        totals = RunTotals(time.perf_counter() - start, sum(p.bytes_in for p in written),
                           sum(p.num_bytes for p in written), total_files, pending, kept)
        summary = summarise(tree, tasks, parts, totals)
        if pending == 0:
            _finalize(out, tree, tasks, cfg, summary)
            summary.complete = True
    return summary


@contextlib.contextmanager
def _output_errors(out: Path):
    """Turn an ``OSError`` raised while writing ``out`` into a one-line :class:`OutputError`."""
    try:
        yield
    except OSError as exc:
        raise output_error(exc, out) from None


LOCK_FILE = ".shard-imagenet.lock"


@contextlib.contextmanager
def _out_lock(out: Path, cfg: ShardConfig):
    """Hold ``out``'s lock for the run: exclusive for a single run; shared by the jobs of a ``--num-jobs`` split,
    each also holding its own job's lock (the folder is made here).

    Raises:
        pipeline.fsio.FolderBusy: another live run holds it (one line naming it); nothing was touched.
        OutputError: ``out`` is a file.
    """
    _check_out(out)
    if cfg.num_jobs == 1:
        locks = [FolderLock(out, "--out", LOCK_FILE, advice="wait for it, or pick another --out (jobs of one run "
                            "share an --out with --num-jobs N --job-index I)")]
    else:
        locks = [FolderLock(out, "--out", LOCK_FILE, shared=True,
                            advice="wait for it, or pick another --out"),
                 FolderLock(out, "--out", f".shard-imagenet.job{cfg.job_index}.lock",
                            advice=f"it runs --job-index {cfg.job_index} already; wait for it or give another "
                                   f"--job-index")]
    held = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for lock in locks:
            try:
                held.append(lock.acquire())
            except WriteFailed as exc:  # the sharder's own advice for an output it cannot write
                raise (output_error(exc.__cause__, out) if isinstance(exc.__cause__, OSError) else exc) from None
        yield
    finally:
        for lock in reversed(held):
            lock.release()


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: --out names an existing file, not a folder; give a folder (new or existing) "
                          f"or move that file away")


def _prepare_out(out: Path) -> None:
    """Create the output folder and mark it incomplete (no ``_info.json`` until the last job finishes)."""
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / dsinfo.INFO_FILE).unlink(missing_ok=True)


def _finalize(out: Path, tree: SourceTree, tasks: list[ShardTask], cfg: ShardConfig, summary: ShardSummary) -> None:
    """Write the metadata files (identical whichever job writes them), then ``_info.json``; drop stale files."""
    _remove_stale(out, tasks)
    (out / dsinfo.CLASSES_FILE).write_text("".join(f"{name}\n" for name in tree.classes), encoding="utf-8",
                                          errors="surrogateescape")
    _write_rejects(out, summary.rejects)
    dsinfo.write_json_atomic(out / dsinfo.REPORT_FILE, report_dict(summary, cfg, tree))
    manifest = {split: [dsinfo.ShardEntry(p.filename, p.num_samples, p.num_bytes, p.sha256) for p in counts.shards]
                for split, counts in summary.counts.items()}
    dsinfo.write_info(out, list(summary.splits.values()), manifest, name="imagenet", layout=tree.kind,
                      layout_detail=escape_text(tree.layout),
                      seed=cfg.seed, shard_size=cfg.shard_size, num_classes=len(tree.classes),
                      quality=cfg.quality, max_size=cfg.max_size, max_pixels=cfg.max_pixels,
                      format_version=FORMAT_VERSION,
                      label_members={"cls": "ascii decimal", "lbl": "int32 little-endian"})


def _remove_stale(out: Path, tasks: list[ShardTask]) -> None:
    """Remove shards, indexes, temporary files and part records of ``out`` that no task of this run names."""
    wanted = {t.name for t in tasks} | {dsinfo.index_name(t.name) for t in tasks}
    for path in out.iterdir():
        ours = dsinfo.is_shard_file(remove_suffix(path.name, TMP_SUFFIX))
        if ours and (path.name.endswith(TMP_SUFFIX) or path.name not in wanted):
            path.unlink(missing_ok=True)
    task_parts = {f"{t.name}.json" for t in tasks}
    if (out / PARTS_DIR).is_dir():
        for path in (out / PARTS_DIR).iterdir():
            if path.name not in task_parts:
                path.unlink(missing_ok=True)


def _write_rejects(out: Path, rejects: list[Reject]) -> None:
    """Write ``rejects.tsv`` atomically; file names that are not valid UTF-8 are written back as their bytes."""
    tmp = out / (dsinfo.REJECTS_FILE + TMP_SUFFIX)
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write("path\treason\tdetail\n")
        f.writelines(r.tsv_line() for r in rejects)
    os.replace(tmp, out / dsinfo.REJECTS_FILE)
