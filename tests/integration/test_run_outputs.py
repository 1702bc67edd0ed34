"""Runs and their outputs (issue 20, items 1-3): two runs on one folder, the run folder (``--output-dir``), and the
metrics JSON on a full disk; ``shard-imagenet``'s lock on ``--out``."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import fsio

REPO = Path(__file__).resolve().parents[2]
TINY = ["--loader", "synthetic", "--synthetic-train-samples", "16", "--image-size", "32", "--batch-size", "8",
        "--no-eval", "--workers", "0", "--no-progress"]


def train(argv: list[str], capsys) -> tuple[int, str, str]:
    """``train`` in this process: (exit status, stdout, stderr)."""
    from tools import train as train_cli

    capsys.readouterr()
    try:
        code = train_cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_a_second_train_on_a_checkpoint_dir_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path, capsys):
    ck = tmp_path / "ck"
    first = subprocess.Popen([sys.executable, "-m", "tools.train", *TINY, "--epochs", "500", "--checkpoint-dir",
                              str(ck)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (ck / fsio.LOCK_NAME).is_file() or not (ck / fsio.LOCK_NAME).stat().st_size:
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took its folder"
            time.sleep(0.05)
        code, _, err = train([*TINY, "--max-steps", "1", "--checkpoint-dir", str(ck)], capsys)
        assert code == 2 and first.poll() is None
        assert err.splitlines() == [
            f"train: error: --checkpoint-dir {ck} is used by another run: pid {first.pid} on host "
            f"{socket.gethostname()} since {json.loads((ck / fsio.LOCK_NAME).read_text())['since']}; wait for it, "
            f"or pick another --checkpoint-dir"]
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # kill -9: its lock file stays, its lock goes with it
        first.wait(30)
    assert (ck / fsio.LOCK_NAME).is_file()
    with fsio.FolderLock(ck, "--checkpoint-dir"):  # the killed run's lock went with it
        pass


def _fsync_fails_for(monkeypatch, name: str) -> None:
    real = os.fsync

    def fsync(fd):
        if name in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_the_run_folder_holds_one_run_refuses_a_new_one_and_resume_continues_it(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    base = [*TINY, "--output-dir", str(run), "--log-every", "1", "--plot", "--epochs", "2"]
    code, out, err = train([*base, "--max-steps", "1"], capsys)
    assert code == 0, err
    assert {"checkpoints", "config.toml", "metrics.json", "metrics.png", "steps.jsonl"} <= {p.name for p in
                                                                                           run.iterdir()}
    assert "reproduce: train --config config.toml" in (run / "config.toml").read_text()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["ckpt-step00000001.pt"]
    assert f"plot: wrote {run / 'metrics.png'}" in out

    code, _, err = train([*base, "--max-steps", "2"], capsys)  # a new run: refused, nothing touched
    assert code == 2 and err.splitlines() == [
        f"train: error: --output-dir {run} already holds a run (checkpoints, config.toml, metrics.json, metrics.png, "
        f"...); pass --resume to continue it, or pick another --output-dir (or delete that folder)"]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 1

    # --resume continues it; the disk is full when its metrics JSON is written at the end
    _fsync_fails_for(monkeypatch, "metrics.json")
    code, out, err = train([*base, "--max-steps", "2", "--resume"], capsys)
    assert f"resume: {run / 'checkpoints' / 'ckpt-step00000001.pt'} at step 1/2" in out
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["ckpt-step00000001.pt", "ckpt-step00000002.pt"]
    lines = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert [line["first_step"] for line in lines if "run_start" in line] == [0, 1]  # appended to
    assert [line["step"] for line in lines if "loss" in line] == [1, 2]
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"train: error: cannot write the metrics JSON {run / 'metrics.json'} (No space left on "
                          f"device)") and "previous content is intact" in err
    assert json.loads((run / "metrics.json").read_text())["steps"] == 1  # the first run's, whole
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_shard_imagenet_refuses_an_out_another_run_holds_and_jobs_share_it(demo_tree, tmp_path, capsys):
    from tools import shard_imagenet

    out = tmp_path / "shards"
    hold = ("import sys; from pipeline.fsio import FolderLock; "
            "[FolderLock(sys.argv[1], '--out', n, shared=(n == '.shard-imagenet.lock')).acquire() "
            "for n in sys.argv[2:]]; "
            "print('locked', flush=True); sys.stdin.read()")

    def holder(*names: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", hold, str(out), *names], cwd=REPO, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    argv = [str(demo_tree), "--out", str(out), "--shard-size", "100", "--workers", "1", "--no-progress"]
    other = holder(".shard-imagenet.lock", ".shard-imagenet.job0.lock")  # job 0 of a --num-jobs 2 split runs
    try:
        capsys.readouterr()
        assert shard_imagenet.main(argv) == 2  # a run without --num-jobs: refused before it touches anything
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(
            f"shard-imagenet: error: --out {out} is used by another run: pid {other.pid} on host"), err
        assert sorted(p.name for p in out.iterdir()) == [".shard-imagenet.job0.lock", ".shard-imagenet.lock"]
        assert shard_imagenet.main([*argv, "--num-jobs", "2", "--job-index", "0"]) == 2  # the same job twice
        assert "it runs --job-index 0 already" in capsys.readouterr().err
        assert shard_imagenet.main([*argv, "--num-jobs", "2", "--job-index", "1"]) == 0  # the other job: shares
    finally:
        other.stdin.close()
        other.wait(10)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
