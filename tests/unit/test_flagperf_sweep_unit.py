"""flagperf-sweep without running train: the plan (packaged presets by name / prefix / vendor, precisions,
what fits), the command line and environment of a run (caller's cwd, absolute paths, importable package), and
the failure line read from realistic captured torchrun logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import flagperf_sweep as sweep
from train.flagperf_case import CONFIGS

ROOT = Path(sweep.__file__).resolve().parents[1]

# Captured from torch 2.14's torchrun (2 processes) with paths shortened: a worker raises an uncaught exception.
WORKER_EXCEPTION_LOG = """
*****************************************
Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid your system being \
overloaded, please further tune the variable for optimal performance in your application as needed.
*****************************************
train: cpu loader, /data/shards, 2 rank(s)
[rank0]: Traceback (most recent call last):
[rank0]:   File "/venv/lib/python3.11/site-packages/tools/train.py", line 300, in main
[rank0]:     run(cfg)
[rank0]:   File "/venv/lib/python3.11/site-packages/train/loop.py", line 410, in run
[rank0]:     loss = step(batch)
[rank0]:            ^^^^^^^^^^^
[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of \
79.19 GiB of which 1.06 GiB is free.
[rank0]:[W1207 00:29:08.000000000 ProcessGroupNCCL.cpp:1250] Warning: WARNING: destroy_process_group() was not \
called before program exit, which can leak resources.
W1207 00:29:08.620000 24239 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 24263 closing \
signal SIGTERM
E1207 00:29:08.629000 24239 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1) \
local_rank: 0 (pid: 24262) of binary: /venv/bin/python
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "<frozen runpy>", line 88, in _run_code
  File "/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 1142, in <module>
    main()
  File "/venv/lib/python3.11/site-packages/torch/distributed/elastic/multiprocessing/errors/__init__.py", \
line 380, in wrapper
    return f(*args, **kwargs)
           ^^^^^^^^^^^^^^^^^^
  File "/venv/lib/python3.11/site-packages/torch/distributed/launcher/api.py", line 386, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError: 
