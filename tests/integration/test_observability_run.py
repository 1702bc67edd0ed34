"""A real ``train`` run's observability: the metrics JSON says when, where, with which code and on which data it
ran; summary.csv holds one row per epoch and a ``--resume`` continues it without a duplicate; ``--tensorboard``
writes event files that TensorBoard reads back; flagperf-report still reads the JSON with and without the keys."""

from __future__ import annotations

import copy
import datetime
import json
from pathlib import Path

import pytest

from tools import train as train_cli

# synthetic data (no loader workers), one step per epoch: each run is a few seconds on an idle 2-core machine
TINY = ["--loader", "synthetic", "--synthetic-train-samples", "4", "--synthetic-val-samples", "4", "--batch-size", "4",
        "--image-size", "32", "--workers", "1", "--no-progress", "--log-every", "1"]
IDENTITY_KEYS = ("start_time", "host", "project_version", "git_commit")


def _csv_epochs(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("epoch,step,train_loss,eval_top1,eval_top5,lr,img_per_s,data_wait_fraction")
    return [line.split(",")[0] for line in lines[1:]]


def test_run_folder_has_identity_summary_csv_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from train.flagperf_page import load_run

    run = tmp_path / "run"
    assert train_cli.main([*TINY, "--epochs", "2", "--output-dir", str(run), "--tensorboard"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    start = datetime.datetime.fromisoformat(m["start_time"])
    assert start.utcoffset() == datetime.timedelta(0)
    assert abs(start.timestamp() + m["e2e_time"] - datetime.datetime.now().timestamp()) < 120
    assert m["host"] and m["project_version"] and m["git_commit"]
    assert m["dataset"]["manifest_sha256"] is None and m["dataset"]["train_samples"] == 4  # synthetic: no manifest
    assert _csv_epochs(run / "summary.csv") == ["1", "2"]

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/img_per_s", "train/data_wait_fraction", "eval/top1", "eval/top5",
            "epoch/time_s"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]  # one per --log-every window
    assert [e.step for e in events.Scalars("eval/top1")] == [1, 2]  # one per epoch

    assert load_run(run / "metrics.json").dataset.num_classes == 1000  # the new keys: read
    old = copy.deepcopy(m)
    for key in IDENTITY_KEYS:
        del old[key]
    del old["dataset"]["manifest_sha256"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert load_run(tmp_path / "old.json").dataset == load_run(run / "metrics.json").dataset  # and without them


def test_summary_csv_continues_on_resume_without_a_duplicate(tmp_path):
    ck, csv = tmp_path / "ck", tmp_path / "summary.csv"
    args = [*TINY, "--epochs", "2", "--checkpoint-dir", str(ck), "--checkpoint-keep", "5", "--summary-csv", str(csv)]
    assert train_cli.main(args) == 0
    assert _csv_epochs(csv) == ["1", "2"]
    rows_before = csv.read_text().splitlines()
    sorted(ck.glob("ckpt-step*.pt"))[-1].unlink()  # as if killed after epoch 2's row, before its checkpoint
    assert train_cli.main([*args, "--resume"]) == 0
    rows = csv.read_text().splitlines()
    assert _csv_epochs(csv) == ["1", "2"]  # epoch 2 trained again: its row replaced, not added
    assert rows[:2] == rows_before[:2]  # the rows of the epochs before the resume are kept as they were
