"""Where this process sits in a torchrun job: process-group setup, the node's share of CPU cores, and the few
collectives the loop needs.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; without them the run is a single process. Backend: NCCL when CUDA is present, gloo otherwise.
The one place in train/ that reads torchrun's environment.

A frozen rank (stopped, swapped out, a hung driver) would make the others wait in their next collective for
torch's default 30 minutes. Here collectives time out after ``--dist-timeout`` s, and every rank publishes a
heartbeat (:class:`Heartbeat`: ``time.time()`` every few seconds, from a daemon thread, into the process group's
TCPStore); a rank that sees another's heartbeat older than the timeout, or whose collective times out, ends
with one line naming the rank that stopped answering (:func:`stall_line`) and exit code :data:`EXIT_STALLED`,
through ``os._exit``: a rank stuck in a collective cannot unwind. Heartbeat ages compare the clocks of the
nodes (NTP keeps them within a second, far below the timeout).

How DistributedDataParallel wraps the training model is set here, once (:class:`DdpSettings`, :func:`wrap_ddp`):
no buffer broadcast before every forward, gradients as views of DDP's all-reduce buckets.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pipeline.compat import init_process_group
from pipeline.hostinfo import cores_per_local_rank, local_world_size
from train.accelerator import choose_device

EXIT_STALLED = 69  # sysexits' EX_UNAVAILABLE: a rank stopped answering; the job cannot go on
HEARTBEAT_PREFIX = "train/heartbeat/"


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job.

    Attributes:
        rank / world_size / local_rank: torchrun's numbering (0 / 1 / 0 for a single process).
        device: the training device of this rank (``cuda:<local_rank>`` or ``cpu``).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(timeout_s: float | None = None, device_request: str = "auto") -> DistEnv:
    """Read torchrun's environment, pick the device (``--device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N``; see
    :func:`train.accelerator.choose_device`) and join the process group if ``WORLD_SIZE > 1`` (its collectives time
    out after ``timeout_s`` s; None: torch's default).

    Raises:
        RuntimeError: the environment variables are inconsistent (e.g. RANK >= WORLD_SIZE).
        ValueError: a GPU asked for that this node cannot give (one line).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = global_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not 0 <= rank < world_size:
        raise RuntimeError(f"RANK={rank} is not in [0, WORLD_SIZE={world_size}); launch with torchrun")
    device = choose_device(device_request, local_rank, local_world_size())
    if device.type == "cuda":
        torch.cuda.set_device(device)  # cuDNN's algorithm choice: train.precision.set_cudnn, from the run's config
    if world_size > 1 and not dist.is_initialized():
        init_process_group("nccl" if device.type == "cuda" else "gloo", device if device.type == "cuda" else None,
                           timeout=timedelta(seconds=timeout_s) if timeout_s is not None else None)
    return DistEnv(rank, world_size, local_rank, device)


def all_reduce(values: list[float], op: str, env: DistEnv) -> list[float]:
    """Reduce a short list of floats over all ranks (``op`` = ``"sum"`` or ``"max"``); one collective.

    Float64 on the device so integer counts up to 2**53 stay exact.
    """
    if not env.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor.tolist()


def all_gather_objects(obj: object, env: DistEnv) -> list:
    """Every rank's ``obj`` (picklable), by rank; ``[obj]`` for a single process."""
    if not env.distributed:
        return [obj]
    out: list = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def average_buffers(module: torch.nn.Module, env: DistEnv) -> None:
    """Replace every floating-point buffer of ``module`` (BatchNorm running mean / var) by its mean over ranks.

    DDP keeps parameters equal on every rank, but buffers are not synchronised (:class:`DdpSettings`: no
    per-forward broadcast), so every rank holds the running statistics of its own batches: ranks would
    evaluate with different BN statistics and rank 0's checkpoint would not hold what the others evaluated.
    The mean over ranks (timm's ``distribute_bn`` with ``reduce=True``) uses the statistics of every rank's
    data, rather than rank 0's alone; afterwards every rank holds the same values. Called before every
    evaluation and checkpoint (``train.build.Session.sync_buffers``). One all-reduce per dtype;
    integer buffers (``num_batches_tracked``, equal on every rank) are left alone. No-op for one process.
    """
    if not env.distributed:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for b in module.buffers():
        if b.is_floating_point():
            by_dtype.setdefault(b.dtype, []).append(b)
    for buffers in by_dtype.values():
        flat = torch.cat([b.reshape(-1) for b in buffers])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(env.world_size)
        offset = 0
        for b in buffers:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()


@dataclass(frozen=True)
class DdpSettings:
    """How :func:`wrap_ddp` wraps the training model in ``DistributedDataParallel`` (torch's defaults, the old
    behaviour here: ``broadcast_buffers=True``, ``gradient_as_bucket_view=False``). Source: PyTorch's
    DistributedDataParallel reference, https://pytorch.org/docs/stable/generated/
    torch.nn.parallel.DistributedDataParallel.html (arguments ``broadcast_buffers`` / ``forward_sync_buffers`` and
    ``gradient_as_bucket_view``).

    Attributes:
        broadcast_buffers: DDP broadcasts rank 0's buffers (BN running mean / var, ``num_batches_tracked``)
            at the start of every forward. Off: in training mode BN normalises with the batch's own statistics,
            so the buffers never enter the step's arithmetic (parameters and loss are unchanged, bit for bit:
            ``tests/integration/test_ddp_settings.py``), and they are averaged over ranks before every
            evaluation and every checkpoint instead (:func:`average_buffers`, through
            ``train.build.Session.sync_buffers``, called by ``train.trainer.Trainer._eval_epoch`` and
            ``train.loop.Checkpointer.save``; the evaluation before training, ``--initial-eval``, runs on
            buffers still equal on every rank: the same seeded initial model, or the same checkpoint loaded on
            every rank by ``train.loop.resume``). Saves a broadcast (ResNet50: ~0.2 MB in 159 tensors) that the
            forward waits for, every step. The averaged statistics now cover every rank's batches of every
            step; with the broadcast each rank's buffers restarted from rank 0's every step, so the average held
            rank 0's batches plus each rank's last one. torch 2.13 renamed the switch ``forward_sync_buffers``
            (:func:`ddp_kwargs` picks the name this torch takes).
        gradient_as_bucket_view: each parameter's ``.grad`` is a view into DDP's all-reduce bucket, so the
            gradients are not held twice (ResNet50 fp32: ~100 MB) and the bucket is not copied back into them
            after the all-reduce. Caveat (torch's reference): ``detach_()`` cannot be called on such gradients
            (an optimizer's ``zero_grad(set_to_none=False)`` is written for it), and gradient clipping or
            unscaling must work in place. This project's step (``train.loop.TrainStep``) calls
            ``zero_grad(set_to_none=True)`` and neither clips nor detaches; GradScaler's ``unscale_`` and
            SGD's step (fused, foreach or for-loop) work in place: compatible. With ``set_to_none=True`` autograd
            hands DDP a fresh gradient each step, which DDP copies into the bucket before pointing ``.grad``
            at the bucket (the fresh one is freed at once), so the per-step copy into the bucket remains.
    """

    broadcast_buffers: bool = False
    gradient_as_bucket_view: bool = True


def ddp_kwargs(settings: DdpSettings) -> dict:
    """``DistributedDataParallel`` keyword arguments for ``settings`` on this torch: torch 2.13+ names the
    per-forward buffer sync ``forward_sync_buffers`` (``broadcast_buffers`` is deprecated there and, when False,
    also skips the buffer sync at construction); older torch, ``broadcast_buffers``."""
    takes = inspect.signature(DistributedDataParallel.__init__).parameters
    sync_name = "forward_sync_buffers" if "forward_sync_buffers" in takes else "broadcast_buffers"
    return {sync_name: settings.broadcast_buffers, "gradient_as_bucket_view": settings.gradient_as_bucket_view}


def wrap_ddp(model: torch.nn.Module, env: DistEnv,
             settings: DdpSettings = DdpSettings()) -> DistributedDataParallel:
    """``model`` (on ``env.device``) in ``DistributedDataParallel`` with ``settings``: ``device_ids`` the rank's
    GPU on CUDA, None on a CPU (gloo). Needs the process group (:func:`init_distributed`); DDP broadcasts rank
    0's parameters at construction (a collective: every rank calls it at the same point)."""
    device_ids = [env.device] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs(settings))


