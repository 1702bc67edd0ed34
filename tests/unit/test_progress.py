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
    assert "epoch 1/2" in shown and "20/20" in shown and "loss 2.000" in shown and "\r" in shown
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
    assert "loss " in shown and "data wait " in shown and "6/6" in shown
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


# --- issue 20 item 14: readable bars, plain lines off a terminal, labelled rates, plots without false dips ------

def test_bar_at_80_columns_keeps_data_wait_and_a_bar_of_several_characters(monkeypatch):
    import time as time_module

    tty = Tty()
    ticks, data = iter(range(10 ** 6)), iter(range(10 ** 6))
    monkeypatch.setattr(time_module, "perf_counter", lambda: 4.45 * next(ticks))  # 50 steps of 256 img: 2876 img/s
    progress = Progress(ProgressConfig(True, True, 50, 256), lambda: 0.5 * next(data), tty, ncols=80)
    loss_sum = torch.zeros(())
    for _ in progress.train(iter(range(5005)), 9, 90, 5005, loss_sum):  # epoch 10/90 of an ImageNet run
        loss_sum += 3.1712
    shown = [part for part in tty.getvalue().replace("\n", "\r").split("\r") if part.strip()]
    last = shown[-1]
    assert all(len(part) <= 80 for part in shown)
    assert last.startswith("epoch 10/90 |") and "5005/5005" in last and "ETA" in last
    assert any(part.endswith(", loss 3.171, 2876 img/s, data wait 11%") for part in shown)  # a 50-step window
    assert last.endswith(", loss 3.171, 288 img/s, data wait 11%")  # the last 5 steps
    bar = last.split("|")[1]
    assert len(bar) >= 5 and set(bar) <= {"#"}, last  # tqdm draws '#' on a stream without unicode
    wide = Tty()
    list(Progress(ProgressConfig(True, True, 50, 256), lambda: 0.0, wide, ncols=160).eval(iter(range(10)), 10))
    assert "100%|" in wide.getvalue() and "[00:00<00:00]" in wide.getvalue()


def test_count_progress_off_a_terminal_writes_plain_periodic_lines():
    from pipeline.progress import CountProgress, ProgressDisplay

    now = [100.0]
    out = io.StringIO()
    shown = CountProgress(50, "verify x", "shards", out, display=ProgressDisplay(every_s=10.0, clock=lambda: now[0]))
    for _ in range(50):
        now[0] += 1.0  # 1 s a shard: a line every 10 s
        shown.update()
    shown.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "verify x: 0/50 shards (0%), 0.0 s elapsed"
    assert lines[1] == "verify x: 10/50 shards (20%), 1.0 shards/s, 10.0 s elapsed, ETA 40.0 s"
    assert len(lines) == 1 + 5 + 1 and lines[-1] == "verify x: 50/50 shards (100%), 1.0 shards/s, 50.0 s elapsed, done"
    quiet = io.StringIO()
    CountProgress(5, "x", "img", quiet, enabled=False).close()
    assert quiet.getvalue() == ""


def test_io_bench_progress_off_a_terminal_is_one_plain_line_per_step():
    from train.iobench.run import BenchProgress, BenchStep

    out = io.StringIO()
    shown = BenchProgress(out)
    for i, what in enumerate(("storage: reading the train shards", "stages: cpu", "compute-only: 2 steps"), 1):
        shown(BenchStep(i, 3, what))
    shown.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 4
    assert lines[0].startswith("io-bench: 0/3 steps (0%)") and lines[0].endswith("storage: reading the train shards")
    assert lines[2].startswith("io-bench: 2/3 steps (67%)") and "ETA" in lines[2] and lines[2].endswith("2 steps")
    assert lines[3].startswith("io-bench: 3/3 steps (100%)") and lines[3].endswith("done")


def _epoch_line_of(start_step: int, warm_steps: int, done: int, n: int) -> str:
    from types import SimpleNamespace

    from train.loop import EpochFigures, LoopState, epoch_line

    session = SimpleNamespace(global_batch=32, total_steps=50, cfg=SimpleNamespace(epochs=2, resolution=None))
    state = LoopState(start_step=start_step, warm_steps=warm_steps, done=done, epochs_run=1, train_size=64)
    return epoch_line(EpochFigures(0, n, 0, 2.0 * n, train_s=10.0, wait_s=1.0, compute_s=8.0), state, session)


