"""What identifies a run (start time, host, version, git commit, the data's manifest hash), timm's summary.csv
kept across a resume, and TensorBoard as an optional extra (a one-line error without the package)."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.dataset import INFO_FILE, ShardEntry, SplitInfo, write_info
from train import environment, sinks
from train.environment import manifest_sha256, project_version, run_identity
from train.sinks import CSV_COLUMNS, EpochRecord, SummaryCsv, Window

REPO = Path(__file__).resolve().parents[2]


def test_run_identity_has_utc_start_host_version_and_commit():
    ident = run_identity(1_700_000_000.25)
    start = datetime.datetime.fromisoformat(ident.start_time)
    assert start.utcoffset() == datetime.timedelta(0) and start.timestamp() == 1_700_000_000.25
    assert ident.start_time == "2023-11-14T22:13:20.250+00:00"
    assert ident.host == socket.gethostname()
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert ident.project_version == version
    if (REPO / ".git").exists() and shutil.which("git"):
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        assert ident.git_commit == head.stdout.strip() + ("-dirty" if dirty else "")
    assert set(ident.to_json()) == {"start_time", "host", "project_version", "git_commit"}


def test_version_of_an_uninstalled_checkout_comes_from_its_pyproject(tmp_path, monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    (tmp_path / "pyproject.toml").write_text('[build-system]\nrequires = ["x"]\n\n[project]\nname = "imagenet-pipeline"'
                                             '\nversion = "9.8.7"\n\n[tool.x]\nversion = "0"\n')
    assert project_version(tmp_path) == "9.8.7"
    assert project_version(tmp_path / "nowhere") == "unknown"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git binary")
def test_git_commit_of_a_changed_checkout_says_dirty(tmp_path):
    co = tmp_path / "co"
    co.mkdir()
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    for argv in (["init", "-q"], ["add", "f"], ["commit", "-q", "-m", "x"]):
        if argv[0] == "add":
            (co / "f").write_text("1")
        subprocess.run(["git", "-C", str(co), *argv], check=True, env=env, capture_output=True)
    clean = environment.git_commit(co)
    assert re.fullmatch(r"[0-9a-f]{40}", clean)
    (co / "untracked").write_text("x")  # not part of the code that ran: still clean
    assert environment.git_commit(co) == clean
    (co / "f").write_text("2")
    assert environment.git_commit(co) == clean + "-dirty"


def test_git_commit_unknown_outside_a_checkout_and_read_without_git(tmp_path, monkeypatch):
    assert environment.git_commit(tmp_path) == "unknown"  # no .git: never an error
    commit = "0123456789abcdef0123456789abcdef01234567"
    git = tmp_path / "co" / ".git"
    git.mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{commit} refs/heads/main\n")
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no git binary: .git read directly
    assert environment.git_commit(tmp_path / "co") == commit
    (git / "HEAD").write_text("garbage")
    assert environment.git_commit(tmp_path / "co") == "unknown"


def _shards(root: Path, count: int, manifest: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    entry = ShardEntry("imagenet-train-000000.tar", count, 1000, "ab" * 32)
    write_info(root, [SplitInfo("train", count, (entry.filename,), (count,))],
               {"train": [entry]} if manifest else {}, num_classes=2)
    return root


def test_manifest_hash_is_of_the_manifest_file_and_follows_it(tmp_path):
    a = _shards(tmp_path / "a", 10)
    digest = manifest_sha256(a)
    assert digest == hashlib.sha256((a / INFO_FILE).read_bytes()).hexdigest()
    assert manifest_sha256(str(a)) == digest
    assert manifest_sha256(_shards(tmp_path / "b", 10)) == digest  # the same shards, the same identity
    assert manifest_sha256(_shards(tmp_path / "a", 11)) != digest  # the manifest changed
    assert manifest_sha256(_shards(tmp_path / "c", 10, manifest=False)) is None  # no manifest
    assert manifest_sha256(tmp_path / "tree") is None and manifest_sha256(None) is None  # no _info.json; synthetic
    (tmp_path / "a" / INFO_FILE).write_text("{not json")
    assert manifest_sha256(tmp_path / "a") is None


def _record(epoch: int, top1: float | None = 50.0) -> EpochRecord:
    return EpochRecord(epoch, epoch * 3, 2.5 / epoch, top1, None if top1 is None else 90.0, 0.1, 123.4, 0.25, 1.5)


def _rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


def test_summary_csv_rows_per_epoch_and_a_resume_never_duplicates(tmp_path):
    path = tmp_path / "run" / "summary.csv"
    first = SummaryCsv(path, first_epoch=1)
    for epoch in (1, 2, 3):
        first.epoch(_record(epoch, None if epoch == 2 else 50.0))
    rows = _rows(path)
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"]
    assert rows[2][3] == rows[2][4] == ""  # no evaluation: empty cells
    assert rows[1][:5] == ["1", "3", "2.5", "50", "90"]
    resumed = SummaryCsv(path, first_epoch=3)  # resumed in (or at the start of) epoch 3
    assert [r[0] for r in _rows(path)[1:]] == ["1", "2", "3"]  # nothing rewritten before its first epoch
    resumed.epoch(_record(3, 75.0))
    resumed.epoch(_record(4))
    rows = _rows(path)
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4"] and rows[3][3] == "75"
    SummaryCsv(path, first_epoch=1).epoch(_record(1, 10.0))  # a fresh run starts the file anew
    assert [r[0] for r in _rows(path)[1:]] == ["1"]
    assert not list(path.parent.glob("*.tmp"))


def test_summary_csv_refuses_a_foreign_file_and_warns_when_it_cannot_write(tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("name,value\nx,1\n")
    with pytest.raises(ValueError, match=r"^--summary-csv .*other\.csv: not a summary CSV of train .*another path$"):
        SummaryCsv(other, first_epoch=2)
    blocked = tmp_path / "file"
    blocked.write_text("")
    csv = SummaryCsv(blocked / "summary.csv", first_epoch=1)  # its folder is a file: the write fails
    csv.epoch(_record(1))
    csv.epoch(_record(2))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train: warning: ") and "summary.csv" in err[0]


def test_window_of_a_step_log_line_ignores_other_keys():
    line = {"step": 5, "epoch": 0, "loss": 1.5, "lr": 0.1, "window_s": 2.0, "img_per_s": 8.0, "data_wait_s": 0.5,
            "compute_s": 1.5, "data_wait_fraction": 0.25, "paused_s": 0.0, "time": 1.0}
    assert Window.of(line) == Window(5, 0, 1.5, 0.1, 2.0, 8.0, 0.5, 1.5, 0.25, 1.0)


def test_tensorboard_missing_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    from tools import train as train_cli

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as without the package
    with pytest.raises(ValueError, match=r"\.\[tensorboard\]"):
        sinks.TensorBoardLog(tmp_path / "tb")
    with pytest.raises(SystemExit) as exit_:
        train_cli.main(["--loader", "synthetic", "--tensorboard-dir", str(tmp_path / "tb")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("train: error: --tensorboard needs the tensorboard package")
    assert "pip install -e '.[tensorboard]'" in err[-1]
    assert not (tmp_path / "tb").exists()


def test_tensorboard_is_asked_for_and_never_imported_otherwise(tmp_path, monkeypatch):
    from train.config import TrainConfig

    assert TrainConfig(output_dir=tmp_path).tensorboard_dir is None
    assert TrainConfig(output_dir=tmp_path, tensorboard=True).tensorboard_dir == tmp_path / "tensorboard"
    assert TrainConfig(tensorboard_log_dir=tmp_path / "tb").tensorboard_dir == tmp_path / "tb"
    with pytest.raises(ValueError, match="--tensorboard writes DIR/tensorboard of --output-dir DIR"):
        TrainConfig(tensorboard=True)
    assert TrainConfig(output_dir=tmp_path).summary_csv_path == tmp_path / "summary.csv"
    assert TrainConfig(summary_csv=tmp_path / "s.csv").summary_csv_path == tmp_path / "s.csv"
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # any import of it would now fail
    cfg = TrainConfig(output_dir=tmp_path)
    opened = sinks.open_sinks(cfg.summary_csv_path, cfg.tensorboard_dir, 1, 0, is_main=True)
    assert opened.summary is not None and opened.tensorboard is None
    assert sinks.open_sinks(cfg.summary_csv_path, tmp_path / "tb", 1, 0, is_main=False).any is False  # rank > 0


def test_the_reports_dataset_part_carries_the_manifest_hash(tmp_path):
    from pipeline.read.info import load_info
    from train.config import TrainConfig
    from train.assemble import dataset_summary

    shards = _shards(tmp_path / "s", 10)
    (shards / "classes.txt").write_text("a\nb\n")
    part = dataset_summary(TrainConfig(data=shards), load_info(shards, check_files=False), None, None, 2)
    assert part.manifest_sha256 == hashlib.sha256((shards / INFO_FILE).read_bytes()).hexdigest()
    assert part.to_json()["manifest_sha256"] == part.manifest_sha256 and part.train_samples == 10
