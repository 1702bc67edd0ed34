"""JSONL log of the training run, one line per window of ``every`` steps (rank 0 writes).

Each line: ``{"step", "epoch", "loss", "lr", "window_s", "img_per_s", "data_wait_s", "compute_s",
"data_wait_fraction", "gpu_idle_fraction", "paused_s", "time"}`` after a ``{"run_start", "first_step", "every",
"global_batch"}`` line per process (a resumed run appends to the same file; a fresh run starts it afresh), and
``{"eval_epoch", "step", "acc1", "acc5", "time"}`` after each evaluation: loss is the mean over the window (one host
synchronisation per window, none per step), img/s counts the global batch over the window's training time, the
two clocks are the loop's data-wait and compute stopwatches (their growth over the window). A window's time
(``window_s``) is its wall time less what it spent outside training (``paused_s``: evaluations, checkpoint writes,
the resume replay), so a window that holds an evaluation shows no false throughput dip; ``paused_s`` > 0 marks such
windows. ``gpu_idle_fraction`` (0..1): ``1 - compute_s / window_s`` when the compute clock reads CUDA events
(``--timing events`` on CUDA; :func:`train.clock.gpu_idle_fraction`, issue 22 item 3), null otherwise (host
step times); read from the same totals as the data wait (no synchronisation of its own). A window's wall time is
read before its events are waited for, so steps still queued on the device at its end count in this window's
compute and their wait in the next window's time: a window's share may be clamped at 0; summed over windows the
times add up.

A log that cannot be written (disk full, quota, read-only: at its opening or any later line) does not stop the
run: one ``train: warning:`` line names the path and says the run goes on without its step log; the lines written
before stay (``--plot`` then draws what the log holds).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from train.clock import Stopwatch, gpu_idle_fraction, times_device

if TYPE_CHECKING:
    from train.sinks import RunSinks


def _never_paused() -> float:
    return 0.0


@dataclass(frozen=True)
class StepSources:
    """What each window line reads from the run: the loop's data-wait and compute stopwatches, ``epoch()`` the
    current (0-based) epoch, ``lr()`` the current learning rate and ``paused()`` the seconds spent outside training
    so far (evaluations, checkpoint writes, resume replay: left out of each window's time)."""

    data: Stopwatch
    compute: Stopwatch
    epoch: Callable[[], int]
    lr: Callable[[], float]
    paused: Callable[[], float] = _never_paused


class StepLog:
    """Wraps the step callable; every ``every`` steps appends one JSON line to ``path``, from ``sources``
    (:class:`StepSources`), the first step counted being ``step0 + 1``.

    With ``path`` None (or on ranks other than 0) :meth:`wrap` returns the step unchanged. ``append``: continue an
    existing file (a resumed run); otherwise the file is started afresh. ``sink``: also hands each window to
    :meth:`train.sinks.RunSinks.window` (TensorBoard), from the same numbers (no synchronisation of its own); with
    a sink the step is wrapped even without ``path``.

    Raises:
        ValueError: ``every`` < 1.
    """

    def __init__(self, path: Path | None, every: int, global_batch: int, sources: StepSources, step0: int = 0,
                 append: bool = False, sink: RunSinks | None = None):
        if every < 1:
            raise ValueError(f"--log-every must be >= 1, got {every}")
        self.path, self.every, self.global_batch = path, every, global_batch
        self.data_sw, self.compute_sw = sources.data, sources.compute
        self.epoch_of, self.lr_of = sources.epoch, sources.lr
        paused = sources.paused
        self.step = step0
        self._loss: torch.Tensor | None = None
        self._n = 0
        self._t = time.perf_counter()
        self._data, self._compute = self.data_sw.total, self.compute_sw.total
        self.paused = paused
        self._paused = paused()
        self.sink = sink if sink is not None and sink.wants_windows else None  # TensorBoard asked for
        self._file = None
        self.failed = False  # a write failed: the rest of the run goes without the log
        if path is not None:
            try:  # line-buffered: a killed run keeps its lines
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(path, "a" if append else "w", buffering=1)
            except OSError as exc:
                self._give_up(exc)
            self._write({"run_start": time.time(), "first_step": step0, "every": every,
                         "global_batch": global_batch})  # separates the processes of a resumed run

    def _give_up(self, exc: OSError) -> None:
        """Stop logging after a failed open / write, saying so in one line."""
        self.failed = True
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        print(f"train: warning: cannot write the step log {self.path} ({exc.strerror or exc}); the run goes on "
              f"without it (the lines written before stay)", file=sys.stderr, flush=True)

    def _write(self, record: dict) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(record) + "\n")
        except OSError as exc:  # ENOSPC, EDQUOT, EIO, ...
            self._give_up(exc)

    def wrap(self, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if self.path is None and self.sink is None:
            return fn

        def logged(*args, **kwargs):
            loss = fn(*args, **kwargs)
            self._loss = loss.detach().float() if self._loss is None else self._loss + loss.detach().float()
            self._n += 1
            self.step += 1
            if self._n == self.every:
                self.flush()
            return loss

        return logged

    def flush(self) -> None:
        """Write the line of the steps since the last one (if any)."""
        if (self._file is None and self.sink is None) or self._n == 0:
            self._loss, self._n = None, 0
            return
        now, paused_total = time.perf_counter(), self.paused()
        paused = paused_total - self._paused
        window = max(now - self._t - paused, 0.0)  # training time only: no evaluation or checkpoint in it
        data, compute = self.data_sw.total - self._data, self.compute_sw.total - self._compute
        idle = gpu_idle_fraction(compute, window) if times_device(self.compute_sw) else None
        line = {"step": self.step, "epoch": self.epoch_of(), "loss": float(self._loss) / self._n, "lr": self.lr_of(),
                "window_s": window, "img_per_s": self._n * self.global_batch / max(window, 1e-9),
                "data_wait_s": data, "compute_s": compute, "data_wait_fraction": data / max(window, 1e-9),
                "gpu_idle_fraction": idle, "paused_s": paused, "time": time.time()}
        self._write(line)
        if self.sink is not None:
            from train.sinks import Window

            self.sink.window(Window.of(line))
        self._loss, self._n, self._t, self._paused = None, 0, now, paused_total
        self._data, self._compute = self.data_sw.total, self.compute_sw.total

    def eval_line(self, epoch: int, acc1: float, acc5: float) -> None:
        """Append ``{"eval_epoch", "step", "acc1", "acc5", "time"}`` (0-based epoch, top-1 / top-5 in %) after the
        window lines of that epoch (written out first)."""
        if self._file is None:
            return
        self.flush()
        self._write({"eval_epoch": epoch, "step": self.step, "acc1": acc1, "acc5": acc5, "time": time.time()})

    def close(self) -> None:
        if self._file is None and self.sink is not None:
            self.flush()  # the last window's scalars
        if self._file is not None:
            self.flush()
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as exc:
                self._give_up(exc)