============================================================
tools.train FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-07_00:29:08
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -15 (pid: 24263)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 24263
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-07_00:29:08
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 24262)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
""".replace("\\\n", "")

TRAIN_ERROR = "train: error: --data /data/shards: no such folder"
USAGE = "usage: train [-h] [--data DATA] [--epochs EPOCHS]\n             [--config FILE.toml|PRESET]\n"


def torchrun_tail(root_cause: str) -> str:
    """The part of the log torchrun writes after a worker failed (its traceback and summary block)."""
    head, _, tail = WORKER_EXCEPTION_LOG.partition("W1207 00:29:08.620000")
    tail = "W1207 00:29:08.620000" + tail
    return tail.replace("  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html"
                        "\n====", f"  traceback : {root_cause}\n====")


def test_failure_line_is_the_workers_exception_not_torchruns_banner():
    line = sweep.failure_line(WORKER_EXCEPTION_LOG)
    assert line.startswith("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"), line


def test_failure_line_prefers_the_train_commands_own_error():
    log = (WORKER_EXCEPTION_LOG.split("train: cpu loader")[0] + USAGE + TRAIN_ERROR + "\n" + USAGE
           + f"[rank1]: {TRAIN_ERROR}\n" + torchrun_tail("To enable traceback see: https://pytorch.org/x"))
    assert sweep.failure_line(log) == TRAIN_ERROR


def test_failure_line_of_a_killed_worker_is_the_signal():
    log = "train: cpu loader, /data/shards, 2 rank(s)\nepoch 1  40%\n" + torchrun_tail(
        "Signal 9 (SIGKILL) received by PID 24262")
    assert sweep.failure_line(log) == "Signal 9 (SIGKILL) received by PID 24262"


def test_failure_line_without_torchrun_and_when_empty():
    log = ("train: cpu loader, shards, 1 rank(s)\nTraceback (most recent call last):\n  File \"x.py\", line 3, in "
           "<module>\n    main()\nValueError: boom\n\n")
    assert sweep.failure_line(log) == "ValueError: boom"
    assert sweep.failure_line("") == "no output"
    assert sweep.failure_line("=====\n\n") == "no error line in its output"
    banner_only = WORKER_EXCEPTION_LOG.split("train: cpu loader")[0] + torchrun_tail("To enable traceback see: x")
    assert sweep.failure_line(banner_only) == "no error line in its output"


def test_the_packaged_flagperf_presets_in_case_order():
    known = sweep.flagperf_presets()
    assert list(known) == list(CONFIGS)
    assert all(p.is_file() and p.parent.name == "flagperf" for p in known.values())


@pytest.mark.parametrize("tokens, expected", [
    (["C500"], ["C500x1x1", "C500x1x8", "C500x2x8"]),
    (["A100x1x8", "A100x1x1"], ["A100x1x1", "A100x1x8"]),
    (["c550"], ["C550x1x8"]),
    (["A100x2x8", "A100"], ["A100x1x1", "A100x1x8", "A100x2x8"]),
])
def test_select_by_name_or_prefix(tokens, expected):
    assert sweep.select(list(CONFIGS), tokens) == expected


def test_select_unknown_is_an_error_listing_the_presets():
    with pytest.raises(ValueError, match=r"--presets H100: no FlagPerf preset of that name or prefix \(known: "
                                         r"A100x1x1, A100x1x8"):
        sweep.select(list(CONFIGS), ["A100", "H100"])


def test_default_presets_follow_the_vendor():
    known = list(CONFIGS)
    assert sweep.of_vendor(known, "metax") == ["C500x1x1", "C500x1x8", "C500x2x8", "C550x1x8"]
    assert sweep.of_vendor(known, "nvidia") == ["A100x1x1", "A100x1x8", "A100x2x8"]
    assert sweep.of_vendor(known, None) == known


def test_local_vendor(monkeypatch):
    import torch

    from train import accelerator

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert sweep.local_vendor() is None
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(accelerator, "vendor_hint", lambda: accelerator.Vendor.METAX)
    assert sweep.local_vendor() == "metax"
    monkeypatch.setattr(accelerator, "vendor_hint", lambda: None)
    monkeypatch.setattr(accelerator, "nvidia_driver_visible", lambda: True)
    assert sweep.local_vendor() == "nvidia"
    monkeypatch.setattr(accelerator, "vendor_hint", lambda: accelerator.Vendor.AMD)
    assert sweep.local_vendor() is None


def test_plan_precisions_and_what_fits():
    known = sweep.flagperf_presets()
    runs = sweep.plan({n: known[n] for n in ("A100x1x1", "C500x1x8", "C500x2x8")}, ("fp32", "fp16"), nproc=2)
    by_name = {r.name: r for r in runs}
    assert list(by_name) == ["A100x1x1_fp32", "A100x1x1_fp16", "C500x1x8_fp32", "C500x1x8_fp16", "C500x2x8_fp32",
                             "C500x2x8_fp16"]
    assert by_name["A100x1x1_fp32"].procs == 1 and by_name["C500x1x8_fp16"].procs == 2
    assert by_name["C500x2x8_fp32"].procs is None and "needs 2 nodes" in by_name["C500x2x8_fp32"].why
    assert sweep.plan({"C500x1x8": known["C500x1x8"]}, ("fp32",), nproc=16)[0].procs == 8
    one = sweep.plan({"C500x1x8": known["C500x1x8"]}, ("fp32",), nproc=1)[0]
    assert one.procs is None and one.why == "needs 8 processes, --nproc is 1"


def test_command_line_has_absolute_paths_and_the_precision(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    known = sweep.flagperf_presets()
    run = sweep.plan({"C500x1x1": known["C500x1x1"]}, ("amp",), nproc=1)[0]
    cmd = sweep.train_command(run, Path("shards"), Path("out/C500x1x1_amp.json"), ["--max-steps", "2"])
    assert cmd[:3] == [sys.executable, "-m", "tools.train"]
    flags = dict(zip(cmd[3::2], cmd[4::2]))
    assert flags["--config"] == str(known["C500x1x1"]) and Path(flags["--config"]).is_absolute()
    assert flags["--data"] == str(tmp_path / "shards")
    assert flags["--metrics-json"] == str(tmp_path / "out" / "C500x1x1_amp.json")
    assert flags["--precision"] == "amp" and cmd[-2:] == ["--max-steps", "2"]  # extra flags last: they win
    multi = sweep.plan({"C500x1x8": known["C500x1x8"]}, ("fp32",), nproc=2)[0]
    cmd = sweep.train_command(multi, Path("shards"), Path("m.json"), [])
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and cmd[cmd.index("--nproc-per-node") + 1] == "2"
    assert cmd[cmd.index("-m", 3):][:2] == ["-m", "tools.train"]


def test_a_run_starts_in_the_callers_cwd_with_the_package_importable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = {}

    def fake_run(cmd, **kwargs):
        seen.update(kwargs, cmd=cmd)
        Path(cmd[cmd.index("--metrics-json") + 1]).write_text("{}")
        return subprocess.CompletedProcess(cmd, 0)

    known = sweep.flagperf_presets()
    run = sweep.plan({"A100x1x1": known["A100x1x1"]}, ("fp32",), nproc=1)[0]
    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    monkeypatch.setattr(sweep.sys, "path", ["", "/somewhere/else"])  # the package root is not on the path
    monkeypatch.setenv("PYTHONPATH", "/extra")
    (tmp_path / "out").mkdir()
    assert sweep.execute(run, Path("shards"), Path("out"), []) == Path("out/A100x1x1_fp32.json")
    assert seen.get("cwd") is None  # the caller's working directory
    assert seen["env"]["PYTHONPATH"] == os.pathsep.join([str(ROOT), "/extra"])


def test_child_env_leaves_an_importable_package_alone(monkeypatch):
    monkeypatch.setattr(sweep.sys, "path", ["/start", "/lib/python", str(ROOT)])
    assert sweep.child_env({"A": "1"}) == {"A": "1"}
    monkeypatch.setattr(sweep.sys, "path", [str(ROOT)])  # only as this process's start folder: not the run's
    assert sweep.child_env({})["PYTHONPATH"] == str(ROOT)
    assert sweep.child_env({"PYTHONPATH": str(ROOT)}) == {"PYTHONPATH": str(ROOT)}


def test_a_failed_run_prints_its_real_error_line(tmp_path, monkeypatch, capsys):
    def fake_run(cmd, stdout, **kwargs):
        stdout.write(WORKER_EXCEPTION_LOG)
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    known = sweep.flagperf_presets()
    run = sweep.plan({"C500x1x8": known["C500x1x8"]}, ("fp32",), nproc=2)[0]
    assert sweep.execute(run, tmp_path, tmp_path, []) is None
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("flagperf-sweep: C500x1x8_fp32 failed (exit 1): torch.OutOfMemoryError: CUDA out of "
                           "memory.")
    assert line.endswith(f"(log: {tmp_path / 'C500x1x8_fp32.log'})") and "=====" not in line


@pytest.mark.parametrize("argv, expected", [
    (["--presets", "H100"], "--presets H100: no FlagPerf preset of that name or prefix"),
    (["--precisions", "fp32,fp64"], "--precisions fp32,fp64: unknown fp64"),
    (["--nproc", "0"], "--nproc must be >= 1"),
], ids=["preset", "precision", "nproc"])
def test_bad_options_are_one_line(tmp_path, capsys, argv, expected):
    (tmp_path / "_info.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        sweep.main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), *argv])
    assert exc.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"flagperf-sweep: error: {expected}"), line


def test_missing_shards_name_the_resolved_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        sweep.main(["--data", "shards", "--out", "o"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == f"flagperf-sweep: error: --data shards: no _info.json in {tmp_path / 'shards'}; make shards " \
                   f"with shard-imagenet first (or pass -- --loader folder for an ImageFolder tree)"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,expected", [
    (["--out", "shards/_info.json"], "--out shards/_info.json: cannot make that folder"),
    (["--out", "o", "--", "--metrics-json", "mine.json"], "--metrics-json after --: the sweep sets it"),
    (["--out", "o", "--", "--config=x.toml"], "--config after --: the sweep sets it"),
    (["--out", "o", "--", "--loader", "folder"], "--loader folder needs an ImageFolder root with train/ and val/"),
])
def test_sweep_usage_errors_are_one_line(tmp_path, capsys, monkeypatch, argv, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "_info.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        sweep.main(["--data", "shards", "--presets", "C500x1x1", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and expected in err.strip().splitlines()[-1]


def test_the_sweep_reads_an_image_folder_with_the_folder_loader(monkeypatch, tmp_path):
    """``-- --loader folder`` sweeps an ImageFolder tree (FlagPerf's own input) instead of shards."""
    for split in ("train", "val"):
        (tmp_path / "tree" / split).mkdir(parents=True)
    ran = []
    monkeypatch.setattr(sweep, "execute", lambda run, data, out, extra: ran.append((data, extra)) or None)
    assert sweep.main(["--data", str(tmp_path / "tree"), "--out", str(tmp_path / "o"), "--presets", "C500x1x1", "--",
                       "--loader", "folder"]) == 1  # the stand-in run "failed": nothing to report
    assert ran == [(tmp_path / "tree", ["--loader", "folder"])]
