"""Checkpoints that survive ``kill -9``: atomic writes by rank 0, the last K kept, exact resume.

A checkpoint is ``<dir>/ckpt-step{step:08d}.pt``, written to a ``.tmp`` file in the same folder, fsync'd,
then ``os.replace``'d onto its final name (and the folder fsync'd): a file with the final name is always
complete; a kill mid-write leaves only a ``*.tmp`` that :func:`latest_checkpoint` ignores and the next
save removes. Older checkpoints are deleted only after the new one is in place (the last ``keep`` stay). One run
writes a folder: ``train`` locks it for the run (:mod:`train.rundir`), so another run's clean-up and rotation
never delete these files.

Contents (only tensors and plain Python values, so ``torch.load(weights_only=True)`` of every torch from 2.0
reads it; bytes are stored as tagged uint8 tensors, which torch 2.0 / 2.1's loader needs): a header
(format version, model name, class count, world size, global batch, image size, precision, total steps),
the model (unwrapped from DDP), optimizer, GradScaler, LR scheduler and EMA states (the EMA with its update
count), the position (epoch, global step, batches done in that epoch), every rank's train-loader state
(``Loader.state_dict``: DALI's reader and RNG state; empty for the other backends) and the RNG states (Python
``random``, NumPy, torch CPU, torch CUDA). A checkpoint is read onto the CPU; ``load_state_dict`` copies each
state onto the device of the object it restores.

Resume positions the loader with ``set_epoch(epoch)``, ``load_state_dict(state of this rank)`` and
``iter_from(batches done)``: backends whose data order depends only on (seed, epoch, rank, worker) replay
(decode, do not train) the batches already trained in that epoch; DALI restores its own reader state.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch

from pipeline.fsio import fsync_dir

FORMAT_VERSION = 2  # 2: EMA update count and per-rank loader states
MODEL_NAME = "resnet50"
_NAME = re.compile(r"^ckpt-step(\d{8,})\.pt$")
T = TypeVar("T")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here (unreadable, or from a different model / run shape)."""


@dataclass(frozen=True)
class Header:
    """What a checkpoint was made for; checked against the resuming run."""

    num_classes: int
    world_size: int
    global_batch: int
    image_size: int
    precision: str
    total_steps: int
    model: str = MODEL_NAME
    version: int = FORMAT_VERSION
    # what fixes the data order of a resumed epoch: the backend, its seed, shuffle buffer and (for backends whose
    # order depends on it: cpu, nvjpeg, folder) the worker count; None = not recorded / does not matter
    loader: str | None = None
    seed: int | None = None
    shuffle_buffer: int | None = None
    workers: int | None = None


@dataclass
class Position:
    """Where training stands: ``step`` steps done in total, ``epoch_step`` of them in epoch ``epoch`` (0-based).
    Saved under the checkpoint's ``progress`` key."""

    epoch: int = 0
    step: int = 0
    epoch_step: int = 0


