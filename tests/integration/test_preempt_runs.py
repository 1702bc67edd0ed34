"""Preemption and stalled ranks, end to end: SIGTERM stops after the step with a checkpoint and resumes bitwise;
a second SIGINT aborts in one line; under torchrun (gloo) a signal to one rank stops both at the same step, and a
frozen rank ends the other with one line naming it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from train import checkpoint
from train.distributed import EXIT_STALLED
from train.preempt import EXIT_ABORTED, EXIT_STOPPED

REPO = Path(__file__).resolve().parents[2]
SYNTH = ["--loader", "synthetic", "--synthetic-train-samples", "32", "--image-size", "32", "--batch-size", "8",
         "--no-eval", "--log-every", "1", "--workers", "0"]


def start(args: list[str], launcher: list[str] | None = None) -> subprocess.Popen:
    cmd = (launcher or [sys.executable, "-u", "-m", "tools.train"]) + args
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})


def read_until(proc: subprocess.Popen, needle: str, timeout_s: float = 60) -> list[str]:
    """Lines of ``proc`` up to the first holding ``needle``."""
    lines, end = [], time.time() + timeout_s
    while time.time() < end:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    proc.kill()
    raise AssertionError(f"no {needle!r} in:\n{''.join(lines)}")


def finish(proc: subprocess.Popen, lines: list[str], timeout_s: float = 60) -> str:
    out, _ = proc.communicate(timeout=timeout_s)
    return "".join(lines) + out


def weights(ckdir: Path, step: int) -> dict:
    path = checkpoint.latest_checkpoint(ckdir)
    assert path is not None and path.name == f"ckpt-step{step:08d}.pt"
    return checkpoint.read_checkpoint(path)["model"]


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_resume_is_bitwise(tmp_path):
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    run_args = SYNTH + ["--epochs", "2"]  # 8 steps
    ref = start(run_args + ["--checkpoint-dir", str(ref_dir)])
    victim = start(run_args + ["--checkpoint-dir", str(cut_dir)])
    lines = read_until(victim, "epoch 1/2 step 1/4")  # one step has run
    victim.send_signal(signal.SIGTERM)
    out = finish(victim, lines)
    assert victim.returncode == EXIT_STOPPED, out
    assert "Traceback" not in out
    stops = [l for l in out.splitlines() if "stopped by" in l]
    assert len(stops) == 1, out
    saved = checkpoint.latest_checkpoint(cut_dir)
    step = int(saved.name[len("ckpt-step"):-len(".pt")])
    assert 1 <= step < 8
    assert stops[0] == (f"train: stopped by SIGTERM after step {step} of 8; checkpoint {saved} written; "
                        f"continue with --resume")
    resumed = subprocess.run([sys.executable, "-m", "tools.train", *run_args, "--checkpoint-dir", str(cut_dir),
                              "--resume"], cwd=REPO, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resume: {saved} at step {step}/8" in resumed.stdout
    assert ref.wait(timeout=300) == 0
    ref_w, res_w = weights(ref_dir, 8), weights(cut_dir, 8)
    assert ref_w.keys() == res_w.keys()
    for k, v in ref_w.items():
        assert torch.equal(v, res_w[k]), k


def test_a_second_sigint_aborts_at_once_in_one_line(tmp_path):
    # the initial evaluation is long (4096 images) and checks no flag: the first SIGINT waits there
    proc = start(["--loader", "synthetic", "--synthetic-train-samples", "64", "--synthetic-val-samples", "4096",
                  "--image-size", "32", "--batch-size", "8", "--initial-eval", "--workers", "0",
                  "--checkpoint-dir", str(tmp_path / "ck")])
    lines = read_until(proc, "train: synthetic loader")  # handlers installed; the evaluation follows
    proc.send_signal(signal.SIGINT)
    lines += read_until(proc, "Ctrl-C again to abort")
    proc.send_signal(signal.SIGINT)
    out = finish(proc, lines, timeout_s=30)
    assert proc.returncode == EXIT_ABORTED, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert out.splitlines()[-1] == "train: aborted by a second SIGINT (after SIGINT): nothing saved"
    assert checkpoint.latest_checkpoint(tmp_path / "ck") is None


# --- torchrun, 2 ranks, gloo -------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str]) -> subprocess.Popen:
    launcher = [sys.executable, "-u", "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                "127.0.0.1", "--master-port", str(free_port()), "-m", "tools.train"]
    return start(args, launcher)


def rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker of ``rank`` (its environment says RANK)."""
    for task in Path(f"/proc/{launcher.pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in env:
                return int(pid)
    raise AssertionError(f"no rank {rank} under torchrun {launcher.pid}")


@pytest.mark.slow
def test_ddp_sigterm_to_one_rank_stops_both_at_the_same_step(tmp_path):
    ck = tmp_path / "ck"
    proc = torchrun(SYNTH + ["--epochs", "4", "--checkpoint-dir", str(ck), "--dist-timeout", "60"])
    lines = read_until(proc, "epoch 1/4 step 1/2", timeout_s=120)
    os.kill(rank_pid(proc, 1), signal.SIGTERM)  # rank 0 gets nothing: the vote tells it
    out = finish(proc, lines)
    stops = [l for l in out.splitlines() if "stopped by" in l]
    assert len(stops) == 1, out  # rank 0's line
    saved = checkpoint.latest_checkpoint(ck)
    step = int(saved.name[len("ckpt-step"):-len(".pt")])
    assert stops[0].startswith(f"train: stopped by SIGTERM (to rank 1) after step {step} of 8; checkpoint {saved}")
    # both ranks left through the stop (the checkpoint gathers both ranks' loader states): exit 75 each
    assert out.count(f"exitcode  : {EXIT_STOPPED}") == 2 or out.count(f"exitcode: {EXIT_STOPPED}") == 2, out
    assert f"train: error" not in out


@pytest.mark.slow
def test_ddp_a_frozen_rank_ends_the_other_with_one_line_naming_it(tmp_path):
    proc = torchrun(SYNTH + ["--epochs", "50", "--dist-timeout", "10"])
    lines = read_until(proc, "epoch 1/50 step 1/2", timeout_s=120)
    frozen = rank_pid(proc, 1)
    os.kill(frozen, signal.SIGSTOP)
    t0 = time.time()
    try:
        lines += read_until(proc, "stopped answering", timeout_s=40)
        took = time.time() - t0
    finally:
        os.kill(frozen, signal.SIGKILL)
    out = finish(proc, lines)
    line = [l for l in out.splitlines() if "stopped answering" in l]
    assert line == [line[0]] and line[0].startswith("train: error: rank 1 stopped answering "), out
    assert line[0].endswith("s ago (no heartbeat); the others gave up after --dist-timeout 10 s")
    assert took < 30
    assert f"exitcode  : {EXIT_STALLED}" in out or f"exitcode: {EXIT_STALLED}" in out, out
