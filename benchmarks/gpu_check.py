"""One GPU check of the whole project, sized for one lent H100 / H200 (16 cores): at most ``--budget-s`` (480 s).

    python3 benchmarks/gpu_check.py [--budget-s 480] [--legs NAME,...] [--out DIR] [--work DIR]
    python  benchmarks/gpu_check.py --smoke          # the same code path, tiny, on this machine's CPU (< 3 min)

What it does, in order, each step a subprocess with a hard timeout (its process group is killed at the end):

1. preflight, a few seconds (:mod:`benchmarks.gpu_check_preflight`): the carried wheels (``.gpu-wheels/``, and a
   large one carried in parts in ``.gpu-wheels-parts/``) joined, verified and installed into ``WORK/site`` by
   :func:`benchmarks.gpu_wheels.prepare_wheels` (first on ``sys.path`` and on every subprocess's
   ``PYTHONPATH``); ``import simplejpeg`` and ``nvidia.dali``; ``/dev/shm`` against what the loader workers need
   (short: fewer workers, said in the table); CUDA works; one ``decode_jpeg`` on the device. A leg that needs a
   failed check is skipped with the reason (``preflight: decode_jpeg on cuda failed: ...``);
2. the legs, in order of value, so that a budget that runs out cuts the least informative ones:
   ``synthetic-amp`` (the p_core ceiling every loader leg is divided by), ``cpu`` (the default loader),
   ``nvjpeg`` (the GPU decode path of issue 22 item 2), ``dali`` (the headline path; ``not installed`` without
   ``nvidia.dali``), ``folder`` (torchvision's baseline, on the tree), ``io-bench`` (``python -m tools.io_bench``
   on the shards: its verdict lines), ``synthetic-bf16`` and ``synthetic-fp32-tf32`` (the other precisions'
   ceilings), ``synthetic-amp-compile`` (``--compile``: the longest, and a what-if). Each is ``train`` ResNet50
   channels-last at batch 256, 224 px (amp; the loader legs fp32 in ``--smoke``), ``--workers 14``;
   the data (before the first leg that reads it): an ImageNet-like JPEG tree generated here in parallel
   (``train/<wnid>/``, ``val/<wnid>/``; sizes, aspect ratios, quality 90 and file sizes like ILSVRC2012 train,
   a few grayscale, CMYK and PNG-named-.JPEG files; each train image listed ``copies`` times under other names so
   that an epoch holds many steps), sharded with ``python -m tools.shard_imagenet``; nothing is read from
   ``../shared``.

Required legs: ``synthetic-amp`` and ``cpu`` (without them the check says nothing); the rest are optional. The
exit status is 0 unless a required leg failed or was skipped for a reason other than the budget or ``--legs``
(or the check was stopped by a signal). A leg's status: ``ok``; ``incomplete`` (killed at its timeout, or at
the end of the budget, which shortened its timeout: its partial rates are kept); ``failed`` (it exited non-zero
or wrote no usable metrics); ``skipped`` (not selected, the budget, no data, a failed preflight check); ``not
installed`` (DALI). Before a leg starts, its entry is written as ``running``.

A leg is skipped when less than its ``need_s`` is left of the budget (the compile leg's need is its whole
timeout: it needs minutes of inductor compilation before its first step); its timeout is the smaller of its own
and what is left. Every train leg streams its step log (``--log-jsonl``, line-buffered, one line per
``--log-every`` steps; :mod:`benchmarks.gpu_check_steps`): a leg killed at its timeout still reports the rates of
the steps it finished, and every leg reports p_train per window of measured steps beside the whole (``*``: an
epoch boundary inside the window; it costs the loader legs 5-15%). After every leg ``results.json`` (all figures,
the preflight and each leg's metrics JSON) and ``table.md`` are rewritten in ``--out`` (``$OUT`` when set, else
``build/gpu_check``), and every subprocess's output goes to ``gpu_check.log`` there as it runs: a kill of the
whole command still leaves what ran. Together with io-bench's report and plots that is 6 files, all at the top of
``--out``.

Table: per leg p_core and p_train (img/s; ``~``: partial, from the step log of an incomplete leg), data-wait
share of the train loop, p_train over the synthetic p_core of the same precision (``vs synthetic``), p_train per
measured window, memory (GiB, used/total as the metrics report it), wall time of the subprocess, and the torch /
CUDA / driver versions from the leg's metrics JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as ``python3 benchmarks/gpu_check.py``: its sibling modules and the project
    sys.path.insert(0, str(REPO))

from benchmarks import gpu_check_preflight as preflight_mod  # noqa: E402
from benchmarks.gpu_check_preflight import PreflightResult  # noqa: E402
from benchmarks.gpu_check_steps import partial_rates, read_step_log, window_entries, window_summary  # noqa: E402

OK, FAILED, SKIPPED, NOT_INSTALLED = "ok", "failed", "skipped", "not installed"
INCOMPLETE, RUNNING = "incomplete", "running"
PROBE_TIMEOUT_S = 120.0  # the preflight probe: imports, CUDA start-up, one decode (seconds when all is well)
WHEELS_TIMEOUT_S = 120.0
REQUIRED_METRICS = ("p_core", "p_train", "data_wait_fraction")  # the table's figures; the rest are read with .get
LOG_CAP_BYTES = 12 * 2 ** 20  # gpu_check.log is cut to this (head + tail) so that it still comes back (16 MiB)
KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL of a leg's process group
END_MARGIN_S = 3.0  # kept back from every leg's timeout for writing the results


@dataclass(frozen=True)
class TreeSpec:
    """The generated ImageNet-like tree.

    Attributes:
        classes: class folders (fake wnids); train_per_class / val_per_class: distinct images per class.
        copies: times each train image is listed (symlinks under other names): longer epochs, same decode cost.
        long_side: typical longer side, px (80% of images; the rest 0.4x-2x of it).
        detail_median / detail_sigma: per-image texture strength, log-normal (tuned for ~0.57 byte/px at q90).
        quality: JPEG quality; seed: generator seed (same spec, same bytes).
    """

    classes: int
    train_per_class: int
    val_per_class: int
    copies: int
    long_side: int
    detail_median: float = 18.0
    detail_sigma: float = 1.1
    quality: int = 90
    seed: int = 0


@dataclass(frozen=True)
class LegSpec:
    """One ``train`` run (or the io-bench run when ``kind == 'io-bench'``).

    Attributes:
        name: label in the table and the ``--legs`` filter; kind: synthetic | loader | io-bench.
        loader: ``train --loader`` value; precision: ``--precision``.
        warmup_steps / steps: left-out first steps and measured steps (``--max-steps`` = their sum).
        timeout_s: hard limit of the subprocess, s; need_s: budget that must be left to start it, s.
        flags: further flags.
        required: the check fails when this leg fails (see the module docstring); the rest are optional.
        log_every: steps per step-log window (``--log-every``; divides ``warmup_steps``, so that windows after the
            warm-up hold measured steps only).
    """

    name: str
    kind: str
    loader: str = "synthetic"
    precision: str = "amp"
    warmup_steps: int = 0
    steps: int = 0
    timeout_s: float = 120.0
    need_s: float = 30.0
    flags: tuple[str, ...] = ()
    required: bool = False
    log_every: int = 1


@dataclass(frozen=True)
class CheckConfig:
    """Everything one run of the check uses (``--smoke`` selects the tiny CPU variant)."""

    mode: str
    budget_s: float
    tree: TreeSpec
    shard_size: int
    batch_size: int
    image_size: int
    workers: int
    legs: tuple[LegSpec, ...]
    io_bench_flags: tuple[str, ...]
    out: Path
    work: Path
    wheels: Path
    wheel_parts: Path
    selected: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()


def full_legs() -> tuple[LegSpec, ...]:
    """The GPU legs in order of value (module docstring): steps sized for ResNet50 at batch 256 (about 3,000 img/s
    under amp on an H100). Loader legs: 25 + 150 steps, an epoch boundary near step 125 (a full tree epoch), 25-step
    windows. The compile leg's need is its whole timeout: inductor compiles for minutes before its first step."""
    syn = dict(kind="synthetic", warmup_steps=20, steps=80, timeout_s=120, need_s=30, log_every=20)
    data = dict(kind="loader", warmup_steps=25, steps=150, timeout_s=150, need_s=45, log_every=25)
    return (LegSpec("synthetic-amp", precision="amp", required=True, **syn),
            LegSpec("cpu", loader="cpu", required=True, **data),
            LegSpec("nvjpeg", loader="nvjpeg", **data), LegSpec("dali", loader="dali", **data),
            LegSpec("folder", loader="folder", **data),
            LegSpec("io-bench", kind="io-bench", timeout_s=150, need_s=60),
            LegSpec("synthetic-bf16", precision="bf16", **syn),
            LegSpec("synthetic-fp32-tf32", precision="fp32", **{**syn, "flags": ("--tf32", "on")}),
            LegSpec("synthetic-amp-compile", kind="synthetic", precision="amp", flags=("--compile",),
                    warmup_steps=10, steps=90, timeout_s=240, need_s=240, log_every=10))


