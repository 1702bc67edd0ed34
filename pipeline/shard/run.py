"""Run: plan the shard tasks of a source tree, run them in a pool of worker processes, resume them and split them
across machines; one job: from a scanned tree to a complete shard folder (cleaning one image is
:mod:`pipeline.shard.clean`'s job, writing one tar :mod:`pipeline.shard.writer`'s).

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
import hashlib
import json
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
import os
import random
import re
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import dataset as dsinfo
from pipeline.fsio import FolderLock, WriteFailed
from pipeline.compat import remove_suffix, shutdown_cancelling
from pipeline.progress import CountProgress
from pipeline.shard.clean import DEFAULT_MAX_PIXELS, DEFAULT_QUALITY, ImageRejected, RejectReason, normalize_image
from pipeline.shard.jsonsafe import escape_text, json_safe, needs_escape
from pipeline.shard.lifetime import die_with_parent
from pipeline.source import LayoutOptions, SourceItem, SourceTree, scan_source
from pipeline.shard.writer import TMP_SUFFIX, OutputError, ShardWriter, commit_shard, output_error

FORMAT_VERSION = 3  # bump when the bytes written for the same input change
PARTS_DIR = "_parts"
_KEY_STEM_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_KEY_STEM_MAX = 64
_SHARD_NAME = re.compile(r"imagenet-(train|val)-\d{6}\.(tar|idx)")


def default_workers() -> int:
    """CPU cores this process may use: the default ``--workers`` of ``shard-imagenet`` and its ``verify``."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class ShardConfig:
    """Options of one sharding run.

    Attributes:
        src: source root (any layout :func:`pipeline.source.scan_source` detects).
        out: output folder (created if needed).
        shard_size: input files per tar (a tar holds fewer samples when some files are rejected).
        seed: seed of the global train shuffle.
        workers: processes, each writing whole shards.
        quality: JPEG quality for images that must be re-encoded.
        max_pixels: decompression-bomb threshold (pixels): larger images are downscaled to it.
        max_size: optional longer-side limit (px); larger images are downscaled and re-encoded.
        resume: keep complete shards of an earlier, identical run (False: rewrite this job's shards).
        num_jobs / job_index: this run writes shards ``t`` with ``t % num_jobs == job_index``.
        layout: how to read ``src`` (detected by default).
        progress: show progress on stderr: a tqdm bar on a terminal, plain lines without ``\r`` otherwise
            (:mod:`pipeline.progress`).
    """

    src: Path
    out: Path
    shard_size: int = 1000
    seed: int = 0
    workers: int = field(default_factory=default_workers)
    quality: int = DEFAULT_QUALITY
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_size: int | None = None
    resume: bool = True
    num_jobs: int = 1
    job_index: int = 0
    layout: LayoutOptions = field(default_factory=LayoutOptions)
    progress: bool = True

    def validate(self) -> None:
        """Raises ValueError naming the bad option."""
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--quality must be in 1..100, got {self.quality}")
        if self.max_pixels < 1 or (self.max_size is not None and self.max_size < 1):
            raise ValueError("--max-pixels and --max-size must be >= 1")
        if self.num_jobs < 1 or not 0 <= self.job_index < self.num_jobs:
            raise ValueError(f"--job-index must be in [0, --num-jobs={self.num_jobs}), got {self.job_index}")


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


@dataclass
class SplitSummary:
    """Counts of one split: files seen, samples written, rejects, conversions by kind, shards written."""

    files: int = 0
    written: int = 0
    rejected: int = 0
    conversions: Counter = field(default_factory=Counter)
    shards: list[PartRecord] = field(default_factory=list)


