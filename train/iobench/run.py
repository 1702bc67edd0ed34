"""``io-bench`` measurements: where the input pipeline's time goes, and whether it holds the accelerator back.

On the user's own shards and machine it measures, in this order:

1. storage: raw sequential read rate of the train shards (page cache dropped first where the OS allows;
   :mod:`train.iobench.storage`);
2. stages: per-image cost of read / decode / augment / collate on one core for each backend that has a stage
   probe in the registry, measured by the backend's own code (:mod:`train.iobench.stages`), plus the
   host→device copy where an accelerator exists;
3. loader sweep: loader-only img/s (batches on the device, normalised, no model) for each backend and worker
   count, after warm-up batches, ``repeat`` windows each, median and spread;
4. compute-only: the training step fed by the ``synthetic`` backend (the same model, precision, batch and
   image size): its p_core, exactly as ``train --loader synthetic`` measures it (same code path);
5. end to end: ``train`` with each real backend: p_train, p_core, data wait;
6. a verdict (:mod:`train.iobench.verdict`) with the levers: more workers (measured in the sweep, or extrapolated),
   DALI (measured), pre-resized shards (``shard-imagenet --max-size``; extrapolated from decoded pixels).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TextIO

import torch

from pipeline.backends import DataInput, LoaderConfig, LoaderKind, Split, backend_spec, build_loader
from pipeline.compat import check_numpy_interop
from pipeline.dataset import DatasetInfo, load_info
from pipeline.progress import CountProgress
from pipeline.backends.probe import StageCosts
from train.config import OptimConfig, TrainConfig
from train.precision import Precision, prepare_tf32_env, resolve_precision
from train.distributed import cores_per_rank
from train.iobench.storage import ReadRate
from train.iobench.verdict import Evidence, Lever, Verdict, decide

# The backend the verdict is about (the sweep's first otherwise) and whose stage timers are checked against the
# loader's wall time at 1 worker (``stage_fidelity``): the default training backend.
PRIMARY = LoaderKind.CPU


@dataclass(frozen=True)
class IoBenchConfig:
    """Options of one io-bench run.

    Attributes:
        data: shard folder written by shard-imagenet (or its URL prefix: the cpu backend only).
        loaders: backends to measure (unavailable ones are skipped with the reason in the report, as are dali and
            nvjpeg on a ``cuda`` device that is not NVIDIA's; any backend that reads data, nvjpeg included; those
            without a stage probe get no per-stage line).
        workers: worker counts of the sweep; None = 1, 2, 4, ... and the number of cores.
        batch_size, image_size, precision: of the loaders and of the training step.
        repeat: timed windows per sweep point; loader_batches: batches per window (at least 5 per worker);
            warmup_batches: untimed batches first (plus one per worker).
        train_steps: measured steps of the compute-only and end-to-end training runs (after ``warmup_steps``).
        warmup_steps: training steps run first and left out of the rates.
        stage_samples: images per backend in the per-stage measurement.
        folder_root: ImageFolder tree for the ``folder`` baseline (None: the source recorded in ``_info.json``
            when it is a local class-folder tree).
        max_size: ``--max-size`` value the pre-resized-shards lever is extrapolated for (None: 1.43 x image size,
            i.e. 320 px for 224).
        device: where batches go and the step runs (None: CUDA when available, else CPU).
    """

    data: Path | str
    loaders: tuple[LoaderKind, ...] = (LoaderKind.CPU, LoaderKind.DALI, LoaderKind.FOLDER)
    workers: tuple[int, ...] | None = None
    batch_size: int = 64
    image_size: int = 224
    precision: Precision = Precision.AUTO
    repeat: int = 3
    loader_batches: int = 10
    warmup_batches: int = 2
    train_steps: int = 10
    warmup_steps: int = 2
    stage_samples: int = 256
    folder_root: Path | None = None
    max_size: int | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        for flag, value, low in (("--batch-size", self.batch_size, 1), ("--image-size", self.image_size, 8),
                                 ("--repeat", self.repeat, 1), ("--loader-batches", self.loader_batches, 1),
                                 ("--steps", self.train_steps, 1), ("--warmup-batches", self.warmup_batches, 0),
                                 ("--warmup-steps", self.warmup_steps, 0), ("stage_samples", self.stage_samples, 1)):
            if value < low:
                raise ValueError(f"{flag} must be >= {low}, got {value}")


@dataclass(frozen=True)
class RateStats:
    """Repeated rate measurements (img/s): median and spread."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def to_json(self) -> dict:
        return {"median": self.median, "min": min(self.samples), "max": max(self.samples), "runs": list(self.samples)}


