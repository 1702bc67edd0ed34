"""Pool: write shard tasks in worker processes. :func:`run_tasks` runs a run's tasks in a pool of forked workers
(or in this process for one worker), with a progress bar over the input files; each worker writes whole shards
under ``.tmp`` names (:func:`write_shard`: read, clean and write every file of a task), and a thread of the sharder
process commits them in order (fsync, rename, then the part record, last).

A worker's settings are one frozen :class:`WorkerSettings`, handed to the pool initializer and kept, for the life
of the worker process, on :class:`_Worker` (a class attribute: no module-level mutable state). Workers die with
the sharder process, even when it is killed with ``kill -9`` (:mod:`pipeline.shard.lifetime`).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import struct
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline import dataset as dsinfo
from pipeline.compat import shutdown_cancelling
from pipeline.progress import CountProgress
from pipeline.shard.clean import ImageRejected, normalize_image
from pipeline.shard.config import ShardConfig
from pipeline.shard.jsonsafe import json_safe
from pipeline.shard.lifetime import die_with_parent
from pipeline.shard.plan import PARTS_DIR, PartRecord, Reject, ShardTask, sample_key
from pipeline.shard.writer import ShardWriter, commit_shard, output_error
from pipeline.source import SourceTree


@dataclass(frozen=True)
class WorkerSettings:
    """What a shard-writing worker needs to know, the same for every task of a run.

    Attributes:
        out: the output folder.
        quality: JPEG quality of re-encoded images (1..100).
        max_pixels: decompression-bomb threshold (pixels).
        max_size: longer-side limit (px), or None.
        classes: class names; a sample's ``.json`` records ``classes[label]``.
        counter: a ``multiprocessing.Value("q")`` shared with the sharder process: input files processed so far
            (shared through the fork, never pickled).
    """

    out: Path
    quality: int
    max_pixels: int
    max_size: int | None
    classes: tuple[str, ...]
    counter: Any

    @classmethod
    def of_run(cls, cfg: ShardConfig, tree: SourceTree, counter: Any) -> "WorkerSettings":
        """The settings of the run ``cfg`` over ``tree``."""
        return cls(Path(cfg.out), cfg.quality, cfg.max_pixels, cfg.max_size, tuple(tree.classes), counter)


class _Worker:
    """This process's :class:`WorkerSettings`, set once by :func:`_init_worker` (the pool initializer, or the
    sharder itself when it writes the shards alone)."""

    settings: WorkerSettings | None = None


def _init_worker(settings: WorkerSettings) -> None:
    _Worker.settings = settings


def _init_pool_worker(parent: int, settings: WorkerSettings) -> None:
    """Pool initializer: die with the sharder process ``parent`` (:func:`~pipeline.shard.lifetime.die_with_parent`),
    then :func:`_init_worker`."""
    die_with_parent(parent)
    _init_worker(settings)


def write_shard(task: ShardTask) -> PartRecord:
    """Worker: read, check and convert the task's files and write the tar + index under their ``.tmp`` names;
    returns the part record, not yet saved: :func:`commit_part` (in the sharder process) makes the shard final.

    Raises:
        OutputError: writing the output failed (disk full, read-only, ...); the shard's partial files stay
            under their ``.tmp`` names and the next run rewrites it.
    """
    settings = _Worker.settings
    assert settings is not None, "write_shard runs in a worker set up by _init_worker"
    writer = ShardWriter(settings.out, task.name, len(task.items) or 1, durable=False)
    try:
        return _fill_shard(task, writer, settings)
    except OSError as exc:  # input read errors are rejects inside _fill_shard: this one is the output's
        writer.abort()
        raise output_error(exc, settings.out) from None


def commit_part(out: Path, part: PartRecord) -> PartRecord:
    """Sharder process (a thread of it): flush a shard a worker wrote to disk and rename it
    (:func:`~pipeline.shard.writer.commit_shard`), then save its part record, last, as before. The fsync waits
    happen here, while the workers go on decoding, instead of in the workers.

    Raises:
        OutputError: the disk reports an error (full, ...); the shard stays under ``.tmp`` names (rewritten
            by the next run).
    """
    try:
        if part.filename is not None:
            commit_shard(out, part.filename)
        (out / PARTS_DIR).mkdir(exist_ok=True)
        dsinfo.write_json_atomic(out / PARTS_DIR / f"{part.name}.json", json_safe(part.__dict__))
    except OSError as exc:
        raise output_error(exc, out) from None
    return part


def _json_bytes(meta: dict) -> bytes:
    """UTF-8 JSON; a path or class name that is not valid UTF-8 is stored escaped (see :mod:`jsonsafe`)."""
    return json.dumps(json_safe(meta), ensure_ascii=False).encode("utf-8")


def _fill_shard(task: ShardTask, writer: ShardWriter, settings: WorkerSettings) -> PartRecord:
    """Write every usable file of ``task`` into ``writer`` and close it: the task's part record (not saved)."""
    conversions: Counter = Counter()
    rejects: list[list[str]] = []
    bytes_in = written = 0
    for n, (index, item) in enumerate(task.items, 1):
        try:
            data = item.read_bytes()
            bytes_in += len(data)
            result = normalize_image(data, quality=settings.quality, max_pixels=settings.max_pixels,
                                     max_size=settings.max_size)
        except OSError as exc:
            rejects.append(Reject(item.relpath, dsinfo.RejectReason.UNDECODABLE,
                                  f"cannot read: {exc.strerror or exc}").row())
        except ImageRejected as exc:
            rejects.append(Reject(item.relpath, exc.reason, exc.detail).row())
        else:
            meta = {"path": item.relpath, "size": len(data), "label": item.label,
                    "class": settings.classes[item.label], "width": result.width, "height": result.height,
                    "conversion": result.conversion, "jpg_sha256": hashlib.sha256(result.jpeg).hexdigest()}
            writer.write(sample_key(index, item.relpath), {
                "jpg": result.jpeg,
                "cls": str(item.label).encode("ascii"),
                "lbl": struct.pack("<i", item.label),
                "json": _json_bytes(meta),
            })
            written += 1
            if result.conversion:
                conversions[result.conversion] += 1
        if n % 16 == 0 or n == len(task.items):
            with settings.counter.get_lock():
                settings.counter.value += 16 if n % 16 == 0 else n % 16
    records = writer.close()
    record = records[0] if records else None
    return PartRecord(task.name, task.split, task.fingerprint, record.filename if record else None,
                      written, record.num_bytes if record else 0, record.sha256 if record else "", bytes_in,
                      dict(sorted(conversions.items())), rejects)


