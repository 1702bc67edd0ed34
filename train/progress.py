"""What rank 0 shows while it trains: a live tqdm bar per train epoch and per evaluation on a terminal, plain log
lines when stdout is not one (a log file, a pipe, a batch system).

A bar or line wraps the loop's iterator (outside the data timer: its own cost falls in the loop's "other" time),
never the step. It counts steps on the host; every ``window`` steps it shows the window's img/s (global batch ×
steps / wall s), its data-wait share (growth of the loop's data stopwatch / wall s) and the window's mean loss,
read from the epoch's running loss sum on the device: one host read per window (the JSONL step log reads at
the same rate), none per step. The bar's postfix is compact (``loss 3.171, 2876 img/s, data wait 12%``); below
:data:`WIDE_COLUMNS` columns the bar leaves out its percentage and elapsed time (steps done and ETA stay), so an
80-column terminal keeps a bar of several characters and the whole postfix. Evaluation bars show steps and img/s
only (their accuracy is summed on the device
and read once at the end).
"""

from __future__ import annotations

import io
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TextIO

import torch
from tqdm import tqdm


@dataclass(frozen=True)
class ProgressConfig:
    """``enabled``: rank 0 with ``--progress`` (default on); ``live``: a tqdm bar (stdout is a terminal), else plain
    lines; ``window``: steps between two loss / rate updates (``--log-every``, at most a tenth of the epoch)."""

    enabled: bool
    live: bool
    window: int
    global_batch: int


def progress_config(enabled: bool, is_main: bool, log_every: int, global_batch: int,
                    stream: TextIO | None = None) -> ProgressConfig:
    stream = stream or sys.stdout
    live = bool(getattr(stream, "isatty", lambda: False)())
    return ProgressConfig(enabled and is_main, live, log_every, global_batch)


# Bars narrower than this many columns leave out the percentage and the elapsed time, so that an 80-column
# terminal keeps a bar of several characters and the whole postfix (loss, img/s, data wait).
WIDE_COLUMNS = 110
_WIDE_BAR = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}"
_NARROW_BAR = "{desc} |{bar}| {n_fmt}/{total_fmt} ETA {remaining}{postfix}"


@dataclass(frozen=True)
class WindowRates:
    """One window of steps: ``img_per_s`` (global batch × steps / wall s), ``data_wait`` (share of the wall time
    in the loader's ``next()``, 0..1), ``loss`` (mean over the window's steps; None where not tracked)."""

    img_per_s: float
    data_wait: float
    loss: float | None

    def line(self, data_wait: bool = True) -> str:
        """The plain line's fields: ``loss 3.1712, img/s 2876.3, data wait 12%``."""
        fields = [f"loss {self.loss:.4f}"] if self.loss is not None else []
        fields.append(f"img/s {self.img_per_s:.1f}")
        if data_wait:
            fields.append(f"data wait {100 * self.data_wait:.0f}%")
        return ", ".join(fields)

    def postfix(self, data_wait: bool = True) -> str:
        """The bar's compact postfix: ``loss 3.171, 2876 img/s, data wait 12%``."""
        fields = [f"loss {self.loss:.3f}"] if self.loss is not None else []
        rate = self.img_per_s
        fields.append(f"{rate:.0f} img/s" if rate >= 100 else f"{rate:.1f} img/s")
        if data_wait:
            fields.append(f"data wait {100 * self.data_wait:.0f}%")
        return ", ".join(fields)


class _Window:
    """Rates over the last window of steps: img/s, data-wait share, mean loss."""

    def __init__(self, data_total: Callable[[], float], loss_sum: torch.Tensor | None):
        self.data_total, self.loss_sum = data_total, loss_sum
        self.t, self.data, self.loss, self.steps = time.perf_counter(), data_total(), 0.0, 0

    def close(self, steps: int, batch: int) -> WindowRates:
        now, data = time.perf_counter(), self.data_total()
        wall = max(now - self.t, 1e-9)
        mean_loss = None
        if self.loss_sum is not None:
            total = float(self.loss_sum)  # the one host read of the window
            mean_loss = (total - self.loss) / max(steps - self.steps, 1)
            self.loss = total
        out = WindowRates((steps - self.steps) * batch / wall, (data - self.data) / wall, mean_loss)
        self.t, self.data, self.steps = now, data, steps
        return out


def _terminal_columns(stream: TextIO) -> int | None:
    """The terminal's width in columns (0: a pseudo-terminal nobody sized), or None (not a terminal)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def bar_layout(columns: int | None) -> tuple[int | None, str]:
    """(tqdm's ``ncols``, its ``bar_format``) for a terminal of ``columns`` (None: unknown, tqdm follows the
    terminal): 100 columns where the terminal reports 0 (tqdm would draw nothing), the narrow layout below
    :data:`WIDE_COLUMNS`."""
    if columns == 0:
        columns = 100
    return columns, (_NARROW_BAR if columns is not None and columns < WIDE_COLUMNS else _WIDE_BAR)


class Progress:
    """Wraps the loop's iterators (see module docstring); does nothing when ``cfg.enabled`` is False."""

    def __init__(self, cfg: ProgressConfig, data_total: Callable[[], float], stream: TextIO | None = None,
                 ncols: int | None = None):
        """``ncols``: the bar's width in columns (None: the terminal's; tests pass a fake width)."""
        self.cfg, self.data_total, self.stream = cfg, data_total, stream or sys.stdout
        self.ncols = ncols

    def train(self, batches: Iterable, epoch: int, epochs: int, total: int,
              loss_sum: torch.Tensor | None) -> Iterator:
        """Yield ``batches`` (``total`` of them) of 1-based epoch ``epoch + 1`` of ``epochs``, showing progress."""
        if not self.cfg.enabled:
            yield from batches
            return
        label = f"epoch {epoch + 1}/{epochs}"
        yield from self._show(batches, label, total, _Window(self.data_total, loss_sum))

    def eval(self, batches: Iterable, total: int | None) -> Iterator:
        """Yield the val ``batches`` of one evaluation (``total``: this rank's batch count, if known)."""
        if not self.cfg.enabled:
            yield from batches
            return
        yield from self._show(batches, "eval", total, _Window(lambda: 0.0, None), data_wait=False)

    def _show(self, batches: Iterable, label: str, total: int | None, window: _Window,
              data_wait: bool = True) -> Iterator:
        every = max(1, min(self.cfg.window, (total or self.cfg.window) // 10 or 1))
        bar = None
        if self.cfg.live:
            columns = self.ncols if self.ncols is not None else _terminal_columns(self.stream)
            ncols, layout = bar_layout(columns)
            bar = tqdm(total=total, desc=label, unit="step", file=self.stream, leave=True, ncols=ncols,
                       dynamic_ncols=self.ncols is None and columns != 0,
                       bar_format=layout if total is not None else None)
        steps = 0
        try:
            for batch in batches:
                yield batch
                steps += 1
                if bar is not None:
                    bar.update(1)
                if steps % every == 0 or steps == total:
                    self._report(bar, label, steps, total, window, data_wait)
        finally:
            if bar is not None:
                bar.close()

    def _report(self, bar, label: str, steps: int, total: int | None, window: _Window, data_wait: bool) -> None:
        rates = window.close(steps, self.cfg.global_batch)
        if bar is not None:
            bar.set_postfix_str(rates.postfix(data_wait), refresh=True)
            return
        print(f"{label} step {steps}/{total if total is not None else '?'}: {rates.line(data_wait)}",
              file=self.stream, flush=True)