def global_rank() -> int:
    """This process's rank over all nodes (torchrun's ``RANK``; 0 without torchrun), before any process group."""
    return int(os.environ.get("RANK", "0"))


def cores_per_rank() -> int:
    """CPU cores for this rank: :func:`pipeline.hostinfo.cores_per_local_rank` (the cores available to this process
    divided by the ranks on this node, at least 1)."""
    return cores_per_local_rank()


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op for a single process)."""
    if env.distributed:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    """Leave the process group."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


# --- preemption votes and stalled ranks --------------------------------------------------------------------------

class StopVote:
    """Votes of the ranks on stopping (see :class:`train.preempt.StopAgreement`): a MAX all-reduce of one int32
    flag on a host (gloo) group of every rank, ``async_op`` so it runs beside the step; no device tensor, so no
    device synchronisation on CUDA. Created by every rank at the same point (a collective).
    """

    def __init__(self, env: DistEnv, timeout_s: float | None = None) -> None:
        kwargs = {"timeout": timedelta(seconds=timeout_s)} if timeout_s is not None else {}
        self.group = dist.new_group(backend="gloo", **kwargs)

    def __call__(self, flag: bool) -> Callable[[], bool]:
        """Start a vote on this rank's ``flag``; returns the function that waits for it and reads the result
        (True where any rank voted True)."""
        votes = torch.tensor([1 if flag else 0], dtype=torch.int32)
        work = dist.all_reduce(votes, op=dist.ReduceOp.MAX, group=self.group, async_op=True)

        def result() -> bool:
            work.wait()
            return int(votes[0]) > 0

        return result


