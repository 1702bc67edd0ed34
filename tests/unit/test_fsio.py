"""Folder locks between processes, atomic writes under a full disk, the step log on a full disk, and the run folder's
paths and claim (issue 20, items 1-3)."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline import fsio
from pipeline.fsio import FolderBusy, FolderLock, WriteFailed, atomic_write_text

REPO = Path(__file__).resolve().parents[2]

HOLD = textwrap.dedent("""
    import sys, time
    from pipeline.fsio import FolderLock
    folder, name, shared, mode = sys.argv[1], sys.argv[2], sys.argv[3] == "shared", sys.argv[4]
    FolderLock(folder, "--out", name, shared=shared).acquire()
    print("locked", flush=True)
    if mode == "die":
        import os
        os._exit(0)  # no release: the kernel drops the lock
    sys.stdin.read()  # hold until the test closes stdin
""")


def hold(folder: Path, name: str = fsio.LOCK_NAME, shared: bool = False, mode: str = "hold") -> subprocess.Popen:
    """A child process that takes the lock and holds it (until its stdin closes) or exits at once without release."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), name, "shared" if shared else "excl", mode],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(10)


def test_a_second_process_is_refused_with_the_holders_pid_host_and_time(tmp_path):
    child = hold(tmp_path / "ck")
    try:
        with pytest.raises(FolderBusy) as exc:
            FolderLock(tmp_path / "ck", "--checkpoint-dir").acquire()
        msg = str(exc.value)
        assert len(msg.splitlines()) == 1
        assert msg.startswith(f"--checkpoint-dir {tmp_path / 'ck'} is used by another run: pid {child.pid} on host "
                              f"{socket.gethostname()} since ")
        assert msg.endswith("wait for it or pick another folder")
    finally:
        stop(child)
    with FolderLock(tmp_path / "ck", "--checkpoint-dir") as lock:  # released: free again
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / "ck" / fsio.LOCK_NAME).exists()  # an exclusive lock removes its file


def test_the_lock_of_a_process_that_died_without_releasing_it_is_taken_over(tmp_path):
    child = hold(tmp_path / "d", mode="die")
    child.wait(10)
    assert json.loads((tmp_path / "d" / fsio.LOCK_NAME).read_text())["pid"] == child.pid  # its file stays
    with FolderLock(tmp_path / "d", "--out") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_shared_holders_coexist_and_keep_an_exclusive_one_out(tmp_path):
    mine = FolderLock(tmp_path / "o", "--out", "x.lock", shared=True).acquire()
    child = hold(tmp_path / "o", "x.lock", shared=True)
    try:
        mine.release()
        with pytest.raises(FolderBusy, match=f"is used by another run: pid {child.pid} on host"):
            FolderLock(tmp_path / "o", "--out", "x.lock").acquire()
    finally:
        stop(child)
    with FolderLock(tmp_path / "o", "--out", "x.lock"):  # all shared holders gone
        pass


def test_without_fcntl_a_dead_pids_file_is_taken_over_and_a_live_ones_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(fsio, "fcntl", None)
    folder = tmp_path / "ck"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_file = folder / fsio.LOCK_NAME
    lock_file.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "since": "then"}))
    with FolderLock(folder, "--checkpoint-dir"):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert not lock_file.exists()
    lock_file.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "since": "then"}))
    with pytest.raises(FolderBusy, match=f"pid {os.getppid()} on host .* since then"):
        FolderLock(folder, "--checkpoint-dir").acquire()