def run_tasks(out: Path, todo: list[ShardTask], tree: SourceTree, cfg: ShardConfig,
              total_files: int) -> list[PartRecord]:
    """Write every task of ``todo`` (in a pool of ``cfg.workers`` processes when there are several), with a
    progress bar over its ``total_files`` input files; returns the part records written."""
    counter = multiprocessing.get_context("fork").Value("q", 0)
    bar = CountProgress(total_files, f"shard-imagenet {tree.root.name}", "img", enabled=cfg.progress)
    settings = WorkerSettings.of_run(cfg, tree, counter)
    committer = ThreadPoolExecutor(1, thread_name_prefix="shard-commit")  # one thread: commits in order
    commits: list[Future] = []

    def commit(part: PartRecord) -> None:
        """Queue the commit of a written shard; first raise the error of an earlier commit, if one failed."""
        for earlier in commits:
            if earlier.done() and earlier.exception() is not None:
                earlier.result()
        commits.append(committer.submit(commit_part, out, part))

    finished = False
    try:
        if cfg.workers > 1 and len(todo) > 1:
            _run_pool(todo, cfg.workers, settings, bar, commit)
        else:
            _run_serial(todo, settings, bar, commit)
        written = [done.result() for done in commits]
        bar.update_to(counter.value)
        finished = True
    finally:
        committer.shutdown(wait=True)  # on an error too: shards the workers finished are committed, so kept
        bar.close(done=finished)
    return written


def _run_pool(todo: list[ShardTask], workers: int, settings: WorkerSettings, bar: CountProgress,
              commit: Callable[[PartRecord], None]) -> None:
    """Write the tasks in ``min(workers, len(todo))`` forked processes, handing each finished one's part record
    to ``commit``; on any error or Ctrl-C stop them now."""
    ctx = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(min(workers, len(todo)), ctx, _init_pool_worker, (os.getpid(), settings))
    pending_futures: set = set()
    try:
        pending_futures = {pool.submit(write_shard, t) for t in todo}
        while pending_futures:
            done, pending_futures = wait(pending_futures, timeout=0.25, return_when=FIRST_COMPLETED)
            bar.update_to(settings.counter.value)
            for fut in done:
                try:
                    commit(fut.result())
                except BrokenProcessPool:
                    raise RuntimeError("a sharder worker process died (out of memory or a crash in an "
                                       "image decoder); complete shards are kept: run the same command "
                                       "again to resume") from None
    except BaseException:
        # Ctrl-C or an error: drop queued shards and stop the workers now (their .tmp files are
        # removed by the next run; complete shards are kept for --resume).
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        shutdown_cancelling(pool, pending_futures)
        raise
    pool.shutdown()


def _run_serial(todo: list[ShardTask], settings: WorkerSettings, bar: CountProgress,
                commit: Callable[[PartRecord], None]) -> None:
    """Write the tasks one after the other in this process, handing each part record to ``commit``."""
    _init_worker(settings)
    for task in todo:
        commit(write_shard(task))
        bar.update_to(settings.counter.value)
