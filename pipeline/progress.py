"""Progress of a long count (images sharded, shards verified, io-bench steps) on stderr (:class:`CountProgress`,
shown as :class:`ProgressDisplay` says): a tqdm bar with rate and ETA when the stream is a terminal; plain lines
otherwise (a log file, a pipe, a batch system), never tqdm's
carriage-return redraws: one at the start, one every ``every_s`` seconds of progress, one at the end.

A plain line reads ``shard-imagenet train: 1200/5000 img (24%), 310.5 img/s, 3.9 s elapsed, ETA 12.3 s``
(``, <note>`` after it where the caller names what is running).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, TextIO

from tqdm import tqdm

PLAIN_EVERY_S = 30.0  # seconds between two plain progress lines


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def duration(seconds: float) -> str:
    """``seconds`` as ``12.3 s``, ``4m05s`` or ``2h03m``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass(frozen=True)
class ProgressDisplay:
    """How a :class:`CountProgress` shows itself.

    Attributes:
        live: a tqdm bar (True) or plain lines (False); None: a bar when the stream is a terminal.
        every_s: seconds between two plain lines (0: a line at every update).
        clock: the time source, in seconds (tests pass their own).
    """

    live: bool | None = None
    every_s: float = PLAIN_EVERY_S
    clock: Callable[[], float] = time.monotonic


class CountProgress:
    """Progress towards ``total`` items of ``unit`` (see the module docstring); does nothing when not ``enabled``.

    ``stream``: where it goes (default ``sys.stderr``); ``note``: what runs first; ``display``: bar or plain lines,
    their pace and clock (:class:`ProgressDisplay`).
    """

    def __init__(self, total: int | None, desc: str, unit: str, stream: TextIO | None = None, enabled: bool = True,
                 note: str = "", display: ProgressDisplay = ProgressDisplay()):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.every_s, self.clock = display.every_s, display.clock
        self.n, self.note = 0, note
        self.start = self.last_line = self.clock()
        live = _is_terminal(self.stream) if display.live is None else display.live
        self.bar = (tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)
                    if enabled and live else None)
        if self.bar is not None and note:
            self.bar.set_postfix_str(note)
        if enabled and self.bar is None:
            self._line()

    def update_to(self, n: int, note: str | None = None) -> None:
        """``n`` items done so far (``note``: what runs now, shown after the counts)."""
        if note is not None:
            self.note = note
        if not self.enabled or (n == self.n and note is None):
            return
        if self.bar is not None:
            if note is not None:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(n - self.bar.n)
            self.n = n
            return
        self.n = n
        now = self.clock()
        if now - self.last_line >= self.every_s:
            self._line(now)

    def update(self, k: int = 1, note: str | None = None) -> None:
        """``k`` more items done."""
        self.update_to(self.n + k, note)

    def close(self, done: bool = True, n: int | None = None) -> None:
        """End the bar, or write the last plain line, at ``n`` items done where given (``done`` False after an
        error: the bar is cleared, no closing line). Closing twice does nothing."""
        if not self.enabled:
            return
        if n is not None and done:
            if self.bar is not None:
                self.bar.update(n - self.bar.n)
            self.n = n
        if self.bar is not None:
            self.bar.leave = done  # after an error the bar goes: the error line stands on its own
            self.bar.close()
            self.bar = None
        elif done:
            self.note = ""
            self._line(final=True)
        self.enabled = False

    def _line(self, now: float | None = None, final: bool = False) -> None:
        now = self.clock() if now is None else now
        self.last_line = now
        elapsed = now - self.start
        counts = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        text = f"{self.desc}: {counts} {self.unit}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        if self.n and elapsed > 0:
            rate = self.n / elapsed
            text += f", {rate:.1f} {self.unit}/s"
        text += f", {duration(elapsed)} elapsed"
        if final:
            text += ", done"
        elif self.total and self.n and elapsed > 0:
            text += f", ETA {duration((self.total - self.n) * elapsed / self.n)}"
        if self.note:
            text += f", {self.note}"
        print(text, file=self.stream, flush=True)
