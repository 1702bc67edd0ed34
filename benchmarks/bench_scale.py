"""ImageNet scale, measured: shard, resume, verify, train start-up and the epoch plan on an ImageNet-shaped tree.

    .venv/bin/python benchmarks/bench_scale.py [--fraction 0.1,1.0] [--work DIR] [--json PATH] [--keep]

For each fraction (default: 0.1 then 1.0, in one invocation, so their rates are comparable), builds under
``--work`` (default: a new folder in /tmp) an ImageNet-shaped tree of tiny JPEGs and runs the project's own
entry points on it, each as a subprocess:

* tree       ``train/<wnid>/<wnid>_<n>.JPEG`` in the 1,000 class folders of ImageNet's real wnids
             (``synset_words.txt``), 1,281,167 files at fraction 1 spread ImageNet-like: 732..1300 per class
             (:func:`class_counts`); ``val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG`` (the class-folder layout
             valprep.sh makes), 50,000 files at fraction 1, 50 per class. Every file is a hard link to one of
             512 distinct small RGB JPEGs made with PIL (16-96 px, about 0.7-6.4 KB, mean 2.1 KB), so the tree is
             fast to make and takes little disk. A fraction scales both totals (largest-remainder apportionment
             over the classes: exact totals); a class that gets no train file has no folder, and ``--classes
             synset_words.txt`` keeps the canonical 1000-class indices.
* shard      ``shard-imagenet TREE --out SHARDS --classes synset_words.txt --no-progress`` (defaults otherwise:
             1000 files per shard, all cores), through :func:`tools.shard_imagenet.main` in a fresh interpreter;
             wall s from before the subprocess starts to its exit (interpreter start-up, scan, plan, write,
             metadata), img/s = input files / wall s; peak RSS (MB) of the sharder's main process is its own
             ``getrusage(RUSAGE_SELF).ru_maxrss``, the worker figure ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` taken
             after ``main`` returned (the pool is shut down and its processes reaped by then): the largest peak
             RSS of any one worker. The current RSS of the main process and of its largest worker are also sampled
             every 2 s (``/proc/<pid>/status`` VmRSS): the series is in the JSON, to show growth over the run.
* resume     the same command again, nothing to do (every shard kept by ``--resume``): wall s.
* verify     ``shard-imagenet verify SHARDS`` (all cores): wall s.
* train      ``train --data SHARDS --loader cpu --workers 1 --batch-size 16 --image-size 32 --max-steps 1 --no-eval
             --log-jsonl LOG --log-every 1``: wall s from just before the subprocess starts to (a) the step log's
             ``run_start`` line (the session is built: _info.json read and checked, loaders and ResNet50 made) and
             (b) the first step done (its log line: (a) + the first batch's wait, which includes the loader
             worker's start and opening its first shard, + one forward/backward/SGD step at 32 px; both parts,
             the loop's own data-wait and compute clocks, are printed too), and the process's whole wall time.
             Python's and torch's import time are included in all three.
* plan       :func:`pipeline.read.plan.plan_train` and :func:`~pipeline.read.plan.plan_eval` of epoch 0 for every
             one of 16 ranks x 8 workers (batch 256, or less when the split is too small for one step per rank)
             from the written ``_info.json``: wall s of the planning only; then a check, not timed, that every
             train sample is planned at most once, that exactly ranks x steps x batch are (the rest, fewer than
             ranks x (batch + 1), is left out like ``drop_last``) with the same step count on every rank, and that
             every val sample is planned exactly once.

Targets (printed "met" / "NOT met"): sharding img/s at the largest fraction >= 0.9x the rate at the smallest one
(same invocation); the sharder's main-process peak RSS <= 1 GB (1000 MB) at every fraction; resume <= 20 s at
every fraction. Prints one table and writes every figure to ``--json`` (default build/bench_scale.json). The
work folder is removed at the end unless ``--keep``.

Disk: checked with :func:`shutil.disk_usage` before any file is written: fraction 1 needs 10 GB free
(:func:`disk_needed`: 8.3 GB = 6.2 KB of shard per file on average plus the tree's directory entries, + 20%); a
fraction's tree and shards are removed before the next fraction's are made.

Exit status: 0 when every step ran (whether or not targets are met), 1 when a step failed (its last output lines
are printed), 2 on bad arguments or too little disk.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.read.plan import ReaderSlot, plan_eval, plan_train, train_steps_per_epoch  # noqa: E402

SYNSETS = REPO.parent / "shared" / "data" / "imagenet-meta" / "synset_words.txt"
IMAGENET_TRAIN = 1_281_167
IMAGENET_VAL = 50_000
CLASS_MIN, CLASS_MAX = 732, 1300  # ImageNet's smallest and largest train class
DISTINCT_JPEGS = 512  # ext4 allows 65,000 links per inode: 1.33M files need at least 21
SHARD_BYTES_PER_FILE = 6_200  # measured: 6,147 at fraction 0.01 (4 tar members in 512-byte blocks + .idx)
PLAN_RANKS, PLAN_WORKERS, PLAN_BATCH = 16, 8, 256
RSS_TARGET_MB = 1000.0
RATE_TARGET = 0.9
RESUME_TARGET_S = 20.0
STEP_TIMEOUT_S = 3600

# The sharder's real CLI entry point in a fresh interpreter; its own and its reaped workers' peak RSS go to argv[1].
_SHARD_RUNNER = """\
import json, resource, sys
from tools.shard_imagenet import main
rc = main(sys.argv[2:])
kb = 1024.0  # ru_maxrss is in KiB on Linux
with open(sys.argv[1], "w") as f:
    json.dump({"main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kb / 1e6,
               "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kb / 1e6}, f)
sys.exit(rc)
"""


class BenchError(RuntimeError):
    """A measured step failed: the message names it and holds its last output lines (exit 1)."""


class SetupError(BenchError):
    """The benchmark cannot start: a missing input file or too little disk; the message says what to do (exit 2)."""


@dataclass(frozen=True)
class TreeSpec:
    """The tree of one fraction: train files per class (aligned with ``wnids``; 0: no folder), val files per class."""

    fraction: float
    wnids: tuple[str, ...]
    train: tuple[int, ...]
    val: tuple[int, ...]

    @property
    def num_train(self) -> int:
        return sum(self.train)

    @property
    def num_val(self) -> int:
        return sum(self.val)


@dataclass
class FractionResult:
    """Every figure of one fraction (s, img/s, MB); see the module docstring for what each one includes."""

    fraction: float
    train_files: int
    val_files: int
    classes: int
    tree_s: float = 0.0
    shard_s: float = 0.0
    shard_img_s: float = 0.0
    shard_main_rss_mb: float = 0.0
    shard_worker_rss_mb: float = 0.0
    shard_rss_series_mb: list[tuple[float, float, float]] = field(default_factory=list)  # (s, main, worker MB)
    train_samples: int = 0
    val_samples: int = 0
    train_shards: int = 0
    val_shards: int = 0
    shards_gb: float = 0.0
    resume_s: float = 0.0
    verify_s: float = 0.0
    train_build_s: float = 0.0
    train_first_step_s: float = 0.0
    train_first_batch_wait_s: float = 0.0
    train_first_step_compute_s: float = 0.0
    train_process_s: float = 0.0
    plan_s: float = 0.0
    plan_batch: int = 0
    plan_train_planned: int = 0
    plan_train_left_out: int = 0
    plan_steps_per_rank: int = 0
    plan_val_planned: int = 0
    plan_ok: bool = False


def read_wnids(path: Path) -> tuple[str, ...]:
    """The 1000 wnids of ``synset_words.txt`` (first token of each line), in file order.

    Raises:
        BenchError: the file is missing or does not hold 1000 wnids.
    """
    try:
        wnids = tuple(line.split()[0] for line in path.read_text().splitlines() if line.strip())
    except OSError as exc:
        raise SetupError(f"{path}: cannot read ({exc.strerror}); pass --synsets synset_words.txt") from None
    if len(wnids) != 1000:
        raise SetupError(f"{path}: {len(wnids)} wnids, expected ImageNet's 1000; pass --synsets synset_words.txt")
    return wnids


def class_counts(total: int = IMAGENET_TRAIN, classes: int = 1000) -> list[int]:
    """ImageNet-like train files per class summing to ``total``: most classes at 1300, the deficit taken by a
    linear ramp of classes from 732 up (ImageNet: 732 to 1300, most at 1300); every 7th class in the ramp, so
    small classes are spread over the wnid order. For ``total`` = 1,281,167: 66 classes below 1300, min 732."""
    deficit = CLASS_MAX * classes - total
    ramp = max(2, round(2 * deficit / (CLASS_MAX - CLASS_MIN)))
    cuts = [(CLASS_MAX - CLASS_MIN) * (ramp - i) // ramp for i in range(ramp)]
    residual = deficit - sum(cuts)  # rounding, either sign: one file per class, never the 732 class
    for i in range(abs(residual)):
        cuts[1 + i % (ramp - 1)] += 1 if residual > 0 else -1
    counts = [CLASS_MAX] * classes
    for i, cut in enumerate(cuts):
        counts[(i * 7) % classes] -= cut
    return counts


def apportion(weights: list[int], total: int) -> list[int]:
    """``total`` split over ``weights`` proportionally, by largest remainder (Hamilton): sums exactly to ``total``."""
    whole = sum(weights)
    quotas = [w * total / whole for w in weights]
    parts = [int(q) for q in quotas]
    order = sorted(range(len(weights)), key=lambda i: (parts[i] - quotas[i], i))
    for i in order[:total - sum(parts)]:
        parts[i] += 1
    return parts


def tree_spec(wnids: tuple[str, ...], fraction: float) -> TreeSpec:
    """The tree of ``fraction`` of ImageNet: round(1,281,167 x f) train and round(50,000 x f) val files, val only
    in classes that have train files (spread evenly over them)."""
    train = apportion(class_counts(), round(IMAGENET_TRAIN * fraction))
    present = [i for i, n in enumerate(train) if n]
    val_present = apportion([1] * len(present), round(IMAGENET_VAL * fraction))
    val = [0] * len(wnids)
    for i, n in zip(present, val_present):
        val[i] = n
    return TreeSpec(fraction, wnids, tuple(train), tuple(val))


def disk_needed(spec: TreeSpec) -> int:
    """Bytes the shards and the tree of ``spec`` take (estimate: shards + directory entries of the hard links)."""
    files = spec.num_train + spec.num_val
    return files * SHARD_BYTES_PER_FILE + files * 64 + 8 * 2**20


def check_disk(work: Path, specs: list[TreeSpec]) -> None:
    """Raises SetupError when the file system of ``work`` has less free space than the largest fraction needs."""
    need = max(disk_needed(s) for s in specs)
    free = shutil.disk_usage(work).free
    if free < need * 1.2:
        raise SetupError(f"{work}: {free / 1e9:.1f} GB free, the largest fraction needs about {need / 1e9:.1f} GB "
                         f"(+20%); pass --work DIR on a larger disk or a smaller --fraction")
    print(f"disk: {free / 1e9:.1f} GB free in {work}, the largest fraction needs about {need / 1e9:.1f} GB")


def make_distinct_jpegs(folder: Path, count: int = DISTINCT_JPEGS, seed: int = 0) -> list[Path]:
    """``count`` small, distinct, clean RGB baseline JPEGs (16-96 px a side, q 60-95) made with PIL:
    a colour gradient plus noise, so each decodes to a different picture (0.7-6.4 KB, mean 2.1 KB, with seed 0).
    Returns their paths."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        w, h = (int(v) for v in rng.integers(16, 97, size=2))
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.integers(0, 256, size=3)
        img = (base + 2 * xx[..., None] + 3 * yy[..., None] + rng.integers(0, 40, size=(h, w, 3))) % 256
        path = folder / f"distinct_{k:04d}.jpg"
        Image.fromarray(img.astype(np.uint8), "RGB").save(path, quality=int(rng.integers(60, 96)))
        paths.append(path)
    return paths


def build_tree(spec: TreeSpec, root: Path, sources: list[Path]) -> None:
    """Hard-link ``spec``'s files under ``root/train/<wnid>/`` and ``root/val/<wnid>/`` (file i → a pseudo-random
    one of ``sources``, seeded, so neighbouring files differ)."""
    import os

    rng = random.Random(1)
    n_src = len(sources)
    val_index = 0
    for wnid, n_train, n_val in zip(spec.wnids, spec.train, spec.val):
        if n_train:
            d = root / "train" / wnid
            d.mkdir(parents=True)
            for j in range(n_train):
                os.link(sources[rng.randrange(n_src)], d / f"{wnid}_{j + 1}.JPEG")
        if n_val:
            d = root / "val" / wnid
            d.mkdir(parents=True)
            for _ in range(n_val):
                val_index += 1
                os.link(sources[rng.randrange(n_src)], d / f"ILSVRC2012_val_{val_index:08d}.JPEG")


class RssSampler:
    """Samples the current RSS (``/proc/<pid>/status`` VmRSS) of one process and of the largest of its child
    processes every ``every_s`` seconds in a thread: (s since start, main MB, largest child MB) triples."""

    def __init__(self, pid: int, every_s: float = 2.0):
        self.pid, self.every_s = pid, every_s
        self.series: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.perf_counter()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            main = _vm_rss_mb(self.pid)
            if main is None:
                return
            try:
                children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
            except OSError:
                children = []
            child = max((_vm_rss_mb(int(c)) or 0.0 for c in children), default=0.0)
            self.series.append((round(time.perf_counter() - self._t0, 1), round(main, 1), round(child, 1)))

    def stop(self) -> list[tuple[float, float, float]]:
        self._stop.set()
        self._thread.join()
        return self.series


def _vm_rss_mb(pid: int) -> float | None:
    """Current resident set size of ``pid`` (MB), None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return None


def run_step(name: str, cmd: list[str], sample_rss: bool = False) -> tuple[float, str, list]:
    """Run ``cmd`` from the repository root; returns (wall s, its stdout + stderr, VmRSS series of it or []).

    Raises:
        BenchError: it exited non-zero or ran past an hour; names the step and shows its last output lines.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = RssSampler(proc.pid) if sample_rss else None
    try:
        out, _ = proc.communicate(timeout=STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise BenchError(f"{name}: ran past {STEP_TIMEOUT_S} s; last lines:\n{_tail(out)}") from None
    wall = time.perf_counter() - t0
    series = sampler.stop() if sampler else []
    if proc.returncode != 0:
        raise BenchError(f"{name}: exit {proc.returncode}: {' '.join(cmd)}; last lines:\n{_tail(out)}")
    return wall, out, series


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.splitlines()[-lines:])


def shard_command(tree: Path, out: Path, rss_json: Path, synsets: Path) -> list[str]:
    """The sharder's command line (its real CLI, see ``_SHARD_RUNNER``)."""
    return [sys.executable, "-c", _SHARD_RUNNER, str(rss_json), str(tree), "--out", str(out),
            "--classes", str(synsets), "--no-progress"]


def measure_shard(res: FractionResult, tree: Path, out: Path, synsets: Path) -> None:
    """Shard ``tree`` into ``out``; fills wall s, img/s, peak RSS (MB), the RSS series and the counts written."""
    rss_json = out.parent / "shard_rss.json"
    res.shard_s, _, res.shard_rss_series_mb = run_step("shard", shard_command(tree, out, rss_json, synsets), True)
    res.shard_img_s = (res.train_files + res.val_files) / res.shard_s
    rss = json.loads(rss_json.read_text())
    res.shard_main_rss_mb, res.shard_worker_rss_mb = rss["main_mb"], rss["worker_mb"]
    info = json.loads((out / "_info.json").read_text())
    splits = info["splits"]
    res.train_samples, res.val_samples = splits["train"]["num_samples"], splits["val"]["num_samples"]
    res.train_shards, res.val_shards = len(splits["train"]["filenames"]), len(splits["val"]["filenames"])
    res.shards_gb = sum(p.stat().st_size for p in out.iterdir() if p.suffix in (".tar", ".idx")) / 1e9


def measure_resume(res: FractionResult, tree: Path, out: Path, synsets: Path) -> None:
    """The same sharding command again on the finished folder: wall s.

    Raises:
        BenchError: it rewrote something (its summary does not say every shard was kept).
    """
    res.resume_s, text, _ = run_step("resume", shard_command(tree, out, out.parent / "resume_rss.json", synsets))
    shards = res.train_shards + res.val_shards
    if f"{shards} complete shard(s) kept" not in text:
        raise BenchError(f"resume: expected all {shards} shards kept; its summary:\n{_tail(text)}")


def measure_verify(res: FractionResult, out: Path) -> None:
    """``shard-imagenet verify OUT``: wall s (it exits 1 on any bad shard, which fails the step)."""
    res.verify_s, _, _ = run_step("verify", [sys.executable, "-m", "tools.shard_imagenet", "verify", str(out)])


def measure_train(res: FractionResult, out: Path) -> None:
    """``train --loader cpu`` for one step at 32 px: wall s to the session built, to the first step done, and of
    the whole process (see the module docstring)."""
    log = out.parent / "train_steps.jsonl"
    cmd = [sys.executable, "-m", "tools.train", "--data", str(out), "--loader", "cpu", "--workers", "1",
           "--batch-size", "16", "--image-size", "32", "--max-steps", "1", "--no-eval",
           "--log-jsonl", str(log), "--log-every", "1", "--metrics-json", str(out.parent / "train_metrics.json")]
    launched = time.time()  # the step log's times are time.time()
    res.train_process_s, text, _ = run_step("train", cmd)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    starts = [line for line in lines if "run_start" in line]
    steps = [line for line in lines if "step" in line]
    if not starts or not steps:
        raise BenchError(f"train: {log} has no run_start or step line; last output lines:\n{_tail(text)}")
    res.train_build_s = starts[0]["run_start"] - launched
    res.train_first_step_s = steps[0]["time"] - launched
    res.train_first_batch_wait_s, res.train_first_step_compute_s = steps[0]["data_wait_s"], steps[0]["compute_s"]


def measure_plan(res: FractionResult, out: Path, ranks: int = PLAN_RANKS, workers: int = PLAN_WORKERS) -> None:
    """Epoch-0 plans of every rank and worker (train and val) from ``out/_info.json``: wall s of the planning,
    then the coverage check (not timed) into ``res.plan_*``."""
    from pipeline.read.info import load_info

    info = load_info(out)
    train_len = list(info.split("train").shard_lengths)
    val_len = list(info.split("val").shard_lengths)
    batch = max(1, min(PLAN_BATCH, sum(train_len) // ranks))
    t0 = time.perf_counter()
    train_plans = [[plan_train(train_len, batch, ReaderSlot(r, ranks, w, workers), seed=0, epoch=0)
                    for w in range(workers)] for r in range(ranks)]
    val_plans = [plan_eval(val_len, batch, ReaderSlot(r, ranks, w, workers))
                 for r in range(ranks) for w in range(workers)]
    res.plan_s = time.perf_counter() - t0
    res.plan_batch = batch
    res.plan_steps_per_rank = train_steps_per_epoch(sum(train_len), ranks, batch)
    train_cover = _coverage(train_len, [p for rank in train_plans for p in rank])
    val_cover = _coverage(val_len, val_plans)
    res.plan_train_planned, res.plan_val_planned = int(train_cover.sum()), int(val_cover.sum())
    res.plan_train_left_out = sum(train_len) - int((train_cover > 0).sum())
    same_steps = all(sum(p.num_batches for p in rank) == res.plan_steps_per_rank for rank in train_plans)
    res.plan_ok = bool(same_steps and train_cover.max() <= 1 and val_cover.min() == 1 and val_cover.max() == 1
                       and res.plan_train_planned == ranks * res.plan_steps_per_rank * batch
                       and res.plan_train_left_out < ranks * (batch + 1))


def _coverage(lengths: list[int], plans) -> "np.ndarray":  # noqa: F821
    """int32 array, one entry per sample of the split (shards concatenated in index order): how many of ``plans``'
    segments cover it."""
    import numpy as np

    offsets = np.concatenate([[0], np.cumsum(lengths)])
    cover = np.zeros(int(offsets[-1]), dtype=np.int32)
    for plan in plans:
        for seg in plan.segments:
            lo = int(offsets[seg.shard]) + seg.skip
            cover[lo:lo + seg.take] += 1
    return cover


def run_fraction(spec: TreeSpec, work: Path, synsets: Path, sources: list[Path], keep: bool) -> FractionResult:
    """Make the tree of ``spec`` under ``work`` and measure every step on it; removes it after unless ``keep``."""
    res = FractionResult(spec.fraction, spec.num_train, spec.num_val, sum(1 for n in spec.train if n))
    base = work / f"fraction-{spec.fraction:g}"
    tree, out = base / "tree", base / "shards"
    print(f"fraction {spec.fraction:g}: {spec.num_train} train + {spec.num_val} val files, {res.classes} classes",
          flush=True)
    try:
        t0 = time.perf_counter()
        build_tree(spec, tree, sources)
        res.tree_s = time.perf_counter() - t0
        for step, fn in (("shard", lambda: measure_shard(res, tree, out, synsets)),
                         ("resume", lambda: measure_resume(res, tree, out, synsets)),
                         ("verify", lambda: measure_verify(res, out)),
                         ("train start-up", lambda: measure_train(res, out)),
                         ("plan", lambda: measure_plan(res, out))):
            t0 = time.perf_counter()
            fn()
            print(f"  {step}: {time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    return res


def targets(results: list[FractionResult]) -> list[tuple[str, str, bool | None]]:
    """(what, measured, met) of each target; met is None when not measurable (a single fraction)."""
    lo, hi = results[0], results[-1]
    rows = []
    if len(results) > 1:
        ratio = hi.shard_img_s / lo.shard_img_s
        rows.append((f"shard img/s at {hi.fraction:g} >= {RATE_TARGET}x the rate at {lo.fraction:g}",
                     f"{ratio:.2f}x ({hi.shard_img_s:.0f} / {lo.shard_img_s:.0f} img/s)", ratio >= RATE_TARGET))
    else:
        rows.append(("shard img/s ratio (needs two fractions)", "not measured", None))
    peak = max(r.shard_main_rss_mb for r in results)
    rows.append((f"sharder main-process peak RSS <= {RSS_TARGET_MB:.0f} MB", f"{peak:.0f} MB", peak <= RSS_TARGET_MB))
    slowest = max(r.resume_s for r in results)
    rows.append((f"resume <= {RESUME_TARGET_S:.0f} s", f"{slowest:.1f} s", slowest <= RESUME_TARGET_S))
    return rows


def format_table(results: list[FractionResult], target_rows) -> str:
    """The printed table: one column per fraction, then the targets and the plan checks."""
    rows = [("train files", lambda r: f"{r.train_files}"), ("val files", lambda r: f"{r.val_files}"),
            ("classes", lambda r: f"{r.classes}"),
            ("samples written (train/val)", lambda r: f"{r.train_samples}/{r.val_samples}"),
            ("shards (train/val)", lambda r: f"{r.train_shards}/{r.val_shards}"),
            ("shards + idx GB", lambda r: f"{r.shards_gb:.2f}"),
            ("make tree s", lambda r: f"{r.tree_s:.1f}"),
            ("shard wall s", lambda r: f"{r.shard_s:.1f}"), ("shard img/s", lambda r: f"{r.shard_img_s:.0f}"),
            ("shard main peak RSS MB", lambda r: f"{r.shard_main_rss_mb:.0f}"),
            ("shard worker peak RSS MB (max)", lambda r: f"{r.shard_worker_rss_mb:.0f}"),
            ("resume wall s", lambda r: f"{r.resume_s:.1f}"), ("verify wall s", lambda r: f"{r.verify_s:.1f}"),
            ("train: session built s", lambda r: f"{r.train_build_s:.1f}"),
            ("train: first step done s", lambda r: f"{r.train_first_step_s:.1f}"),
            ("train: 1st batch wait / step s",
             lambda r: f"{r.train_first_batch_wait_s:.1f} / {r.train_first_step_compute_s:.1f}"),
            ("train: whole process s", lambda r: f"{r.train_process_s:.1f}"),
            (f"plan {PLAN_RANKS}x{PLAN_WORKERS} wall s", lambda r: f"{r.plan_s:.3f}"),
            ("plan batch / steps per rank", lambda r: f"{r.plan_batch}/{r.plan_steps_per_rank}"),
            ("plan train planned / left out", lambda r: f"{r.plan_train_planned}/{r.plan_train_left_out}"),
            ("plan val planned", lambda r: f"{r.plan_val_planned}"),
            ("plan: every sample once", lambda r: "yes" if r.plan_ok else "NO")]
    head = "| figure | " + " | ".join(f"fraction {r.fraction:g}" for r in results) + " |"
    lines = [head, "| --- |" + " --- |" * len(results)]
    lines += [f"| {name} | " + " | ".join(cell(r) for r in results) + " |" for name, cell in rows]
    lines.append("")
    for what, measured, met in target_rows:
        verdict = "not measured" if met is None else ("met" if met else "NOT met")
        lines.append(f"target: {what}: {measured}: {verdict}")
    return "\n".join(lines)


def parse_fractions(text: str) -> list[float]:
    """``0.1,1.0`` → [0.1, 1.0] (sorted); raises argparse.ArgumentTypeError outside (0, 1] or when a fraction
    gives fewer than 32 train files (the train start-up step takes a batch of 16)."""
    try:
        fractions = sorted(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give fractions like 0.1,1.0") from None
    for f in fractions:
        if not 0 < f <= 1 or round(IMAGENET_TRAIN * f) < 32:
            raise argparse.ArgumentTypeError(f"{f:g}: a fraction must be in (0, 1] and give >= 32 train files "
                                             f"(>= {32 / IMAGENET_TRAIN:.6f})")
    return fractions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fraction", "--fractions", dest="fractions", type=parse_fractions, default=[0.1, 1.0],
                   help="comma-separated fractions of ImageNet, run smallest first (default: 0.1,1.0)")
    p.add_argument("--work", type=Path, help="a new folder is made in it for the run and removed at the end "
                                             "(default: the system temp folder, /tmp)")
    p.add_argument("--json", type=Path, default=REPO / "build" / "bench_scale.json",
                   help="figures (default: %(default)s)")
    p.add_argument("--synsets", type=Path, default=SYNSETS, help="synset_words.txt (default: %(default)s)")
    p.add_argument("--keep", action="store_true", help="keep the trees and shards in --work")
    args = p.parse_args(argv)
    try:
        parent = args.work or Path(tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="bench_scale_", dir=parent))  # ours alone: removed whole at the end
    except OSError as exc:
        print(f"bench_scale: error: --work {args.work}: cannot create a folder there ({exc.strerror})", file=sys.stderr)
        return 2
    try:
        wnids = read_wnids(args.synsets)
        specs = [tree_spec(wnids, f) for f in args.fractions]
        check_disk(work, specs)
        sources = make_distinct_jpegs(work / "distinct")
        sizes = [s.stat().st_size for s in sources]
        print(f"{len(sources)} distinct JPEGs, {min(sizes)}-{max(sizes)} bytes (mean {sum(sizes) / len(sizes):.0f})")
        results = [run_fraction(s, work, args.synsets, sources, args.keep) for s in specs]
    except BenchError as exc:
        print(f"bench_scale: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, SetupError) else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    target_rows = targets(results)
    print(format_table(results, target_rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "command": " ".join(sys.argv), "workers": _default_workers(), "distinct_jpegs": len(sources),
        "distinct_jpeg_bytes": {"min": min(sizes), "max": max(sizes), "mean": sum(sizes) / len(sizes)},
        "fractions": [asdict(r) for r in results],
        "targets": [{"target": w, "measured": m, "met": met} for w, m, met in target_rows]}, indent=1))
    print(f"wrote {args.json}")
    return 0


def _default_workers() -> int:
    from pipeline.shard.run import default_workers

    return default_workers()


if __name__ == "__main__":
    sys.exit(main())