def full_disk_fsync(monkeypatch, victim: str) -> None:
    """``os.fsync`` fails with ENOSPC for files whose path contains ``victim`` (a disk that fills on flush)."""
    real = os.fsync

    def fsync(fd):
        if victim in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_an_atomic_write_on_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, '{"old": 1}\n', "the metrics JSON")
    full_disk_fsync(monkeypatch, "metrics.json")
    with pytest.raises(WriteFailed) as exc:
        atomic_write_text(path, '{"new": 2}\n', "the metrics JSON")
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1 and str(path) in msg and "No space left on device" in msg
    assert "previous content is intact" in msg
    assert path.read_text() == '{"old": 1}\n' and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_writer_failing_mid_file_leaves_no_partial_file(tmp_path):
    def half(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteFailed, match="nothing was written"):
        fsio.atomic_write(tmp_path / "m.png", half, "the plot")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_the_plot_is_written_atomically(tmp_path, monkeypatch):
    from train.plot import plot_run

    log = tmp_path / "steps.jsonl"
    log.write_text(json.dumps({"step": 1, "epoch": 0, "loss": 1.0, "lr": 0.1, "window_s": 1.0, "img_per_s": 8.0,
                               "data_wait_s": 0.1, "compute_s": 0.9, "data_wait_fraction": 0.1, "time": 1.0}) + "\n")
    png = tmp_path / "metrics.png"
    png.write_bytes(b"old png")
    full_disk_fsync(monkeypatch, png.name)
    line = plot_run(log, "caption", png)
    assert line.startswith(f"plot: cannot write the plot {png} (No space left on device)"), line
    assert png.read_bytes() == b"old png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.png", "steps.jsonl"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_the_resolved_config_is_written_atomically(tmp_path, monkeypatch):
    import argparse

    from tools.cli_common import Option, Schema
    from tools.config_file import write_resolved

    schema = Schema("train", (Option("--epochs", None, "epochs", int, 1, "epochs"),))
    toml = tmp_path / "config.toml"
    write_resolved(schema, argparse.Namespace(epochs=3), toml)
    assert "epochs = 3" in toml.read_text()
    full_disk_fsync(monkeypatch, toml.name)
    with pytest.raises(WriteFailed, match=f"cannot write the resolved config {toml} .No space left on device."):
        write_resolved(schema, argparse.Namespace(epochs=4), toml)
    assert "epochs = 3" in toml.read_text() and [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def step_log(path: Path, append: bool = False):
    from train.clock import Stopwatch
    from train.steplog import StepLog, StepSources

    return StepLog(path, 1, 8, StepSources(Stopwatch(), Stopwatch(), lambda: 0, lambda: 0.1), append=append)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_step_log_on_a_full_disk_is_one_warning_and_the_run_goes_on(capsys):
    import torch

    log = step_log(Path("/dev/full"), append=True)  # opens fine; every write fails with ENOSPC
    step = log.wrap(lambda: torch.tensor(2.0))
    for _ in range(3):
        assert float(step()) == 2.0
    log.eval_line(0, 50.0, 90.0)
    log.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["train: warning: cannot write the step log /dev/full (No space left on device); the run goes on "
                   "without it (the lines written before stay)"]


def test_a_fresh_step_log_replaces_an_old_one_and_a_resumed_one_appends(tmp_path):
    path = tmp_path / "steps.jsonl"
    path.write_text('{"step": 200}\n')
    step_log(path).close()
    assert [json.loads(line).get("first_step") for line in path.read_text().splitlines()] == [0]
    step_log(path, append=True).close()
    assert len(path.read_text().splitlines()) == 2


def test_the_run_folder_holds_every_output_and_explicit_paths_win():
    from train.config import CheckpointConfig, TrainConfig

    d = Path("run")
    cfg = TrainConfig(output_dir=d, plot=True)
    assert (cfg.resolved_config_path, cfg.metrics_path, cfg.step_log_path, cfg.plot_path, cfg.checkpoint_dir,
            cfg.summary_csv_path) == (d / "config.toml", d / "metrics.json", d / "steps.jsonl", d / "metrics.png",
                                      d / "checkpoints", d / "summary.csv")
    mine = TrainConfig(output_dir=d, metrics_json=Path("m.json"), log_jsonl=Path("l.jsonl"),
                       checkpoint=CheckpointConfig(dir=Path("ck"), resume=True))
    assert (mine.metrics_path, mine.step_log_path, mine.checkpoint_dir) == (Path("m.json"), Path("l.jsonl"),
                                                                             Path("ck"))
    plain = TrainConfig(metrics_json=Path("m.json"), plot=True)
    assert (plain.step_log_path, plain.plot_path, plain.resolved_config_path, plain.checkpoint_dir,
            plain.summary_csv_path) == (Path("m.steps.jsonl"), Path("m.png"), Path("m.config.toml"), None, None)
    assert TrainConfig(output_dir=d, checkpoint=CheckpointConfig(resume=True)).checkpoint_dir == d / "checkpoints"


def test_claim_refuses_a_folder_with_an_earlier_run_unless_resumed(tmp_path):
    from train import rundir
    from train.config import CheckpointConfig, TrainConfig

    d = tmp_path / "run"
    with rundir.claim(TrainConfig(output_dir=d), lambda p: p.write_text("x = 1\n")):
        assert (d / "config.toml").is_file() and (d / fsio.LOCK_NAME).is_file()
    with rundir.claim(TrainConfig(output_dir=d), lambda p: None):  # a lone config.toml: a run that never trained
        pass
    (d / "metrics.json").write_text("{}")
    with pytest.raises(ValueError) as exc:
        rundir.claim(TrainConfig(output_dir=d))
    assert str(exc.value) == (f"--output-dir {d} already holds a run (config.toml, metrics.json); pass --resume to "
                              f"continue it, or pick another --output-dir (or delete that folder)")
    assert not (d / fsio.LOCK_NAME).exists()  # the refused run let go of the lock
    with rundir.claim(TrainConfig(output_dir=d, checkpoint=CheckpointConfig(resume=True))):
        pass


def test_claim_refuses_a_checkpoint_dir_with_an_earlier_runs_checkpoints_unless_resumed(tmp_path):
    """Its keep-newest rotation would delete them: run 2 five seconds after run 1 left only run 2's."""
    from train import rundir
    from train.config import CheckpointConfig, TrainConfig

    ck = tmp_path / "ck"
    with rundir.claim(TrainConfig(checkpoint=CheckpointConfig(dir=ck))):  # an empty (new) folder is fine
        pass
    (ck / "ckpt-step00000004.pt").write_bytes(b"x")
    (ck / "ckpt-step00000008.pt").write_bytes(b"x")
    with pytest.raises(ValueError) as exc:
        rundir.claim(TrainConfig(checkpoint=CheckpointConfig(dir=ck)))
    assert str(exc.value) == (f"--checkpoint-dir {ck} holds an earlier run's checkpoints (newest "
                              f"ckpt-step00000008.pt); pass --resume to continue it, or pick another "
                              f"--checkpoint-dir (or delete them)")
    assert not (ck / fsio.LOCK_NAME).exists()
    with rundir.claim(TrainConfig(checkpoint=CheckpointConfig(dir=ck, resume=True))):
        pass


def test_claim_notes_an_old_step_log_it_starts_afresh(tmp_path):
    from train import rundir
    from train.config import TrainConfig

    log = tmp_path / "l.jsonl"
    log.write_text('{"step": 1}\n')
    folder = rundir.claim(TrainConfig(log_jsonl=log))
    assert folder.notes == [f"train: note: --log-jsonl {log} holds an earlier run's lines: this run starts it "
                            f"afresh (--resume appends to it)"]


def test_a_device_is_written_in_place_never_replaced_and_a_link_stays_a_link(tmp_path):
    """As root a rename onto /dev/full made it a regular file: a special file is written through, never renamed
    over (and nothing is written beside it)."""
    import stat

    from train.config import TrainConfig

    fsio.atomic_write_text(Path(os.devnull), "{}")
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert TrainConfig(metrics_json=Path(os.devnull)).resolved_config_path is None
    assert TrainConfig(metrics_json=tmp_path / "m.json").resolved_config_path == tmp_path / "m.config.toml"
    if os.path.exists("/dev/full"):
        with pytest.raises(fsio.WriteFailed) as exc:
            fsio.atomic_write_text(Path("/dev/full"), "{}", "the metrics JSON")
        assert str(exc.value) == ("cannot write the metrics JSON /dev/full (No space left on device): pick another "
                                  "path")
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    fsio.atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
