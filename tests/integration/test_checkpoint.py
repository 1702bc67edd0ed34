"""Checkpoints: exact save/load round trip, clear errors, atomic files, and resume after ``kill -9``."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from train import checkpoint
from train.checkpoint import CheckpointError, Header, Position, TrainState
from train.recipe import build_scheduler

REPO = Path(__file__).resolve().parents[2]


def header(num_classes: int = 3) -> Header:
    return Header(num_classes=num_classes, world_size=1, global_batch=4, image_size=32, precision="fp32",
                  total_steps=10)


def make(num_classes: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, num_classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = build_scheduler(opt, 2, 10)
    return model, opt, sched


def train_steps(model, opt, sched, n: int) -> None:
    for _ in range(n):
        x, y = torch.randn(4, 5), torch.randint(0, 3, (4,))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_round_trip_restores_everything_exactly(tmp_path):
    model, opt, sched = make()
    ema = torch.nn.Linear(5, 3)
    train_steps(model, opt, sched, 3)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = checkpoint.save_checkpoint(tmp_path, header(), Position(epoch=1, step=3, epoch_step=1),
                                      TrainState(model, opt, sched, ema=ema))
    assert path.name == "ckpt-step00000003.pt" and not list(tmp_path.glob("*.tmp"))
    expected_draws = draws()
    # continue the original three more steps: the reference for the restored copy
    train_steps(model, opt, sched, 3)

    model2, opt2, sched2 = make(seed=99)
    ema2 = torch.nn.Linear(5, 3)
    loaded = checkpoint.load_checkpoint(path, header(), TrainState(model2, opt2, sched2, ema=ema2))
    assert loaded.position == Position(epoch=1, step=3, epoch_step=1) and loaded.header == header()
    assert draws() == expected_draws  # python, numpy and torch RNG restored
    for a, b in zip(ema.state_dict().values(), ema2.state_dict().values()):
        assert torch.equal(a, b)
    assert sched2.last_epoch == 3
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    draws()
    train_steps(model2, opt2, sched2, 3)  # same data (same RNG), same state → bitwise the same result
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    assert sched.get_last_lr() == sched2.get_last_lr()
    for s1, s2 in zip(opt.state.values(), opt2.state.values()):
        assert torch.equal(s1["momentum_buffer"], s2["momentum_buffer"])


def test_other_class_count_is_a_one_line_error(tmp_path):
    model, opt, sched = make()
    path = checkpoint.save_checkpoint(tmp_path, header(3), Position(step=1), TrainState(model, opt, sched))
    model5, opt5, sched5 = make(num_classes=5)
    with pytest.raises(CheckpointError) as e:
        checkpoint.load_checkpoint(path, header(5), TrainState(model5, opt5, sched5))
    msg = str(e.value)
    assert isinstance(e.value, ValueError) and len(msg.splitlines()) == 1
    assert str(path) in msg and "class count 3" in msg and "--checkpoint-dir" in msg


def test_truncated_or_foreign_file_is_a_clear_error(tmp_path):
    model, opt, sched = make()
    path = checkpoint.save_checkpoint(tmp_path, header(), Position(step=2), TrainState(model, opt, sched))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        checkpoint.load_checkpoint(path, header(), TrainState(*make()))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and str(path) in msg and "unreadable" in msg and "delete it" in msg
    foreign = tmp_path / "ckpt-step00000009.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        checkpoint.load_checkpoint(foreign, header(), TrainState(*make()))


def test_latest_ignores_tmp_and_only_k_are_kept(tmp_path):
    assert checkpoint.latest_checkpoint(tmp_path / "absent") is None
    model, opt, sched = make()
    for step in (2, 4, 6):
        checkpoint.save_checkpoint(tmp_path, header(), Position(step=step), TrainState(model, opt, sched), keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["ckpt-step00000004.pt", "ckpt-step00000006.pt"]
    leftover = tmp_path / "ckpt-step00000008.pt.123.tmp"  # a kill mid-write leaves this
    leftover.write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("x")
    assert checkpoint.latest_checkpoint(tmp_path).name == "ckpt-step00000006.pt"
    checkpoint.save_checkpoint(tmp_path, header(), Position(step=7), TrainState(model, opt, sched), keep=2)
    assert not leftover.exists()  # the next save removes stale temp files
    assert checkpoint.latest_checkpoint(tmp_path).name == "ckpt-step00000007.pt"
    assert len(checkpoint.list_checkpoints(tmp_path)) == 2


def test_checkpoints_are_read_onto_the_cpu_whatever_the_training_device(tmp_path, monkeypatch):
    """Loading onto the training device (map_location=cuda) made the NumPy RNG restore call .numpy() on a CUDA
    tensor (a TypeError on the first GPU resume): every read maps to the CPU, and load_state_dict moves each state
    onto its own object's device."""
    model, opt, sched = make()
    path = checkpoint.save_checkpoint(tmp_path, header(), Position(step=1), TrainState(model, opt, sched))
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    checkpoint.load_checkpoint(path, header(), TrainState(*make()))
    checkpoint.load_weights(path, make()[0], 3)
    assert seen == ["cpu", "cpu"]


