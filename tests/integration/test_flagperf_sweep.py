"""flagperf-sweep end to end on this machine, started from a folder outside the repository with relative --data
and --out: from the checkout, the 1x1 and 1x8 A100 presets on one and two gloo processes (into a nested --out);
from a built wheel installed in a fresh venv, the C500x1x1 preset on one process; then the page
flagperf-report wrote, checked cell by cell against the runs' metrics JSONs (their ``flagperf`` object).
(The checkout's one-preset run of the past, C500x1x1 with ``--out runs/sweep``, is covered by these two: its
every check is made by one of them, so its sweep no longer runs a third time.)"""

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


def half_up(value: float, digits: int = 0) -> str:
    """A figure as the page writes it: rounded half up (to a whole number by default)."""
    return str(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


# FlagPerf's pages (training/nvidia|metax/resnet50-pytorch/README.md): headings in order, the 通用指标 row names,
# the 性能指标 columns (format facts, to compare against)
HEADINGS = [r"### 1\. 数据集准备", r"### 2\. .+配置与运行信息参考", r"#### 环境配置", r"### 运行情况", r"\* 通用指标",
            r"\* 性能指标"]
GENERAL = ["指标名称", "任务类别", "模型", "数据集", "数据精度", "超参修改", "硬件设备简称", "硬件存储使用", "端到端时间",
           "总吞吐量", "训练吞吐量", "**计算吞吐量**", "训练结果", "额外修改项"]
PERF = ["配置", "precision", "fix_hp", "e2e_time", "p_whole", "p_train", "p_core", "acc", "mem"]


def performance_table(page: str) -> list[dict[str, str]]:
    """The rows of the page's 性能指标 table, each as {column header: cell}."""
    lines = page.split("* 性能指标", 1)[1].strip().splitlines()
    table = []
    for line in lines:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip().strip("|").split("|")])
    header, rows = table[0], table[2:]
    assert header == PERF
    return [dict(zip(header, row)) for row in rows]


def expected_fix_hp(m: dict) -> str:
    """``/`` when the run's per-card batch and peak LR are its FlagPerf config's, else ``bs=X,lr=Y``."""
    from train.flagperf_case import case_config

    cfg = m["resolved_config"]
    case = case_config(cfg["flagperf_case"])
    batch, lr = cfg["loader_cfg"]["batch_size"], cfg["optim"]["lr"]
    return "/" if (batch, lr) == (case.batch, case.lr) else f"bs={batch},lr={lr:g}"


def check_structure(page: str) -> None:
    """Headings in FlagPerf's order, its 通用指标 rows and 性能指标 columns."""
    import re

    found = [line for line in page.splitlines() if re.match(r"(#{3,4} |\* )", line)]
    assert len(found) == len(HEADINGS) and all(re.fullmatch(h, f) for h, f in zip(HEADINGS, found)), found
    general = page.split("* 通用指标", 1)[1].split("* 性能指标", 1)[0]
    names = [line.strip("|").split("|")[0].strip() for line in general.splitlines() if line.startswith("|")]
    assert [n for n in names if set(n) != {"-"}] == GENERAL


def check_page(page: str, runs: dict[str, dict]) -> None:
    """FlagPerf's structure, and one row per run (``runs``: layout as the 配置 cell ends, ``（1x2）``, -> its
    metrics JSON) whose every cell is the JSON's: label, fix_hp, the rounded ``flagperf`` figures, acc, mem."""
    check_structure(page)
    rows = performance_table(page)
    assert len(rows) == len(runs), rows
    for layout, m in runs.items():
        row = next(r for r in rows if r["配置"].endswith(layout))
        f = m["flagperf"]
        acc = "/" if f["acc1"] is None else f"{half_up(f['acc1'], 1)}%"
        assert row == {"配置": row["配置"], "precision": m["numerics"]["page_label"], "fix_hp": expected_fix_hp(m),
                       **{k: half_up(f[k]) for k in FIGURES}, "acc": acc,
                       "mem": f"{half_up(m['mem_used_gib'], 1)}/{half_up(m['mem_total_gib'], 1)}"}, (row, f)


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