@dataclass
class ShardSummary:
    """Result of :func:`shard_tree`.

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


def sample_key(index: int, relpath: str) -> str:
    """Shard key of the ``index``-th file (sorted order) of a split: ``00000042_n01440764_10026``.

    The file name without its last extension, every character outside ``[A-Za-z0-9_-]`` replaced by ``_``
    (so ``a.b.JPEG`` → ``a_b``), cut to 64 characters, after the index that keeps keys unique.
    """
    name = relpath.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{index:08d}_{_KEY_STEM_CHARS.sub('_', stem)[:_KEY_STEM_MAX]}"


def _json_bytes(meta: dict) -> bytes:
    """UTF-8 JSON; a path or class name that is not valid UTF-8 is stored escaped (see :mod:`jsonsafe`)."""
    return json.dumps(json_safe(meta), ensure_ascii=False).encode("utf-8")


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
        pattern = dsinfo.SHARD_PATTERN.replace("{split}", split)
        for k in range(0, len(indexed), cfg.shard_size):
            chunk = tuple(indexed[k:k + cfg.shard_size])
            h = hashlib.sha256(settings.encode("utf-8", "surrogateescape"))
            for index, item in chunk:
                h.update(f"\0{index}\0{item.relpath}\0{item.label}\0{_source_stamp(item)}".encode(
                    "utf-8", "surrogateescape"))
                if needs_escape(item.relpath) or needs_escape(tree.classes[item.label]):
                    h.update(b"\0json-escaped")  # such names are now stored escaped: an older shard is rewritten
            tasks.append(ShardTask(split, pattern.format(index=k // cfg.shard_size), chunk, h.hexdigest()))
    return tasks


def _source_stamp(item: SourceItem) -> str:
    """Size and modification time (ns) of the file, or of the archive holding the member: a changed
    input (even one of the same size) changes its shard's fingerprint, so --resume rewrites that shard."""
    try:
        st = os.stat(item.path)
    except OSError:
        return "missing"
    return f"{item.offset}:{item.size if item.size >= 0 else st.st_size}:{st.st_mtime_ns}"


# Worker-side state: the run's settings and a shared progress counter (set by the pool initializer).
_WORKER: dict = {}


def _init_worker(out: str, quality: int, max_pixels: int, max_size: int | None, classes: list[str], counter) -> None:
    _WORKER.update(out=Path(out), quality=quality, max_pixels=max_pixels, max_size=max_size, classes=classes,
                   counter=counter)


def _init_pool_worker(parent: int, *init_args) -> None:
    """Pool initializer: die with the sharder process ``parent`` (:func:`~pipeline.shard.lifetime.die_with_parent`),
    then :func:`_init_worker`."""
    die_with_parent(parent)
    _init_worker(*init_args)


def _write_shard(task: ShardTask) -> PartRecord:
    """Worker: read, check and convert the task's files and write the tar + index under their ``.tmp`` names;
    returns the part record, not yet saved: :func:`_commit_shard` (in the sharder process) makes the shard final.

    Raises:
        OutputError: writing the output failed (disk full, read-only, ...); the shard's partial files stay
            under their ``.tmp`` names and the next run rewrites it.
    """
    out: Path = _WORKER["out"]
    writer = ShardWriter(out, task.name, len(task.items) or 1, durable=False)
    try:
        return _fill_shard(task, writer)
    except OSError as exc:  # input read errors are rejects inside _fill_shard: this one is the output's
        writer.abort()
        raise output_error(exc, out) from None


def _commit_shard(out: Path, part: PartRecord) -> PartRecord:
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


def _fill_shard(task: ShardTask, writer: ShardWriter) -> PartRecord:
    """Write every usable file of ``task`` into ``writer`` and close it: the task's part record (not saved)."""
    w = _WORKER
    conversions: Counter = Counter()
    rejects: list[list[str]] = []
    bytes_in = written = 0
    for n, (index, item) in enumerate(task.items, 1):
        try:
            data = item.read_bytes()
            bytes_in += len(data)
            result = normalize_image(data, quality=w["quality"], max_pixels=w["max_pixels"], max_size=w["max_size"])
        except OSError as exc:
            rejects.append(Reject(item.relpath, RejectReason.UNDECODABLE, f"cannot read: {exc.strerror or exc}").row())
        except ImageRejected as exc:
            rejects.append(Reject(item.relpath, exc.reason, exc.detail).row())
        else:
            meta = {"path": item.relpath, "size": len(data), "label": item.label, "class": w["classes"][item.label],
                    "width": result.width, "height": result.height, "conversion": result.conversion,
                    "jpg_sha256": hashlib.sha256(result.jpeg).hexdigest()}
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
            with w["counter"].get_lock():
                w["counter"].value += 16 if n % 16 == 0 else n % 16
    records = writer.close()
    rec = records[0] if records else None
    return PartRecord(task.name, task.split, task.fingerprint, rec.filename if rec else None,
                      written, rec.num_bytes if rec else 0, rec.sha256 if rec else "", bytes_in,
                      dict(sorted(conversions.items())), rejects)


