"""flagperf-sweep end to end on this machine: the 1x1 preset on one process and the 1x8 preset on a 2-process
gloo "1x2", a few steps each, then the page flagperf-report wrote, checked cell by cell against the runs' JSONs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train.flagperf_page import rounded

REPO = Path(__file__).resolve().parents[2]
TINY = ["--image-size", "32", "--batch-size", "2", "--max-steps", "3", "--workers", "1", "--loader", "cpu",
        "--epochs", "1"]


def page_rows(page: str) -> dict[str, list[str]]:
    lines = page.split("* 性能指标")[1].strip().splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {r[0]: r for r in rows}


@pytest.mark.slow
def test_sweep_runs_what_fits_and_the_page_matches_the_jsons(demo_shards, tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "tools.flagperf_sweep", "--data", str(demo_shards), "--out",
                           str(out), "--nproc", "2", "--precisions", "fp32", "--device-name", "CPU", "--", *TINY],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resnet50_2x8_fp32 skipped: needs 2 nodes" in proc.stdout
    assert "2 run(s) finished, 0 failed" in proc.stdout
    runs = {name: json.loads((out / f"resnet50_{name}_fp32.json").read_text()) for name in ("1x1", "1x8")}
    assert (runs["1x1"]["config"], runs["1x8"]["config"]) == ("CPUx1x1", "CPUx1x2")
    assert runs["1x8"]["world_size"] == 2
    page = (out / "README.md").read_text(encoding="utf-8")
    rows = page_rows(page)
    assert list(rows) == ["CPU单机单卡（1x1）", "CPU单机2卡（1x2）"]
    for label, m in (("CPU单机单卡（1x1）", runs["1x1"]), ("CPU单机2卡（1x2）", runs["1x8"])):
        assert rows[label] == [label, m["precision"], m["fix_hp"], rounded(m["e2e_time"]), rounded(m["p_whole"]),
                               rounded(m["p_train"]), rounded(m["p_core"]), f"{rounded(m['acc1'], 1)}%",
                               f"{rounded(m['mem_used_gib'], 1)}/{rounded(m['mem_total_gib'], 1)}"]
        assert m["precision"] == "fp32" and m["fix_hp"] == "bs=2,lr=0.8"
    env = runs["1x1"]["environment"]
    lines = page.splitlines()
    assert f"   - OS版本：{env['os']}" in lines and f"   - OS kernel版本：{env['kernel']}" in lines
    assert f"   - 训练框架版本：{env['framework']}" in lines and f"     - cuda: {env['cuda'] or '未知'}" in lines
    assert "    - 多机网络类型、带宽：单机运行，无多机网络" in lines
    assert "| 硬件设备简称 | CPU |  |" in lines
