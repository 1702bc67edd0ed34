"""gpu_check's reading of a leg's streamed step log (``train --log-jsonl``, one line per ``--log-every`` steps;
format in train/steplog.py): the per-window p_train of every leg, and the partial rates of a leg killed before
it wrote its metrics JSON (the log is line-buffered, so a killed run keeps every window it finished).

A window line holds its last step (1-based, global), the epoch (0-based) at its end, ``window_s`` (its training
time, host clock: on CUDA the window's one synchronisation, reading its loss, lands in the next window), its
img/s, and the growth of the loop's data-wait and compute clocks (``data_wait_s``, ``compute_s``). A window is
*measured* when all its steps come after the leg's ``--warmup-steps``; it *holds an epoch boundary* when the
epoch at its end differs from the epoch at the end of the window before (epoch 0 before the first).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Window:
    """One window line of the step log.

    Attributes:
        first_step / last_step: its 1-based steps (inclusive); steps: their number.
        epoch: 0-based epoch at its end; boundary: an epoch ended inside it.
        img_per_s: global-batch images over its training time (p_train of the window), img/s.
        window_s / data_wait_s / compute_s: its training time and the growth of the data-wait and compute
            clocks in it, s.
    """

    first_step: int
    last_step: int
    epoch: int
    boundary: bool
    img_per_s: float
    window_s: float
    data_wait_s: float
    compute_s: float

    @property
    def steps(self) -> int:
        return self.last_step - self.first_step + 1


@dataclass(frozen=True)
class StepLog:
    """The windows of the last process that wrote the log, and its global batch (images per step)."""

    windows: tuple[Window, ...]
    global_batch: int

    def measured(self, warmup_steps: int) -> tuple[Window, ...]:
        return tuple(w for w in self.windows if w.first_step > warmup_steps)


def _lines(path: Path) -> list[dict]:
    """The log's JSON objects; a torn last line (the writer was killed mid-write) and other junk are left out."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def read_step_log(path: Path) -> StepLog:
    """The windows of ``path`` after its last ``run_start`` line (none when the file is missing or empty)."""
    windows, batch, prev_step, prev_epoch = [], 0, 0, 0
    for obj in _lines(path):
        if "run_start" in obj:
            windows, prev_epoch = [], 0
            batch, prev_step = int(obj.get("global_batch") or 0), int(obj.get("first_step") or 0)
            continue
        if "img_per_s" not in obj or "step" not in obj:
            continue  # an evaluation line
        try:
            step, epoch = int(obj["step"]), int(obj.get("epoch", prev_epoch))
            w = Window(prev_step + 1, step, epoch, epoch != prev_epoch, float(obj["img_per_s"]),
                       float(obj["window_s"]), float(obj.get("data_wait_s", 0.0)), float(obj.get("compute_s", 0.0)))
        except (KeyError, TypeError, ValueError):
            continue
        windows.append(w)
        prev_step, prev_epoch = step, epoch
    return StepLog(tuple(windows), batch)


def rates(windows: tuple[Window, ...], global_batch: int) -> dict:
    """p_train (images / Σ window time), p_core (images / Σ compute time; None without compute time) and the
    data-wait share over ``windows``, with their step count."""
    steps = sum(w.steps for w in windows)
    train_s = sum(w.window_s for w in windows)
    compute_s = sum(w.compute_s for w in windows)
    images = steps * global_batch
    return {"steps": steps, "images": images, "train_s": round(train_s, 3),
            "p_train": images / train_s if train_s > 0 else None,
            "p_core": images / compute_s if compute_s > 0 else None,
            "data_wait_fraction": sum(w.data_wait_s for w in windows) / train_s if train_s > 0 else None}


def partial_rates(log: StepLog, warmup_steps: int) -> dict | None:
    """What a killed leg finished: ``steps_done`` and the rates over its measured windows, else (killed in its
    warm-up) over every window with ``includes_warmup`` true; None when no window was written."""
    if not log.windows:
        return None
    measured = log.measured(warmup_steps)
    chosen = measured or log.windows
    return {"steps_done": log.windows[-1].last_step, "includes_warmup": not measured,
            **rates(chosen, log.global_batch)}


def window_entries(log: StepLog, warmup_steps: int) -> list[dict]:
    """The measured windows as results.json records (steps, epoch, boundary, p_train, data-wait share)."""
    return [{**asdict(w), "data_wait_fraction": w.data_wait_s / w.window_s if w.window_s > 0 else None}
            for w in log.measured(warmup_steps)]


def window_summary(windows: list[dict], limit: int = 8) -> str:
    """The table's per-window p_train: ``"1012 1005 890* 1001"`` (below 100 img/s with one decimal) (``*``: an epoch boundary inside the window),
    the first ``limit - 1`` and the last when there are more; ``-`` when none."""
    if not windows:
        return "-"
    shown = windows if len(windows) <= limit else windows[:limit - 1] + [None] + windows[-1:]
    return " ".join("..." if w is None else f"{_rate(w['img_per_s'])}{'*' if w['boundary'] else ''}" for w in shown)


def _rate(img_per_s: float) -> str:
    return f"{img_per_s:.0f}" if img_per_s >= 100 else f"{img_per_s:.1f}"


__all__ = ["Window", "StepLog", "read_step_log", "rates", "partial_rates", "window_entries", "window_summary"]