@dataclass(frozen=True)
class TrainRates:
    """The rates of one ``train`` run io-bench started: p_core and p_train in img/s."""

    p_core: float
    p_train: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ComputeOnly(TrainRates):
    """The compute-only run (``train --loader synthetic`` with io-bench's model, precision, batch and image size):
    its rates, the precision and device it ran with, and its steps (warm-up included)."""

    precision: str
    device: str
    device_name: str
    steps: int


@dataclass(frozen=True)
class EndToEnd(TrainRates):
    """One end-to-end ``train`` run with a real backend: its rates, the share of the train loop spent waiting for
    data (0..1) and its steps."""

    data_wait_fraction: float
    steps: int


@dataclass(frozen=True)
class Machine:
    """Where io-bench ran: host cores, CPU name, device (``cuda`` / ``cpu``) and its name, torch version."""

    cpu_cores: int
    cpu: str
    device: str
    device_name: str
    torch: str


@dataclass(frozen=True)
class Settings:
    """The options one io-bench run used, resolved (precision per device, the sweep's worker counts, the folder
    tree found), and the train split's size."""

    data: str
    batch_size: int
    image_size: int
    precision: str
    repeat: int
    loader_batches: int
    warmup_batches: int
    train_steps: int
    warmup_steps: int
    workers: list[int]
    train_samples: int
    folder_root: str | None


@dataclass(frozen=True)
class StageFidelity:
    """At 1 worker: the cpu backend's stage seconds summed over the timed windows (``stage_sum_s``) against those
    windows' wall time (``wall_s``), both in s."""

    stage_sum_s: float = 0.0
    wall_s: float = 0.0

    @property
    def ratio(self) -> float | None:
        return self.stage_sum_s / self.wall_s if self.wall_s else None

    def add(self, stage_s: float, wall_s: float) -> "StageFidelity":
        return StageFidelity(self.stage_sum_s + stage_s, self.wall_s + wall_s)

    def to_json(self) -> dict:
        return {"stage_sum_s": self.stage_sum_s, "wall_s": self.wall_s, "ratio": self.ratio}


@dataclass(frozen=True)
class MaxSizeLever:
    """Shards re-made with ``--max-size``: the mean decoded pixels per train image now and after, and the loader
    rate (img/s) extrapolated with decode time taken as proportional to decoded pixels."""

    max_size: int
    mean_pixels: float
    mean_pixels_after: float
    rate: float


def _json(part):
    """A result part as JSON: a dataclass's fields (its own ``to_json`` first), or None."""
    if part is None:
        return None
    return part.to_json() if hasattr(part, "to_json") else dataclasses.asdict(part)


@dataclass
class IoBenchResult:
    """Everything io-bench measured (``to_json`` is results.json)."""

    machine: Machine
    config: Settings
    storage: ReadRate | None = None
    stages: dict[str, StageCosts] = field(default_factory=dict)
    h2d_seconds_per_image: float | None = None
    sweep: dict[str, dict[int, RateStats]] = field(default_factory=dict)
    stage_fidelity: StageFidelity | None = None
    compute: ComputeOnly | None = None
    end_to_end: dict[str, EndToEnd] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    max_size_lever: MaxSizeLever | None = None
    verdict: Verdict | None = None
    # the cpu backend's decoders, the line io-bench prints at start (pipeline.read.transforms.decode_line)
    decode: str = field(default_factory=lambda: _decode_line())

    def to_json(self) -> dict:
        return {"machine": _json(self.machine), "config": _json(self.config), "storage": _json(self.storage),
                "stages": {k: c.to_json() for k, c in self.stages.items()},
                "h2d_seconds_per_image": self.h2d_seconds_per_image,
                "sweep": {k: {str(w): r.to_json() for w, r in v.items()} for k, v in self.sweep.items()},
                "stage_fidelity": _json(self.stage_fidelity), "compute": _json(self.compute),
                "end_to_end": {k: e.to_json() for k, e in self.end_to_end.items()},
                "skipped": self.skipped, "max_size_lever": _json(self.max_size_lever),
                "verdict": _json(self.verdict), "decode": self.decode}


def _decode_line() -> str:
    from pipeline.read.transforms import decode_line

    return decode_line()


