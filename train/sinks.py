"""Where a training run's figures go besides the console and the metrics JSON: timm's per-epoch ``summary.csv``
and TensorBoard event files (rank 0 writes both).

``summary.csv`` (``--summary-csv PATH``, or DIR/summary.csv with ``--output-dir DIR``): one row per epoch, columns
:data:`CSV_COLUMNS` (an evaluation-less epoch leaves ``eval_top1`` / ``eval_top5`` empty). It is rewritten whole,
atomically, after each epoch (temporary file + fsync + rename, :func:`pipeline.fsio.atomic_write_text`): a crash or
a full disk leaves the previous complete file. A run keeps the rows of the epochs before the one it starts at and
replaces the rest: a resumed run continues the file, never duplicating an epoch (a mid-epoch resume rewrites that
epoch's row), a fresh run (epoch 1) starts it anew.

TensorBoard (``--tensorboard``, events in DIR/tensorboard, or ``--tensorboard-dir DIR``): needs the ``tensorboard``
package, this project's ``[tensorboard]`` extra; ``torch.utils.tensorboard`` is imported only when asked. Scalars,
all against the global train step: per log window (``--log-every`` steps, from :class:`train.steplog.StepLog`'s
window: no device synchronisation of its own) ``train/loss``, ``train/lr``, ``train/img_per_s``,
``train/data_wait_fraction``, ``train/gpu_idle_fraction`` (only where measured: ``--timing events`` on CUDA); per
epoch ``eval/top1``, ``eval/top5`` (%), ``epoch/time_s`` (s, the epoch's training without its evaluation),
``epoch/img_per_s``, ``epoch/train_loss``. A resumed run hides the events its checkpoint's step is older than
(``purge_step``), so TensorBoard shows one curve.

A sink that cannot write (disk full, ...) says so in one ``train: warning:`` line and is dropped; the run goes on.
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

TENSORBOARD_EXTRA = "tensorboard"  # pyproject.toml's optional extra that brings the package
TENSORBOARD_INSTALL = (f"pip install -e '.[{TENSORBOARD_EXTRA}]' in this checkout (or pip install "
                       f"'tensorboard>=2.10')")


@dataclass(frozen=True)
class Window:
    """One log window of :class:`train.steplog.StepLog` (its JSONL line's keys): ``step`` (global step at its
    end), ``epoch`` (0-based), mean ``loss``, ``lr``, ``window_s`` (s), ``img_per_s`` (global batch over the
    window's wall time), ``data_wait_s`` / ``compute_s`` (s), ``data_wait_fraction`` (0-1), ``time`` (Unix s),
    ``gpu_idle_fraction`` (0-1; None: not measured, or a line of an older log without it)."""

    step: int
    epoch: int
    loss: float
    lr: float
    window_s: float
    img_per_s: float
    data_wait_s: float
    compute_s: float
    data_wait_fraction: float
    time: float
    gpu_idle_fraction: float | None = None

    @classmethod
    def of(cls, line: dict) -> Window:
        """The window of a step-log line (its other keys ignored; a key with a default may be absent)."""
        return cls(**{f.name: line[f.name] if f.default is MISSING else line.get(f.name, f.default)
                      for f in fields(cls)})


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch, as ``summary.csv``'s row: ``epoch`` (1-based, as the console's epoch lines), ``step``
    (global step at its end), ``train_loss`` (mean over its steps; since the resume in a resumed epoch),
    ``eval_top1`` / ``eval_top5`` (%, None without an evaluation), ``lr`` (after its last step), ``img_per_s``
    (global batch × steps over its training time), ``data_wait_fraction`` (0-1 of that time) and ``epoch_s``
    (s, its training time without evaluation and checkpoints)."""

    epoch: int
    step: int
    train_loss: float
    eval_top1: float | None
    eval_top5: float | None
    lr: float
    img_per_s: float
    data_wait_fraction: float
    epoch_s: float


CSV_COLUMNS = tuple(f.name for f in fields(EpochRecord))


def _warn(what: str, path: Path, why: str) -> None:
    print(f"train: warning: {what} {path}: {why}; the run goes on without it", file=sys.stderr, flush=True)


class SummaryCsv:
    """timm's ``summary.csv`` at ``path``: the rows of epochs before ``first_epoch`` (1-based) that the file holds
    are kept, every later row is this run's (see the module's docstring).

    Raises:
        ValueError: ``path`` holds something that is not this project's summary CSV (another header) while rows
            must be kept from it: one line naming the file.
    """

    def __init__(self, path: Path, first_epoch: int):
        self.path = Path(path)
        self.rows: list[list[str]] = self._kept_rows(first_epoch) if first_epoch > 1 else []
        self.failed = False

    def _kept_rows(self, first_epoch: int) -> list[list[str]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--summary-csv {self.path}: cannot read the rows to continue "
                             f"({getattr(exc, 'strerror', None) or exc}); move it away or pick another path") from None
        table = [row for row in csv.reader(io.StringIO(text)) if row]
        if not table:
            return []
        if tuple(table[0]) != CSV_COLUMNS:
            raise ValueError(f"--summary-csv {self.path}: not a summary CSV of train (its header is "
                             f"{','.join(table[0])[:80]!r}); move it away or pick another path")
        kept = []
        for row in table[1:]:
            try:
                if int(row[0]) < first_epoch:
                    kept.append(row)
            except (ValueError, IndexError):
                continue  # a damaged row (a hand edit): left out
        return kept

    def epoch(self, record: EpochRecord) -> None:
        """Add ``record``'s row (replacing one of the same epoch) and rewrite the file atomically."""
        if self.failed:
            return
        row = ["" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)) for v in asdict(record).values()]
        self.rows = [r for r in self.rows if r[0] != row[0]] + [row]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(self.rows)
        from pipeline.fsio import WriteFailed, atomic_write_text

        try:
            atomic_write_text(self.path, out.getvalue(), "the summary CSV")
        except WriteFailed as exc:
            self.failed = True
            print(f"train: warning: {exc}; no more rows are written, the run goes on", file=sys.stderr, flush=True)


