"""What one io-bench run measured: :class:`IoBenchResult` (``to_json`` is ``results.json``) and its parts: the
machine and resolved settings, repeated loader rates (:class:`RateStats`), the training runs' rates
(:class:`ComputeOnly`, :class:`EndToEnd`), the 1-worker stage-timer check (:class:`StageFidelity`) and the
pre-resized-shards lever (:class:`MaxSizeLever`). Per-stage seconds are :class:`pipeline.backends.StageSeconds`
(:meth:`IoBenchResult.stage_seconds`)."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field

from pipeline.backends import StageSeconds
from pipeline.backends.probe import StageCosts
from train.iobench.storage import ReadRate
from train.verdict import Verdict


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


def _decode_line() -> str:
    from pipeline.read.transforms import decode_line

    return decode_line()


@dataclass
class IoBenchResult:
    """Everything io-bench measured (``to_json`` is results.json); filled in step by step by the run."""

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
    decode: str = field(default_factory=_decode_line)

    @property
    def h2d_measured(self) -> bool:
        """The host→device copy was measured (an accelerator was there): stage seconds then hold it."""
        return self.h2d_seconds_per_image is not None

    def stage_seconds(self, kind: str) -> StageSeconds:
        """Seconds per image of backend ``kind``'s stages on one core, with the host→device copy where measured
        (0 otherwise). Raises KeyError when ``kind`` has no stage measurement."""
        seconds = self.stages[kind].seconds_per_image
        return seconds.with_h2d(self.h2d_seconds_per_image) if self.h2d_measured else seconds

    def to_json(self) -> dict:
        return {"machine": _json(self.machine), "config": _json(self.config), "storage": _json(self.storage),
                "stages": {kind: costs.to_json() for kind, costs in self.stages.items()},
                "h2d_seconds_per_image": self.h2d_seconds_per_image,
                "sweep": {kind: {str(workers): rates.to_json() for workers, rates in points.items()}
                          for kind, points in self.sweep.items()},
                "stage_fidelity": _json(self.stage_fidelity), "compute": _json(self.compute),
                "end_to_end": {kind: run.to_json() for kind, run in self.end_to_end.items()},
                "skipped": self.skipped, "max_size_lever": _json(self.max_size_lever),
                "verdict": _json(self.verdict), "decode": self.decode}


__all__ = ["ComputeOnly", "EndToEnd", "IoBenchResult", "Machine", "MaxSizeLever", "RateStats", "Settings",
           "StageFidelity", "TrainRates"]
