"""The project's DDP settings (:class:`train.distributed.DdpSettings`: no per-forward buffer broadcast, gradients
as bucket views) leave training unchanged: 2 gloo ranks on the CPU, each training the project's ResNet50 (32 px
input, 10 classes) for a few steps with the project's step (:class:`train.loop.TrainStep`) twice: wrapped by the
project's own function (:func:`train.build.make_train_model`) and wrapped with torch's defaults (the old settings:
``broadcast_buffers=True``, ``gradient_as_bucket_view=False``), from the same seeded weights on the same batches.

Parameters and losses are compared bit for bit: with one thread per process the CPU kernels are deterministic, BN
in training mode normalises with the batch's statistics (the buffers never enter the arithmetic), and a gradient
goes through the same scale-and-copy into the bucket and the same gloo all-reduce in both settings; only where it
lives afterwards differs. After :func:`train.distributed.average_buffers` (what ``Session.sync_buffers`` runs
before every evaluation and checkpoint) the BN buffers are equal on both ranks.
"""

from __future__ import annotations

import hashlib
import socket
import traceback

import pytest

WORLD_SIZE, STEPS, BATCH, SIZE, CLASSES = 2, 3, 2, 32, 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_settings_leave_training_unchanged():
    import torch.multiprocessing as mp

    port = free_port()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, results)) for r in range(WORLD_SIZE)]
    for proc in procs:
        proc.start()
    try:
        got = dict(results.get(timeout=300) for _ in procs)
    finally:
        for proc in procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
    for rank, out in got.items():
        assert isinstance(out, dict), f"rank {rank}: {out}"
    new, old = ([got[r][which] for r in range(WORLD_SIZE)] for which in ("new", "old"))
    for r in range(WORLD_SIZE):
        # the settings reached the wrapper that build_session makes, and they act: gradients are bucket views
        assert new[r]["attrs"] == (False, True) and old[r]["attrs"] == (True, False)
        assert new[r]["grads_are_views"] == (True, True) and old[r]["grads_are_views"] == (False, False)
        # training unchanged, bit for bit
        assert new[r]["losses"] == old[r]["losses"], r
        assert new[r]["params"] == old[r]["params"], (r, got[r]["max_param_diff"])
    for run in (new, old):
        assert run[0]["params"] == run[1]["params"]  # DDP's invariant
        assert run[0]["buffers_before"] != run[1]["buffers_before"]  # each rank's own batch statistics ...
        assert run[0]["buffers_after"] == run[1]["buffers_after"]  # ... averaged: every rank evaluates the same


def _worker(rank: int, port: int, results) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
        results.put((rank, _compare(rank)))
    except BaseException:  # the test reads the traceback instead of waiting for its timeout
        results.put((rank, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _compare(rank: int) -> dict:
    import torch

    from train.build import make_train_model
    from train.config import TrainConfig
    from train.distributed import DdpSettings, DistEnv, wrap_ddp

    env = DistEnv(rank, WORLD_SIZE, rank, torch.device("cpu"))
    new_params, new = _train(env, lambda model: make_train_model(TrainConfig(), env, model))
    old_settings = DdpSettings(broadcast_buffers=True, gradient_as_bucket_view=False)
    old_params, old = _train(env, lambda model: wrap_ddp(model, env, old_settings))
    diff = max(float((a - b).abs().max()) for a, b in zip(new_params, old_params))
    return {"new": new, "old": old, "max_param_diff": diff}


def _train(env, wrap) -> tuple[list, dict]:
    """STEPS steps of the project's step on this rank's batches; the parameters and a summary of the run."""
    import torch

    from pipeline.backends import Batch
    from train.distributed import average_buffers
    from train.loop import TrainStep
    from train.model import build_resnet50
    from train.precision import Precision
    from train.recipe import build_scheduler, build_sgd, parameter_groups

    torch.manual_seed(0)
    model = build_resnet50(CLASSES, env.device)
    ddp = wrap(model)
    optimizer, _ = build_sgd(parameter_groups(model, 5e-5, False), 0.1, 0.9, True, fused=False)
    step = TrainStep(ddp, optimizer, build_scheduler(optimizer, 1, STEPS),
                     torch.nn.CrossEntropyLoss(label_smoothing=0.1), Precision.FP32, env.device, raw_model=model)
    losses = []
    for i in range(STEPS):
        gen = torch.Generator().manual_seed(100 * env.rank + i)
        images = torch.randn(BATCH, 3, SIZE, SIZE, generator=gen).contiguous(memory_format=torch.channels_last)
        losses.append(float(step(Batch(images, torch.randint(0, CLASSES, (BATCH,), generator=gen)))))
    grads = [p.grad is not None and p.grad._is_view() for p in model.parameters()]
    params = [p.detach().clone() for p in model.parameters()]
    before = _digest(b for b in model.buffers() if b.is_floating_point())
    average_buffers(model, env)
    summary = {"attrs": (ddp.broadcast_buffers, ddp.gradient_as_bucket_view), "losses": losses,
               "grads_are_views": (all(grads), any(grads)), "params": _digest(params), "buffers_before": before,
               "buffers_after": _digest(b for b in model.buffers() if b.is_floating_point())}
    return params, summary


def _digest(tensors) -> str:
    """sha256 of the tensors' bytes, in order (bitwise equality of whole models, cheap to send)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()
