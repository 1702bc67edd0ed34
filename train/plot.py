"""``train --plot``: one PNG of a finished run, drawn from its JSONL step log (train/steplog.py).

Four panels: mean loss and learning rate per step window (x: step), val top-1 per epoch (the evaluation lines),
img/s and data-wait % per window over wall time (s since the first run start in the file: a resumed run
appends its windows after a gap), the evaluations marked there by dotted lines. A window's img/s counts its
training time only (the step log leaves evaluation and checkpoint time out: ``paused_s``); in a log written
before ``paused_s`` existed, a window that holds an evaluation is left out of the two wall-time panels rather
than drawn as a false dip. Series of few points are drawn with markers, so that a run of one window still
shows a point in every panel (:func:`panels` holds what is drawn). The caption is the run's FlagPerf row
(header and row). matplotlib with the
Agg backend: no display needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.fsio import WriteFailed, atomic_write


@dataclass
class StepSeries:
    """The step log's lines by kind: windows (step, loss, lr, img/s, data-wait fraction, time s) and
    evaluations (1-based epoch, top-1 %)."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    img_per_s: list[float] = field(default_factory=list)
    data_wait: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    eval_epoch: list[int] = field(default_factory=list)
    acc1: list[float] = field(default_factory=list)
    start: float | None = None
    paused: list[float | None] = field(default_factory=list)  # per window: s outside training (None: not logged)
    eval_time: list[float] = field(default_factory=list)  # per evaluation: when it ended (time.time(), s)
    every: int | None = None  # --log-every of the (last) run in the file


def read_step_log(path: Path) -> StepSeries:
    """Parse ``path``; lines that are not JSON (a run killed mid-line) are skipped.

    Raises:
        OSError: the file cannot be read.
    """
    series = StepSeries()
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "run_start" in rec:
            series.start = rec["run_start"] if series.start is None else series.start
            series.every = rec.get("every", series.every)
        elif "eval_epoch" in rec:
            series.eval_epoch.append(rec["eval_epoch"] + 1)
            series.acc1.append(rec["acc1"])
            series.eval_time.append(rec.get("time", series.time[-1] if series.time else 0.0))
        elif "loss" in rec:
            series.step.append(rec["step"])
            series.loss.append(rec["loss"])
            series.lr.append(rec["lr"])
            series.img_per_s.append(rec["img_per_s"])
            series.data_wait.append(100.0 * rec["data_wait_fraction"])
            series.time.append(rec["time"])
            series.paused.append(rec.get("paused_s"))
    return series


MARKERS_UP_TO = 40  # a series of at most this many points marks each one (one point alone draws no line)
_EVAL_TOLERANCE_S = 0.05  # an old log's window flushed by its evaluation line ends just before that line