def _part_rejects(part: PartRecord, task: ShardTask) -> list[Reject]:
    """The rejects of ``part``, each under the source's own path: a part record stores the paths that are not
    valid UTF-8 escaped (:mod:`jsonsafe`), and ``rejects.tsv`` keeps their original bytes."""
    original = {escape_text(it.relpath): it.relpath for _, it in task.items if needs_escape(it.relpath)}
    return [Reject.from_row([original.get(row[0], row[0]), *row[1:]]) for row in part.rejects]


def _complete_part(out: Path, task: ShardTask) -> PartRecord | None:
    """The part record of ``task`` when its shard is complete on disk (matching fingerprint and size)."""
    part = PartRecord.load(out / PARTS_DIR / f"{task.name}.json")
    if part is None or part.fingerprint != task.fingerprint:
        return None
    if part.filename is not None:
        tar = out / part.filename
        if not tar.is_file() or tar.stat().st_size != part.num_bytes or not tar.with_suffix(".idx").is_file():
            return None
    return part


def _discard(out: Path, task: ShardTask) -> None:
    """Remove every file of ``task`` (record first, so a half-removed shard is never taken as complete)."""
    for p in (out / PARTS_DIR / f"{task.name}.json", out / task.name, out / task.name.replace(".tar", ".idx"),
              out / (task.name + TMP_SUFFIX), out / (task.name.replace(".tar", ".idx") + TMP_SUFFIX)):
        p.unlink(missing_ok=True)


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
        todo, kept = _todo(out, tasks, cfg)
        total_files = sum(len(t.items) for t in todo)
        written = _run_tasks(out, todo, tree, cfg, total_files)
        bytes_in, bytes_out = sum(p.bytes_in for p in written), sum(p.num_bytes for p in written)

        parts = {t.name: _complete_part(out, t) for t in tasks}
        pending = sum(p is None for p in parts.values())
        summary = _summarise(tree, tasks, parts, cfg, start, bytes_in, bytes_out, total_files, pending, kept)
        if pending == 0:
            _finalize(out, tree, tasks, parts, cfg, summary)
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


def _todo(out: Path, tasks: list[ShardTask], cfg: ShardConfig) -> tuple[list[ShardTask], int]:
    """This job's tasks still to write (their old files removed), and how many complete shards --resume keeps."""
    todo, kept = [], 0
    for t in (t for i, t in enumerate(tasks) if i % cfg.num_jobs == cfg.job_index):
        if cfg.resume and _complete_part(out, t) is not None:
            kept += 1
        else:
            _discard(out, t)
            todo.append(t)
    return todo, kept