def is_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that timed out (gloo: ``RuntimeError: ... Timed out waiting 30000ms for
    recv operation to complete``; NCCL's watchdog and the store: ``... timeout ...``; torch 2.1+ raises
    ``DistBackendError``, a RuntimeError)."""
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("timed out" in text or "timeout" in text)


def stall_line(stale: list[tuple[int, float]], timeout_s: float, gone: list[int] | None = None) -> str:
    """The one line of a stalled job (without the ``train:`` prefix): ``stale`` = (rank, seconds since its last
    heartbeat) of the ranks that stopped answering, ``gone`` = ranks that already left the run."""
    gave_up = f"the others gave up after --dist-timeout {timeout_s:g} s"
    if stale:
        who = ", ".join(f"rank {r} stopped answering {age:.0f} s ago" for r, age in stale)
        return f"error: {who} (no heartbeat); {gave_up}"
    if gone:
        return (f"error: a collective timed out: rank{'s' if len(gone) > 1 else ''} {', '.join(map(str, gone))} "
                f"left the run (see its own error); {gave_up}")
    return (f"error: a collective timed out but every rank's heartbeat is fresh (a rank slow, or in another "
            f"collective); {gave_up}: raise --dist-timeout if a step or checkpoint can take that long")


class Heartbeat:
    """This rank's heartbeat in the process group's store, and the watch on the others'.

    A daemon thread writes ``time.time()`` under ``train/heartbeat/<rank>`` every ``interval_s`` (a quarter of
    the timeout, at most 5 s) and reads the other ranks' entries; one older than ``timeout_s`` (or a store that
    does not answer) ends this process with :func:`stall_line` on stderr and :data:`EXIT_STALLED`. The same ending
    follows a collective that timed out in the main thread (:meth:`give_up_after`). :meth:`stop` marks this rank
    as done (a rank that finished is never stale) and ends the thread. Nothing is started for one process.

    Args:
        store: the TCPStore (default: the default process group's); ``clock``: wall clock in s (tests);
        ``exit``: how the process ends (``os._exit``; tests replace it).
    """

    def __init__(self, env: DistEnv, timeout_s: float, store: object | None = None,
                 clock: Callable[[], float] = time.time, exit: Callable[[int], None] = os._exit,
                 interval_s: float | None = None) -> None:
        self.env, self.timeout_s, self.clock, self._exit = env, timeout_s, clock, exit
        self.interval_s = interval_s if interval_s is not None else max(0.2, min(5.0, timeout_s / 4))
        self.store = store
        self._started = clock()
        self._stopped = threading.Event()
        self._once = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> Heartbeat:
        if not self.env.distributed:
            return self
        if self.store is None:
            self.store = dist.distributed_c10d._get_default_store()
        self._started = self.clock()
        self.beat()
        self._thread = threading.Thread(target=self._run, name="train-heartbeat", daemon=True)
        self._thread.start()
        return self

    def beat(self) -> None:
        self.store.set(HEARTBEAT_PREFIX + str(self.env.rank), repr(self.clock()))

    def ages(self) -> dict[int, float | None]:
        """Seconds since each other rank's last heartbeat (None: that rank has finished)."""
        now, ages = self.clock(), {}
        for r in range(self.env.world_size):
            if r == self.env.rank:
                continue
            key = HEARTBEAT_PREFIX + str(r)
            if not self.store.check([key]):  # not published yet: count from this rank's start
                ages[r] = now - self._started
                continue
            value = self.store.get(key).decode()
            ages[r] = None if value == "done" else now - float(value)
        return ages

    def stale(self, older_than_s: float) -> list[tuple[int, float]]:
        """(rank, age in s) of the ranks whose heartbeat is older than ``older_than_s``."""
        return [(r, age) for r, age in self.ages().items() if age is not None and age > older_than_s]

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                self.beat()
                stale = self.stale(self.timeout_s)
            except Exception as exc:  # the store's host (torchrun's agent or rank 0) does not answer
                if self._stopped.is_set():
                    return
                self.give_up(f"error: the rendezvous store ({os.environ.get('MASTER_ADDR', '?')}:"
                             f"{os.environ.get('MASTER_PORT', '?')}) stopped answering ({str(exc).splitlines()[0]}); "
                             f"the run cannot go on")
                return
            if stale and not self._stopped.is_set():
                self.give_up(stall_line(stale, self.timeout_s))
                return

    def give_up_after(self, exc: BaseException) -> None:
        """A collective timed out in the main thread: name the rank(s) that stopped answering and end."""
        try:
            ages = self.ages()
            stale = [(r, a) for r, a in ages.items() if a is not None and a > 2 * self.interval_s]
            line = stall_line(stale, self.timeout_s, [r for r, a in ages.items() if a is None])
        except Exception:  # the store is gone too
            line = stall_line([], self.timeout_s) + f" ({str(exc).splitlines()[0] if str(exc) else exc!r})"
        self.give_up(line)

    def give_up(self, line: str) -> None:
        """Write ``train: <line>`` on stderr (once per process) and end it with :data:`EXIT_STALLED`."""
        if not self._once.acquire(blocking=False):
            return
        sys.stderr.write(f"train: {line}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        self._exit(EXIT_STALLED)

    def stop(self) -> None:
        """Mark this rank done and end the thread (idempotent)."""
        if self._thread is None or self._stopped.is_set():
            return
        self._stopped.set()
        try:
            self.store.set(HEARTBEAT_PREFIX + str(self.env.rank), "done")
        except Exception:  # leaving anyway
            pass
        self._thread.join(timeout=self.interval_s + 1)