@dataclass(frozen=True)
class Series:
    """What one panel draws: ``x`` and ``y`` values; ``marker``: matplotlib's marker for each point (None: a
    plain line, for series of more than :data:`MARKERS_UP_TO` points)."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    @property
    def marker(self) -> str | None:
        return "o" if len(self.x) <= MARKERS_UP_TO else None


@dataclass(frozen=True)
class Panels:
    """The plot's data: ``loss`` and ``lr`` over steps, ``acc1`` (%) over 1-based epochs, ``img_per_s`` and
    ``data_wait`` (%) over wall s since the run start, and ``evals_at``: when each evaluation ended (wall s)."""

    loss: Series
    lr: Series
    acc1: Series
    img_per_s: Series
    data_wait: Series
    evals_at: tuple[float, ...]


def spans_eval(series: StepSeries) -> list[bool]:
    """Per window: whether its img/s counts an evaluation's time. Only in a log written before the step log left
    evaluations out (no ``paused_s``): there, the first window to end at or after an evaluation line held it."""
    held = [False] * len(series.step)
    for t in series.eval_time:
        i = next((i for i, end in enumerate(series.time) if end >= t - _EVAL_TOLERANCE_S), None)
        if i is not None and series.paused[i] is None:
            held[i] = True
    return held


def panels(series: StepSeries) -> Panels:
    """What :func:`draw` plots of ``series`` (see the module docstring)."""
    t0 = series.start if series.start is not None else (series.time[0] if series.time else 0.0)
    held = spans_eval(series)
    kept = [i for i in range(len(series.step)) if not held[i]]
    wall = tuple(series.time[i] - t0 for i in kept)
    return Panels(Series(tuple(series.step), tuple(series.loss)), Series(tuple(series.step), tuple(series.lr)),
                  Series(tuple(series.eval_epoch), tuple(series.acc1)),
                  Series(wall, tuple(series.img_per_s[i] for i in kept)),
                  Series(wall, tuple(series.data_wait[i] for i in kept)), tuple(t - t0 for t in series.eval_time))


def draw(series: StepSeries, caption: str, out: Path) -> None:
    """Write the four-panel PNG of ``series`` to ``out`` (atomically) with ``caption`` under it.

    Raises:
        pipeline.fsio.WriteFailed: ``out`` cannot be written (disk full, ...); an earlier ``out`` stays whole.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    drawn = panels(series)
    fig, ax = plt.subplots(2, 2, figsize=(11, 7.5))
    ax[0, 0].plot(drawn.loss.x, drawn.loss.y, marker=drawn.loss.marker, color="tab:blue")
    ax[0, 0].set(xlabel="step", ylabel="loss (window mean)", title="loss and learning rate")
    lr_ax = ax[0, 0].twinx()
    lr_ax.plot(drawn.lr.x, drawn.lr.y, marker=drawn.lr.marker, color="tab:orange")
    lr_ax.set_ylabel("learning rate", color="tab:orange")
    ax[0, 1].plot(drawn.acc1.x, drawn.acc1.y, marker="o", color="tab:green")
    ax[0, 1].set(xlabel="epoch", ylabel="val top-1 (%)", title="top-1 per epoch")
    ax[0, 1].xaxis.set_major_locator(MaxNLocator(integer=True))
    if not series.acc1:
        ax[0, 1].text(0.5, 0.5, "no evaluation", ha="center", va="center", transform=ax[0, 1].transAxes)
    for a in (ax[1, 0], ax[1, 1]):  # evaluations: outside the windows' training time
        for i, t in enumerate(drawn.evals_at):
            a.axvline(t, color="tab:gray", linestyle=":", linewidth=1, label="evaluation" if i == 0 else None)
    ax[1, 0].plot(drawn.img_per_s.x, drawn.img_per_s.y, marker=drawn.img_per_s.marker, color="tab:purple")
    ax[1, 0].set(xlabel="wall time (s)", ylabel="img/s (window, evaluations left out)", title="throughput")
    if drawn.evals_at:
        ax[1, 0].legend(loc="lower right", fontsize=8)
    ax[1, 1].plot(drawn.data_wait.x, drawn.data_wait.y, marker=drawn.data_wait.marker, color="tab:red")
    ax[1, 1].set(xlabel="wall time (s)", ylabel="data wait (%)", title="data wait", ylim=(0, 100))
    fig.text(0.5, 0.01, caption, ha="center", va="bottom", family="monospace", fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    try:  # atomic: an earlier plot stays whole when this one cannot be written
        atomic_write(out, lambda f: fig.savefig(f, dpi=100, format="png"), "the plot")
    finally:
        plt.close(fig)


def plot_run(step_log: Path, caption: str, out: Path) -> str:
    """Draw ``step_log`` into ``out``; returns the one line to print (what was written, or why not)."""
    try:
        series = read_step_log(step_log)
    except OSError as exc:
        return f"plot: {step_log}: {exc.strerror or exc}; no plot written"
    if not series.step:
        return f"plot: {step_log} holds no step window; no plot written"
    try:
        draw(series, caption, out)
    except WriteFailed as exc:
        return f"plot: {exc}"
    windows, evals = len(series.step), len(series.acc1)
    few = (f"; one window: lower --log-every (now {series.every}) for a finer plot" if windows == 1 and series.every
           else "")
    return (f"plot: wrote {out} ({windows} step window{'s' if windows != 1 else ''}, {evals} evaluation"
            f"{'s' if evals != 1 else ''}{few})")