def _run_tasks(out: Path, todo: list[ShardTask], tree: SourceTree, cfg: ShardConfig,
               total_files: int) -> list[PartRecord]:
    """Write every task of ``todo`` (in a pool of ``cfg.workers`` processes when there are several), with a
    progress bar over its ``total_files`` input files; returns the part records written."""
    counter = multiprocessing.get_context("fork").Value("q", 0)
    bar = CountProgress(total_files, f"shard-imagenet {tree.root.name}", "img", enabled=cfg.progress)
    init_args = (str(out), cfg.quality, cfg.max_pixels, cfg.max_size, list(tree.classes), counter)
    committer = ThreadPoolExecutor(1, thread_name_prefix="shard-commit")  # one thread: commits in order
    commits: list[Future] = []

    def commit(part: PartRecord) -> None:
        """Queue the commit of a written shard; first raise the error of an earlier commit, if one failed."""
        for c in commits:
            if c.done() and c.exception() is not None:
                c.result()
        commits.append(committer.submit(_commit_shard, out, part))

    finished = False
    try:
        if cfg.workers > 1 and len(todo) > 1:
            _run_pool(todo, cfg.workers, init_args, counter, bar, commit)
        else:
            _run_serial(todo, init_args, counter, bar, commit)
        written = [c.result() for c in commits]
        bar.update_to(counter.value)
        finished = True
    finally:
        committer.shutdown(wait=True)  # on an error too: shards the workers finished are committed, so kept
        bar.close(done=finished)
    return written


def _run_pool(todo: list[ShardTask], workers: int, init_args: tuple, counter, bar: CountProgress, commit) -> None:
    """Write the tasks in ``min(workers, len(todo))`` forked processes, handing each finished one's part record
    to ``commit``; on any error or Ctrl-C stop them now."""
    ctx = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(min(workers, len(todo)), ctx, _init_pool_worker, (os.getpid(), *init_args))
    pending_futures: set = set()
    try:
        pending_futures = {pool.submit(_write_shard, t) for t in todo}
        while pending_futures:
            done, pending_futures = wait(pending_futures, timeout=0.25, return_when=FIRST_COMPLETED)
            bar.update_to(counter.value)
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


def _run_serial(todo: list[ShardTask], init_args: tuple, counter, bar: CountProgress, commit) -> None:
    """Write the tasks one after the other in this process, handing each part record to ``commit``."""
    _init_worker(*init_args)
    for t in todo:
        commit(_write_shard(t))
        bar.update_to(counter.value)


def _summarise(tree, tasks, parts, cfg, start, bytes_in, bytes_out, images_done, pending, kept) -> ShardSummary:
    """The counts over every part record present (and the scan's unusable files), as a :class:`ShardSummary`."""
    counts = {split: SplitSummary(files=len(items)) for split, items in tree.items.items()}
    rejects = [Reject(u.item.relpath, u.reason, u.detail) for u in tree.unusable]
    splits: dict[str, dsinfo.SplitInfo] = {}
    for t in tasks:
        part = parts[t.name]
        if part is None:
            continue
        c = counts[t.split]
        c.written += part.num_samples
        c.rejected += len(part.rejects)
        c.conversions.update(part.conversions)
        if part.filename is not None:
            c.shards.append(part)
        rejects += _part_rejects(part, t)
    if pending == 0:
        for split, c in counts.items():
            splits[split] = dsinfo.SplitInfo(split, sum(p.num_samples for p in c.shards),
                                             tuple(p.filename for p in c.shards),
                                             tuple(p.num_samples for p in c.shards))
    rejects.sort(key=lambda r: r.relpath)
    return ShardSummary(tree.layout, list(tree.notes), splits, counts, rejects, time.perf_counter() - start,
                        bytes_in, bytes_out, images_done, False, pending, kept)


def _finalize(out: Path, tree: SourceTree, tasks, parts, cfg: ShardConfig, summary: ShardSummary) -> None:
    """Write the metadata files (identical whichever job writes them), then ``_info.json``; drop stale files."""
    _remove_stale(out, tasks)
    (out / dsinfo.CLASSES_FILE).write_text("".join(f"{c}\n" for c in tree.classes), encoding="utf-8",
                                          errors="surrogateescape")
    _write_rejects(out, summary.rejects)
    dsinfo.write_json_atomic(out / dsinfo.REPORT_FILE, report_dict(summary, cfg, tree))
    manifest = {s: [dsinfo.ShardEntry(p.filename, p.num_samples, p.num_bytes, p.sha256) for p in c.shards]
                for s, c in summary.counts.items()}
    dsinfo.write_info(out, list(summary.splits.values()), manifest, name="imagenet", layout=tree.kind,
                      layout_detail=escape_text(tree.layout),
                      seed=cfg.seed, shard_size=cfg.shard_size, num_classes=len(tree.classes),
                      quality=cfg.quality, max_size=cfg.max_size, max_pixels=cfg.max_pixels,
                      format_version=FORMAT_VERSION,
                      label_members={"cls": "ascii decimal", "lbl": "int32 little-endian"})


