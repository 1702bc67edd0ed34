"""Is a run I/O-bound or compute-bound, by how much, why, and what would close the gap.

Pure formulas over measured rates, shared by ``io-bench`` (loader-only and compute-only measurements) and by
``train``'s end-of-run summary (its own timers). Definitions:

* compute rate C (img/s): what the training step sustains with its input ready (p_core; ``--loader synthetic``).
* input rate I (img/s): what the input pipeline delivers: measured loader-only, or from a training run
  p_train (the rate the loop actually ran at, which the input caps when it is the bottleneck).
* I/O-bound when I < ``IO_BOUND_BELOW`` × C: the step would wait for data more than 10% of the time
  (threshold of this project, not from elsewhere); compute-bound otherwise.
* per-core input rate r (img/s per core): 1 / (sum of the per-stage seconds per image on one core, a
  :class:`pipeline.backends.StageSeconds`), or the loader rate at one worker. Cores needed per accelerator to
  feed it = ceil(C / r), as loader workers scale about linearly with cores until the cores run out (checked by
  io-bench's worker sweep).

Holds :class:`Evidence` (what is known), :func:`decide` (the formulas) and its :class:`Verdict` with the
levers (:class:`Lever`); imports nothing of ``train`` (stage "metrics": train's report and io-bench both use it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.backends import StageSeconds

IO_BOUND_BELOW = 0.9  # input rate / compute rate under which a run is called I/O-bound


@dataclass(frozen=True)
class Lever:
    """One way to raise the input rate, with its effect.

    Attributes:
        name: what to do, in words (``"--workers 8"``, ``"--loader dali"``, ``"--max-size 320 shards"``).
        rate: input rate (img/s) with it.
        basis: ``"measured"`` or ``"extrapolated: <how>"``.
    """

    name: str
    rate: float
    basis: str


@dataclass(frozen=True)
class Evidence:
    """What is known about one configuration.

    Attributes:
        compute_rate: C, img/s (p_core).
        input_rate: I, img/s (loader-only rate, or p_train of a run).
        stage_seconds: per-image seconds on one core by stage (read, decode, augment, collate, and the
            host→device copy where measured), when known.
        per_core_rate: r, img/s per loader core, when known (else derived from ``stage_seconds``).
        workers: loader workers (processes / DALI threads) per accelerator in the measurement.
        cores: CPU cores available per accelerator.
        levers: alternatives measured or extrapolated by the caller (DALI, pre-resized shards, ...).
        data_wait_fraction: share of the train loop spent waiting for data, when measured in a run.
        from_run: ``input_rate`` is a training run's p_train (a lower bound of what the input could deliver
            when the run is compute-bound), not a loader-only measurement.
    """

    compute_rate: float
    input_rate: float
    stage_seconds: StageSeconds | None = None
    per_core_rate: float | None = None
    workers: int = 1
    cores: int = 1
    levers: tuple[Lever, ...] = ()
    data_wait_fraction: float | None = None
    from_run: bool = False


@dataclass(frozen=True)
class Verdict:
    """The conclusion, with the numbers behind it.

    Attributes:
        io_bound: True when the input pipeline is the bottleneck.
        ratio: input rate / compute rate (below 1: the accelerator waits).
        dominant_stage: the stage with the largest per-image cost, and its share of the total, when known.
        cores_needed: loader cores per accelerator to reach the compute rate, when the per-core rate is known.
        levers: every lever considered, best first, including ``more workers`` where cores are left.
        lines: the verdict in plain words, one sentence per line.
    """

    io_bound: bool
    ratio: float
    dominant_stage: tuple[str, float] | None
    cores_needed: int | None
    levers: tuple[Lever, ...]
    lines: tuple[str, ...] = field(default=())

    def to_json(self) -> dict:
        return {"io_bound": self.io_bound, "ratio": self.ratio,
                "dominant_stage": list(self.dominant_stage) if self.dominant_stage else None,
                "cores_needed": self.cores_needed,
                "levers": [{"name": lv.name, "rate": lv.rate, "basis": lv.basis} for lv in self.levers],
                "lines": list(self.lines)}


def _known_stages(evidence: Evidence) -> StageSeconds | None:
    """The evidence's stage seconds when they are known and add up to more than 0, else None."""
    stages = evidence.stage_seconds
    return stages if stages is not None and stages.total > 0 else None


def per_core_rate(evidence: Evidence) -> float | None:
    """r in img/s per core: given, or 1 / sum of the per-stage seconds per image."""
    if evidence.per_core_rate:
        return evidence.per_core_rate
    stages = _known_stages(evidence)
    return 1.0 / stages.total if stages is not None else None


