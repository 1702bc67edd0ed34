"""JSONL log of the training run, one line per window of ``every`` steps (rank 0 writes).

Each line: ``{"step", "epoch", "loss", "lr", "window_s", "img_per_s", "data_wait_s", "compute_s",
"data_wait_fraction", "time"}`` after a ``{"run_start", "first_step", "every", "global_batch"}`` line per
process (a resumed run appends to the same file), and ``{"eval_epoch", "step", "acc1", "acc5", "time"}`` after
each evaluation: loss is the mean over the window (one host synchronisation per window, none
per step), img/s counts the global batch over the window's wall time, the two clocks are the loop's
data-wait and compute stopwatches (their growth over the window).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from train.clock import Stopwatch


class StepLog:
    """Wraps the step callable; every ``every`` steps appends one JSON line to ``path``.

    ``epoch_of()`` returns the current epoch; ``lr_of()`` the current learning rate. With ``path`` None (or on
    ranks other than 0) :meth:`wrap` returns the step unchanged.
    """

    def __init__(self, path: Path | None, every: int, global_batch: int, data_sw: Stopwatch, compute_sw: Stopwatch,
                 epoch_of: Callable[[], int], lr_of: Callable[[], float], step0: int = 0):
        if every < 1:
            raise ValueError(f"--log-every must be >= 1, got {every}")
        self.path, self.every, self.global_batch = path, every, global_batch
        self.data_sw, self.compute_sw = data_sw, compute_sw
        self.epoch_of, self.lr_of = epoch_of, lr_of
        self.step = step0
        self._loss: torch.Tensor | None = None
        self._n = 0
        self._t = time.perf_counter()
        self._data, self._compute = data_sw.total, compute_sw.total
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", buffering=1)  # line-buffered: a killed run keeps its lines
            self._file.write(json.dumps({"run_start": time.time(), "first_step": step0, "every": every,
                                         "global_batch": global_batch}) + "\n")  # separates runs in one file

    def wrap(self, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if self.path is None:
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
        if self.path is None or self._n == 0:
            return
        now = time.perf_counter()
        window = now - self._t
        data, compute = self.data_sw.total - self._data, self.compute_sw.total - self._compute
        line = {"step": self.step, "epoch": self.epoch_of(), "loss": float(self._loss) / self._n, "lr": self.lr_of(),
                "window_s": window, "img_per_s": self._n * self.global_batch / max(window, 1e-9),
                "data_wait_s": data, "compute_s": compute, "data_wait_fraction": data / max(window, 1e-9),
                "time": time.time()}
        self._file.write(json.dumps(line) + "\n")
        self._loss, self._n, self._t = None, 0, now
        self._data, self._compute = self.data_sw.total, self.compute_sw.total

    def eval_line(self, epoch: int, acc1: float, acc5: float) -> None:
        """Append ``{"eval_epoch", "step", "acc1", "acc5", "time"}`` (0-based epoch, top-1 / top-5 in %) after the
        window lines of that epoch (written out first)."""
        if self.path is None:
            return
        self.flush()
        self._file.write(json.dumps({"eval_epoch": epoch, "step": self.step, "acc1": acc1, "acc5": acc5,
                                     "time": time.time()}) + "\n")

    def close(self) -> None:
        if self.path is not None:
            self.flush()
            self._file.close()