def _remove_stale(out: Path, tasks: list[ShardTask]) -> None:
    """Remove shards, indexes, temporary files and part records of ``out`` that no task of this run names."""
    wanted = {t.name for t in tasks} | {t.name.replace(".tar", ".idx") for t in tasks}
    for p in out.iterdir():
        ours = _SHARD_NAME.fullmatch(remove_suffix(p.name, TMP_SUFFIX))
        if ours and (p.name.endswith(TMP_SUFFIX) or p.name not in wanted):
            p.unlink(missing_ok=True)
    task_parts = {f"{t.name}.json" for t in tasks}
    if (out / PARTS_DIR).is_dir():
        for p in (out / PARTS_DIR).iterdir():
            if p.name not in task_parts:
                p.unlink(missing_ok=True)


def _write_rejects(out: Path, rejects: list[Reject]) -> None:
    """Write ``rejects.tsv`` atomically; file names that are not valid UTF-8 are written back as their bytes."""
    tmp = out / (dsinfo.REJECTS_FILE + TMP_SUFFIX)
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write("path\treason\tdetail\n")
        f.writelines(r.tsv_line() for r in rejects)
    os.replace(tmp, out / dsinfo.REJECTS_FILE)


def report_dict(summary: ShardSummary, cfg: ShardConfig, tree: SourceTree) -> dict:
    """The counts of a complete run as a JSON-able dict (``report.json``); no timings, so every job writes the same.
    Names that are not valid UTF-8 (the source path, layout notes) are escaped (:mod:`jsonsafe`)."""
    return json_safe({
        "source": str(tree.root), "layout": tree.kind, "layout_detail": tree.layout, "layout_notes": tree.notes,
        "files": summary.files,
        "written": sum(c.written for c in summary.counts.values()), "rejected": len(summary.rejects),
        "splits": {s: {"files": c.files, "written": c.written, "rejected": c.rejected,
                       "conversions": dict(sorted(c.conversions.items()))} for s, c in summary.counts.items()},
        "conversions": dict(sorted(sum((c.conversions for c in summary.counts.values()), Counter()).items())),
        "rejects_by_reason": dict(sorted(Counter(r.reason.value for r in summary.rejects).items())),
        "seed": cfg.seed, "shard_size": cfg.shard_size, "quality": cfg.quality, "max_size": cfg.max_size,
        "max_pixels": cfg.max_pixels,
    })


def format_summary(summary: ShardSummary) -> str:
    """Human-readable summary table with this run's throughput (img/s, MB/s); names that are not valid UTF-8
    are shown escaped (:mod:`jsonsafe`), so that any terminal can print them."""
    lines = [f"layout: {summary.layout}", *(f"note: {n}" for n in summary.notes),
             f"{'split':<6} {'files':>8} {'written':>8} {'rejected':>8} {'shards':>6}  conversions"]
    for split, c in summary.counts.items():
        conv = ", ".join(f"{k}: {v}" for k, v in sorted(c.conversions.items())) or "-"
        lines.append(f"{split:<6} {c.files:>8} {c.written:>8} {c.rejected:>8} {len(c.shards):>6}  {conv}")
    folders = sum(r.reason is RejectReason.UNREADABLE_FOLDER for r in summary.rejects)
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
    s = max(summary.elapsed_s, 1e-9)
    kept = f", {summary.kept} complete shard(s) kept (--resume)" if summary.kept else ""
    lines.append(f"time: {summary.elapsed_s:.1f} s, {summary.images_done / s:.0f} img/s, "
                 f"{summary.bytes_in / s / 1e6:.1f} MB/s read, {summary.bytes_out / 1e6:.1f} MB written{kept}")
    return escape_text("\n".join(lines))