def _dominant_stage(evidence: Evidence) -> tuple[str, float] | None:
    """(the stage with the most seconds per image, its share of all stages), when stage times are known; the
    first of equal ones in stage order, the host→device copy (``"h2d copy"``) last."""
    stages = _known_stages(evidence)
    if stages is None:
        return None
    name, seconds = max(stages.items(with_h2d=True), key=lambda pair: pair[1])
    return name, seconds / stages.total


def _levers(evidence: Evidence, per_core: float | None, io_bound: bool) -> list[Lever]:
    """The caller's levers plus "all cores as workers" (extrapolated from the per-core rate), fastest first."""
    levers = list(evidence.levers)
    cores, workers = evidence.cores, evidence.workers
    if per_core and workers < cores and io_bound:
        # a run's input rate is what the loop ran at, not what its loader could give: use the per-core rate
        rate = (cores * per_core if evidence.from_run
                else min(cores * per_core, evidence.input_rate * cores / max(workers, 1)))
        levers.append(Lever(f"--workers {cores} (all {cores} cores)", rate,
                            f"extrapolated: {per_core:.0f} img/s per core x {cores} cores"))
    return sorted(levers, key=lambda lv: lv.rate, reverse=True)


def _headline(evidence: Evidence, ratio: float, io_bound: bool) -> str:
    """The verdict's first line: I/O- or compute-bound, with the two rates."""
    input_rate, compute_rate = evidence.input_rate, evidence.compute_rate
    if evidence.from_run:
        rates = (f"the train loop ran at {input_rate:.0f} img/s, the training step alone at {compute_rate:.0f} "
                 f"img/s (p_train/p_core {ratio:.2f})")
        return (f"I/O-bound: {rates}; the input pipeline is the bottleneck." if io_bound else
                f"compute-bound: {rates}; the input keeps up.")
    if io_bound:
        return (f"I/O-bound: the input pipeline delivers {input_rate:.0f} img/s, the training step could take "
                f"{compute_rate:.0f} img/s; the accelerator waits {100 * (1 - ratio):.0f}% of the time "
                f"({1 / ratio:.2f}x more input needed).")
    return (f"compute-bound: the input pipeline delivers {input_rate:.0f} img/s, the training step takes "
            f"{compute_rate:.0f} img/s ({ratio:.3g}x headroom in the input).")


def _lever_lines(evidence: Evidence, levers: list[Lever]) -> list[str]:
    """One line per lever (does it close the gap?), and a note when none does."""
    closing = [lv for lv in levers if lv.rate >= IO_BOUND_BELOW * evidence.compute_rate]
    lines = []
    for lv in levers:
        enough = "closes the gap" if lv in closing else f"{lv.rate / evidence.compute_rate:.2f}x of compute"
        lines.append(f"lever: {lv.name}: {lv.rate:.0f} img/s ({enough}; {lv.basis}).")
    if not closing:
        lines.append("no single lever measured here closes the gap: combine them, or add CPU cores per accelerator.")
    return lines


def decide(evidence: Evidence) -> Verdict:
    """Turn measured rates into a :class:`Verdict` (formulas in the module docstring).

    Raises:
        ValueError: a rate is not positive.
    """
    if evidence.compute_rate <= 0 or evidence.input_rate <= 0:
        raise ValueError(f"rates must be > 0 (compute {evidence.compute_rate}, input {evidence.input_rate})")
    ratio = evidence.input_rate / evidence.compute_rate
    io_bound = ratio < IO_BOUND_BELOW
    dominant = _dominant_stage(evidence)
    per_core = per_core_rate(evidence)
    cores_needed = math.ceil(evidence.compute_rate / per_core) if per_core else None
    levers = _levers(evidence, per_core, io_bound)
    lines = [_headline(evidence, ratio, io_bound)]
    if evidence.data_wait_fraction is not None:
        lines.append(f"data wait: {100 * evidence.data_wait_fraction:.0f}% of the train loop.")
    if dominant:
        lines.append(f"dominant stage: {dominant[0]} ({100 * dominant[1]:.0f}% of a loader core's time per image).")
    if cores_needed is not None:
        lines.append(f"cores per accelerator to reach the compute rate: {cores_needed} at {per_core:.0f} img/s per "
                     f"core (this machine gives {evidence.cores}).")
    if io_bound:
        lines += _lever_lines(evidence, levers)
    return Verdict(io_bound, ratio, dominant, cores_needed, tuple(levers), tuple(lines))