def tensorboard_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, imported now (it loads the ``tensorboard`` package, ~1-3 s).

    Raises:
        ValueError: the package is missing (one line naming the extra to install).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it (or ModuleNotFoundError) when tensorboard is not installed
        raise ValueError(f"--tensorboard needs the tensorboard package, which is not installed: "
                         f"{TENSORBOARD_INSTALL}; or drop --tensorboard") from None
    return SummaryWriter


class TensorBoardLog:
    """TensorBoard scalars of one run (see the module's docstring) in ``log_dir``; ``start_step``: the global step
    the run starts from (a resumed run's checkpoint step: later events of an earlier run are hidden).

    Raises:
        ValueError: the tensorboard package is missing, or ``log_dir`` cannot be made (one line each).
    """

    def __init__(self, log_dir: Path, start_step: int = 0):
        writer_class = tensorboard_writer_class()
        self.log_dir = Path(log_dir)
        try:
            self.writer = writer_class(log_dir=str(self.log_dir), purge_step=start_step + 1 if start_step else None)
        except OSError as exc:
            raise ValueError(f"--tensorboard {self.log_dir}: cannot write there ({exc.strerror or exc}); pick a "
                             f"writable folder") from None
        self.failed = False

    def _scalars(self, step: int, values: dict[str, float | None]) -> None:
        if self.failed:
            return
        try:
            for tag, value in values.items():
                if value is not None:
                    self.writer.add_scalar(tag, value, step)
        except OSError as exc:
            self.failed = True
            _warn("cannot write TensorBoard events in", self.log_dir, exc.strerror or str(exc))

    def window(self, window: Window) -> None:
        self._scalars(window.step, {"train/loss": window.loss, "train/lr": window.lr,
                                    "train/img_per_s": window.img_per_s,
                                    "train/data_wait_fraction": window.data_wait_fraction,
                                    "train/gpu_idle_fraction": window.gpu_idle_fraction})  # None: not written

    def epoch(self, record: EpochRecord) -> None:
        self._scalars(record.step, {"eval/top1": record.eval_top1, "eval/top5": record.eval_top5,
                                    "epoch/time_s": record.epoch_s, "epoch/img_per_s": record.img_per_s,
                                    "epoch/train_loss": record.train_loss})
        self.flush()

    def flush(self) -> None:
        if not self.failed:
            try:
                self.writer.flush()
            except OSError as exc:
                self.failed = True
                _warn("cannot write TensorBoard events in", self.log_dir, exc.strerror or str(exc))

    def close(self) -> None:
        try:
            self.writer.close()
        except OSError:
            pass


@dataclass
class RunSinks:
    """The sinks of one run on rank 0 (None: not asked for); every method does nothing for an absent sink."""

    summary: SummaryCsv | None = None
    tensorboard: TensorBoardLog | None = None

    @property
    def any(self) -> bool:
        return self.summary is not None or self.tensorboard is not None

    @property
    def wants_windows(self) -> bool:
        """Whether a sink takes log windows (TensorBoard): only then does the step log read windows for it."""
        return self.tensorboard is not None

    def window(self, window: Window) -> None:
        """A log window's scalars (TensorBoard)."""
        if self.tensorboard is not None:
            self.tensorboard.window(window)

    def epoch(self, record: EpochRecord) -> None:
        """An epoch's row (CSV) and scalars (TensorBoard)."""
        if self.summary is not None:
            self.summary.epoch(record)
        if self.tensorboard is not None:
            self.tensorboard.epoch(record)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def open_sinks(summary_csv: Path | None, tensorboard_dir: Path | None, first_epoch: int, start_step: int,
               is_main: bool) -> RunSinks:
    """The sinks rank 0 writes (other ranks: none): ``summary_csv`` from 1-based epoch ``first_epoch`` on,
    TensorBoard in ``tensorboard_dir`` from global step ``start_step`` on.

    Raises:
        ValueError: see :class:`SummaryCsv` and :class:`TensorBoardLog` (one line).
    """
    if not is_main:
        return RunSinks()
    summary = SummaryCsv(summary_csv, first_epoch) if summary_csv is not None else None
    tensorboard = TensorBoardLog(tensorboard_dir, start_step) if tensorboard_dir is not None else None
    return RunSinks(summary, tensorboard)
