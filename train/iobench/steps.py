"""io-bench's progress: the numbered measurements of a run (:class:`BenchStep`, :func:`planned_steps`,
:func:`numbered`) and how they are shown (:class:`BenchProgress`: a bar or plain lines on stderr)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, TextIO

from pipeline.backends import LoaderKind, backend_spec
from pipeline.progress import CountProgress, ProgressDisplay


@dataclass(frozen=True)
class BenchStep:
    """One measurement of an io-bench run: the 1-based ``index`` of the run's ``total`` (known once the usable
    backends are), ``what`` it measures (e.g. ``loader-only: cpu, 2 worker(s)``)."""

    index: int
    total: int
    what: str

    def __str__(self) -> str:
        return f"[{self.index}/{self.total}] {self.what}"


def planned_steps(sweep: Sequence[int], loaders: Sequence[LoaderKind]) -> int:
    """How many :class:`BenchStep` a run measuring ``loaders`` at the worker counts ``sweep`` takes: storage, a
    stage probe per backend that has one, the sweep (backends × worker counts), compute-only and one end-to-end
    run per backend."""
    probes = sum(1 for kind in loaders if backend_spec(kind).stage_probe is not None)
    return 1 + probes + len(loaders) * len(sweep) + 1 + len(loaders)


def numbered(progress: Callable[[BenchStep], None], total: int) -> Callable[[str], None]:
    """A step callback that numbers the steps of a run of ``total`` for ``progress``."""
    index = [0]

    def step(what: str) -> None:
        index[0] += 1
        progress(BenchStep(index[0], total, what))

    return step


class BenchProgress:
    """io-bench's progress on ``stream`` (default ``sys.stderr``), a :class:`BenchStep` callback: a tqdm bar over
    the run's steps with its ETA on a terminal, otherwise one plain line per step (no ``\\r``; see
    :mod:`pipeline.progress`). Call :meth:`close` at the end (``done`` False after an error)."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None):
        self.stream, self.live = stream, live
        self.shown: CountProgress | None = None

    def __call__(self, step: BenchStep) -> None:
        if self.shown is None:
            self.shown = CountProgress(step.total, "io-bench", "steps", self.stream, note=step.what,
                                       display=ProgressDisplay(live=self.live, every_s=0.0))
            if step.index == 1:
                return
        self.shown.update_to(step.index - 1, note=step.what)

    def close(self, done: bool = True) -> None:
        if self.shown is not None:
            self.shown.close(done, self.shown.total)


__all__ = ["BenchProgress", "BenchStep", "numbered", "planned_steps"]
