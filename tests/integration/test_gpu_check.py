"""benchmarks/gpu_check.py: its parts (wheel install, hard timeouts, error lines, table) and, marked slow, the
whole ``--smoke`` run from a copy of what travels to the GPU machine (no ../shared beside it)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


gc = _load()


def _wheel(folder: Path, dist: str, module: str, body: str) -> Path:
    """A minimal pure-Python wheel installing ``module`` with ``body`` as its ``__init__.py``."""
    path = folder / f"{dist}-0.1-py3-none-any.whl"
    info = f"{dist}-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}/__init__.py", body)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", f"{module}/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


def test_wheels_missing_ones_installed_into_target(tmp_path):
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    _wheel(wheels, "gpucheck_probe", "gpucheck_probe", "VALUE = 42\n")
    _wheel(wheels, "jsonlike", "json", "")  # provides a module that is importable already: left out
    needed, present = gc.wheels_needed(wheels)
    assert [w.name for w in needed] == ["gpucheck_probe-0.1-py3-none-any.whl"]
    assert present == ["jsonlike-0.1-py3-none-any.whl"]
    gc.install_wheels(needed, target)
    out = subprocess.run([sys.executable, "-c", "import gpucheck_probe; print(gpucheck_probe.VALUE)"],
                         env=dict(os.environ, PYTHONPATH=str(target)), capture_output=True, text=True)
    assert out.stdout.strip() == "42", out.stderr


def test_broken_wheel_is_a_one_line_error(tmp_path):
    bad = tmp_path / "broken-0.1-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(RuntimeError, match="pip install of 1 wheel"):
        gc.install_wheels([bad], tmp_path / "site")


def test_timeout_kills_the_whole_process_group(tmp_path):
    log = tmp_path / "log"
    code = ("import subprocess, sys, time; p = subprocess.Popen(['sleep', '600']); print(p.pid, flush=True); "
            "time.sleep(600)")
    t0 = time.monotonic()
    res = gc.run_logged([sys.executable, "-c", code], dict(os.environ), log, "sleeper", timeout_s=2)
    assert res.timed_out and time.monotonic() - t0 < 2 + gc.KILL_GRACE_S + 5
    child = int(res.output.split()[0])
    status = Path(f"/proc/{child}/status")
    assert not status.exists() or "State:\tZ" in status.read_text(), "the grandchild outlived the timeout"
    assert "===== sleeper:" in log.read_text()
    assert gc.failure(res, 2).startswith("timed out after 2 s")


def test_last_error_line():
    tb = ("Traceback (most recent call last):\n  File \"x\", line 1\nModuleNotFoundError: No module named "
          "'pipeline.backends.nvjpeg'\n")
    assert gc.last_error_line(tb) == "ModuleNotFoundError: No module named 'pipeline.backends.nvjpeg'"
    assert gc.last_error_line("step 1\ntrain: error: --data x: no _info.json\nbye\n") == \
        "train: error: --data x: no _info.json"
    assert gc.last_error_line("a\r b\n") == "b"
    assert gc.last_error_line("") == "no output"


def test_table_rows_figures_failures_and_skips():
    m = {"p_core": 1000.0, "p_train": 990.0, "data_wait_fraction": 0.001, "mem": "20.0/139.8",
         "mem_peak_allocated_gib_rank0": 11.04, "mem_peak_reserved_gib_rank0": 12.5,
         "versions": {"torch": "2.11.0", "cuda": "13.0", "driver": "580.1"}}
    legs = [gc.leg_entry(gc.LegSpec("synthetic-amp", "synthetic"), gc.OK, metrics=m, wall_s=20.0),
            gc.leg_entry(gc.LegSpec("cpu", "loader", loader="cpu"), gc.OK, metrics={**m, "p_train": 500.0},
                         wall_s=30.0),
            gc.leg_entry(gc.LegSpec("nvjpeg", "loader", loader="nvjpeg"), gc.FAILED, error="exit 1: Boom|Error",
                         wall_s=3.0),
            gc.leg_entry(gc.LegSpec("dali", "loader", loader="dali"), gc.NOT_INSTALLED, reason="ModuleNotFoundError")]
    rows = {r[0]: r for r in (gc.leg_row(e, gc.synthetic_baselines(legs)) for e in legs)}
    assert rows["synthetic-amp"][1:6] == ["ok", "1000.0", "990.0", "0.1%", "0.99x"]
    assert rows["cpu"][5] == "0.50x" and rows["cpu"][6:8] == ["20.0/139.8", "11.0/12.5"]
    assert rows["cpu"][9:] == ["2.11.0", "13.0", "580.1"]
    assert rows["nvjpeg"][1] == "failed: exit 1: Boom/Error" and rows["nvjpeg"][2] == "-"
    assert rows["dali"][1] == "not installed: ModuleNotFoundError"


def test_generated_tree_counts_quirks_and_copies(tmp_path):
    spec = gc.TreeSpec(classes=2, train_per_class=4, val_per_class=1, copies=3, long_side=48)
    stats = gc.generate_tree(spec, tmp_path / "tree", procs=2)
    assert (stats["images"], stats["train_entries"], stats["val_images"]) == (10, 24, 2)
    assert stats["quirks"] == {"grayscale": 1, "cmyk": 1, "png": 0}  # train image numbers 1 and 7
    links = [p for p in (tmp_path / "tree" / "train").rglob("c*_*.JPEG")]
    assert len(links) == 16 and all(p.is_symlink() and p.resolve().exists() for p in links)
    assert gc.generate_tree(spec, tmp_path / "tree", procs=2)["reused"] is True


def _travelling_files(dst: Path) -> None:
    """Copy what a device call carries: tracked and untracked-not-ignored files (not .gpu-wheels, .venv)."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = REPO / name
        if src.is_file():  # a tracked file deleted in the working tree does not travel
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