@dataclass(frozen=True)
class TrainState:
    """The objects whose states a checkpoint holds: the plain (or DDP / compiled) model, its optimizer, and the
    LR scheduler, GradScaler and EMA (:class:`train.recipe.ModelEma`, or anything with ``state_dict()`` /
    ``load_state_dict()``) where the run has them."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object = None
    scaler: torch.amp.GradScaler | None = None
    ema: object = None


@dataclass
class Loaded:
    """A loaded checkpoint: its file, header and position (the states are already restored)."""

    path: Path
    header: Header
    position: Position
    loader_states: list = field(default_factory=list)  # Loader.state_dict() of every rank, by rank


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"ckpt-step{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in ``directory`` (final names only, ``*.tmp`` ignored), oldest step first."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint with the highest step in ``directory``, or None when there is none."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP (or ``torch.compile``) wrapper."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def rng_state() -> dict:
    """RNG states as tensors / plain values (``weights_only``-loadable)."""
    py = random.getstate()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only when CUDA is present here too)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    saved = state["numpy"]
    keys = np.asarray(saved["keys"].cpu().tolist(), dtype=np.uint32)  # any device: .numpy() fails on CUDA tensors
    np.random.set_state((saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([device_state.cpu() for device_state in state["cuda"]])


BYTES_TAG = "__bytes__"


def bytes_as_tensors(obj):
    """``obj`` with every ``bytes`` inside dicts / lists as ``{BYTES_TAG: 1-D uint8 tensor}``: torch 2.0 / 2.1's
    ``torch.load(weights_only=True)`` refuses pickled bytes (``_codecs.encode``), tensors load on every torch
    (a DALI loader state holds its pipeline checkpoint as bytes)."""
    if isinstance(obj, bytes):
        return {BYTES_TAG: torch.frombuffer(bytearray(obj), dtype=torch.uint8) if obj else
                torch.empty(0, dtype=torch.uint8)}
    if isinstance(obj, dict):
        return {k: bytes_as_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(bytes_as_tensors(v) for v in obj)
    return obj


def tensors_as_bytes(obj):
    """The inverse of :func:`bytes_as_tensors` (bytes saved by an older version pass through unchanged)."""
    if isinstance(obj, dict):
        if set(obj) == {BYTES_TAG} and isinstance(obj[BYTES_TAG], torch.Tensor):
            return bytes(obj[BYTES_TAG].numpy().tobytes())
        return {k: tensors_as_bytes(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(tensors_as_bytes(v) for v in obj)
    return obj


def _torch_write_error(exc: BaseException, folder: Path, partial: Path) -> str:
    """The reason of a write error ``torch.save`` wrapped in a RuntimeError (its text is the C++ writer's, e.g.
    ``[enforce fail at inline_container.cc:672] . unexpected pos 117056 vs 116952``): "No space left on device"
    where the folder's free space (with the partial file still there) is below 64 MiB, else torch's first line."""
    import shutil

    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < 64 * 2**20:
        size = partial.stat().st_size if partial.exists() else 0
        return f"No space left on device: {free / 2**20:.1f} MiB free after {size / 2**20:.1f} MiB written"
    return str(exc).strip().splitlines()[0]


def save_checkpoint(directory: Path, header: Header, position: Position, state: TrainState, keep: int = 2,
                    loader_states: list | None = None) -> Path:
    """Write ``ckpt-step{position.step:08d}.pt`` atomically (``state``'s objects, ``position``), then delete all but
    the newest ``keep``.

    ``loader_states``: every rank's ``Loader.state_dict()``, by rank. Call on rank 0 only. Returns the final path.

    Raises:
        ValueError: ``keep`` < 1.
        CheckpointError: the file cannot be written (disk full, read-only, ...): one line, the previous ones intact.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("ckpt-step*.tmp"):  # left by a process killed mid-write: never a complete checkpoint
        stale.unlink(missing_ok=True)
    payload = {
        "header": dict(vars(header)),
        "progress": dict(vars(position)),
        "model": unwrap(state.model).state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "loader": bytes_as_tensors(list(loader_states or [])),
        "rng": rng_state(),
    }
    final = checkpoint_path(folder, position.step)
    tmp = final.with_name(f"{final.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, final)
    except (OSError, RuntimeError) as exc:  # ENOSPC, EROFS, quota (torch.save reports write errors as RuntimeError)
        why = getattr(exc, "strerror", None) or _torch_write_error(exc, folder, tmp)
        raise CheckpointError(f"cannot write checkpoint {final} ({why}); free space in {folder} or use another "
                              f"--checkpoint-dir, then rerun with --resume (the previous checkpoints are intact)") \
            from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(folder)
    for old in list_checkpoints(folder)[:-keep]:  # only now that the new one is complete
        old.unlink(missing_ok=True)
    return final


def read_checkpoint(path: Path) -> dict:
    """The raw payload of ``path`` (``weights_only``), every tensor on the CPU.

    Raises:
        CheckpointError: unreadable / truncated / not a checkpoint of this format.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # truncated zip, bad pickle, foreign globals: all mean "unusable file"
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'}); "
                              f"delete it to resume from the previous one, or start without --resume") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("header"), dict) or "model" not in payload:
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint of this trainer; delete it or point "
                              f"--checkpoint-dir elsewhere")
    return payload


def check_header(path: Path, saved: dict, expected: Header, for_training: bool = True) -> Header:
    """Compare a saved header with this run's.

    Raises:
        CheckpointError: a different format, model or class count, or a world size / global batch that changes
            the data order (the saved loader position would be meaningless).
    """
    version = saved.get("version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}, this trainer reads "
                              f"{FORMAT_VERSION}; start without --resume or use another --checkpoint-dir")
    try:
        header = Header(**saved)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint {path} has a malformed header ({exc}); delete it") from None
    for name, what in (("model", "model"), ("num_classes", "class count"), ("world_size", "world size"),
                       ("global_batch", "global batch size"), ("precision", "precision"), ("image_size", "--image-size"),
                       ("loader", "--loader"), ("seed", "--seed"), ("shuffle_buffer", "--shuffle-buffer"),
                       ("workers", "--workers")):
        have, want = getattr(header, name), getattr(expected, name)
        if have != want:
            hint = ("resume with the same settings, or use another --checkpoint-dir to start fresh" if for_training
                    else "evaluate it with a dataset of the same classes")
            raise CheckpointError(f"checkpoint {path} is for {what} {have}, this run has {want}; {hint}")
    return header


def load_checkpoint(path: Path, expected: Header, state: TrainState, restore_rng: bool = True) -> Loaded:
    """Restore every state saved by :func:`save_checkpoint` into ``state``'s objects (all ranks call this); the RNG
    states too with ``restore_rng``.

    Raises:
        CheckpointError: see :func:`read_checkpoint` and :func:`check_header`.
    """
    path = Path(path)
    payload = read_checkpoint(path)
    header = check_header(path, payload["header"], expected)
    try:
        unwrap(state.model).load_state_dict(payload["model"])
        state.optimizer.load_state_dict(payload["optimizer"])
        for name in ("scheduler", "scaler", "ema"):
            target = getattr(state, name)
            if target is not None and payload.get(name) is not None:
                target.load_state_dict(payload[name])
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} does not fit this model ({first}); use another "
                              f"--checkpoint-dir to start fresh") from None
    if restore_rng and payload.get("rng") is not None:
        set_rng_state(payload["rng"])
    return Loaded(path, header, Position(**payload["progress"]), tensors_as_bytes(list(payload.get("loader") or [])))


def every_n_steps(fn: Callable[..., T], position: Position, every: int | None,
                  hook: Callable[[], None]) -> Callable[..., T]:
    """Wrap a step so each call advances ``position`` and ``hook()`` runs when ``position.step % every == 0``.

    ``every`` None: only counts (the loop saves at epoch ends itself).
    """

    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        position.step += 1
        position.epoch_step += 1
        if every is not None and position.step % every == 0:
            hook()
        return out

    return wrapped


def load_weights(path: Path, model: torch.nn.Module, num_classes: int) -> tuple[Loaded, dict | None]:
    """Load only the model weights of a checkpoint, for evaluation (``train --test-only``), whatever the world
    size, batch or precision of the run that wrote it. Returns the checkpoint and its EMA state (None if none).

    Raises:
        CheckpointError: unreadable, another format or model, another class count, or weights that do not fit.
    """
    path = Path(path)
    payload = read_checkpoint(path)
    saved = payload["header"]
    fields = set(Header.__dataclass_fields__) - {"model", "version"}
    try:
        expected = Header(**{**{k: v for k, v in saved.items() if k in fields}, "num_classes": num_classes})
    except TypeError as exc:
        raise CheckpointError(f"checkpoint {path} has a malformed header ({exc})") from None
    header = check_header(path, saved, expected, for_training=False)
    try:
        unwrap(model).load_state_dict(payload["model"])
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} does not fit this model ({first})") from None
    return Loaded(path, header, Position(**payload["progress"])), payload.get("ema")
