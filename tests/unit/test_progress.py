"""train/progress.py and train/plot.py: rank 0's live bar on a terminal, plain lines otherwise, and --plot."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import torch

from tools import train as train_cli
from train.plot import plot_run, read_step_log
from train.progress import Progress, ProgressConfig, progress_config

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC = ["--loader", "synthetic", "--synthetic-train-samples", "24", "--synthetic-val-samples", "8",
             "--batch-size", "4", "--image-size", "32", "--workers", "1"]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_epoch(progress: Progress, losses: list[float]) -> list[int]:
    loss_sum, seen = torch.zeros(()), []
    for i in progress.train(iter(range(len(losses))), 0, 2, len(losses), loss_sum):
        loss_sum += losses[i]
        seen.append(i)
    return seen


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    cfg = progress_config(True, True, log_every=2, global_batch=8, stream=out)
    assert cfg == ProgressConfig(True, False, 2, 8)
    seen = run_epoch(Progress(cfg, lambda: 0.0, out), [1.0, 3.0, 2.0, 2.0, 5.0])
    assert seen == [0, 1, 2, 3, 4]  # every batch passes through, in order
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2 step 1/5", "epoch 1/2 step 2/5", "epoch 1/2 step 3/5",
                                                      "epoch 1/2 step 4/5", "epoch 1/2 step 5/5"]  # 5 // 10 → 1
    assert "loss 1.0000" in lines[0] and "loss 3.0000" in lines[1] and "img/s" in lines[0]
    assert "data wait 0%" in lines[0] and "\r" not in out.getvalue()


def test_window_is_log_every_but_at_least_ten_a_epoch():
    out = io.StringIO()
    run_epoch(Progress(ProgressConfig(True, False, 3, 4), lambda: 0.0, out), [1.0] * 40)
    steps = [line.split(":")[0].split()[-1] for line in out.getvalue().splitlines()]
    assert steps == [f"{k}/40" for k in (3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 40)]
    assert all("loss 1.0000" in line for line in out.getvalue().splitlines())


def test_live_bar_on_a_terminal_and_nothing_when_disabled():
    tty = Tty()
    cfg = progress_config(True, True, 50, 4, stream=tty)
    assert cfg.live
    run_epoch(Progress(cfg, lambda: 0.0, tty), [2.0] * 20)
    shown = tty.getvalue()
    assert "epoch 1/2" in shown and "20/20" in shown and "loss=2.0000" in shown and "\r" in shown
    quiet = io.StringIO()
    assert run_epoch(Progress(progress_config(False, True, 50, 4, quiet), lambda: 0.0, quiet), [1.0] * 5) == \
        [0, 1, 2, 3, 4]
    not_main = progress_config(True, False, 50, 4, quiet)
    run_epoch(Progress(not_main, lambda: 0.0, quiet), [1.0] * 5)
    assert quiet.getvalue() == ""


def test_train_on_a_pseudo_terminal_shows_bars_and_plots(tmp_path):
    """What a person at a terminal sees: tqdm bars for each epoch and each evaluation, loss and data wait in them;
    and what --plot leaves next to the metrics."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a 160-column terminal
    m = tmp_path / "run" / "m.json"
    proc = subprocess.Popen([sys.executable, "-m", "tools.train", *SYNTHETIC, "--epochs", "2", "--log-every", "2",
                             "--metrics-json", str(m), "--plot"], cwd=REPO, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    os.close(leader)
    shown = b"".join(chunks).decode(errors="replace")
    assert "epoch 1/2" in shown and "epoch 2/2" in shown and "eval" in shown and "\r" in shown
    assert "loss=" in shown and "data wait=" in shown and "6/6" in shown
    assert "| CPUx1x1 | fp32 |" in shown
    png, log = tmp_path / "run" / "m.png", tmp_path / "run" / "m.steps.jsonl"
    assert f"plot: wrote {png} (6 step windows, 2 evaluations)" in shown
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    series = read_step_log(log)
    assert series.step == [2, 4, 6, 8, 10, 12] and series.eval_epoch == [1, 2]
    assert series.acc1[-1] == pytest.approx(json.loads(m.read_text())["acc1"])


def test_plot_needs_metrics_json_and_says_what_is_missing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli.main([*SYNTHETIC, "--plot"])
    assert exc.value.code == 2 and "--plot writes its PNG next to --metrics-json" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"run_start": 1, "first_step": 0, "every": 5, "global_batch": 4}\n')
    assert plot_run(empty, "row", tmp_path / "x.png") == f"plot: {empty} holds no step window; no plot written"
    assert plot_run(tmp_path / "none.jsonl", "row", tmp_path / "x.png").endswith("no plot written")
    assert not (tmp_path / "x.png").exists()
