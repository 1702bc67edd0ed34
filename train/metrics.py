"""FlagPerf's ResNet50 metrics in two named sets: ``flagperf`` (FlagPerf's own definitions, to the letter) and
``steady`` (this project's unperturbed steady-state figures).

The metrics (FlagPerf's vendor pages, e.g. github.com/FlagOpen/FlagPerf training/nvidia/resnet50-pytorch/README.md):
e2e_time (s), p_whole, p_train, p_core (img/s), acc1 (%), mem (GiB used / total).

``flagperf`` (:class:`FlagPerfFigures`, :func:`flagperf_figures`), as FlagPerf's case computes them
(``training/benchmarks/resnet50/pytorch/run_pretraining.py`` and ``train/trainer.py``), on rank 0:

==========  =====================================================================================================
e2e_time    s, from the start of the run after imports (FlagPerf: ``time.time()`` in ``__main__``) to its end; it
            holds the initial evaluation before training (``--initial-eval``, FlagPerf always does one)
images      ``len(dataset)`` added per finished epoch (the partial last batch and DistributedSampler's padding do
            not matter); an epoch cut short (``--max-steps``, a resume) adds the images it trained
p_whole     images / the train loop's time (epochs and their evaluations; the initial evaluation is outside)
p_train     images / the sum over epochs of each epoch's time without its evaluation (loader start-up included)
p_core      images / the sum of every step's time (FlagPerf: ``time.time()`` around each step; on an accelerator
            that times kernel launches only, so here the step clock's synchronised time: CUDA events or a
            device-wide synchronise per step, ``p_core_timing``)
acc1        % of the last evaluation: the unweighted mean of per-batch top-1 over every rank's val batches
            (FlagPerf's DistributedSampler pads val to a multiple of the world size with repeated images, none for
            ImageNet's 50,000 at 8 or 16 ranks; here a rank's val share is not padded, and the mean is over all
            ranks' batches, which is FlagPerf's ``sum / (steps x world size)`` when ranks have equal batch counts)
==========  =====================================================================================================

Warm-up steps count everywhere. ``steady`` (:class:`SteadyFigures`, :func:`steady_figures`): the steps after
warm-up only (``--warmup-steps``), images = measured steps x global batch, times the maximum over ranks, e2e from
process start, acc1 exact (every val image once over all ranks); checkpoint writes and a resume's replay are left
out of both sets (FlagPerf's case has neither). Since compute ⊂ (loop − eval) ⊂ loop in both sets,
p_core ≥ p_train ≥ p_whole always holds. mem (both): peak device memory used / device total (see train/memory.py;
FlagPerf samples nvidia-smi / mx-smi every 5 s); on CPU, peak process RSS / physical RAM.

Beside the host's data wait (the share of train time the host spent in ``next()`` of the train iterator), the
``steady`` window also gives the GPU's idle share (:func:`train.clock.gpu_idle_fraction`; issue 22 item 3:
"GPU idle = 1 − Σ step time / loop time"): over the same measured steps and the same interval as p_train and
``data_wait_fraction`` (from the warm-up mark to the loop's end, less evaluations, checkpoint writes and the resume
replay: ``loop - eval`` of :class:`RunTimes`, each time the maximum over ranks),
``1 - compute / (loop - eval)``, where compute is the sum of the steps' times from the CUDA events bracketing each
step on the training stream (``--timing events``; None in ``sync`` mode and off CUDA, where the step times are
host times). It is what the accelerator really lost: a decode on the GPU (the nvjpeg backend) that the host waits
for shows as data wait even when it runs beside a step, so the data wait overstates the I/O cost when the work
overlaps; the idle share counts only the time with no training step on the device (a decode on another stream
counts as idle; gaps inside a step, e.g. launch-bound kernels, count as busy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum

from train.memory import MemoryUse


class FigureSet(str, Enum):
    """Which definitions a set of figures follows (see the module docstring)."""

    FLAGPERF = "flagperf"
    STEADY = "steady"


@dataclass(frozen=True)
class RunTimes:
    """Measured times of one run (s), each the maximum over ranks.

    Attributes:
        e2e: process start → end of run.
        loop: train loop wall time, evaluation included.
        eval: per-epoch evaluation time, summed.
        compute: training steps (device-synchronised), summed.
        data: waits for the next train batch (incl. host→device copy), summed.
    """

    e2e: float
    loop: float
    eval: float
    compute: float
    data: float


def _rate(images: int, seconds: float, name: str) -> float:
    if seconds <= 0:
        raise ValueError(f"{name} time must be > 0 s, got {seconds}")
    return images / seconds


@dataclass(frozen=True)
class SteadyFigures:
    """The ``steady`` set (see the module docstring) plus what it was computed from: e2e_time in s, p_* in img/s,
    acc1 in %, mem in GiB, trained_images the p_* numerator (warm-up left out). Field names are the metrics JSON's
    top-level keys (:mod:`train.report`)."""

    e2e_time: float
    p_whole: float | None  # None: no training (``--test-only``)
    p_train: float | None
    p_core: float | None
    acc1: float | None  # None when the run did not evaluate
    mem_used_gib: float
    mem_total_gib: float
    trained_images: int
    figure_set: FigureSet = FigureSet.STEADY

    @property
    def mem(self) -> str:
        return f"{self.mem_used_gib:.1f}/{self.mem_total_gib:.1f}"

    def to_json(self) -> dict:
        d = asdict(self)
        d["figure_set"] = self.figure_set.value
        d["mem"] = self.mem
        return d


def steady_figures(trained_images: int, times: RunTimes, acc1: float | None, mem: MemoryUse) -> SteadyFigures:
    """The steady-state figures from the times after warm-up (maxima over ranks).

    Raises:
        ValueError: a time that the formulas divide by is not positive.
    """
    return SteadyFigures(
        e2e_time=times.e2e,
        p_whole=_rate(trained_images, times.loop, "loop"),
        p_train=_rate(trained_images, times.loop - times.eval, "loop - eval"),
        p_core=_rate(trained_images, times.compute, "compute"),
        acc1=acc1,
        mem_used_gib=mem.used_gib,
        mem_total_gib=mem.total_gib,
        trained_images=trained_images,
    )


@dataclass(frozen=True)
class FlagPerfTimes:
    """What FlagPerf's figures are computed from, rank 0's own (s, images, %).

    Attributes:
        e2e: run start after imports → end of run (initial evaluation included).
        initial_eval: the evaluation before training (None: none ran).
        loop: the train loop, per-epoch evaluations included (FlagPerf's ``traintime``).
        epochs_train: the epochs without their evaluations, summed (``noevaltime``).
        compute: every step, warm-up included, summed (``purecomputetime``, synchronised).
        images: ``len(dataset)`` per finished epoch, the trained images of a cut-short one (``num_trained_samples``).
        acc1: mean of per-batch top-1 of the last evaluation (None: none ran).
        converged: whether an evaluation reached ``target_acc1`` (None: no target).
    """

    e2e: float
    initial_eval: float | None
    loop: float
    epochs_train: float
    compute: float
    images: int
    acc1: float | None
    converged: bool | None


@dataclass(frozen=True)
class FlagPerfFigures:
    """The ``flagperf`` set (see the module docstring): the metrics JSON's ``flagperf`` object and the vendor
    page's row. e2e_time in s, p_* in img/s, acc1 in %; ``p_core_timing``: how step times were taken
    (``events`` / ``sync``: both synchronised, unlike FlagPerf's host timer); the times the rates divide by (s,
    rank 0's): ``loop_s`` (p_whole), ``epochs_train_s`` (p_train), ``compute_s`` (p_core)."""

    e2e_time: float
    p_whole: float | None
    p_train: float | None
    p_core: float | None
    acc1: float | None
    trained_images: int
    converged: bool | None
    initial_eval_s: float | None
    p_core_timing: str
    loop_s: float | None = None
    epochs_train_s: float | None = None
    compute_s: float | None = None
    figure_set: FigureSet = FigureSet.FLAGPERF

    def to_json(self) -> dict:
        d = asdict(self)
        d["figure_set"] = self.figure_set.value
        return d


def flagperf_figures(times: FlagPerfTimes, p_core_timing: str) -> FlagPerfFigures:
    """FlagPerf's figures: images / loop, / epochs without evaluation, / steps (see :class:`FlagPerfTimes`).

    Raises:
        ValueError: a time that the formulas divide by is not positive.
    """
    images = times.images
    return FlagPerfFigures(
        e2e_time=times.e2e, p_whole=_rate(images, times.loop, "loop"),
        p_train=_rate(images, times.epochs_train, "epochs without evaluation"),
        p_core=_rate(images, times.compute, "compute"), acc1=times.acc1, trained_images=images,
        converged=times.converged, initial_eval_s=times.initial_eval, p_core_timing=p_core_timing,
        loop_s=times.loop, epochs_train_s=times.epochs_train, compute_s=times.compute)


TABLE_HEADER = ("| config | precision | fix_hp | e2e_time | p_whole | p_train | p_core | acc | mem |\n"
                "| ------ | --------- | ------ | -------- | ------- | ------- | ------ | --- | --- |")


def _cell(value: float | None, fmt: str) -> str:
    return "/" if value is None else format(value, fmt)


def flagperf_row(figures: SteadyFigures | FlagPerfFigures, config: str, precision: str, fix_hp: str,
                 mem: str) -> str:
    """One row of FlagPerf's results table (its README's columns), markdown; ``/`` where a figure does not exist."""
    acc = "/" if figures.acc1 is None else f"{figures.acc1:.1f}%"
    return (f"| {config} | {precision} | {fix_hp} | {figures.e2e_time:.0f} | {_cell(figures.p_whole, '.1f')} "
            f"| {_cell(figures.p_train, '.1f')} | {_cell(figures.p_core, '.1f')} | {acc} | {mem} |")