def default_sweep(cores: int) -> tuple[int, ...]:
    """1, 2, 4, ... below ``cores``, and ``cores`` itself."""
    out, w = [], 1
    while w < cores:
        out.append(w)
        w *= 2
    return tuple(out + [cores])


def batches_forever(loader) -> Iterator:
    """The loader's batches across epochs (``set_epoch`` 0, 1, 2, ...), never stopping."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def time_windows(batches: Iterator, n: int, warmup: int, repeat: int, sync: Callable[[], None],
                 on_window_start: Callable[[], None] | None = None,
                 on_window_end: Callable[[float], None] | None = None) -> RateStats:
    """img/s of ``repeat`` windows of ``n`` batches each after ``warmup`` untimed batches (median + spread).

    ``on_window_start`` / ``on_window_end(wall_s)`` let a caller read the backend's counters per window.
    """
    for _ in range(warmup):
        next(batches)
    sync()
    rates = []
    for _ in range(repeat):
        if on_window_start:
            on_window_start()
        t0 = time.perf_counter()
        images = 0
        for _ in range(n):
            images += next(batches).labels.shape[0]
        sync()
        wall = time.perf_counter() - t0
        if on_window_end:
            on_window_end(wall)
        rates.append(images / wall)
    return RateStats(tuple(rates))


def h2d_seconds_per_image(batch_size: int, image_size: int, device: torch.device, repeat: int = 10) -> float | None:
    """Seconds per image of a pinned uint8 NHWC batch copied to ``device`` and normalised there; None on CPU."""
    if device.type != "cuda":
        return None
    from pipeline.backends import normalize_on_device

    host = torch.empty((batch_size, image_size, image_size, 3), dtype=torch.uint8).pin_memory()
    normalize_on_device(host, device)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        normalize_on_device(host, device)
    torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / (repeat * batch_size)


def mean_pixels(info: DatasetInfo, limit: int = 200, max_size: int | None = None) -> float:
    """Mean decoded pixels per train image over the first ``limit`` samples (JPEG headers only); with
    ``max_size``, as if every image's longer side had been limited to it (``shard-imagenet --max-size``)."""
    import simplejpeg

    from pipeline.read.tarstream import iter_samples

    total, n = 0.0, 0
    for path in info.shard_paths("train"):
        for _, members in iter_samples(path):
            try:
                h, w, _, _ = simplejpeg.decode_jpeg_header(members["jpg"])
            except (KeyError, ValueError):
                continue
            scale = min(1.0, max_size / max(w, h)) if max_size else 1.0
            total += round(w * scale) * round(h * scale)
            n += 1
            if n >= limit:
                return total / n
    return total / max(n, 1)


def _run_quiet(cfg: TrainConfig, log: io.StringIO) -> dict:
    from train.loop import run

    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        return run(cfg)


def _measure_training(s: "_Setup", result: IoBenchResult, loaders: list[LoaderKind]) -> None:
    """The compute-only run (synthetic backend) and one end-to-end run per backend with all cores as workers, into
    ``result.compute`` / ``result.end_to_end``: the one place that reads ``train``'s results."""
    c, log = s.c, io.StringIO()
    s.progress(f"compute-only: {c.train_steps} steps with the synthetic backend")
    m = _run_quiet(_train_config(c, LoaderKind.SYNTHETIC, 0, s.folder_root), log)
    result.compute = ComputeOnly(m.p_core, m.p_train, m.precision, m.device, m.device_name, m.steps)
    for kind in loaders:
        s.progress(f"end to end: {kind.value}, {c.train_steps} steps, {s.cores} worker(s)")
        m = _run_quiet(_train_config(c, kind, s.cores, s.folder_root), log)
        result.end_to_end[kind.value] = EndToEnd(m.p_core, m.p_train, m.data_wait_fraction, m.steps)


def _train_config(c: IoBenchConfig, kind: LoaderKind, workers: int, folder_root) -> TrainConfig:
    data = folder_root if backend_spec(kind).needs is DataInput.IMAGE_TREE else c.data
    return TrainConfig(data=data, loader=kind,
                       loader_cfg=LoaderConfig(batch_size=c.batch_size, image_size=c.image_size, workers=workers),
                       optim=OptimConfig(warmup_epochs=0.0), epochs=10 ** 6,
                       max_steps=c.warmup_steps + c.train_steps, precision=c.precision, eval=False,
                       warmup_steps=c.warmup_steps)