def test_epoch_line_says_when_its_img_per_s_holds_warm_up_steps():
    first = _epoch_line_of(start_step=0, warm_steps=5, done=25, n=25)
    assert ", train 80.0 img/s (incl. 5 warm-up steps; data wait 10%, compute 100.0 img/s)" in first
    assert "warm-up" not in _epoch_line_of(start_step=0, warm_steps=5, done=50, n=25)  # the second epoch
    resumed = _epoch_line_of(start_step=30, warm_steps=1, done=50, n=20)  # a resumed process warms up again
    assert "(incl. 1 warm-up step; data wait" in resumed


class FakeClock:
    """perf_counter for train.steplog: each step takes 1 s, an evaluation 10 s (its seconds also counted as
    paused, as the loop's eval stopwatch counts them)."""

    def __init__(self):
        self.now, self.paused = 1000.0, 0.0

    def evaluate(self, seconds: float = 10.0):
        self.now += seconds
        self.paused += seconds


def _step_log(tmp_path, monkeypatch, every: int, steps_per_epoch: int, epochs: int, **kw) -> Path:
    import time as time_module

    from train.clock import Stopwatch
    from train.steplog import StepLog, StepSources

    clock = FakeClock()
    monkeypatch.setattr(time_module, "perf_counter", lambda: clock.now)
    path = tmp_path / "steps.jsonl"
    log = StepLog(path, every, 8, StepSources(Stopwatch(), Stopwatch(), lambda: 0, lambda: 0.1, lambda: clock.paused), **kw)

    def step(_):
        clock.now += 1.0
        return torch.tensor(2.0)

    logged = log.wrap(step)
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            logged(None)
        clock.evaluate()
        log.eval_line(epoch, 50.0, 90.0)
    log.close()
    return path


# every 4: an evaluation falls in the window after an epoch boundary (the last one comes after every window);
# every 3: the evaluation line cuts the window it falls in (both evaluations inside one)
@pytest.mark.parametrize("every, held", [(4, [0, 0, 10, 0]), (3, [0, 0, 10, 0, 0, 10])])
def test_a_window_holding_an_evaluation_shows_no_throughput_dip(tmp_path, monkeypatch, every, held):
    from train.plot import panels

    path = _step_log(tmp_path, monkeypatch, every, steps_per_epoch=8, epochs=2)
    windows = [json.loads(line) for line in path.read_text().splitlines() if '"img_per_s"' in line]
    assert [w["img_per_s"] for w in windows] == pytest.approx([8.0] * len(windows))  # 8 img a 1-s step
    assert [w["paused_s"] for w in windows] == pytest.approx(held)  # the windows holding an evaluation, marked
    assert min(panels(read_step_log(path)).img_per_s.y) == pytest.approx(8.0)


def test_plot_of_an_old_log_leaves_out_the_window_that_held_an_evaluation(tmp_path):
    from train.plot import panels, spans_eval

    log = tmp_path / "old.jsonl"
    lines = [{"run_start": 0.0, "first_step": 0, "every": 4, "global_batch": 8}]
    for step, t, rate in ((4, 4.0, 8.0), (8, 18.0, 2.3)):  # steps 5..8 held a 10-s evaluation (old: no paused_s)
        lines.append({"step": step, "epoch": 0, "loss": 2.0, "lr": 0.1, "img_per_s": rate,
                      "data_wait_fraction": 0.0, "time": t})
    lines.append({"eval_epoch": 0, "step": 8, "acc1": 50.0, "acc5": 90.0, "time": 18.0001})
    lines.append({"step": 12, "epoch": 1, "loss": 1.0, "lr": 0.1, "img_per_s": 8.0, "data_wait_fraction": 0.0,
                  "time": 22.0})
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    series = read_step_log(log)
    assert spans_eval(series) == [False, True, False]
    p = panels(series)
    assert p.img_per_s.y == (8.0, 8.0) and p.img_per_s.x == (4.0, 22.0) and p.loss.y == (2.0, 2.0, 1.0)
    assert p.evals_at == pytest.approx((18.0001,))


def test_plot_of_a_one_epoch_run_has_a_marked_point_in_every_panel(tmp_path, monkeypatch):
    from train.plot import panels

    path = _step_log(tmp_path, monkeypatch, every=50, steps_per_epoch=6, epochs=1)  # the default --log-every
    p = panels(read_step_log(path))
    for series in (p.loss, p.lr, p.acc1, p.img_per_s, p.data_wait):
        assert len(series.x) == len(series.y) == 1 and series.marker == "o"
    assert p.img_per_s.y == pytest.approx((8.0,))
    monkeypatch.setattr("train.plot.draw", lambda *args: None)  # the line only: drawing takes seconds
    line = plot_run(path, "row", tmp_path / "one.png")
    assert line == (f"plot: wrote {tmp_path / 'one.png'} (1 step window, 1 evaluation; one window: lower "
                    f"--log-every (now 50) for a finer plot)")