def test_resume_needs_a_checkpoint_dir(capsys):
    from tools import train as train_cli

    with pytest.raises(SystemExit):
        train_cli.main(["--loader", "synthetic", "--resume"])
    assert "--checkpoint-dir" in capsys.readouterr().err


# --- kill -9 and resume ------------------------------------------------------------------------------------------

PLANNED_STEPS = 22  # 2 epochs of 11 steps (45 samples, batch 4)


def train_cmd(shards: Path, ckdir: Path, metrics: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tools.train", "--data", str(shards), "--loader", "cpu", "--epochs", "2", "--batch-size", "4", "--image-size", "32", "--workers", "1",
            "--checkpoint-dir", str(ckdir), "--checkpoint-every", "7", "--no-eval", "--metrics-json", str(metrics),
            "--ema-decay", "0.9", *extra]


def final_weights(ckdir: Path) -> dict:
    """The final checkpoint's model weights and EMA weights (``ema.*`` keys) and EMA update count."""
    path = checkpoint.latest_checkpoint(ckdir)
    assert path is not None and path.name == f"ckpt-step{PLANNED_STEPS:08d}.pt"
    payload = checkpoint.read_checkpoint(path)
    ema = payload["ema"]
    assert ema["updates"] == PLANNED_STEPS  # the EMA continued over the resume instead of restarting
    return {**payload["model"], **{f"ema.{k}": v for k, v in ema["module"].items()}}


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(demo_shards, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads in every run: same float summation order
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
    # the uninterrupted reference runs alongside the run that gets killed (2 cores: one each)
    ref = subprocess.Popen(train_cmd(demo_shards, ref_dir, tmp_path / "ref.json"), cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = subprocess.Popen(train_cmd(demo_shards, kill_dir, tmp_path / "killed.json"), cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for = kill_dir / "ckpt-step00000014.pt"  # 3 batches into epoch 2: mid-epoch
        deadline = time.monotonic() + 300
        while not wait_for.exists():
            assert victim.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(60) == -signal.SIGKILL
    finally:
        try:
            os.killpg(victim.pid, signal.SIGKILL)  # its loader worker, if still there
        except ProcessLookupError:
            pass
    assert not (tmp_path / "killed.json").exists()
    killed_at = checkpoint.latest_checkpoint(kill_dir)
    for p in checkpoint.list_checkpoints(kill_dir):  # what kill -9 left under final names is complete
        checkpoint.read_checkpoint(p)

    resumed = subprocess.run(train_cmd(demo_shards, kill_dir, tmp_path / "resumed.json", "--resume"), cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out[-3000:]

    m = json.loads((tmp_path / "resumed.json").read_text())
    step = int(killed_at.name[len("ckpt-step"):-len(".pt")])
    assert f"resume: {killed_at} at step {step}/{PLANNED_STEPS}" in resumed.stdout
    assert m["steps"] == json.loads((tmp_path / "ref.json").read_text())["steps"] == PLANNED_STEPS
    assert m["resumed_from_step"] == step and 14 <= step < PLANNED_STEPS
    assert m["total_trained_images"] == PLANNED_STEPS * 4 and m["checkpoint_s"] > 0
    assert not list(kill_dir.glob("*.tmp"))
    assert len(checkpoint.list_checkpoints(kill_dir)) == 2  # keep=2
    for p in checkpoint.list_checkpoints(kill_dir):
        checkpoint.read_checkpoint(p)
    # same seed, same data order (replayed loader position), same optimizer/schedule/RNG/EMA state: bitwise equal
    ref_w, res_w = final_weights(ref_dir), final_weights(kill_dir)
    assert ref_w.keys() == res_w.keys()
    for k in ref_w:
        assert torch.equal(ref_w[k], res_w[k]), k


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["dali", "folder"])
def test_resume_in_a_later_epoch_matches_the_uninterrupted_run(loader, demo_shards, tmp_path):
    """A run resumed from a checkpoint in its second epoch ends bitwise where the uninterrupted run ends. For DALI
    this needs its reader state from the checkpoint: a rebuilt DALI pipeline starts at epoch 0's order; for the
    folder baseline, worker seeds that do not come from the global RNG (restored to a later point)."""
    import shutil

    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    from tools import train as train_cli

    def cmd(ckdir: Path, *extra: str) -> list[str]:
        data = demo_shards.parent / "tree" if loader == "folder" else demo_shards
        return ["--data", str(data), "--loader", loader, "--epochs", "2", "--batch-size", "8",
                "--image-size", "32", "--workers", "1", "--no-eval", "--ema-decay", "0.9", "--checkpoint-dir",
                str(ckdir), "--checkpoint-every", "8", "--checkpoint-keep", "100", "--device", "cpu", *extra]

    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    assert train_cli.main(cmd(ref)) == 0  # 2 epochs of 5 steps (45 samples, batch 8); checkpoints at 8 and 10
    resumed.mkdir()
    shutil.copy(checkpoint.checkpoint_path(ref, 8), resumed)  # 3 batches into the second epoch
    assert train_cli.main(cmd(resumed, "--resume")) == 0
    a = checkpoint.read_checkpoint(checkpoint.checkpoint_path(ref, 10))
    b = checkpoint.read_checkpoint(checkpoint.checkpoint_path(resumed, 10))
    assert b["ema"]["updates"] == a["ema"]["updates"] == 10
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["ema"]["module"].items():
        assert torch.equal(v, b["ema"]["module"][k]), k


def test_resume_with_settings_that_change_the_data_order_is_a_one_line_error(demo_shards, tmp_path, capsys):
    """--workers (cpu/nvjpeg/folder: which worker reads what), --seed, --shuffle-buffer, --image-size and --loader
    fix the order of a resumed epoch: a resume with another value would silently train other samples."""
    from tools import train as train_cli

    base = ["--data", str(demo_shards), "--loader", "cpu", "--epochs", "2", "--batch-size", "4", "--image-size", "32",
            "--no-eval", "--checkpoint-dir", str(tmp_path), "--checkpoint-every", "2", "--max-steps", "2"]
    assert train_cli.main([*base, "--workers", "1"]) == 0
    capsys.readouterr()
    for changed, what in ((["--workers", "2"], "--workers 1"), (["--workers", "1", "--seed", "5"], "--seed 0"),
                          (["--workers", "1", "--loader", "nvjpeg", "--device", "cpu"], "--loader cpu")):
        argv = [*base, "--max-steps", "4", "--resume", *changed]
        assert train_cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"is for {what}" in err, err


def test_a_failed_checkpoint_write_is_a_one_line_error_and_leaves_no_partial_file(tmp_path, monkeypatch):
    model, opt, sched = make()
    checkpoint.save_checkpoint(tmp_path, header(), Position(step=1), TrainState(model, opt, sched))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as e:
        checkpoint.save_checkpoint(tmp_path, header(), Position(step=2), TrainState(model, opt, sched))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "No space left on device" in msg and "--resume" in msg
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-step00000001.pt"]


def test_a_full_disk_under_torch_save_says_so_not_torchs_writer_text(tmp_path, monkeypatch):
    """torch.save reports a short write as ``[enforce fail at inline_container.cc:672] . unexpected pos ...``: on a
    folder with almost no space left the line says "No space left on device" instead."""
    import collections
    import shutil

    model, opt, sched = make()

    def short_write(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 117056 vs 116952")

    monkeypatch.setattr(torch, "save", short_write)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 4096, 4096))
    with pytest.raises(CheckpointError) as e:
        checkpoint.save_checkpoint(tmp_path, header(), Position(step=2), TrainState(model, opt, sched))
    assert "(No space left on device: 0.0 MiB free after 0.0 MiB written)" in str(e.value)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 2**30, 2**39))  # space left: torch's text
    with pytest.raises(CheckpointError) as e:
        checkpoint.save_checkpoint(tmp_path, header(), Position(step=2), TrainState(model, opt, sched))
    assert "unexpected pos 117056 vs 116952" in str(e.value)