def resolve_folder_root(c: IoBenchConfig, info: DatasetInfo) -> Path | None:
    """The ImageFolder tree of the ``folder`` baseline: given, or the sharder's recorded class-folder source."""
    if c.folder_root is not None:
        return Path(c.folder_root)
    if info.remote:
        return None
    try:  # shard-imagenet records its source tree in report.json
        report = json.loads((Path(info.root) / "report.json").read_text())
    except (OSError, ValueError):
        return None
    src = report.get("source")
    if src and report.get("layout") == "class-folders" and (Path(src) / "train").is_dir():
        return Path(src)
    return None


@dataclass(frozen=True)
class _Setup:
    """What every step of one run needs: its options, the shard folder, the device, the host's cores, the sweep's
    worker counts, the ImageFolder tree of image-tree backends (None: none found) and the progress callback."""

    c: IoBenchConfig
    info: DatasetInfo
    device: torch.device
    cores: int
    sweep: tuple[int, ...]
    folder_root: Path | None
    progress: Callable[[str], None]

    def inputs(self, kind: LoaderKind) -> tuple[DatasetInfo | None, Path | None]:
        """``(info, data_root)`` a loader of ``kind`` reads: the shards, or (image-tree backends) the tree."""
        if backend_spec(kind).needs is DataInput.IMAGE_TREE:
            return None, self.folder_root
        return self.info, None


def _setup(c: IoBenchConfig, progress: Callable[[str], None]) -> _Setup:
    """Check ``c`` and resolve what it leaves open (device, cores, sweep, folder tree).

    Raises:
        pipeline.dataset.DatasetError: ``c.data`` is not a usable shard folder.
        ValueError: bad options.
    """
    info = load_info(c.data)
    device = torch.device(c.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cores = cores_per_rank()  # one process: all the cores it may use
    folder_root = resolve_folder_root(c, info)
    if c.folder_root is not None and not (Path(c.folder_root) / "train").is_dir():
        raise ValueError(f"--folder-root {c.folder_root}: no train/ folder in it; give the ImageFolder tree the "
                         f"shards were made from (train/<class>/...)")
    return _Setup(c, info, device, cores, c.workers or default_sweep(cores), folder_root, progress)


def _new_result(s: _Setup) -> IoBenchResult:
    """An empty result holding the machine and the run's configuration."""
    import platform

    c, device = s.c, s.device
    return IoBenchResult(
        machine=Machine(s.cores, platform.processor() or platform.machine(), str(device),
                        torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU only)",
                        torch.__version__),
        config=Settings(str(c.data), c.batch_size, c.image_size, resolve_precision(c.precision, device).value,
                        c.repeat, c.loader_batches, c.warmup_batches, c.train_steps, c.warmup_steps, list(s.sweep),
                        s.info.split("train").num_samples, str(s.folder_root) if s.folder_root else None))


def _why_not_measured(kind: LoaderKind, s: _Setup) -> str | None:
    """Why backend ``kind`` cannot be measured here (one line), or None: no input for it, not installed, a
    backend that needs an NVIDIA GPU on another vendor's ``cuda`` device (:func:`train.build.check_loader_device`:
    ``--loader dali needs an NVIDIA GPU; this run's device is MetaX C500 (cuda): use --loader cpu``), local files
    only with a URL dataset."""
    from train.build import check_loader_device

    spec = backend_spec(kind)
    if spec.needs is DataInput.IMAGE_TREE and s.folder_root is None:
        return "no ImageFolder tree: pass --folder-root DIR (the class-folder tree the shards were made from)"
    try:
        check_loader_device(kind, s.device)
    except ValueError as exc:
        return str(exc)
    missing = spec.available()
    if missing is not None:
        return missing
    if spec.local_only and s.info.remote:
        return "reads local files only; the data is a URL"
    return None


def _usable_loaders(s: _Setup, skipped: dict[str, str]) -> list[LoaderKind]:
    """The requested backends that can be measured here; the others go into ``skipped`` with the reason."""
    usable = []
    for kind in s.c.loaders:
        why = _why_not_measured(kind, s)
        if why is None:
            usable.append(kind)
        else:
            skipped[kind.value] = why
    return usable


@dataclass(frozen=True)
class BenchStep:
    """One measurement of an io-bench run: the 1-based ``index`` of the run's ``total`` (known once the usable
    backends are), ``what`` it measures (e.g. ``loader-only: cpu, 2 worker(s)``)."""

    index: int
    total: int
    what: str

    def __str__(self) -> str:
        return f"[{self.index}/{self.total}] {self.what}"


