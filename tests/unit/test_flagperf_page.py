"""flagperf-report's page: FlagPerf's headers and wording, row order, config cells, rounding, '/' and unknowns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools import flagperf_report
from train.flagperf_page import Lang, config_cell, load_run, render

REPO = Path(__file__).resolve().parents[2]

ENV = {"machine": "NVIDIA DGX A100", "cpu": "AMD EPYC 7742", "cpu_cores": 256, "accelerator": "NVIDIA A100-SXM4-40GB",
       "accelerator_count": 8, "nodes": 1, "processes_per_node": 8, "interconnect": None,
       "os": "Ubuntu 20.04", "kernel": "5.4.0-113-generic", "driver": "470.129.06", "docker": None,
       "framework": "pytorch-2.11.0", "cuda": "13.0",
       "dependencies": {"python": "3.12.3", "torchvision": "0.26.0", "cudnn": "91000", "dali": None}}


def metrics(config: str, precision: str, **kw) -> dict:
    base = {"config": config, "precision": precision, "fix_hp": "bs=256,lr=0.8", "e2e_time": 28661.4,
            "p_whole": 4475.4, "p_train": 4586.5, "p_core": 4659.2, "acc1": 75.04, "mem_used_gib": 5.84,
            "mem_total_gib": 40.0, "device_name": "NVIDIA A100-SXM4-40GB", "environment": ENV}
    return {**base, **kw}


def write(tmp_path: Path, name: str, m: dict) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(m))
    return path


def perf_rows(page: str) -> list[list[str]]:
    lines = page.split("* 性能指标" if "性能指标" in page else "* Performance")[1].strip().splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_config_cells_are_flagperfs():
    assert config_cell("A100", 1, 8, Lang.ZH) == "A100单机8卡（1x8）"
    assert config_cell("A100", 1, 1, Lang.ZH) == "A100单机单卡（1x1）"
    assert config_cell("A100", 2, 8, Lang.ZH) == "A100两机8卡（2x8）"
    assert config_cell("A100", 4, 8, Lang.ZH) == "A100四机8卡（4x8）"
    assert config_cell("A100", 1, 8, Lang.EN) == "A100 1 node x 8 cards (1x8)"


def test_rows_ordered_rounded_and_slashes(tmp_path):
    files = [write(tmp_path, "a", metrics("CUDAx1x8", "amp", fix_hp="bs=512,lr=0.2")),
             write(tmp_path, "b", metrics("CUDAx2x8", "fp32", acc1=None, e2e_time=1000.6)),
             write(tmp_path, "c", metrics("CUDAx1x1", "fp32", p_whole=781.5, mem_used_gib=27.64)),
             write(tmp_path, "d", metrics("CUDAx1x8", "fp32")),
             write(tmp_path, "e", metrics("CUDAx1x1", "fp32", p_whole=None, p_train=None, p_core=None))]
    page = render([load_run(f) for f in files], Lang.ZH, "A100")
    assert perf_rows(page) == [
        ["A100单机单卡（1x1）", "fp32", "bs=256,lr=0.8", "28661", "782", "4587", "4659", "75.0%", "27.6/40.0"],
        ["A100单机单卡（1x1）", "fp32", "bs=256,lr=0.8", "28661", "/", "/", "/", "75.0%", "5.8/40.0"],
        ["A100单机8卡（1x8）", "fp32", "bs=256,lr=0.8", "28661", "4475", "4587", "4659", "75.0%", "5.8/40.0"],
        ["A100单机8卡（1x8）", "amp", "bs=512,lr=0.2", "28661", "4475", "4587", "4659", "75.0%", "5.8/40.0"],
        ["A100两机8卡（2x8）", "fp32", "bs=256,lr=0.8", "1001", "4475", "4587", "4659", "/", "5.8/40.0"]]
    assert "| 配置 | precision | fix_hp | e2e_time | p_whole | p_train | p_core | acc | mem |" in page
    assert "| 指标名称 | 指标值 | 特殊说明 |" in page and "| 硬件设备简称 | A100 |  |" in page
    for heading in ("#### 环境配置", "- ##### 硬件环境", "- ##### 软件环境", "### 运行情况", "* 通用指标"):
        assert heading in page.splitlines()


def test_environment_known_unknown_and_disagreeing(tmp_path):
    other = {**ENV, "driver": "535.1", "interconnect": "InfiniBand, 200 Gb/sec (4X HDR) (mlx5_0)"}
    files = [write(tmp_path, "a", metrics("CUDAx1x8", "fp32")),
             write(tmp_path, "b", metrics("CUDAx2x8", "fp32", environment=other)),
             write(tmp_path, "old", {k: v for k, v in metrics("CUDAx1x1", "amp").items() if k != "environment"})]
    lines = render([load_run(f) for f in files], Lang.ZH).splitlines()
    assert "    - 机器型号：NVIDIA DGX A100" in lines
    assert "    - 加速卡型号：NVIDIA A100-SXM4-40GB x 8" in lines
    assert "    - 多机网络类型、带宽：InfiniBand, 200 Gb/sec (4X HDR) (mlx5_0)" in lines  # from the 2-node run
    assert "   - 加速卡驱动版本：470.129.06 / 535.1" in lines
    assert "   - Docker 版本：未知" in lines and "     - dali: 未知" in lines
    assert "| 硬件设备简称 | NVIDIA A100-SXM4-40GB |  |" in lines  # default: the recorded accelerator


def test_english_page(tmp_path):
    page = render([load_run(write(tmp_path, "a", metrics("CPUx1x1", "fp32", environment={})))], Lang.EN, "C500")
    assert "| config | precision | fix_hp | e2e_time | p_whole | p_train | p_core | acc | mem |" in page
    assert "| Metric | Value | Note |" in page and "    - Machine model: unknown" in page.splitlines()
    assert perf_rows(page)[0][0] == "C500 1 node x 1 card (1x1)"


@pytest.mark.parametrize("content,expected", [
    ("not json", "not a readable metrics JSON"), ('{"config": "CPUx1x1"}', "no precision"),
    ("[1]", "a JSON object expected")])
def test_bad_run_files_are_one_line_errors(tmp_path, content, expected):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "tools.flagperf_report", str(bad)], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"flagperf-report: error: {bad}")
    assert expected in proc.stderr
    missing = subprocess.run([sys.executable, "-m", "tools.flagperf_report", str(tmp_path / "none.json")], cwd=REPO,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_cli_writes_the_page(tmp_path, capsys):
    run = write(tmp_path, "a", metrics("CUDAx1x8", "fp32"))
    assert flagperf_report.main([str(run), "--out", str(tmp_path / "page" / "README.md"), "--device-name", "A100"]) == 0
    page = (tmp_path / "page" / "README.md").read_text(encoding="utf-8")
    assert perf_rows(page)[0][0] == "A100单机8卡（1x8）" and "wrote" in capsys.readouterr().out
    assert flagperf_report.main([str(run), "--lang", "en"]) == 0
    assert "* Performance" in capsys.readouterr().out
