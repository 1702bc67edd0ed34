"""flagperf-sweep end to end on this machine, started from a folder outside the repository with relative --data
and --out: a FlagPerf preset on one process (from the checkout, and from a built wheel installed with
``pip install --target``), and the 1x1 and 1x8 A100 presets on one and two gloo processes; then the page
flagperf-report wrote, checked cell by cell against the runs' metrics JSONs (their ``flagperf`` object)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = ["--image-size", "32", "--batch-size", "2", "--max-steps", "2", "--workers", "1", "--loader", "cpu",
        "--epochs", "1"]
FIGURES = ("e2e_time", "p_whole", "p_train", "p_core")


def half_up(value: float) -> str:
    """A figure as the page writes it: rounded half up to a whole number."""
    return str(Decimal(repr(float(value))).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def performance_table(page: str) -> list[dict[str, str]]:
    """The rows of the page's 性能指标 table, each as {column header: cell}."""
    lines = page.split("* 性能指标", 1)[1].strip().splitlines()
    table = []
    for line in lines:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip().strip("|").split("|")])
    header, rows = table[0], table[2:]
    return [dict(zip(header, row)) for row in rows]


def check_page(page: str, runs: dict[str, dict]) -> None:
    """One row per run (``runs``: layout as the 配置 cell ends, ``（1x2）``, -> its metrics JSON), each figure cell
    the rounded value of the JSON's ``flagperf`` object."""
    rows = performance_table(page)
    assert len(rows) == len(runs), rows
    for layout, m in runs.items():
        row = next(r for r in rows if next(iter(r.values())).endswith(layout))
        assert [row[k] for k in FIGURES] == [half_up(m["flagperf"][k]) for k in FIGURES], (row, m["flagperf"])


def sweep(cwd: Path, argv: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "tools.flagperf_sweep", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def outside_repo(tmp_path: Path, demo_shards: Path) -> Path:
    """A working folder outside the repository with the shards as the relative ``shards``."""
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(demo_shards, work / "shards")
    assert REPO not in work.resolve().parents
    return work


def test_sweep_from_another_folder_with_relative_paths(demo_shards, tmp_path):
    work = outside_repo(tmp_path, demo_shards)
    proc = sweep(work, ["--data", "shards", "--out", "runs/sweep", "--presets", "C500x1x1", "--device-name",
                        "CPU", "--", *TINY], env={"PYTHONPATH": str(REPO)})
    assert "1 run(s) finished, 0 failed" in proc.stdout
    out = work / "runs" / "sweep"
    m = json.loads((out / "C500x1x1_fp32.json").read_text())
    assert m["steps"] == 2 and m["precision"] == "fp32" and m["fix_hp"] == "bs=2,lr=0.8"
    assert m["argv"][m["argv"].index("--data") + 1] == str(work / "shards")
    assert m["argv"][m["argv"].index("--config") + 1] == str(REPO / "train" / "presets" / "flagperf" /
                                                              "C500x1x1.toml")
    assert (out / "C500x1x1_fp32.log").is_file() and (out / "README.md").is_file()
    assert not (REPO / "runs").exists() and not (REPO / "shards").exists()
    check_page((out / "README.md").read_text(encoding="utf-8"), {"（1x1）": m})


@pytest.mark.slow
def test_sweep_runs_what_fits_and_the_page_matches_the_jsons(demo_shards, tmp_path):
    work = outside_repo(tmp_path, demo_shards)
    proc = sweep(work, ["--data", "shards", "--out", "sweep", "--nproc", "2", "--presets", "A100", "--device-name",
                        "CPU", "--", *TINY], env={"PYTHONPATH": str(REPO)})
    assert "A100x2x8_fp32 skipped: needs 2 nodes" in proc.stdout
    assert "2 run(s) finished, 0 failed" in proc.stdout
    runs = {name: json.loads((work / "sweep" / f"{name}_fp32.json").read_text()) for name in ("A100x1x1", "A100x1x8")}
    assert (runs["A100x1x1"]["config"], runs["A100x1x8"]["config"]) == ("CPUx1x1", "CPUx1x2")
    assert runs["A100x1x8"]["world_size"] == 2
    assert runs["A100x1x8"]["fix_hp"] == "bs=2,lr=0.1"  # A100x1x8's lr, the batch overridden
    page = (work / "sweep" / "README.md").read_text(encoding="utf-8")
    check_page(page, {"（1x1）": runs["A100x1x1"], "（1x2）": runs["A100x1x8"]})
    env = runs["A100x1x1"]["environment"]
    lines = page.splitlines()
    assert f"   - OS版本：{env['os']}" in lines and f"   - OS kernel版本：{env['kernel']}" in lines


@pytest.mark.slow
def test_sweep_from_an_installed_wheel(demo_shards, tmp_path):
    """Build the wheel (from a copy of the sources, so no build/ folder of the checkout is used or written),
    install it with ``pip install --target``, and sweep from another folder: the presets come from the wheel."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("pipeline", "train", "tools"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run([*pip, "wheel", ".", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl")],
                           cwd=src, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel, = (tmp_path / "whl").glob("*.whl")
    site = tmp_path / "site"
    installed = subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert sorted(p.stem for p in (site / "train" / "presets" / "flagperf").glob("*.toml")) == [
        "A100x1x1", "A100x1x8", "A100x2x8", "C500x1x1", "C500x1x8", "C500x2x8", "C550x1x8"]
    assert (site / "train" / "presets" / "tuned" / "dle-amp.toml").is_file()

    work = outside_repo(tmp_path, demo_shards)
    env = {"PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import train, tools.train; print(train.__file__)"], cwd=work,
                           capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
    assert Path(where.stdout.strip()).parent == site / "train", where.stdout + where.stderr
    proc = sweep(work, ["--data", "shards", "--out", "out", "--presets", "C500x1x1", "--", *TINY], env=env)
    assert "1 run(s) finished, 0 failed" in proc.stdout
    m = json.loads((work / "out" / "C500x1x1_fp32.json").read_text())
    assert Path(m["argv"][0]).parent == site / "tools"  # the run's train came from the wheel, and its preset too
    assert m["argv"][m["argv"].index("--config") + 1] == str(site / "train" / "presets" / "flagperf" /
                                                              "C500x1x1.toml")
    check_page((work / "out" / "README.md").read_text(encoding="utf-8"), {"（1x1）": m})
