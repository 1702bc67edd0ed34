"""``train --plot``: one PNG of a finished run, drawn from its JSONL step log (train/steplog.py).

Four panels: mean loss and learning rate per step window (x: step), val top-1 per epoch (the evaluation lines),
img/s and data-wait % per window over wall time (s since the first run start in the file: a resumed run
appends its windows after a gap). The caption is the run's FlagPerf row (header and row). matplotlib with the
Agg backend: no display needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


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


def read_step_log(path: Path) -> StepSeries:
    """Parse ``path``; lines that are not JSON (a run killed mid-line) are skipped.

    Raises:
        OSError: the file cannot be read.
    """
    s = StepSeries()
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "run_start" in rec:
            s.start = rec["run_start"] if s.start is None else s.start
        elif "eval_epoch" in rec:
            s.eval_epoch.append(rec["eval_epoch"] + 1)
            s.acc1.append(rec["acc1"])
        elif "loss" in rec:
            s.step.append(rec["step"])
            s.loss.append(rec["loss"])
            s.lr.append(rec["lr"])
            s.img_per_s.append(rec["img_per_s"])
            s.data_wait.append(100.0 * rec["data_wait_fraction"])
            s.time.append(rec["time"])
    return s


def draw(s: StepSeries, caption: str, out: Path) -> None:
    """Write the four-panel PNG of ``s`` to ``out`` with ``caption`` under it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    t0 = s.start if s.start is not None else (s.time[0] if s.time else 0.0)
    wall = [t - t0 for t in s.time]
    fig, ax = plt.subplots(2, 2, figsize=(11, 7.5))
    ax[0, 0].plot(s.step, s.loss, color="tab:blue")
    ax[0, 0].set(xlabel="step", ylabel="loss (window mean)", title="loss and learning rate")
    lr_ax = ax[0, 0].twinx()
    lr_ax.plot(s.step, s.lr, color="tab:orange")
    lr_ax.set_ylabel("learning rate", color="tab:orange")
    ax[0, 1].plot(s.eval_epoch, s.acc1, marker="o", color="tab:green")
    ax[0, 1].set(xlabel="epoch", ylabel="val top-1 (%)", title="top-1 per epoch")
    ax[0, 1].xaxis.set_major_locator(MaxNLocator(integer=True))
    if not s.acc1:
        ax[0, 1].text(0.5, 0.5, "no evaluation", ha="center", va="center", transform=ax[0, 1].transAxes)
    ax[1, 0].plot(wall, s.img_per_s, color="tab:purple")
    ax[1, 0].set(xlabel="wall time (s)", ylabel="img/s (window)", title="throughput")
    ax[1, 1].plot(wall, s.data_wait, color="tab:red")
    ax[1, 1].set(xlabel="wall time (s)", ylabel="data wait (%)", title="data wait", ylim=(0, 100))
    fig.text(0.5, 0.01, caption, ha="center", va="bottom", family="monospace", fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
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
    except OSError as exc:
        return f"plot: {out}: {exc.strerror or exc}; no plot written"
    windows, evals = len(series.step), len(series.acc1)
    return (f"plot: wrote {out} ({windows} step window{'s' if windows != 1 else ''}, {evals} evaluation"
            f"{'s' if evals != 1 else ''})")
