"""What a finished run reports: the typed :class:`RunReport`, its console summary and its metrics JSON.

A report is built of frozen parts whose field names are the metrics JSON's keys, in the JSON's order (the one
place those names are defined; the figures' are :class:`train.metrics.SteadyFigures`' (top level) and
:class:`train.metrics.FlagPerfFigures`' (the ``flagperf`` object)). A part held in
an *inline* field lays its keys out flat in the JSON, where it stands; an inline part that is None adds none
(a ``--test-only`` report has no training part, a training report no checkpoint-test part). Units: seconds
(``*_s``, times), img/s (``p_*``, ``eval_img_per_s``), GiB (``mem*``), % (accuracies).

The parts: :class:`EvalCounts`, :class:`Training` (with :class:`Checkpointing`, :class:`MeasuredTimes`),
:class:`CheckpointTest`, :class:`Placement`, :class:`MemoryDetail`, :class:`Software`, :class:`Labels`,
:class:`Origin`, :class:`Numerics`, :class:`DatasetSummary`; also :func:`config_label` and :func:`run_verdict`.
:mod:`train.assemble` builds a report from a finished run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.backends import StageSeconds
from train.environment import Environment, RunIdentity
from train.verdict import Evidence, Verdict, decide
from train.memory import MemoryUse
from train import distributed
from train.clock import gpu_idle_fraction
from train.metrics import TABLE_HEADER, FlagPerfFigures, RunTimes, SteadyFigures, flagperf_row


def inline():
    """A field holding a part whose keys stand flat in the JSON (nothing when the part is None)."""
    return field(metadata={"inline": True})


def _json_value(value):
    if hasattr(value, "to_json"):
        return value.to_json()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return list(value) if isinstance(value, tuple) else value


class Part:
    """A report part: :meth:`to_json` gives its fields as JSON keys in field order, inline parts laid out flat."""

    def to_json(self) -> dict:
        out: dict = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("inline"):
                out.update(value.to_json() if value is not None else {})
            else:
                out[f.name] = _json_value(value)
        return out


@dataclass(frozen=True)
class EvalCounts(Part):
    """The last evaluation beside its top-1 (the FlagPerf row's acc1): top-5 in % (None: no evaluation), the
    images it counted over all ranks and the val split's size (0 without a val loader)."""

    acc5: float | None
    eval_images: int
    val_samples: int


@dataclass(frozen=True)
class Checkpointing(Part):
    """Resume and checkpoint writes of a training run; both times are left out of p_* (s)."""

    resumed_from_step: int  # 0 = a fresh run; steps counts the whole run, resumed part included
    resumed_from: str | None  # the checkpoint file resumed from
    checkpoint_s: float  # rank 0's checkpoint writes + barriers
    resume_skip_s: float  # positioning the resumed epoch's loader
    checkpoints_written: tuple[str, ...]


@dataclass(frozen=True)
class MeasuredTimes(Part):
    """How the run was timed (``events`` / ``sync``), the device-wide syncs its clocks made on rank 0, the share
    of train time (loop − eval) spent waiting for data (host), the share of it in which the GPU ran no training
    step (``gpu_idle_fraction``, 0..1: ``1 - compute / (loop - eval)`` with compute from CUDA events, see
    :func:`train.clock.gpu_idle_fraction`; None when the step times are host times: ``sync`` mode, or off
    CUDA), and the measured times (s): max over ranks, rank 0's."""

    timing: str
    device_syncs_rank0: int
    data_wait_fraction: float
    gpu_idle_fraction: float | None
    times_s: RunTimes
    rank0_times_s: RunTimes

    @classmethod
    def of(cls, timing: str, device_syncs: int, times: RunTimes, rank0: RunTimes,
           device_step_times: bool) -> MeasuredTimes:
        """Times over ranks and rank 0's; both shares from the former, over the same steps and interval (train
        time: loop − eval). ``device_step_times``: the step times are the device's (CUDA events), see
        :attr:`train.clock.RunClock.device_step_times`."""
        train = times.loop - times.eval
        idle = gpu_idle_fraction(times.compute, train) if device_step_times else None
        return cls(timing, device_syncs, times.data / max(train, 1e-9), idle, times, rank0)

    def gpu_idle_line(self) -> str:
        """The console line of the GPU idle share beside the data wait (or why it is not measured)."""
        if self.gpu_idle_fraction is not None:
            return (f"GPU idle: {100 * self.gpu_idle_fraction:.1f}% of train time, beside data wait "
                    f"{100 * self.data_wait_fraction:.1f}% (1 - steps' CUDA-event time / train time, max over ranks)")
        why = ("timing sync: step times include the device waits; --timing events on CUDA measures it"
               if self.timing != "events" else "no CUDA events: the step times are host times")
        return f"GPU idle: not measured ({why})"


@dataclass(frozen=True)
class Training(Part):
    """What the train loop did: steps (the whole run, a resumed part included), the recipe's outcome, the
    warm-up left out of p_*, the loader's skipped samples, the steps of every rank, times and the I/O verdict."""

    steps: int
    ema_acc1: float | None  # top-1 (%) of the EMA weights at the last evaluation
    target_acc1: float | None
    target_reached_epoch: int | None  # 1-based epoch after which --target-acc1 stopped the run
    final_train_image_size: int  # px, the last train loader's (progressive resizing)
    channels_last: bool
    compile: bool
    optimizer_impl: str  # SGD's step: fused, foreach or for-loop (pipeline.compat.SgdImpl; fused needs torch 2.3+)
    grad_scaler_syncs_per_step: bool  # amp without fused SGD: GradScaler reads the inf flag on the host every step
    checkpointing: Checkpointing = inline()
    warmup_steps: int  # left out of p_whole / p_train / p_core
    warmup_s_rank0: float  # s
    total_trained_images: int  # trained_images (the p_* numerator) leaves out the warm-up; this counts all
    skipped_samples: int  # failed to decode in the loader (all ranks); named on stderr
    skipped_examples_rank0: tuple[str, ...]
    rank_steps_min: int
    rank_steps_max: int
    epochs: int
    times: MeasuredTimes = inline()
    verdict: Verdict
    loader_stage_seconds_per_image_rank0: StageSeconds | None  # s/img by loader stage, on one core (JSON: by name)
    global_batch_size: int


@dataclass(frozen=True)
class CheckpointTest(Part):
    """``--test-only``: the checkpoint evaluated, its step, its EMA's top-1 (%) and the model pass's time (s)
    and rate (img/s)."""

    test_only: bool = field(default=True, init=False)
    checkpoint: str
    checkpoint_step: int
    ema_acc1: float | None
    eval_s: float
    eval_img_per_s: float


@dataclass(frozen=True)
class Placement(Part):
    """What ran where: ranks, precision, decode backend, device and its name."""

    world_size: int
    precision: str
    loader: str
    device: str
    device_name: str


@dataclass(frozen=True)
class TorchPeaks(Part):
    """Torch's peak allocated / reserved GiB on rank 0 since the end of warm-up and the sampled device-wide
    peak (CUDA; None on CPU)."""

    mem_peak_allocated_gib_rank0: float | None
    mem_peak_reserved_gib_rank0: float | None
    mem_device_used_gib_nvml_rank0: float | None


@dataclass(frozen=True)
class MemoryDetail(Part):
    """What FlagPerf's ``mem`` measured (``mem_kind``) and, for a training run, torch's own peaks."""

    mem_kind: str
    peaks: TorchPeaks | None = inline()

    @classmethod
    def of(cls, mem: MemoryUse, with_peaks: bool) -> MemoryDetail:
        peaks = TorchPeaks(mem.allocated_gib, mem.reserved_gib, mem.device_used_gib) if with_peaks else None
        return cls(mem.kind, peaks)


@dataclass(frozen=True)
class Software(Part):
    """The software versions the run depended on (``versions``: :func:`train.environment.software_versions`)."""

    versions: dict


@dataclass(frozen=True)
class Labels(Part):
    """FlagPerf's labels: config (``<CUDA|CPU>x<nodes>x<procs per node>``), fix_hp, argv."""

    config: str
    fix_hp: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Origin(Part):
    """Where the run ran and which run it was: the machine (:class:`train.environment.Environment`, the vendor
    page's 环境配置) and :class:`train.environment.RunIdentity` (``start_time`` ISO-8601 UTC, ``host``,
    ``project_version``, ``git_commit``; inline, none for a report built without it)."""

    environment: Environment
    identity: RunIdentity | None = field(default=None, metadata={"inline": True})


@dataclass(frozen=True)
class Numerics(Part):
    """The numerics the run trained with: its precision mode and the FlagPerf page's label for it, parameter /
    input / autocast dtypes, loss scaling, TF32 (the ``--tf32`` mode, torch's two flags, the mechanism, MetaX's
    variable), cuDNN's benchmark / deterministic flags and the memory format."""

    precision: str
    page_label: str
    param_dtype: str
    input_dtype: str
    autocast_dtype: str | None
    grad_scaler: bool
    tf32: str
    tf32_matmul: bool | None
    tf32_cudnn: bool | None
    tf32_mechanism: str | None
    metax_use_tf32: str | None
    cudnn_benchmark: bool
    cudnn_deterministic: bool
    channels_last: bool


@dataclass(frozen=True)
class DatasetSummary(Part):
    """The data the run used: ``--data`` (path or URL; None: synthetic), its name (the folder's), images per split
    (all ranks), classes, and the SHA-256 (hex) of its manifest file's bytes (``_info.json`` with a
    ``manifest``: :func:`train.environment.manifest_sha256`; None without one): equal hashes, the same shards."""

    data: str | None
    name: str
    train_samples: int
    val_samples: int
    num_classes: int
    manifest_sha256: str | None = None


@dataclass(frozen=True)
class RunReport(Part):
    """The report of one ``train`` run: the steady figures (top level), the evaluation, what the training (or the
    checkpoint test) did, where it ran, memory detail, software versions, labels, the machine and the run's
    identity, FlagPerf's figures (``flagperf``), the numerics, the data and the resolved config. :meth:`to_json` is
    the metrics JSON; :mod:`train.assemble` builds it from a finished run."""

    steady: SteadyFigures = inline()
    eval: EvalCounts = inline()
    training: Training | None = inline()
    test: CheckpointTest | None = inline()
    placement: Placement = inline()
    memory: MemoryDetail = inline()
    software: Software = inline()
    labels: Labels = inline()
    origin: Origin = inline()
    flagperf: FlagPerfFigures | None = None
    numerics: Numerics | None = None
    dataset: DatasetSummary | None = None
    resolved_config: dict | None = None

    @property
    def p_core(self) -> float | None:
        """The steady p_core, img/s (None: ``--test-only``)."""
        return self.steady.p_core

    @property
    def p_train(self) -> float | None:
        """The steady p_train, img/s (None: ``--test-only``)."""
        return self.steady.p_train

    @property
    def data_wait_fraction(self) -> float | None:
        return self.training.times.data_wait_fraction if self.training is not None else None

    @property
    def gpu_idle_fraction(self) -> float | None:
        """The steady GPU idle share, 0..1 (None: not measured, or ``--test-only``; see :class:`MeasuredTimes`)."""
        return self.training.times.gpu_idle_fraction if self.training is not None else None

    @property
    def steps(self) -> int:
        """Train steps of the run (0: ``--test-only``)."""
        return self.training.steps if self.training is not None else 0

    @property
    def precision(self) -> str:
        return self.placement.precision

    @property
    def device(self) -> str:
        return self.placement.device

    @property
    def device_name(self) -> str:
        return self.placement.device_name

    def row(self, figures: SteadyFigures | FlagPerfFigures | None = None) -> str:
        """The FlagPerf table: header and this run's row of ``figures`` (default: the steady set; its precision cell
        the mode's name, the flagperf set's the label FlagPerf's pages give it: ``bf16`` for ``fp16``)."""
        figures = figures if figures is not None else self.steady
        label = self.precision
        if isinstance(figures, FlagPerfFigures) and self.numerics is not None:
            label = self.numerics.page_label
        return (f"{TABLE_HEADER}\n"
                f"{flagperf_row(figures, self.labels.config, label, self.labels.fix_hp, self.steady.mem)}")

    def rows(self) -> str:
        """Both figure sets, each named: FlagPerf's (when the run has it), then the steady one."""
        steady = (f"steady figures (warm-up steps left out, max over ranks, exact top-1):\n{self.row()}")
        if self.flagperf is None:
            return steady
        return (f"flagperf figures (FlagPerf's definitions: warm-up included, len(dataset) per epoch, rank 0, "
                f"mean of per-batch top-1; precision as FlagPerf's pages label it):\n{self.row(self.flagperf)}\n"
                f"{steady}")

    def summary(self) -> str:
        """The console summary: the FlagPerf row with, for training, rank 0's time split and the verdict; for a
        checkpoint test, its result line first."""
        if self.training is None:
            return f"{_test_line(self)}\n{self.rows()}"
        steady, training = self.steady, self.training
        times = training.times.rank0_times_s  # one rank's own times add up; the row uses the maximum over ranks
        train_s = times.loop - times.eval
        split = (f"time split (s, rank 0): loop {times.loop:.1f} = train {train_s:.1f} (compute {times.compute:.1f}, "
                 f"data wait {times.data:.1f}, other {train_s - times.compute - times.data:.1f}) + eval "
                 f"{times.eval:.1f}; p_core/p_train = {steady.p_core / steady.p_train:.2f}; timing "
                 f"{training.times.timing}")
        return "\n".join([self.rows(), split, training.times.gpu_idle_line(),
                          *(f"verdict: {line}" for line in training.verdict.lines)])

    def write_json(self, path: Path | None) -> None:
        """Write :meth:`to_json` to ``path`` atomically (its folder made); nothing when ``path`` is None.

        Raises:
            pipeline.fsio.WriteFailed: it cannot be written (disk full, ...): one line; the previous file intact.
        """
        if path is not None:
            from pipeline.fsio import atomic_write_text

            atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n", "the metrics JSON")


def _test_line(report: RunReport) -> str:
    test, counts, ema = report.test, report.eval, report.test.ema_acc1
    return (f"test: {test.checkpoint} (step {test.checkpoint_step}): val top-1 {report.steady.acc1:.2f}% top-5 "
            f"{counts.acc5:.2f}% on {counts.eval_images} images" + (f", EMA top-1 {ema:.2f}%" if ema is not None else "")
            + f", {test.eval_img_per_s:.1f} img/s")


def config_label(env: distributed.DistEnv) -> str:
    """FlagPerf's config label: ``<CUDA|CPU>x<nodes>x<processes per node>``."""
    per_node = distributed.local_world_size()
    return f"{'CUDA' if env.device.type == 'cuda' else 'CPU'}x{max(1, env.world_size // per_node)}x{per_node}"


def run_verdict(p_core: float, p_train: float, data_wait_fraction: float, stage_seconds: StageSeconds | None,
                workers: int) -> Verdict:
    """The I/O verdict of a finished run from its own rates (img/s), data wait share and the loader's per-image
    stage seconds on one core (see :mod:`train.verdict`); cores: this rank's share of the node's."""
    return decide(Evidence(compute_rate=p_core, input_rate=p_train, stage_seconds=stage_seconds,
                           workers=max(1, workers), cores=distributed.cores_per_rank(),
                           data_wait_fraction=data_wait_fraction, from_run=True))
