"""What rank 0 shows while it trains: a live tqdm bar per train epoch and per evaluation on a terminal, plain log
lines when stdout is not one (a log file, a pipe, a batch system).

A bar or line wraps the loop's iterator (outside the data timer: its own cost falls in the loop's "other" time),
never the step. It counts steps on the host; every ``window`` steps it shows the window's img/s (global batch ×
steps / wall s), its data-wait share (growth of the loop's data stopwatch / wall s) and the window's mean loss,
read from the epoch's running loss sum on the device: one host read per window (the JSONL step log reads at
the same rate), none per step. Evaluation bars show steps and img/s only (their accuracy is summed on the device
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


class _Window:
    """Rates over the last window of steps: img/s, data-wait share, mean loss."""

    def __init__(self, data_total: Callable[[], float], loss_sum: torch.Tensor | None):
        self.data_total, self.loss_sum = data_total, loss_sum
        self.t, self.data, self.loss, self.steps = time.perf_counter(), data_total(), 0.0, 0

    def close(self, steps: int, batch: int) -> dict[str, str]:
        now, data = time.perf_counter(), self.data_total()
        wall = max(now - self.t, 1e-9)
        out = {"img/s": f"{(steps - self.steps) * batch / wall:.1f}", "data wait": f"{100 * (data - self.data) / wall:.0f}%"}
        if self.loss_sum is not None:
            total = float(self.loss_sum)  # the one host read of the window
            out = {"loss": f"{(total - self.loss) / max(steps - self.steps, 1):.4f}", **out}
            self.loss = total
        self.t, self.data, self.steps = now, data, steps
        return out


def _terminal_width(stream: TextIO) -> int | None:
    """None (tqdm follows the terminal's width), or 100 columns where the terminal reports a width of 0 (a
    pseudo-terminal nobody sized), on which tqdm would draw nothing."""
    try:
        return None if os.get_terminal_size(stream.fileno()).columns > 0 else 100
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


class Progress:
    """Wraps the loop's iterators (see module docstring); does nothing when ``cfg.enabled`` is False."""

    def __init__(self, cfg: ProgressConfig, data_total: Callable[[], float], stream: TextIO | None = None):
        self.cfg, self.data_total, self.stream = cfg, data_total, stream or sys.stdout

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
        width = _terminal_width(self.stream)
        bar = (tqdm(total=total, desc=label, unit="step", file=self.stream, leave=True, ncols=width,
                    dynamic_ncols=width is None) if self.cfg.live else None)
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
        fields = window.close(steps, self.cfg.global_batch)
        if not data_wait:
            fields.pop("data wait")
        if bar is not None:
            bar.set_postfix(fields, refresh=True)
            return
        text = ", ".join(f"{k} {v}" for k, v in fields.items())
        print(f"{label} step {steps}/{total if total is not None else '?'}: {text}", file=self.stream, flush=True)