def smoke_legs() -> tuple[LegSpec, ...]:
    """The same legs, a few steps each, one step per window. The compile leg's need (600 s) exceeds any smoke
    budget, so the smoke run takes its skip path: inductor compiling ResNet50's training step on 2 CPU cores takes
    minutes. The loader legs and io-bench run fp32: on a CPU, amp is bf16 autocast (~15x slower than fp32 here)
    and their subject is the input path; the synthetic-amp and -bf16 legs still run those precisions."""
    tiny = {"warmup_steps": 1, "steps": 2, "timeout_s": 90, "log_every": 1}
    return tuple(dataclasses.replace(leg, **tiny, need_s=600 if "--compile" in leg.flags else 10,
                                     precision="fp32" if leg.kind in ("loader", "io-bench") else leg.precision,
                                     # train's GPU-only choices (amp, nvjpeg, dali) on this CPU: accepted by name
                                     flags=leg.flags + (("--device", "cpu") if leg.kind != "io-bench" else ()))
                 for leg in full_legs())


def build_config(args: argparse.Namespace) -> CheckConfig:
    """Map the command line onto the frozen config of a full or a smoke run."""
    out = Path(args.out or os.environ.get("OUT") or REPO / "build" / "gpu_check")
    selected = tuple(args.legs.split(",")) if args.legs else None
    if args.smoke:
        workers = args.workers or 1
        return CheckConfig(
            mode="smoke", budget_s=args.budget_s or 175, out=out, wheels=args.wheels, selected=selected,
            wheel_parts=args.wheel_parts,
            tree=TreeSpec(classes=10, train_per_class=12, val_per_class=3, copies=2, long_side=96),
            work=args.work or Path("/tmp/gpu_check_work_smoke"), shard_size=64, batch_size=8, image_size=32,
            workers=workers, legs=smoke_legs(), env=(("OMP_NUM_THREADS", "1"),),
            io_bench_flags=("--batch-size", "8", "--image-size", "32", "--repeat", "1",
                            "--loader-batches", "2", "--steps", "2"))
    workers = args.workers or 14
    return CheckConfig(
        mode="full", budget_s=args.budget_s or 480, out=out, wheels=args.wheels, selected=selected,
        wheel_parts=args.wheel_parts,
        tree=TreeSpec(classes=40, train_per_class=100, val_per_class=5, copies=8, long_side=500),
        work=args.work or Path("/tmp/gpu_check_work"), shard_size=1000, batch_size=256, image_size=224,
        workers=workers, legs=full_legs(),
        io_bench_flags=("--batch-size", "256", "--image-size", "224", "--repeat", "1",
                        "--loader-batches", "10", "--steps", "30"))


class Clock:
    """Seconds since the check started, against its budget."""

    def __init__(self, budget_s: float):
        self.start = time.monotonic()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


class Report:
    """What the check found so far, and the files in ``out`` that hold it (rewritten after every step)."""

    def __init__(self, cfg: CheckConfig, clock: Clock):
        self.cfg, self.clock = cfg, clock
        cfg.out.mkdir(parents=True, exist_ok=True)
        self.log_path = cfg.out / "gpu_check.log"
        self.log_path.write_text("")
        self.data: dict = {"mode": cfg.mode, "budget_s": cfg.budget_s, "finished": False,
                           "config": _jsonable(dataclasses.asdict(cfg)), "machine": machine_info(),
                           "preflight": None, "dataset": None, "legs": []}

    def say(self, msg: str) -> None:
        """Print a progress line with the elapsed time (flushed) and append it to the log."""
        line = f"[gpu_check {self.clock.elapsed():6.1f} s] {msg}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def save(self) -> None:
        """Rewrite results.json and table.md (each through a temporary file and a rename); cap the log."""
        self.data["elapsed_s"] = round(self.clock.elapsed(), 1)
        cap_log(self.log_path, LOG_CAP_BYTES)
        _write_atomic(self.cfg.out / "results.json", json.dumps(self.data, indent=1) + "\n")
        _write_atomic(self.cfg.out / "table.md", format_report(self.data) + "\n")


