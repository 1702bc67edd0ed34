"""The run folder (``train --output-dir DIR``, alias ``--output``) and the claim a run lays on its outputs.

With ``--output-dir DIR`` one run's files live together (the paths are :class:`train.config.TrainConfig`'s
properties, which every writer asks)::

    DIR/config.toml     the resolved options, written at the start (``train --config DIR/config.toml`` re-runs it)
    DIR/metrics.json    the metrics (FlagPerf row, times, environment), written at the end
    DIR/steps.jsonl     the step log, one line per --log-every steps and per evaluation
    DIR/metrics.png     the plot (--plot)
    DIR/checkpoints/    ckpt-step{step:08d}.pt, the newest --checkpoint-keep of them
    DIR/summary.csv, DIR/tensorboard/   per-epoch summary and TensorBoard events (where written)

An explicit ``--metrics-json`` / ``--log-jsonl`` / ``--checkpoint-dir`` wins over its place in DIR.

A new run never writes into an earlier run's files: ``--output-dir`` naming a folder that already holds anything is
refused in one line (``--resume`` continues that run: its checkpoints, step log appended to; or pick another
folder), and so is an explicit ``--checkpoint-dir`` that holds checkpoints (its keep-newest rotation would delete
them); a folder holding only the ``config.toml`` of a run that stopped before training is reused. Without
``--output-dir`` a fresh run starts an existing step log afresh and replaces an existing metrics JSON at its end,
each with a note line; ``--resume`` appends to the step log.

While a run trains, rank 0 holds an inter-process lock (:class:`pipeline.fsio.FolderLock`) on the run folder and on
an explicit ``--checkpoint-dir``: a second run on the same folder stops at once with one line naming the first
(pid, host, start time). The kernel releases the lock when the run ends, however it ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.fsio import LOCK_NAME, FolderLock
from train.config import TrainConfig


@dataclass
class RunFolder:
    """What rank 0 holds for a run: its folder locks (release them at the end) and the note lines to print."""

    locks: list[FolderLock] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def release(self) -> None:
        for lock in reversed(self.locks):
            lock.release()
        self.locks.clear()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _earlier_run(folder: Path) -> list[str]:
    """The names of what ``folder`` holds, sorted, its lock file and a lone ``config.toml`` aside (a run that
    stopped before training, e.g. on bad ``--data``, leaves only that: its retry may take the folder); empty when
    nothing else is there."""
    if not folder.is_dir():
        return []
    names = sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME)
    return [] if names == ["config.toml"] else names


def _notes(cfg: TrainConfig) -> list[str]:
    """Note lines for outputs outside a run folder that a fresh run replaces."""
    notes = []
    if cfg.checkpoint.resume or cfg.test_only:
        return notes
    log = cfg.step_log_path
    if log is not None and (cfg.output_dir is None or not _inside(log, cfg.output_dir)):
        if log.is_file() and log.stat().st_size > 0:
            name = f"--log-jsonl {log}" if cfg.log_jsonl is not None else f"the step log {log}"
            notes.append(f"train: note: {name} holds an earlier run's lines: this run starts it afresh (--resume "
                         f"appends to it)")
    metrics = cfg.metrics_json
    if metrics is not None and metrics.is_file():
        notes.append(f"train: note: --metrics-json {metrics} exists: this run replaces it at its end")
    return notes


def claim(cfg: TrainConfig, write_config: Callable[[Path], object] | None = None) -> RunFolder:
    """Rank 0, before the run: lock the run folder and an explicit ``--checkpoint-dir`` (made where missing),
    refuse a run folder that holds an earlier run (unless ``--resume``), and with ``--output-dir`` write the resolved
    config (``write_config(cfg.resolved_config_path)``) at once. ``--test-only`` reads a run folder: nothing is
    locked or refused then.

    Raises:
        pipeline.fsio.FolderBusy: another live run holds a folder (one line: its pid, host and start time).
        ValueError: ``--output-dir`` holds an earlier run and this one is not ``--resume``.
        pipeline.fsio.WriteFailed: a folder, lock file or the config cannot be written.
    """
    run = RunFolder(notes=_notes(cfg))
    if cfg.test_only:
        return run
    try:
        if cfg.output_dir is not None:
            run.locks.append(FolderLock(cfg.output_dir, "--output-dir",
                                        advice="wait for it, or pick another --output-dir").acquire())
            held = _earlier_run(cfg.output_dir)
            if held and not cfg.checkpoint.resume:
                shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
                raise ValueError(f"--output-dir {cfg.output_dir} already holds a run ({shown}); pass --resume to "
                                 f"continue it, or pick another --output-dir (or delete that folder)")
        ck_dir = cfg.checkpoint.dir
        if ck_dir is not None and (cfg.output_dir is None or not _inside(ck_dir, cfg.output_dir)):
            run.locks.append(FolderLock(ck_dir, "--checkpoint-dir",
                                        advice="wait for it, or pick another --checkpoint-dir").acquire())
            from train.checkpoint import list_checkpoints  # torch: imported once a run is sure to start

            earlier = list_checkpoints(ck_dir)
            if earlier and not cfg.checkpoint.resume:  # its rotation would delete the earlier run's checkpoints
                raise ValueError(f"--checkpoint-dir {ck_dir} holds an earlier run's checkpoints (newest "
                                 f"{earlier[-1].name}); pass --resume to continue it, or pick another "
                                 f"--checkpoint-dir (or delete them)")
        if cfg.output_dir is not None and write_config is not None:
            write_config(cfg.resolved_config_path)
    except BaseException:
        run.release()
        raise
    return run