@pytest.mark.slow
def test_sweep_runs_what_fits_and_the_page_matches_the_jsons(demo_shards, tmp_path):
    work = outside_repo(tmp_path, demo_shards)
    proc = sweep(work, ["--data", "shards", "--out", "runs/sweep", "--nproc", "2", "--presets", "A100",
                        "--device-name", "CPU", "--", *TINY], env={"PYTHONPATH": str(REPO)})
    assert "A100x2x8_fp32 skipped: needs 2 nodes" in proc.stdout
    assert "2 run(s) finished, 0 failed" in proc.stdout
    out = work / "runs" / "sweep"  # a nested relative --out, made under the working folder
    runs = {name: json.loads((out / f"{name}_fp32.json").read_text()) for name in ("A100x1x1", "A100x1x8")}
    assert (runs["A100x1x1"]["config"], runs["A100x1x8"]["config"]) == ("CPUx1x1", "CPUx1x2")
    assert runs["A100x1x8"]["world_size"] == 2
    assert expected_fix_hp(runs["A100x1x8"]) == "bs=2,lr=0.1"  # A100x1x8's lr, the batch overridden
    for name, m in runs.items():
        assert m["steps"] == 2 and m["precision"] == "fp32"
        assert m["argv"][m["argv"].index("--data") + 1] == str(work / "shards")  # the relative --data, resolved
        assert m["argv"][m["argv"].index("--config") + 1] == str(REPO / "train" / "presets" / "flagperf" /
                                                                  f"{name}.toml")  # the checkout's preset
        assert (out / f"{name}_fp32.log").is_file()
    assert not (REPO / "runs").exists() and not (REPO / "shards").exists() and not (REPO / "sweep").exists()
    page = (out / "README.md").read_text(encoding="utf-8")
    check_page(page, {"（1x1）": runs["A100x1x1"], "（1x2）": runs["A100x1x8"]})
    env = runs["A100x1x1"]["environment"]
    lines = page.splitlines()
    assert f"   - OS版本：{env['os']}" in lines and f"   - OS kernel版本：{env['kernel']}" in lines


@pytest.mark.slow
def test_sweep_from_a_wheel_installed_in_a_fresh_venv(demo_shards, tmp_path):
    """Build the wheel (from a copy of the sources, so no build/ folder of the checkout is used or written),
    install it into a fresh venv (its dependencies, torch among them, seen through a path file pointing at this
    interpreter's site-packages, whose editable install of the project is not activated there), and run the
    venv's ``flagperf-sweep`` console script from a folder outside the repository with relative paths: the code
    and the presets come from the wheel, and the page matches FlagPerf's structure and its runs' JSONs."""
    import sysconfig

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
    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "-q", "install",
                                "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert sorted(p.stem for p in (site / "train" / "presets" / "flagperf").glob("*.toml")) == [
        "A100x1x1", "A100x1x8", "A100x2x8", "C500x1x1", "C500x1x8", "C500x2x8", "C550x1x8"]
    assert (site / "train" / "presets" / "tuned" / "dle-amp.toml").is_file()

    work = outside_repo(tmp_path, demo_shards)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    where = subprocess.run([str(python), "-c", "import train, tools.train; print(train.__file__)"], cwd=work,
                           capture_output=True, text=True, env=env, timeout=120)
    assert Path(where.stdout.strip()).parent == site / "train", where.stdout + where.stderr
    proc = subprocess.run([str(venv / "bin" / "flagperf-sweep"), "--data", "shards", "--out", "out", "--presets",
                           "C500x1x1", "--", *TINY], cwd=work, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 run(s) finished, 0 failed" in proc.stdout
    m = json.loads((work / "out" / "C500x1x1_fp32.json").read_text())
    assert m["steps"] == 2 and m["precision"] == "fp32" and expected_fix_hp(m) == "bs=2,lr=0.8"
    assert m["argv"][m["argv"].index("--data") + 1] == str(work / "shards")  # the relative --data, resolved
    assert (work / "out" / "C500x1x1_fp32.log").is_file()
    assert Path(m["argv"][0]).parent == site / "tools"  # the run's train came from the wheel, and its preset too
    assert m["argv"][m["argv"].index("--config") + 1] == str(site / "train" / "presets" / "flagperf" /
                                                              "C500x1x1.toml")
    check_page((work / "out" / "README.md").read_text(encoding="utf-8"), {"（1x1）": m})
    assert not (REPO / "out").exists() and not (REPO / "shards").exists()