SMOKE_LEGS = ("synthetic-amp", "cpu", "folder", "io-bench", "synthetic-amp-compile")


@pytest.mark.slow
def test_smoke_run_from_a_copy_of_what_travels(tmp_path):
    repo, out = tmp_path / "repo", tmp_path / "out"
    _travelling_files(repo)
    assert not (repo.parent / "shared").exists() and not (repo / ".gpu-wheels").exists()
    where = subprocess.run([sys.executable, "-c", "import pipeline, train, tools; print(pipeline.__file__)"],
                           cwd=repo, capture_output=True, text=True)
    assert where.stdout.startswith(str(repo)), "the copy's packages must shadow the editable install"
    t0 = time.monotonic()
    # a budget no busy machine exhausts (the script's default, 175 s, is what a quiet one needs) and that still
    # leaves the compile leg's need (600 s) out of reach: how long the run took is not asserted
    # one leg of each kind (synthetic, loader on shards, loader on the tree, io-bench, compile's skip path); the
    # rest are reported as not selected (every backend's train path has tests of its own)
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--budget-s", "400",
                           "--legs", ",".join(SMOKE_LEGS), "--work", str(tmp_path / "work")],
                          cwd=repo, env=dict(os.environ, OUT=str(out)), capture_output=True, text=True, timeout=400)
    wall = time.monotonic() - t0
    print(proc.stdout[-6000:], f"\nsmoke wall {wall:.0f} s")
    data = json.loads((out / "results.json").read_text())
    status = {e["name"]: e["status"] for e in data["legs"]}
    assert list(status) == [leg.name for leg in gc.full_legs(1)] and data["finished"] is True
    for name in ("synthetic-amp", "cpu", "folder", "io-bench"):
        assert status[name] == gc.OK, (name, proc.stdout[-3000:])
    assert status["synthetic-amp-compile"] == gc.SKIPPED
    reasons = {e["name"]: e.get("reason", "") for e in data["legs"]}
    for name in set(status) - set(SMOKE_LEGS):
        assert status[name] == gc.SKIPPED and reasons[name] == "not selected (--legs)", (name, reasons[name])
    iob = next(e for e in data["legs"] if e["name"] == "io-bench")
    assert iob["verdict"] and iob["results"]["verdict"] is not None
    for name in status:
        assert re.search(rf"^\| {re.escape(name)} \| ", proc.stdout, re.M), name
    assert data["dataset"]["tree"]["quirks"] == {"grayscale": 1, "cmyk": 1, "png": 1}
    assert "loader legs: fp32, --workers 1" in proc.stdout
    _check_out_limits(out)


def _check_out_limits(out: Path) -> None:
    """What comes back from $OUT: at most 8 files, 16 MiB each, at most 2 folders down, plain names."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8, files
    for f in files:
        rel = f.relative_to(out)
        assert len(rel.parts) <= 3 and f.stat().st_size <= 16 * 2 ** 20, rel
        assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts), rel