def planned_steps(s: _Setup, loaders: list[LoaderKind]) -> int:
    """How many :class:`BenchStep` a run measuring ``loaders`` takes: storage, a stage probe per backend that has
    one, the sweep (backends × worker counts), compute-only and one end-to-end run per backend."""
    probes = sum(1 for k in loaders if backend_spec(k).stage_probe is not None)
    return 1 + probes + len(loaders) * len(s.sweep) + 1 + len(loaders)


def _numbered(progress: Callable[[BenchStep], None], total: int) -> Callable[[str], None]:
    """A step callback that numbers the steps of a run of ``total`` for ``progress``."""
    index = [0]

    def step(what: str) -> None:
        index[0] += 1
        progress(BenchStep(index[0], total, what))

    return step


class BenchProgress:
    """io-bench's progress on ``stream`` (default ``sys.stderr``), a :class:`BenchStep` callback: a tqdm bar over
    the run's steps with its ETA on a terminal, otherwise one plain line per step (no ``\r``; see
    :mod:`pipeline.progress`). Call :meth:`close` at the end (``done`` False after an error)."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None):
        self.stream, self.live = stream, live
        self.shown: CountProgress | None = None

    def __call__(self, step: BenchStep) -> None:
        if self.shown is None:
            self.shown = CountProgress(step.total, "io-bench", "steps", self.stream, live=self.live, every_s=0.0,
                                       note=step.what)
            if step.index == 1:
                return
        self.shown.update_to(step.index - 1, note=step.what)

    def close(self, done: bool = True) -> None:
        if self.shown is not None:
            self.shown.close(done, self.shown.total)


def run_io_bench(c: IoBenchConfig, progress: Callable[[BenchStep], None] = print) -> IoBenchResult:
    """Measure everything listed in the module docstring; ``progress`` receives each step (a :class:`BenchStep`:
    its number, the run's total and what it measures) as it starts.

    Raises:
        pipeline.dataset.DatasetError: ``c.data`` is not a usable shard folder.
        ValueError: bad options.
    """
    check_numpy_interop()
    prepare_tf32_env(False)  # its training runs are fp32 without TF32, as train's default (MetaX: before CUDA starts)
    s = _setup(c, lambda what: None)  # numbered below, once the usable backends are known
    result = _new_result(s)
    loaders = _usable_loaders(s, result.skipped)
    s = dataclasses.replace(s, progress=_numbered(progress, planned_steps(s, loaders)))
    _measure_input(s, result, loaders)
    _measure_training(s, result, loaders)
    result.verdict = _verdict(c, result, s.info, s.cores)
    if result.verdict is not None:
        result.verdict = dataclasses.replace(result.verdict,
                                             lines=result.verdict.lines + tuple(_end_to_end_lines(result)))
    return result


def _measure_input(s: _Setup, result: IoBenchResult, loaders: list[LoaderKind]) -> None:
    """Storage read rate, per-stage costs (backends with a stage probe), the host→device copy and the
    loader-only sweep, into ``result``."""
    from train.iobench.stages import measure_stages
    from train.iobench.storage import storage_read_rate

    c = s.c
    s.progress("storage: reading the train shards")
    result.storage = storage_read_rate(s.info, "train", max_bytes=2 * 1024 ** 3, cold=True)
    for kind in (k for k in loaders if backend_spec(k).stage_probe is not None):
        s.progress(f"stages: {kind.value}")
        costs = measure_stages(kind, s.info, s.inputs(kind)[1], c.image_size, c.batch_size, c.stage_samples)
        result.stages[kind.value] = costs
    result.h2d_seconds_per_image = h2d_seconds_per_image(c.batch_size, c.image_size, s.device)
    # Loader-only: the main process only receives batches; on a CPU device its idle OpenMP threads would
    # otherwise spin and take cores from the loader's workers (measured here: 4x fewer img/s at 2 cores).
    threads = torch.get_num_threads()
    if s.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        _sweep(s, result, loaders)
    finally:
        torch.set_num_threads(threads)


def _end_to_end_lines(r: IoBenchResult) -> list[str]:
    """What the end-to-end runs add: their rates, and whether the step slowed down with a loader running."""
    lines = []
    compute = r.compute.p_core if r.compute else None
    fastest_step = max((e.p_core for e in r.end_to_end.values()), default=0.0)
    if compute and fastest_step > 1.25 * compute:
        lines.append(f"check: the step alone ran at {fastest_step:.1f} img/s in an end-to-end run but "
                     f"{compute:.1f} img/s compute-only: the compute-only run was disturbed (a busy machine?); "
                     f"re-run with more --steps")
    for kind, e in r.end_to_end.items():
        lines.append(f"end to end with the {kind} loader: {e.p_train:.1f} img/s (data wait "
                     f"{100 * e.data_wait_fraction:.0f}%, step alone {e.p_core:.1f} img/s).")
        if compute and e.p_core < 0.8 * compute:
            lines.append(f"with the {kind} loader running, the training step itself ran at "
                         f"{e.p_core / compute:.2f}x its compute-only rate: loader and step compete for the "
                         f"same host cores{' (the step runs on the CPU here)' if r.machine.device == 'cpu' else ''}.")
    return lines


def _sweep(s: _Setup, result: IoBenchResult, loaders: list[LoaderKind]) -> None:
    """Loader-only img/s of every backend at every worker count into ``result.sweep``."""
    c = s.c
    sync = (lambda: torch.cuda.synchronize(s.device)) if s.device.type == "cuda" else (lambda: None)
    for kind in loaders:
        result.sweep[kind.value] = {}
        for w in s.sweep:
            s.progress(f"loader-only: {kind.value}, {w} worker(s)")
            info, root = s.inputs(kind)
            cfg = LoaderConfig(batch_size=c.batch_size, image_size=c.image_size, workers=w, data_root=root)
            loader = build_loader(kind, cfg, Split.TRAIN, info, s.device)
            hooks = _fidelity_hooks(loader, result) if kind is PRIMARY and w == 1 else {}
            # a window must hold many batches per worker: the batches the other workers finished while the
            # first was awaited would otherwise inflate the rate (by up to workers / window batches)
            n = max(c.loader_batches, 5 * w)
            batches = batches_forever(loader)
            result.sweep[kind.value][w] = time_windows(batches, n, c.warmup_batches + w, c.repeat, sync, **hooks)
            batches.close()
            loader.close()


def _fidelity_hooks(loader, result: IoBenchResult) -> dict:
    """At 1 worker the worker's stage seconds of a window's batches should add up to the window's wall time."""
    at_start = []

    def start():
        at_start[:] = [loader.stats().stages]

    def end(wall: float):
        total = sum((loader.stats().stages - at_start[0]).seconds.values())
        result.stage_fidelity = (result.stage_fidelity or StageFidelity()).add(total, wall)

    return {"on_window_start": start, "on_window_end": end}


def _verdict(c: IoBenchConfig, r: IoBenchResult, info: DatasetInfo, cores: int) -> Verdict | None:
    if not r.sweep or r.compute is None:
        return None
    primary = PRIMARY.value if PRIMARY.value in r.sweep else next(iter(r.sweep))
    points = r.sweep[primary]
    at = max(points)  # the most workers measured (normally all cores)
    input_rate = points[at].median
    stage_s = r.stages[primary].seconds_per_image if primary in r.stages else None
    if stage_s and r.h2d_seconds_per_image is not None:
        stage_s = {**stage_s, "h2d copy": r.h2d_seconds_per_image}
    per_core = points[1].median if 1 in points else None
    levers = []
    for kind, pts in r.sweep.items():
        if kind != primary:
            levers.append(Lever(f"--loader {kind}", pts[max(pts)].median, f"measured, {max(pts)} workers"))
    if stage_s and stage_s.get("decode"):
        max_size = c.max_size or round(c.image_size * 10 / 7)
        before, after = mean_pixels(info), mean_pixels(info, max_size=max_size)
        total = sum(stage_s.values())
        new_total = total - stage_s["decode"] * (1 - after / before)  # decode time taken as ∝ decoded pixels
        rate = input_rate * total / new_total
        r.max_size_lever = MaxSizeLever(max_size, before, after, rate)
        if after < before:
            levers.append(Lever(f"shards re-made with shard-imagenet --max-size {max_size}", rate,
                                f"extrapolated: decode cost x {after / before:.2f} (decoded pixels)"))
    return decide(Evidence(compute_rate=r.compute.p_core, input_rate=input_rate, stage_seconds=stage_s,
                           per_core_rate=per_core, workers=at, cores=cores, levers=tuple(levers)))


__all__ = ["IoBenchConfig", "IoBenchResult", "RateStats", "run_io_bench", "default_sweep", "time_windows",
           "mean_pixels", "BenchStep", "BenchProgress", "planned_steps"]