def cap_log(path: Path, cap: int) -> None:
    """Keep a log over ``cap`` bytes to its first quarter and last half of ``cap``, with a note between."""
    size = path.stat().st_size
    if size <= cap:
        return
    with open(path, "rb") as f:
        head = f.read(cap // 4)
        f.seek(size - cap // 2)
        tail = f.read()
    note = f"\n[gpu_check: {size - len(head) - len(tail)} bytes of log cut here]\n".encode()
    path.write_bytes(head + note + tail)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(obj):
    """Paths (and tuples) of a config as JSON values."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return str(obj) if isinstance(obj, Path) else obj


def machine_info() -> dict:
    """Host facts that need no torch import: Python, cores, and the GPU and driver as nvidia-smi reports them."""
    info = {"python": sys.version.split()[0], "executable": sys.executable, "cpu_cores": len(os.sched_getaffinity(0)),
            "gpu": None, "driver": None, "shm_free_gib": None}
    try:  # DataLoader workers hand batches over in /dev/shm: 14 workers at batch 256 hold about 1 GiB
        info["shm_free_gib"] = round(shutil.disk_usage("/dev/shm").free / 2 ** 30, 1)
    except OSError:
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout
            name, driver, memory = (s.strip() for s in out.splitlines()[0].split(","))
            info.update(gpu=f"{name} ({memory})", driver=driver)
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            pass
    return info


def leg_env(cfg: CheckConfig, site: Path | None) -> dict[str, str]:
    """Environment of every subprocess: unbuffered output, the wheel folder first on PYTHONPATH, cfg.env."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **dict(cfg.env))
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


# ------------------------------------------------------------------------------------------------------ data
# Quirks of ILSVRC2012 train, rarer there: (period, offset) over the train image numbers.
QUIRKS = {"grayscale": (500, 1), "cmyk": (1300, 7), "png": (2000, 13)}
ASPECTS = ((4 / 3, 0.5), (3 / 2, 0.25), (1.0, 0.08))  # the rest (0.17): uniform in [1, 2.2]


@dataclass(frozen=True)
class ImageJob:
    """One image to write: its path, split, number within the split (quirks) and generator seed."""

    path: str
    split: str
    number: int
    seed: tuple[int, ...]


def quirk_of(split: str, number: int) -> str:
    """The quirk of train image ``number`` ('' = a plain RGB JPEG); val images are all plain."""
    for quirk, (period, offset) in QUIRKS.items():
        if split == "train" and number % period == offset:
            return quirk
    return ""


def draw_size(rng, long_side: int) -> tuple[int, int]:
    """(width, height), px: 80% with the typical longer side, 75% landscape, ILSVRC-like aspect ratios."""
    r, aspect = rng.random(), None
    for value, p in ASPECTS:
        if r < p:
            aspect = value
            break
        r -= p
    aspect = aspect or rng.uniform(1.0, 2.2)
    long_px = long_side if rng.random() < 0.8 else int(rng.integers(int(0.4 * long_side), 2 * long_side + 1))
    short_px = max(16, round(long_px / aspect))
    return (long_px, short_px) if rng.random() < 0.75 else (short_px, long_px)


def _octave(rng, w: int, h: int, div: int, sigma: float):
    """Gaussian noise drawn at 1/``div`` of the size and upscaled bicubically: texture of that scale."""
    import numpy as np
    from PIL import Image

    t = rng.normal(0, sigma, size=(max(2, h // div), max(2, w // div))).astype(np.float32)
    return np.asarray(Image.fromarray(t).resize((w, h), Image.BICUBIC))


def render(rng, w: int, h: int, detail: float):
    """A ``w``×``h`` RGB image: a smooth colour field with blurred shapes, plus luma texture at four scales and
    a little colour noise, both of strength ``detail`` (grey levels)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    field_ = rng.integers(0, 256, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
    img = Image.fromarray(field_).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        s = int(rng.integers(max(2, min(w, h) // 10), min(w, h) // 2 + 3))
        draw.ellipse((x0, y0, x0 + s, y0 + int(s * rng.uniform(0.5, 1.5))),
                     fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    a = np.asarray(img.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32)
    luma = (_octave(rng, w, h, 16, 2 * detail) + _octave(rng, w, h, 4, detail) + _octave(rng, w, h, 2, detail)
            + rng.normal(0, detail, size=(h, w)).astype(np.float32))
    a = a + luma[..., None] + rng.normal(0, detail / 4, size=a.shape).astype(np.float32)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def encode(img, quirk: str, quality: int) -> bytes:
    """The file's bytes: JPEG at ``quality`` (grayscale or CMYK for those quirks), PNG for the 'png' quirk."""
    out = io.BytesIO()
    if quirk == "png":
        img.save(out, "PNG")
    else:
        {"grayscale": img.convert("L"), "cmyk": img.convert("CMYK")}.get(quirk, img).save(out, "JPEG", quality=quality)
    return out.getvalue()


def write_images(jobs: list[ImageJob], spec: TreeSpec) -> list[tuple[int, int, str]]:
    """Render and write ``jobs`` (one pool task); returns (bytes, pixels, quirk) per image."""
    import numpy as np

    done = []
    for job in jobs:
        rng = np.random.default_rng(job.seed)
        w, h = draw_size(rng, spec.long_side)
        detail = float(np.clip(rng.lognormal(math.log(spec.detail_median), spec.detail_sigma), 0.5, 120))
        data = encode(render(rng, w, h, detail), quirk_of(job.split, job.number), spec.quality)
        Path(job.path).write_bytes(data)
        done.append((len(data), w * h, quirk_of(job.split, job.number)))
    return done


def wnids(n: int) -> list[str]:
    """``n`` made-up, sorted WordNet-style ids (n00000000, n00000137, ...)."""
    return [f"n{137 * i:08d}" for i in range(n)]


def tree_jobs(spec: TreeSpec, root: Path) -> list[ImageJob]:
    """Every distinct image of the tree, class folders created."""
    jobs = []
    for split, per_class in (("train", spec.train_per_class), ("val", spec.val_per_class)):
        for c, wnid in enumerate(wnids(spec.classes)):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                number = c * per_class + i
                jobs.append(ImageJob(str(root / split / wnid / f"{wnid}_{i:05d}.JPEG"), split, number,
                                     (spec.seed, c, i, int(split == "val"))))
    return jobs


def link_copies(spec: TreeSpec, root: Path) -> int:
    """List each train image ``copies - 1`` more times (relative symlinks ``c<k>_<name>``); returns the links."""
    n = 0
    for folder in sorted((root / "train").iterdir()):
        for f in sorted(p for p in folder.iterdir() if not p.name.startswith("c")):
            for k in range(1, spec.copies):
                (folder / f"c{k}_{f.name}").symlink_to(f.name)
                n += 1
    return n


def size_stats(done: list[tuple[int, int, str]]) -> dict:
    """Mean / p10 / median / p90 file size (KB), mean pixels and bytes per pixel, quirk counts."""
    sizes = sorted(d[0] for d in done)
    kb = {f"{name}_kb": sizes[min(len(sizes) - 1, int(q * len(sizes)))] / 1e3
          for name, q in (("p10", 0.1), ("median", 0.5), ("p90", 0.9))}
    quirks = {q: sum(1 for d in done if d[2] == q) for q in QUIRKS}
    return {"images": len(done), "mean_kb": sum(sizes) / len(sizes) / 1e3, **kb,
            "mean_pixels": sum(d[1] for d in done) / len(done),
            "bytes_per_pixel": sum(sizes) / sum(d[1] for d in done), "quirks": quirks}


def generate_tree(spec: TreeSpec, root: Path, procs: int) -> dict:
    """Write the tree with ``procs`` processes (reused when ``root/_spec.json`` records the same spec); returns
    its size statistics, generation seconds and counts."""
    marker = root / "_spec.json"
    if marker.exists() and json.loads(marker.read_text()).get("spec") == dataclasses.asdict(spec):
        return {**json.loads(marker.read_text())["stats"], "reused": True}
    shutil.rmtree(root, ignore_errors=True)
    jobs = tree_jobs(spec, root)
    t0 = time.monotonic()
    chunks = [jobs[i::procs * 4] for i in range(procs * 4)]
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("fork")) as pool:
        done = [d for part in pool.map(write_images, chunks, [spec] * len(chunks)) for d in part]
    seconds = time.monotonic() - t0
    links = link_copies(spec, root)
    stats = {**size_stats(done), "seconds": seconds, "images_per_s": len(done) / seconds, "procs": procs,
             "train_images": spec.classes * spec.train_per_class, "val_images": spec.classes * spec.val_per_class,
             "train_entries": spec.classes * spec.train_per_class + links, "reused": False}
    marker.write_text(json.dumps({"spec": dataclasses.asdict(spec), "stats": stats}))
    return stats


# ------------------------------------------------------------------------------------------------- processes
ERROR_RE = re.compile(r"\w*(Error|Exception)\b|error:|Killed|Aborted|Segmentation fault|out of memory")


class Stopped(Exception):
    """The check received SIGTERM or SIGINT: the running leg is killed, what ran is written."""


def _stop(signum, _frame):
    raise Stopped(f"stopped by signal {signal.Signals(signum).name}")


@dataclass(frozen=True)
class ProcResult:
    """A finished subprocess: exit code (None when killed at its timeout), wall seconds, its output."""

    rc: int | None
    wall_s: float
    output: str

    @property
    def timed_out(self) -> bool:
        return self.rc is None


def last_error_line(text: str) -> str:
    """The last line that reads like an error (a traceback's last line, ``train: error: ...``), else the last
    non-empty line; at most 300 characters."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    for line in reversed(lines):
        if ERROR_RE.search(line) and not line.startswith("Traceback"):
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of ``proc`` (the leader and its loader workers), SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _compat():
    """:mod:`pipeline.compat` (this script runs as ``python3 benchmarks/gpu_check.py``, the repo not on sys.path)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import pipeline.compat

    return pipeline.compat


def run_logged(cmd: list[str], env: dict, log_path: Path, title: str, timeout_s: float) -> ProcResult:
    """Run ``cmd`` in the repo root in its own process group, output appended to ``log_path`` as it comes;
    killed (the whole group) after ``timeout_s`` seconds."""
    with open(log_path, "a") as log:
        log.write(f"\n===== {title}: {' '.join(cmd)}\n")
        log.flush()
        start = os.path.getsize(log_path)
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                **_compat().new_process_group_kwargs())
        rc = None
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            pass
        finally:
            kill_group(proc)
        wall = time.monotonic() - t0
    with open(log_path, "rb") as log:
        log.seek(start)
        return ProcResult(rc, wall, log.read().decode("utf-8", "replace"))


def failure(res: ProcResult, timeout_s: float) -> str:
    """One line saying why a subprocess failed."""
    if res.timed_out:
        return f"timed out after {timeout_s:.0f} s (process group killed); last line: {last_error_line(res.output)}"
    return f"exit {res.rc}: {last_error_line(res.output)}"


# ---------------------------------------------------------------------------------------------------- legs
@dataclass(frozen=True)
class Paths:
    """Where one run keeps its data and per-leg files (``work``), and where the reported files go (``out``)."""

    work: Path
    out: Path

    @property
    def tree(self) -> Path:
        return self.work / "tree"

    @property
    def shards(self) -> Path:
        return self.work / "shards"

    def metrics(self, leg: str) -> Path:
        return self.work / "legs" / f"{leg}.json"

    def step_log(self, leg: str) -> Path:
        return self.work / "legs" / f"{leg}.steps.jsonl"


@dataclass(frozen=True)
class Context:
    """What every step of one run shares: ``preflight`` its checks, ``workers`` the loader workers the loader legs
    and io-bench use (``cfg.workers``, or fewer when /dev/shm is short)."""

    cfg: CheckConfig
    report: Report
    clock: Clock
    env: dict
    paths: Paths
    preflight: PreflightResult
    workers: int


def shard_dataset(ctx: Context) -> dict:
    """Shard the tree with ``python -m tools.shard_imagenet`` (resumes identical shards); returns its counts.

    Raises:
        RuntimeError: the sharder failed or timed out.
    """
    p, cores = ctx.paths, ctx.report.data["machine"]["cpu_cores"]
    cmd = [sys.executable, "-m", "tools.shard_imagenet", str(p.tree), "--out", str(p.shards), "--shard-size",
           str(ctx.cfg.shard_size), "--workers", str(cores), "--no-progress"]
    timeout = max(10.0, min(300.0, ctx.clock.left() - END_MARGIN_S))
    res = run_logged(cmd, ctx.env, ctx.report.log_path, "shard", timeout)
    if res.rc != 0:
        raise RuntimeError(f"shard-imagenet {failure(res, timeout)}")
    info = json.loads((p.shards / "_info.json").read_text())
    splits = {k: v["num_samples"] for k, v in info["splits"].items()}
    size = sum(f.stat().st_size for f in p.shards.glob("*.tar"))
    return {"seconds": res.wall_s, "samples": splits, "shard_bytes": size, "shards": len(list(p.shards.glob("*.tar")))}


def prepare_data(ctx: Context) -> str | None:
    """Generate and shard the tree; records the figures in the report; returns None, or why it failed."""
    cfg, report = ctx.cfg, ctx.report
    cores = report.data["machine"]["cpu_cores"]
    report.say(f"data: generating {cfg.tree.classes * (cfg.tree.train_per_class + cfg.tree.val_per_class)} "
               f"images on {cores} processes")
    try:
        stats = generate_tree(cfg.tree, ctx.paths.tree, cores)
        report.data["dataset"] = {"tree": stats}
        report.say(f"data: {stats['images']} images{' (reused)' if stats['reused'] else ''}, mean "
                   f"{stats['mean_kb']:.1f} KB (p10 {stats['p10_kb']:.0f}, p90 {stats['p90_kb']:.0f}), mean "
                   f"{stats['mean_pixels'] / 1e3:.0f}k px, {stats['bytes_per_pixel']:.2f} byte/px, quirks "
                   f"{stats['quirks']}, {stats['train_entries']} train entries; sharding")
        report.data["dataset"]["shards"] = shard_dataset(ctx)
    except (OSError, ValueError, RuntimeError) as exc:
        report.data["dataset"] = {**(report.data["dataset"] or {}), "error": str(exc)}
        report.say(f"data: failed: {exc}")
        return str(exc)
    sh = report.data["dataset"]["shards"]
    report.say(f"data: {sh['shards']} shards, {sh['shard_bytes'] / 2 ** 20:.0f} MiB, {sh['samples']}, "
               f"in {sh['seconds']:.1f} s")
    return None


def train_command(leg: LegSpec, ctx: Context) -> list[str]:
    """The ``python -m tools.train`` command line of a synthetic or loader leg, its step log streamed."""
    cfg, p = ctx.cfg, ctx.paths
    cmd = [sys.executable, "-m", "tools.train", "--loader", leg.loader, "--precision", leg.precision,
           "--batch-size", str(cfg.batch_size), "--image-size", str(cfg.image_size), "--no-eval",
           "--epochs", "1000", "--max-steps", str(leg.warmup_steps + leg.steps),
           "--warmup-steps", str(leg.warmup_steps), "--metrics-json", str(p.metrics(leg.name)),
           "--log-jsonl", str(p.step_log(leg.name)), "--log-every", str(leg.log_every), *leg.flags]
    if leg.kind == "synthetic":
        return cmd + ["--workers", "0"]
    return cmd + ["--workers", str(ctx.workers), "--data", str(p.tree if leg.loader == "folder" else p.shards)]


def leg_entry(leg: LegSpec, status: str, **extra) -> dict:
    """The results.json record of one leg."""
    return {"name": leg.name, "kind": leg.kind, "loader": leg.loader, "precision": leg.precision,
            "flags": list(leg.flags), "warmup_steps": leg.warmup_steps, "steps": leg.steps, "required": leg.required,
            "status": status, **extra}


def _cut(leg: LegSpec, res: ProcResult, timeout: float) -> dict:
    """Why a timed-out leg is incomplete: the end of the budget (its timeout was shortened) or its own timeout."""
    by = "budget" if timeout < leg.timeout_s - 0.5 else "timeout"
    what = (f"the budget ended: killed after {timeout:.0f} s (its own timeout {leg.timeout_s:.0f} s)" if by == "budget"
            else f"killed at its timeout ({timeout:.0f} s)")
    return {"cut_by": by, "reason": f"{what}; last line: {last_error_line(res.output)}"}


def timed_out_entry(leg: LegSpec, ctx: Context, res: ProcResult, base: dict) -> dict:
    """The ``incomplete`` record of a train leg killed at its timeout, with the rates of the steps it finished
    (from its streamed step log; none when it was killed before its first window)."""
    log = read_step_log(ctx.paths.step_log(leg.name))
    partial = partial_rates(log, leg.warmup_steps)
    return leg_entry(leg, INCOMPLETE, partial=partial, windows=window_entries(log, leg.warmup_steps),
                     **_cut(leg, res, base["timeout_s"]), **base)


def run_train_leg(leg: LegSpec, ctx: Context) -> dict:
    """Run one train leg under its timeout; returns its record: the leg's metrics JSON and its measured windows
    on success, the partial rates from its step log when it was killed at its timeout."""
    metrics, steps = ctx.paths.metrics(leg.name), ctx.paths.step_log(leg.name)
    metrics.parent.mkdir(parents=True, exist_ok=True)
    for f in (metrics, steps):
        if f.exists():
            f.unlink()
    cmd = train_command(leg, ctx)
    timeout = min(leg.timeout_s, ctx.clock.left() - END_MARGIN_S)
    res = run_logged(cmd, ctx.env, ctx.report.log_path, leg.name, timeout)
    base = {"wall_s": round(res.wall_s, 1), "timeout_s": round(timeout, 1), "cmd": cmd[1:]}
    if res.timed_out:
        return timed_out_entry(leg, ctx, res, base)
    if res.rc != 0:
        return leg_entry(leg, FAILED, error=failure(res, timeout), **base)
    try:
        m = json.loads(metrics.read_text())
    except (OSError, ValueError) as exc:
        return leg_entry(leg, FAILED, error=f"exit 0 but no readable metrics JSON ({exc})", **base)
    missing = [k for k in REQUIRED_METRICS if not isinstance(m.get(k), (int, float))]
    if missing:
        return leg_entry(leg, FAILED, error=f"metrics JSON lacks {', '.join(missing)}", **base)
    windows = window_entries(read_step_log(steps), leg.warmup_steps)
    return leg_entry(leg, OK, metrics=m, windows=windows, **base)


def run_io_bench(leg: LegSpec, ctx: Context) -> dict:
    """``python -m tools.io_bench`` on the shards (cpu loader, amp); its verdict lines, decoders, results and
    report. Killed at its timeout it is ``incomplete`` (io-bench writes its results at the end: no figures)."""
    out = ctx.paths.work / "io-bench"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "tools.io_bench", "--data", str(ctx.paths.shards), "--loader", "cpu",
           "--precision", leg.precision, "--workers", str(ctx.workers), *ctx.cfg.io_bench_flags, "--out", str(out)]
    timeout = min(leg.timeout_s, ctx.clock.left() - END_MARGIN_S)
    res = run_logged(cmd, ctx.env, ctx.report.log_path, leg.name, timeout)
    verdict = [ln[len("verdict: "):].strip() for ln in res.output.splitlines() if ln.startswith("verdict: ")]
    decoders = next((ln[len("io-bench: "):].strip() for ln in res.output.splitlines()
                     if ln.startswith("io-bench: ") and "(the cpu backend's)" in ln), None)
    decoders = decoders and decoders.replace(" (the cpu backend's)", "").replace("decode: ", "", 1)
    base = {"wall_s": round(res.wall_s, 1), "timeout_s": round(timeout, 1), "cmd": cmd[1:], "verdict": verdict,
            "decoders": decoders}
    if res.timed_out:
        return leg_entry(leg, INCOMPLETE, **_cut(leg, res, timeout), **base)
    if res.rc != 0:
        return leg_entry(leg, FAILED, error=failure(res, timeout), **base)
    copy_io_bench_files(out, ctx.paths.out)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
    return leg_entry(leg, OK, results=results, **base)


def copy_io_bench_files(src: Path, out: Path) -> None:
    """io-bench's report and plots into ``out`` as ``io_bench_*``, the report's image links renamed alike."""
    plots = ("loader_vs_workers.png", "stages.png")
    for name in plots:
        if (src / name).exists():
            shutil.copyfile(src / name, out / f"io_bench_{name}")
    if (src / "report.md").exists():
        text = (src / "report.md").read_text()
        for name in plots:
            text = text.replace(f"({name})", f"(io_bench_{name})")
        (out / "io_bench_report.md").write_text(text)


def run_preflight(cfg: CheckConfig, report: Report) -> tuple[PreflightResult, dict]:
    """The preflight (module docstring; :mod:`benchmarks.gpu_check_preflight`): wheels, imports, CUDA and
    decode_jpeg (one probe subprocess in the legs' environment), /dev/shm. Returns its result and that
    environment; recorded in the report before any leg."""
    t0 = time.monotonic()
    wheels = preflight_mod.prepare_carried_wheels(cfg.wheels, cfg.wheel_parts, cfg.work / "site", WHEELS_TIMEOUT_S)
    if wheels.site is not None:
        sys.path.insert(0, str(wheels.site))
        importlib.invalidate_caches()
    env = leg_env(cfg, wheels.site)
    cmd = preflight_mod.probe_command(cuda=cfg.mode == "full")
    res = run_logged(cmd, env, report.log_path, "preflight", PROBE_TIMEOUT_S)
    raw = preflight_mod.parse_probe(res.output)
    why = failure(res, PROBE_TIMEOUT_S) if res.timed_out or res.rc != 0 else "it printed no PREFLIGHT_JSON line"
    dali_carried = any("dali" in name.lower() for name in wheels.carried)
    probe_checks = preflight_mod.checks_from_probe(raw, why, dali_carried)
    shm, workers = preflight_mod.shm_check(cfg.workers, cfg.batch_size, cfg.image_size)
    result = PreflightResult((wheels.check, *probe_checks, shm), wheels.site, workers, time.monotonic() - t0)
    report.data["preflight"] = result.to_json()
    report.save()
    for c in result.checks:
        report.say(f"preflight: {c.name}: {c.status}: {c.detail}")
    return result, env


def preflight_block(leg: LegSpec, pre: PreflightResult) -> tuple[str, str] | None:
    """``(status, reason)`` when a preflight check ``leg`` needs did not pass, else None: DALI not installed
    (``not installed``) or not importable; CUDA (every leg: on the GPU machine all run on CUDA; in --smoke the
    check is n/a); decode_jpeg on the device (nvjpeg)."""
    if leg.loader == "dali":
        dali = pre.check(preflight_mod.DALI)
        if dali is not None and dali.status == preflight_mod.NA:
            return NOT_INSTALLED, dali.detail
    needs = [preflight_mod.CUDA] + ([preflight_mod.DECODE] if leg.loader == "nvjpeg" else [])
    needs += [preflight_mod.DALI] if leg.loader == "dali" else []
    for name in needs:
        why = pre.failed(name)
        if why is not None:
            return SKIPPED, f"preflight: {why}"
    return None


def skip_reason(leg: LegSpec, ctx: Context, data_error: str | None) -> tuple[str, str] | None:
    """``(status, reason)`` when ``leg`` does not run (not selected, a failed preflight check, not enough budget
    left, no data), else None."""
    if ctx.cfg.selected is not None and leg.name not in ctx.cfg.selected:
        return SKIPPED, "not selected (--legs)"
    blocked = preflight_block(leg, ctx.preflight)
    if blocked is not None:
        return blocked
    left = ctx.clock.left()
    if left < leg.need_s:
        return SKIPPED, (f"budget: {max(0.0, left):.0f} s left of {ctx.cfg.budget_s:.0f} s, the leg needs "
                         f"~{leg.need_s:.0f} s")
    if leg.kind != "synthetic" and data_error is not None:
        return SKIPPED, f"no data: {data_error}"
    return None


def run_one(leg: LegSpec, ctx: Context) -> dict:
    """Run ``leg`` (its ``running`` entry, the last in the report, is written first); returns its record. On a
    signal the leg's process group is already killed: its record (``incomplete``, the partial rates of its step
    log) replaces the running one, then :class:`Stopped` goes on."""
    legs = ctx.report.data["legs"]
    legs.append(leg_entry(leg, RUNNING, started_at_s=round(ctx.clock.elapsed(), 1)))
    ctx.report.save()
    ctx.report.say(f"{leg.name}: running ({ctx.clock.left():.0f} s of the budget left)")
    try:
        return run_io_bench(leg, ctx) if leg.kind == "io-bench" else run_train_leg(leg, ctx)
    except (OSError, ValueError) as exc:  # reading its files: the leg fails, the check goes on
        return leg_entry(leg, FAILED, error=f"gpu_check: {type(exc).__name__}: {exc}")
    except Stopped as exc:
        log = read_step_log(ctx.paths.step_log(leg.name))
        legs[-1] = leg_entry(leg, INCOMPLETE, cut_by="signal", reason=str(exc),
                             partial=partial_rates(log, leg.warmup_steps), windows=window_entries(log, leg.warmup_steps))
        raise


def run_legs(ctx: Context) -> None:
    """Every leg in order (the data made before the first one that reads it), results saved after each."""
    data_error, data_ready = None, False
    for leg in ctx.cfg.legs:
        if leg.kind != "synthetic" and not data_ready and skip_reason(leg, ctx, None) is None:
            data_error, data_ready = prepare_data(ctx), True
            ctx.report.save()
        why = skip_reason(leg, ctx, data_error if data_ready else "not prepared")
        if why is not None:
            ctx.report.data["legs"].append(leg_entry(leg, why[0], reason=why[1]))
        else:
            entry = run_one(leg, ctx)  # replaces its running entry
            ctx.report.data["legs"][-1] = entry
        entry = ctx.report.data["legs"][-1]
        ctx.report.save()
        ctx.report.say(f"{leg.name}: {entry['status']}" + _entry_note(entry))


def run_failures(data: dict) -> list[str]:
    """Why the check fails: each required leg that failed, was skipped for a reason other than the budget or
    ``--legs`` (a failed preflight check, no data), or was killed at its own timeout (not the budget's end) before
    its step log held one rate (a hang says nothing), one line each; empty when it passes."""
    out = []
    for e in data["legs"]:
        if not e.get("required"):
            continue
        if e["status"] == FAILED:
            out.append(f"{e['name']} (required) failed: {e.get('error')}")
        elif (e["status"] == INCOMPLETE and e.get("cut_by") == "timeout"
              and not (e.get("partial") or {}).get("p_train")):
            out.append(f"{e['name']} (required) was killed ({e.get('cut_by')}) before its first step-log window")
        elif e["status"] in (SKIPPED, NOT_INSTALLED) and not str(e.get("reason")).startswith(("budget:", "not sel")):
            out.append(f"{e['name']} (required) {e['status']}: {e.get('reason')}")
    return out


# ---------------------------------------------------------------------------------------------------- report
COLUMNS = ("leg", "status", "p_core", "p_train", "data wait", "vs synthetic", "p_train per window",
           "mem GiB", "torch peak alloc/res GiB", "wall s", "torch", "CUDA", "driver")


def _entry_note(entry: dict) -> str:
    """The progress line's tail for a finished leg."""
    m, partial = entry.get("metrics"), entry.get("partial")
    if m:
        return f": p_core {m['p_core']:.1f}, p_train {m['p_train']:.1f} img/s ({entry['wall_s']:.0f} s)"
    if entry["status"] == OK:
        return f" ({entry['wall_s']:.0f} s)"
    note = f": {entry.get('error') or entry.get('reason')}"
    if partial and partial.get("p_train"):
        note += f"; partial: {partial['steps']} steps at p_train {partial['p_train']:.1f} img/s"
    return note


def synthetic_baselines(legs: list[dict]) -> dict[str, float]:
    """p_core of each precision's eager synthetic leg (the denominator of ``vs synthetic``)."""
    return {e["precision"]: e["metrics"]["p_core"] for e in legs
            if e["kind"] == "synthetic" and e.get("metrics") and "--compile" not in e["flags"]}


def _fmt(value: float | None, pattern: str, prefix: str = "") -> str:
    return "-" if value is None else prefix + pattern.format(value)


def _figures(entry: dict, baselines: dict[str, float]) -> list[str]:
    """p_core, p_train, data wait, vs synthetic: from the metrics JSON, else ``~`` partial ones from the step log."""
    m, base = entry.get("metrics"), baselines.get(entry["precision"])
    if m:
        core, train, wait, mark = m["p_core"], m["p_train"], m["data_wait_fraction"], ""
    elif entry.get("partial"):
        part, mark = entry["partial"], "~"
        core, train, wait = part.get("p_core"), part.get("p_train"), part.get("data_wait_fraction")
    else:
        return ["-"] * 4
    return [_fmt(core, "{:.1f}", mark), _fmt(train, "{:.1f}", mark), _fmt(None if wait is None else 100 * wait,
            "{:.1f}%", mark), _fmt(train / base if base and train else None, "{:.2f}x", mark)]


def leg_row(entry: dict, baselines: dict[str, float]) -> list[str]:
    """One table row: the leg's figures (``~``: partial ones of an incomplete leg), its status with the reason
    when not ok, p_train per measured window (``*``: an epoch boundary inside), memory, wall time, versions."""
    m = entry.get("metrics") or {}
    why = "" if entry["status"] == OK else (entry.get("error") or entry.get("reason") or "")
    status = entry["status"] + (f": {why}" if why else "")
    if entry["kind"] == "io-bench" and entry["status"] == OK:
        status += " (verdict below)"
    wall = f"{entry['wall_s']:.0f}" if "wall_s" in entry else "-"
    versions = m.get("versions") or {}
    return [entry["name"], status.replace("|", "/"), *_figures(entry, baselines),
            window_summary(entry.get("windows") or []), str(m.get("mem", "-")), _torch_peaks(m) if m else "-", wall,
            *(str(versions.get(k) or "-") for k in ("torch", "cuda", "driver"))]


def _torch_peaks(m: dict) -> str:
    """torch's peak allocated / reserved GiB after warm-up (CUDA runs), or '-'."""
    a, r = m.get("mem_peak_allocated_gib_rank0"), m.get("mem_peak_reserved_gib_rank0")
    return f"{a:.1f}/{r:.1f}" if a is not None and r is not None else "-"


def _by_kind(legs: list[dict], describe) -> str:
    """``describe(kind, leg)`` of the first train leg of each kind (compile counted as its own), comma-joined."""
    seen = {}
    for leg in legs:
        if leg["kind"] != "io-bench":
            kind = "compile" if "--compile" in leg["flags"] else leg["kind"]
            seen.setdefault(kind, describe(kind, leg))
    return ", ".join(seen.values())


def step_summary(legs: list[dict]) -> str:
    """'synthetic 15+85, loader 25+150, ...': warm-up + measured steps by leg kind (and for compile)."""
    return _by_kind(legs, lambda kind, leg: f"{kind} {leg['warmup_steps']}+{leg['steps']}")


def _fewer_workers(data: dict) -> str:
    pre = data.get("preflight") or {}
    workers = pre.get("workers")
    return "" if workers is None or workers >= data["config"]["workers"] else \
        f" asked, run with --workers {workers} (/dev/shm short, see preflight)"


def _window_steps(legs: list[dict]) -> str:
    """'25 (loader), 20 (synthetic), ...': the step-log window of each leg kind."""
    return _by_kind(legs, lambda kind, leg: f"{leg['log_every']} ({kind})")


def preflight_lines(pre: dict | None) -> list[str]:
    """The preflight's checks, one line each (none before it ran)."""
    if not pre:
        return []
    return [f"preflight ({pre['seconds']:.1f} s):"] + [f"- {c['name']}: {c['status']}: {c['detail']}"
                                                        for c in pre["checks"]]


def header_lines(data: dict) -> list[str]:
    """What ran where: mode, device, sizes, data set."""
    legs, cfg = data["legs"], data["config"]
    ok = [e["metrics"] for e in legs if e.get("metrics")]
    mach = data["machine"]
    loader_precisions = "/".join(sorted({leg["precision"] for leg in cfg["legs"] if leg["kind"] == "loader"}))
    lines = [f"gpu_check ({data['mode']}): {data['elapsed_s']:.0f} s of a {data['budget_s']:.0f} s budget"
             f"{'' if data['finished'] else ' (not finished)'}; device {ok[0]['device_name'] if ok else '?'}; "
             f"nvidia-smi: {mach['gpu'] or 'none'}, driver {mach['driver'] or '-'}; {mach['cpu_cores']} cores; "
             f"python {mach['python']}",
             f"ResNet50 channels-last, batch {cfg['batch_size']}, {cfg['image_size']} px, no eval; loader legs: "
             f"{loader_precisions}, --workers {cfg['workers']}{_fewer_workers(data)}; steps (warm-up + measured): "
             f"{step_summary(cfg['legs'])}; p_train per window: one figure per {_window_steps(cfg['legs'])} "
             f"measured steps, * = an epoch boundary inside the window"]
    lines += preflight_lines(data.get("preflight"))
    ds = data.get("dataset") or {}
    if "tree" in ds:
        t = ds["tree"]
        lines.append(f"data: {t['images']} generated images ({t['train_images']} train x {cfg['tree']['copies']} "
                     f"entries, {t['val_images']} val), mean {t['mean_kb']:.1f} KB (p10 {t['p10_kb']:.0f}, median "
                     f"{t['median_kb']:.0f}, p90 {t['p90_kb']:.0f}), {t['mean_pixels'] / 1e3:.0f}k px mean, quirks "
                     f"{t['quirks']}, made in {t['seconds']:.1f} s on {t['procs']} processes")
    if "shards" in ds:
        sh = ds["shards"]
        lines.append(f"shards: {sh['shards']} tars, {sh['shard_bytes'] / 2 ** 20:.0f} MiB, samples {sh['samples']}, "
                     f"in {sh['seconds']:.1f} s")
    if "error" in ds:
        lines.append(f"data: failed: {ds['error']}")
    return lines


def format_report(data: dict) -> str:
    """The printed report: header lines, the Markdown table, io-bench's verdict lines."""
    baselines = synthetic_baselines(data["legs"])
    rows = [list(COLUMNS), ["---"] * len(COLUMNS)] + [leg_row(e, baselines) for e in data["legs"]]
    out = header_lines(data) + [""] + ["| " + " | ".join(r) + " |" for r in rows]
    for e in data["legs"]:
        if e["kind"] == "io-bench" and e.get("decoders"):
            out += ["", f"io-bench decoders (cpu backend): {e['decoders']}"]
        if e["kind"] == "io-bench" and e.get("verdict"):
            out += ["", "io-bench verdict:"] + [f"- {line}" for line in e["verdict"]]
    failures = run_failures(data)
    out += ["", "check FAILED:"] + [f"- {line}" for line in failures] if failures else []
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: the same code path in < 3 minutes")
    p.add_argument("--budget-s", type=float, help="wall-clock budget of the whole check, s (default: 480; smoke 175)")
    p.add_argument("--legs", help="comma list of leg names to run (the rest are reported as not selected)")
    p.add_argument("--workers", type=int, help="loader workers / DALI threads (default: 14; smoke 1)")
    p.add_argument("--out", type=Path, help="report folder (default: $OUT, else build/gpu_check)")
    p.add_argument("--work", type=Path, help="data and per-leg files; kept, and reused by a rerun with the same "
                                             "sizes (default: /tmp/gpu_check_work, smoke /tmp/gpu_check_work_smoke)")
    p.add_argument("--wheels", type=Path, default=REPO / ".gpu-wheels", help="wheel folder (default: .gpu-wheels)")
    p.add_argument("--wheel-parts", type=Path, default=REPO / ".gpu-wheels-parts",
                   help="folder of a wheel carried in parts (default: .gpu-wheels-parts)")
    args = p.parse_args(argv)
    if args.budget_s is not None and args.budget_s <= 0 or args.workers is not None and args.workers < 1:
        p.error("--budget-s must be > 0 and --workers >= 1")
    names = {leg.name for leg in full_legs()}
    if args.legs and not set(args.legs.split(",")) <= names:
        p.error(f"--legs: unknown {sorted(set(args.legs.split(',')) - names)}; legs are {', '.join(sorted(names))}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the check; exit 0 unless a required leg failed (or was skipped for a reason other than the budget or
    ``--legs``: :func:`run_failures`) or a signal stopped the check. Optional legs never fail it; a leg cut by
    the budget is ``incomplete``, never ``failed``."""
    cfg = build_config(parse_args(argv))
    clock = Clock(cfg.budget_s)
    report = Report(cfg, clock)
    cfg.work.mkdir(parents=True, exist_ok=True)
    handlers = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        pre, env = run_preflight(cfg, report)
        ctx = Context(cfg, report, clock, env, Paths(cfg.work, cfg.out), pre, pre.workers)
        run_legs(ctx)
        report.data["finished"] = True
    except Stopped as exc:
        report.data["stopped"] = str(exc)
        report.say(str(exc))
    finally:  # called in-process (tests): the caller's handlers again
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    report.data["failures"] = run_failures(report.data)
    report.save()
    print("\n" + format_report(report.data), flush=True)
    print(f"\nwrote {cfg.out}/ (results.json, table.md, gpu_check.log, io_bench_*)", flush=True)
    return 1 if report.data["failures"] or not report.data["finished"] else 0


if __name__ == "__main__":
    sys.exit(main())
