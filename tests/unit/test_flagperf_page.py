"""flagperf-report's page against FlagPerf's own ResNet50 vendor pages (github.com/FlagOpen/FlagPerf,
``training/nvidia/resnet50-pytorch/README.md`` and ``training/metax/resnet50-pytorch/README.md``): headings and
their order, the 通用指标 rows, the 性能指标 columns, units and rounding; then what this project fills in: 数据集,
each 额外修改项 item exactly when its difference is present, fix_hp, the 数据格式 note, every 性能指标 cell from the
fixture's ``flagperf`` figures (never the steady ones), and one-line errors.

The fixtures are metrics JSONs built by hand after ``train --metrics-json``'s contract (``flagperf``, ``numerics``,
``dataset``, ``resolved_config``); :func:`faithful` is a run that does what FlagPerf's A100x1x8 config does, read
with the ``folder`` loader (torchvision ImageFolder, FlagPerf's pipeline), so its 额外修改项 is 无. The last test
renders the JSON of a real tiny ``train`` run.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools import flagperf_report
from train.flagperf_page import (CHANGE_KEYS, Lang, RunFileError, config_cell, extra_changes, load_run,
                                 parse_tables, render, rounded, run_changes)

REPO = Path(__file__).resolve().parents[2]

# --- FlagPerf's page structure, as format facts (read from the two pages named above) -----------------------------

NVIDIA_HEADINGS = ["### 1. 数据集准备", "### 2. Nvidia GPU配置与运行信息参考", "#### 环境配置", "- ##### 硬件环境",
                   "- ##### 软件环境", "- 数据格式", "### 运行情况", "* 通用指标", "* 性能指标"]
# MetaX's page writes its section heading without the "2." and has no 数据格式 note (fp32 runs here: none either)
METAX_HEADINGS = ["### 1. 数据集准备", "### 2. 沐曦集成电路 C500 GPU配置与运行信息参考", "#### 环境配置",
                  "- ##### 硬件环境", "- ##### 软件环境", "### 运行情况", "* 通用指标", "* 性能指标"]
DATASET_LINK = "[下载ImageNet2012](../../benchmarks/resnet50)"
GENERAL_ROWS = ["任务类别", "模型", "数据集", "数据精度", "超参修改", "硬件设备简称", "硬件存储使用", "端到端时间",
                "总吞吐量", "训练吞吐量", "**计算吞吐量**", "训练结果", "额外修改项"]
GENERAL_HEADER = ["指标名称", "指标值", "特殊说明"]
PERF_COLUMNS = ["配置", "precision", "fix_hp", "e2e_time", "p_whole", "p_train", "p_core", "acc", "mem"]
CELL_FORMAT = {"e2e_time": r"\d+|/", "p_whole": r"\d+|/", "p_train": r"\d+|/", "p_core": r"\d+|/",
               "acc": r"\d+\.\d%|/", "mem": r"\d+\.\d/\d+\.\d", "fix_hp": r"/|bs=\d+,lr=[0-9.e-]+"}
HEADING = re.compile(r"^(#{3,4} .*|- #{5} .*|\* .*|- 数据格式)$")

# --- fixtures ------------------------------------------------------------------------------------------------------

NVIDIA_ENV = {"machine": "NVIDIA DGX A100", "cpu": "AMD EPYC 7742", "cpu_cores": 256,
              "accelerator": "NVIDIA A100-SXM4-40GB", "accelerator_vendor": "nvidia", "accelerator_count": 8,
              "nodes": 1, "processes_per_node": 8, "interconnect": None, "os": "Ubuntu 20.04",
              "kernel": "5.4.0-113-generic", "driver": "470.129.06", "accelerator_tool": "nvidia-smi 470.129.06",
              "docker": None, "framework": "pytorch-2.11.0", "cuda": "13.0", "maca": None, "tf32": False,
              "tf32_mechanism": "torch.backends",
              "dependencies": {"python": "3.12.3", "torchvision": "0.26.0", "cudnn": "91000", "dali": None}}
METAX_ENV = {**NVIDIA_ENV, "machine": None, "accelerator": "MetaX C500", "accelerator_vendor": "metax",
             "driver": "3.0.11", "accelerator_tool": "mx-smi 2.2.8", "maca": "3.1.0.14", "tf32": True,
             "tf32_mechanism": "METAX_USE_TF32"}
IMAGENET = {"data": "/data/imagenet-shards", "name": "imagenet-shards", "train_samples": 1_281_167,
            "val_samples": 50_000, "num_classes": 1000}
DEMO = {"data": "build/demo/demo-imagenet", "name": "demo-imagenet", "train_samples": 1000, "val_samples": 200,
        "num_classes": 10}

NUMERICS = {  # per precision mode: dtypes and loss scaling as train.precision runs them
    "fp32": ("float32", None, False), "amp": ("float32", "float16", True), "fp16": ("bfloat16", None, False),
    "bf16": ("float32", "bfloat16", False), "half": ("float16", None, False)}
LABELS = {"fp32": "fp32", "amp": "amp", "fp16": "bf16", "bf16": "amp-bf16", "half": "fp16-ieee"}


def faithful(precision: str = "fp32", layout: str = "1x8", vendor: str = "nvidia", **flagperf) -> dict:
    """A run that does what FlagPerf's A100x1x8 (MetaX: C500x1x8) config and harness do, read from an
    ImageFolder by the folder loader; ``flagperf``: figures to override."""
    nodes, per_node = map(int, layout.split("x"))
    metax = vendor == "metax"
    dtype, auto, scaler = NUMERICS[precision]
    batch, lr = (128, 0.4) if metax else (32, 0.1)
    figures = {"e2e_time": 28661.4, "p_whole": 4475.4, "p_train": 4586.5, "p_core": 4659.2, "acc1": 75.54,
               "trained_images": 1_281_167 * 87, "converged": True, "initial_eval_s": 61.2, "p_core_timing": "sync",
               "figure_set": "flagperf", **flagperf}
    return {
        # the steady set at the top level: figures the page must never show
        "e2e_time": 11111.1, "p_whole": 1111.1, "p_train": 2222.2, "p_core": 3333.3, "acc1": 99.99,
        "mem_used_gib": 5.84, "mem_total_gib": 64.0 if metax else 40.0, "trained_images": 123, "figure_set": "steady",
        "mem": "5.8/40.0", "val_samples": 50_000, "steps": 87 * 5004, "ema_acc1": None, "target_acc1": 75.5,
        "target_reached_epoch": 87, "resumed_from_step": 0, "epochs": 87, "world_size": nodes * per_node,
        "precision": precision, "loader": "folder", "device_name": METAX_ENV["accelerator"] if metax else
        NVIDIA_ENV["accelerator"], "config": f"CUDAx{nodes}x{per_node}", "fix_hp": "bs=?", "environment":
        METAX_ENV if metax else NVIDIA_ENV,
        "flagperf": figures,
        "numerics": {"precision": precision, "page_label": LABELS[precision], "param_dtype": dtype,
                     "input_dtype": dtype, "autocast_dtype": auto, "grad_scaler": scaler, "tf32": "default",
                     "tf32_matmul": False, "tf32_cudnn": True,
                     "tf32_mechanism": "METAX_USE_TF32" if metax else "torch.backends",
                     "metax_use_tf32": "1" if metax else None, "cudnn_benchmark": False,
                     "cudnn_deterministic": not metax, "channels_last": False},
        "dataset": dict(IMAGENET),
        "resolved_config": {
            "data": "/data/imagenet", "flagperf_case": f"C500x{layout}" if metax else f"A100x{layout}",
            "loader": "folder",
            "loader_cfg": {"batch_size": batch, "image_size": 224, "workers": 32, "seed": 0, "shuffle_buffer": 500,
                           "crop_pct": 0.875},
            "optim": {"lr": lr, "lr_per_256": 0.256, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4,
                      "decay_bn_and_bias": True, "label_smoothing": 0.0, "warmup_epochs": 0.0, "schedule": "step",
                      "milestones": [30, 60, 90], "gamma": 0.1},
            "epochs": 100, "max_steps": None, "precision": precision, "seed": 0, "eval": True, "warmup_steps": None,
            "zero_init_residual": False, "ema_decay": None, "target_acc1": 75.5, "compile": False,
            "tf32": "default", "cudnn_benchmark": False, "cudnn_deterministic": not metax, "initial_eval": True,
            "resolution": None, "channels_last": False}}


def write(tmp_path: Path, name: str, m: dict) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(m))
    return path


def page_of(tmp_path: Path, *runs: dict, lang: Lang = Lang.ZH, device: str | None = "A100") -> str:
    return render([load_run(write(tmp_path, f"run{i}", m)) for i, m in enumerate(runs)], lang, device)


def general(page: str) -> dict[str, str]:
    return {row[0]: row[1] for row in parse_tables(page).general[1:]}


def headings(page: str) -> list[str]:
    return [line for line in page.splitlines() if HEADING.match(line)]


# --- structure against FlagPerf's pages ----------------------------------------------------------------------------

def test_nvidia_page_has_flagperfs_structure(tmp_path):
    amp = faithful("amp")
    amp["resolved_config"]["loader_cfg"]["batch_size"], amp["resolved_config"]["optim"]["lr"] = 512, 0.2
    fp16 = copy.deepcopy(amp)
    fp16["numerics"].update(precision="fp16", param_dtype="bfloat16", input_dtype="bfloat16", autocast_dtype=None,
                            grad_scaler=False)
    page = page_of(tmp_path, fp16, faithful(), amp)
    lines = page.splitlines()
    assert headings(page) == NVIDIA_HEADINGS
    assert lines[:2] == [NVIDIA_HEADINGS[0], DATASET_LINK]
    assert lines.index(NVIDIA_HEADINGS[2]) == lines.index(NVIDIA_HEADINGS[1]) + 1  # 环境配置 right under it
    tables = parse_tables(page)
    assert tables.general[0] == GENERAL_HEADER and [r[0] for r in tables.general[1:]] == GENERAL_ROWS
    assert tables.perf[0] == PERF_COLUMNS
    rows = tables.perf[1:]
    assert [(r[0], r[1], r[2]) for r in rows] == [("A100单机8卡（1x8）", "fp32", "/"),
                                                  ("A100单机8卡（1x8）", "amp", "bs=512,lr=0.2"),
                                                  ("A100单机8卡（1x8）", "bf16", "bs=512,lr=0.2")]
    for row in rows:
        for column, cell in zip(PERF_COLUMNS, row):
            assert re.fullmatch(CELL_FORMAT.get(column, r".+"), cell), (column, cell)
    # a FlagPerf-faithful run on 8 ranks differs only in how BN statistics meet over ranks
    assert general(page)["额外修改项"].startswith("1. BN 统计量") and "<br>" not in general(page)["额外修改项"]
    assert general(page)["数据集"] == "ImageNet2012"
    single = page_of(tmp_path, faithful(layout="1x1"))
    assert general(single)["额外修改项"] == "无"


def test_metax_page_has_flagperfs_structure(tmp_path):
    page = page_of(tmp_path, faithful(vendor="metax"), faithful(vendor="metax", layout="1x1"), device="C500")
    assert headings(page) == METAX_HEADINGS  # fp32 only: no 数据格式 note
    tables = parse_tables(page)
    assert [r[0] for r in tables.general[1:]] == GENERAL_ROWS and tables.perf[0] == PERF_COLUMNS
    assert [r[0] for r in tables.perf[1:]] == ["C500单机单卡（1x1）", "C500单机8卡（1x8）"]
    assert [r[2] for r in tables.perf[1:]] == ["bs=128,lr=0.4", "/"]  # C500x1x1's own config: bs 256, lr 0.8
    assert general(page)["硬件设备简称"] == "C500" and "     - maca: 3.1.0.14" in page.splitlines()
    # the C500x1x1 config trains 6 epochs: the fixture's 100-epoch run differs there, and only there
    assert [(c.key, c.runs) for c in extra_changes([load_run(write(tmp_path, "m", faithful(vendor="metax",
                                                                                            layout="1x1")))],
                                                   Lang.ZH, "C500")] == [("epochs", ())]


def test_english_page(tmp_path):
    page = page_of(tmp_path, faithful(), lang=Lang.EN)
    assert headings(page)[:3] == ["### 1. Dataset preparation", "### 2. Nvidia GPU: configuration and run information",
                                  "#### Environment"]
    tables = parse_tables(page)
    assert tables.perf[0] == ["config", *PERF_COLUMNS[1:]] and tables.general[0] == ["Metric", "Value", "Note"]
    assert tables.perf[1][0] == "A100 1 node x 8 cards (1x8)"
    assert general(page_of(tmp_path, faithful(layout="1x1"), lang=Lang.EN))["Other changes"] == "none"


# --- cells ---------------------------------------------------------------------------------------------------------

def test_config_cells_are_flagperfs():
    assert config_cell("A100", 1, 8, Lang.ZH) == "A100单机8卡（1x8）"
    assert config_cell("A100", 1, 1, Lang.ZH) == "A100单机单卡（1x1）"
    assert config_cell("A100", 2, 8, Lang.ZH) == "A100两机8卡（2x8）"
    assert config_cell("A100", 4, 8, Lang.ZH) == "A100四机8卡（4x8）"
    assert config_cell("A100", 1, 8, Lang.EN) == "A100 1 node x 8 cards (1x8)"


def test_every_perf_cell_is_the_flagperf_set_rounded_half_up(tmp_path):
    runs = [faithful("fp32", "2x8", acc1=None, e2e_time=1000.5), faithful("amp", "1x8", p_whole=781.5),
            faithful("fp32", "1x1", p_train=4586.5, acc1=72.65), faithful("fp16", "1x8"),
            faithful("half", "1x8"), faithful("bf16", "1x8")]
    runs[1]["mem_used_gib"] = 27.65
    page = page_of(tmp_path, *runs)
    rows = {(r[0], r[1]): r for r in parse_tables(page).perf[1:]}
    assert list(rows) == [("A100单机单卡（1x1）", "fp32"), ("A100单机8卡（1x8）", "amp"), ("A100单机8卡（1x8）", "bf16"),
                          ("A100单机8卡（1x8）", "amp-bf16"), ("A100单机8卡（1x8）", "fp16-ieee"),
                          ("A100两机8卡（2x8）", "fp32")]
    for m in runs:
        f = m["flagperf"]
        cell = config_cell("A100", *map(int, m["config"].split("x")[1:]), Lang.ZH)
        row = rows[(cell, LABELS[m["precision"]])]
        assert row[3:] == [rounded(f["e2e_time"]), rounded(f["p_whole"]), rounded(f["p_train"]),
                           rounded(f["p_core"]), "/" if f["acc1"] is None else f"{rounded(f['acc1'], 1)}%",
                           f"{rounded(m['mem_used_gib'], 1)}/{rounded(m['mem_total_gib'], 1)}"]
        assert "1111" not in row and "3333" not in row and "100.0%" not in row  # never the steady set
    assert rows[("A100两机8卡（2x8）", "fp32")][3:8] == ["1001", "4475", "4587", "4659", "/"]  # half up, '/'
    assert rows[("A100单机8卡（1x8）", "amp")][4] == "782" and rows[("A100单机8卡（1x8）", "amp")][8] == "27.7/40.0"
    assert rows[("A100单机单卡（1x1）", "fp32")][7] == "72.7%"


def test_fix_hp_slash_only_for_the_cases_bs_and_lr(tmp_path):
    same = faithful()
    other = faithful()
    other["resolved_config"]["loader_cfg"]["batch_size"] = 256
    scaled = faithful()  # no --lr: lr_per_256 × global batch / 256 = 0.256 × 256 / 256
    scaled["resolved_config"]["optim"]["lr"] = None
    base = faithful()  # no case: FlagPerf's base config (bs 32, lr 0.1)
    base["resolved_config"]["flagperf_case"] = None
    cells = [load_run(write(tmp_path, n, m)).fix_hp for n, m in
             (("same", same), ("other", other), ("scaled", scaled), ("base", base))]
    assert cells == ["/", "bs=256,lr=0.1", "bs=32,lr=0.256", "/"]


def test_dataset_cell_imagenet_demo_and_mixed(tmp_path):
    assert general(page_of(tmp_path, faithful()))["数据集"] == "ImageNet2012"
    demo = faithful()
    demo["dataset"] = dict(DEMO)
    page = page_of(tmp_path, demo)
    assert general(page)["数据集"] == "demo-imagenet（训练 1,000 张 / 验证 200 张，10 类）"
    assert "本页的运行所用数据：demo-imagenet（训练 1,000 张 / 验证 200 张，10 类）。" in page.splitlines()
    assert general(page_of(tmp_path, demo, lang=Lang.EN))["Dataset"] == \
        "demo-imagenet (1,000 train / 200 val images, 10 classes)"
    synthetic = faithful()
    synthetic["resolved_config"]["loader"] = "synthetic"  # ImageNet's counts, but no images
    assert general(page_of(tmp_path, synthetic))["数据集"].startswith("合成数据（随机张量，训练 1,281,167 / 验证 50,000")
    amp = faithful("amp")
    amp["dataset"] = dict(DEMO)
    assert general(page_of(tmp_path, faithful(), amp))["数据集"] == \
        ("[A100单机8卡（1x8）/fp32] ImageNet2012；[A100单机8卡（1x8）/amp] demo-imagenet（训练 1,000 张 / 验证 200 张，"
         "10 类）")


def test_data_format_note_only_with_a_16_bit_run(tmp_path):
    assert "- 数据格式" not in page_of(tmp_path, faithful(), faithful(layout="1x1")).splitlines()
    page = page_of(tmp_path, faithful(), faithful("fp16"), faithful("amp"))
    lines = page.splitlines()
    note = lines[lines.index("- 数据格式") + 2:lines.index("### 运行情况") - 1]
    assert note == [
        "   - [A100单机8卡（1x8）/amp] amp：参数 float32、输入 float32，float16 autocast，GradScaler 损失缩放——即 "
        "FlagPerf 的 amp",
        "   - [A100单机8卡（1x8）/bf16] bf16：参数 bfloat16、输入 bfloat16，无 autocast，无损失缩放（GradScaler）——即 "
        "FlagPerf 的 fp16（其 bfloat16 实现，FlagPerf 的 NVIDIA 页面记作 bf16）"]
    assert lines.index("- 数据格式") > lines.index("- ##### 软件环境")
    alone = page_of(tmp_path, faithful("half")).splitlines()
    assert alone[alone.index("- 数据格式") + 2].startswith("   - fp16-ieee：参数 float16、输入 float16，无 autocast")


# --- 额外修改项: each item exactly when its difference is present -------------------------------------------------

def _set(path: str, value):
    def change(m: dict) -> None:
        *parents, last = path.split(".")
        obj = m
        for p in parents:
            obj = obj[p]
        obj[last] = value
    return change


def _both(*changes):
    def change(m: dict) -> None:
        for c in changes:
            c(m)
    return change


DIFFERENCES = [  # (key, change of the faithful run, words the item shows)
    ("pipeline", _set("resolved_config.loader", "cpu"), "webdataset tar 分片"),
    ("pipeline", _set("resolved_config.loader", "dali"), "NVIDIA DALI 在 GPU 上解码"),
    ("pipeline", _set("resolved_config.loader", "nvjpeg"), "nvJPEG 在 GPU 上解码"),
    ("pipeline", _set("resolved_config.loader", "synthetic"), "随机张量的合成数据"),
    ("layout", _both(_set("config", "CUDAx1x2"), _set("world_size", 2)), "按 A100x1x8 的配置运行于 1x2"),
    ("bn_sync", _both(_set("config", "CUDAx1x2"), _set("world_size", 2), _set("resolved_config.flagperf_case", None)),
     "BN 统计量：每次评估与检查点前在各 rank 间取平均"),
    ("channels_last", _set("numerics.channels_last", True), "channels-last（FlagPerf：NCHW）"),
    ("tf32", _both(_set("numerics.tf32", "on"), _set("numerics.tf32_matmul", True)),
     "TF32：float32 矩阵乘 TF32 开（--tf32 on）（FlagPerf：PyTorch 默认：矩阵乘关、cuDNN 卷积开）"),
    ("tf32", _both(_set("numerics.tf32", "off"), _set("numerics.tf32_cudnn", False)), "cuDNN 卷积 TF32 关"),
    ("cudnn", _set("numerics.cudnn_benchmark", True),
     "cuDNN：benchmark 开、deterministic 开（FlagPerf：benchmark 关、deterministic 开）"),
    ("momentum", _set("resolved_config.optim.momentum", 0.875), "动量：0.875（FlagPerf：0.9）"),
    ("weight_decay", _set("resolved_config.optim.weight_decay", 1 / 32768), "权重衰减：3.05176e-05"),
    ("decay_bn_bias", _set("resolved_config.optim.decay_bn_and_bias", False), "BN 参数与 bias 不衰减"),
    ("nesterov", _set("resolved_config.optim.nesterov", True), "Nesterov：开"),
    ("label_smoothing", _set("resolved_config.optim.label_smoothing", 0.1), "标签平滑：0.1（FlagPerf：无）"),
    ("lr_warmup", _set("resolved_config.optim.warmup_epochs", 5.0), "学习率预热：5 轮线性预热"),
    ("lr_schedule", _set("resolved_config.optim.schedule", "cosine"), "余弦退火至 0（FlagPerf：StepLR，每 30 轮 ×0.1）"),
    ("lr_schedule", _set("resolved_config.optim.milestones", [30, 60, 80]), "第 30、60、80 轮 ×0.1（100 轮内）"),
    ("lr_schedule", _set("resolved_config.optim.gamma", 0.2), "×0.2"),
    ("zero_init_residual", _set("resolved_config.zero_init_residual", True), "BN 的 γ 置零"),
    ("ema", _set("resolved_config.ema_decay", 0.9999), "权重 EMA（decay 0.9999）"),
    ("image_size", _set("resolved_config.loader_cfg.image_size", 160),
     "训练 RandomResizedCrop 160，验证 Resize 182 + CenterCrop 160"),
    ("resolution", _set("resolved_config.resolution", {"start": 160, "end": 224, "ramp_start": 10, "ramp_end": 80,
                                                       "eval": 256, "step": 32}),
     "训练边长第 10 轮前 160 px、第 80 轮起 224 px，验证 256 px"),
    ("crop_pct", _set("resolved_config.loader_cfg.crop_pct", 0.95), "crop_pct 0.95（FlagPerf：224/256 = 0.875）"),
    ("compile", _set("resolved_config.compile", True), "torch.compile：开"),
    ("max_steps", _both(_set("resolved_config.max_steps", 300), _set("steps", 300), _set("epochs", 1),
                        _set("target_reached_epoch", None)), "第 300 步停止（--max-steps 300，1 轮）"),
    ("epochs", _both(_set("resolved_config.epochs", 8), _set("target_reached_epoch", None)),
     "训练轮数：最多 8 轮，未达目标（FlagPerf：最多 100 轮，acc 达 75.5% 即停）"),
    ("initial_eval", _set("resolved_config.initial_eval", False), "训练前评估：无"),
    ("eval", _both(_set("resolved_config.eval", False), _set("flagperf.acc1", None)), "不做每轮评估"),
    ("target_acc1", _set("resolved_config.target_acc1", 70.0), "target_acc1：70%（FlagPerf：75.5%）"),
    ("workers", _set("resolved_config.loader_cfg.workers", 8), "每进程 8 个（FlagPerf：32）"),
    ("seed", _set("resolved_config.seed", 1), "随机种子：模型 1、数据 0（FlagPerf：0）"),
    ("precision", _both(_set("precision", "bf16"), _set("numerics.precision", "bf16")), "amp-bf16，非 FlagPerf 的模式"),
    ("precision", _both(_set("precision", "half"), _set("numerics.precision", "half")), "fp16-ieee，非 FlagPerf 的模式"),
    ("resumed", _set("resumed_from_step", 5004), "自第 5004 步的检查点继续"),
]


def other_changes(run, lang: Lang) -> list[tuple[str, str]]:
    """:func:`run_changes` without the BN item that every run on several ranks has (the fixtures run on 8; the BN
    item is tested on its own)."""
    return [(k, t) for k, t in run_changes(run, lang) if k != "bn_sync"]


def test_a_faithful_run_has_no_other_changes(tmp_path):
    run = load_run(write(tmp_path, "f", faithful(layout="1x1")))
    assert run_changes(run, Lang.ZH) == [] and run_changes(run, Lang.EN) == []
    metax = load_run(write(tmp_path, "m", faithful(vendor="metax")))  # METAX_USE_TF32=1, no cuDNN flags
    assert other_changes(metax, Lang.ZH) == []
    base = faithful(layout="1x1")  # no case named: the base config with NVIDIA's harness settings
    base["resolved_config"]["flagperf_case"] = None
    assert run_changes(load_run(write(tmp_path, "b", base)), Lang.ZH) == []
    # on several ranks one difference stays: BN statistics averaged over ranks (FlagPerf: DDP's broadcast)
    multi = load_run(write(tmp_path, "x8", faithful()))
    assert [key for key, _ in run_changes(multi, Lang.ZH)] == ["bn_sync"]


def test_the_shard_pipeline_is_always_listed(tmp_path):
    shards = faithful(layout="1x1")
    shards["resolved_config"]["loader"] = "cpu"
    assert general(page_of(tmp_path, shards))["额外修改项"] == (
        "1. 数据管线：webdataset tar 分片（shard-imagenet 离线写成），DataLoader 工作进程中以 libjpeg-turbo 解码和增强"
        "（--loader cpu）；FlagPerf：torchvision ImageFolder + DataLoader，PIL 解码，worker 中做 torchvision 变换")


@pytest.mark.parametrize("key,change,words", DIFFERENCES, ids=[f"{d[0]}-{i}" for i, d in enumerate(DIFFERENCES)])
def test_each_difference_is_listed_exactly_when_present(tmp_path, key, change, words):
    m = faithful(layout="1x1") if key == "bn_sync" else faithful()
    change(m)
    run = load_run(write(tmp_path, "d", m))
    changes = run_changes if key == "bn_sync" else other_changes
    assert [k for k, _ in changes(run, Lang.ZH)] == [key]
    assert [k for k, _ in changes(run, Lang.EN)] == [key]
    cell = general(render([run], Lang.ZH, "A100"))["额外修改项"]
    items = cell.split("<br>")
    assert cell.startswith("1. ") and len(items) == (1 if key == "bn_sync" else 2) and words in cell


def test_every_key_has_a_difference_fixture():
    assert {d[0] for d in DIFFERENCES} == set(CHANGE_KEYS)


def test_words_pick_the_language_and_join_run_names():
    from train.flagperf_page.words import epochs_en, joined, number, on_off, say, tagged

    assert say(("开", "on"), Lang.ZH) == "开" and say(("开", "on"), Lang.EN) == "on" and say("NCHW", Lang.ZH) == "NCHW"
    assert joined(["a", "b"], Lang.ZH) == "a、b" and joined(iter(["a", "b"]), Lang.EN) == "a, b"
    assert tagged("x", ("r1", "r2"), Lang.EN) == "[r1, r2] x" and tagged("x", (), Lang.ZH) == "x"
    assert (on_off(True, Lang.ZH), on_off(False, Lang.EN)) == ("开", "off")
    assert (number(1 / 32768), epochs_en(1), epochs_en(2.5)) == ("3.05176e-05", "1 epoch", "2.5 epochs")


def test_the_pages_tables_are_read_only():
    from train.flagperf_case import CONFIGS
    from train.flagperf_page.words import MODE_RELATION, PAGE_TEXT, TIMING, ZH_NODES
    from train.precision import PAGE_LABEL, Precision

    for table, key in ((PAGE_TEXT, Lang.ZH), (PAGE_TEXT[Lang.EN], "unknown"), (MODE_RELATION[Lang.ZH], "amp"),
                       (TIMING[Lang.EN], "sync"), (ZH_NODES, 1), (CONFIGS, "A100x1x8"), (PAGE_LABEL, Precision.FP16)):
        with pytest.raises(TypeError):
            table[key] = "changed"
    assert PAGE_TEXT[Lang.EN]["unknown"] == "unknown" and CONFIGS["A100x1x8"].batch == 32


def test_metax_tf32_and_cudnn_against_metaxs_harness(tmp_path):
    off = faithful(vendor="metax")
    off["numerics"]["metax_use_tf32"] = "0"
    changes = other_changes(load_run(write(tmp_path, "off", off)), Lang.ZH)
    assert changes == [("tf32", "TF32：METAX_USE_TF32=0（--tf32 default）（FlagPerf：PyTorch 默认：矩阵乘关、cuDNN 卷积开，"
                                "METAX_USE_TF32=1）")]
    det = faithful(vendor="metax")
    det["numerics"]["cudnn_deterministic"] = True  # FlagPerf's harness sets no cuDNN flag on MetaX
    assert [k for k, _ in other_changes(load_run(write(tmp_path, "det", det)), Lang.ZH)] == ["cudnn"]


def test_no_tf32_or_cudnn_items_on_a_cpu_run(tmp_path):
    cpu = faithful()
    cpu["environment"] = {**NVIDIA_ENV, "accelerator": None, "accelerator_vendor": "none", "accelerator_count": 0}
    cpu["numerics"].update(tf32="off", tf32_matmul=None, tf32_cudnn=None, tf32_mechanism=None, cudnn_benchmark=True,
                           cudnn_deterministic=False)
    cpu["resolved_config"]["flagperf_case"] = None
    assert other_changes(load_run(write(tmp_path, "cpu", cpu)), Lang.ZH) == []


def test_a_target_reached_run_is_not_cut_short(tmp_path):
    m = faithful()
    m["resolved_config"]["max_steps"], m["steps"] = 1000, 1000  # ...but the target came first
    assert other_changes(load_run(write(tmp_path, "t", m)), Lang.ZH) == []


def test_a_difference_of_some_runs_names_them(tmp_path):
    cl = faithful("amp")
    cl["numerics"]["channels_last"] = True
    twin = faithful()  # a second 1x8 fp32 row (as FlagPerf's nvidia page has), told apart by its fix_hp
    twin["resolved_config"]["loader_cfg"]["batch_size"] = 256
    twin["resolved_config"]["optim"]["lr"] = 0.8
    twin["resolved_config"]["compile"] = True
    runs = [load_run(write(tmp_path, n, m)) for n, m in (("a", faithful()), ("b", cl), ("c", twin))]
    changes = extra_changes(runs, Lang.ZH, "A100")
    assert [(c.key, c.runs) for c in changes] == [
        ("bn_sync", ()),
        ("channels_last", ("A100单机8卡（1x8）/amp",)), ("compile", ("A100单机8卡（1x8）/fp32/bs=256,lr=0.8",))]
    cell = general(render(runs, Lang.ZH, "A100"))["额外修改项"]
    assert cell.split("<br>")[1:] == [
        "2. [A100单机8卡（1x8）/amp] 内存布局：模型与输入为 channels-last（FlagPerf：NCHW）",
        "3. [A100单机8卡（1x8）/fp32/bs=256,lr=0.8] torch.compile：开（FlagPerf：eager）"]


# --- environment and notes -----------------------------------------------------------------------------------------

def test_environment_known_unknown_and_disagreeing(tmp_path):
    two = faithful(layout="2x8")
    two["environment"] = {**NVIDIA_ENV, "driver": "535.1", "interconnect": "InfiniBand, 200 Gb/sec (4X HDR) (mlx5_0)"}
    old_env = faithful(layout="1x1")
    del old_env["environment"]
    lines = render([load_run(write(tmp_path, n, m)) for n, m in (("a", faithful()), ("b", two), ("c", old_env))],
                   Lang.ZH).splitlines()
    assert "    - 机器型号：NVIDIA DGX A100" in lines and "    - 加速卡型号：NVIDIA A100-SXM4-40GB x 8" in lines
    assert "    - 多机网络类型、带宽：InfiniBand, 200 Gb/sec (4X HDR) (mlx5_0)" in lines  # from the 2-node run
    assert "   - 加速卡驱动版本：470.129.06 / 535.1" in lines
    assert "   - Docker 版本：未知" in lines and "     - dali: 未知" in lines
    assert "| 硬件设备简称 | NVIDIA A100-SXM4-40GB |  |" in lines  # default: the recorded accelerator


def test_notes_under_the_perf_table(tmp_path):
    events = faithful("amp", p_core_timing="events")
    page = page_of(tmp_path, faithful(), events)
    notes = page.split("* 性能指标")[1].split("注：")[1]
    assert "`flagperf`" in notes and "`steady`" in notes and "kernel 发射" in notes
    assert "[A100单机8卡（1x8）/fp32] 每步都同步设备（torch.cuda.synchronize）后计时" in notes
    assert "[A100单机8卡（1x8）/amp] 以每步前后记录的 CUDA event 量设备上的执行时间" in notes
    assert "FlagPerf 配置：config_A100x1x8.py" in notes


# --- errors --------------------------------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.flagperf_report", *args], cwd=REPO, capture_output=True,
                          text=True)


def test_an_old_json_without_flagperf_is_one_error_line(tmp_path):
    old = faithful()
    for key in ("flagperf", "numerics", "dataset", "resolved_config"):
        del old[key]
    path = write(tmp_path, "old", old)
    proc = _cli(str(path))
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"flagperf-report: error: {path}: no flagperf: written by an older "
                                                f"train without FlagPerf's figures: rerun train to get FlagPerf's "
                                                f"figures"]


def _drop(path: str):
    def change(m: dict) -> None:
        *parents, last = path.split(".")
        obj = m
        for p in parents:
            obj = obj[p]
        del obj[last]
    return change


@pytest.mark.parametrize("change,expected", [
    (_set("flagperf.p_core", "fast"), "flagperf.p_core: expected a number or null, got 'fast'"),
    (_drop("resolved_config.optim.momentum"), "resolved_config.optim.momentum: missing"),
    (_set("resolved_config.flagperf_case", "H100x1x8"), "resolved_config.flagperf_case: no FlagPerf ResNet50 config"),
    (_set("numerics.precision", "fp8"), "numerics.precision: 'fp8' is not a precision mode"),
    (_set("config", "CUDA"), "config: 'CUDA' is not <device>x<nodes>x<per node>"),
    (_set("test_only", True), "a --test-only run"),
    # values of the right kind that no run writes (a hand-edited or damaged JSON): found by a tester as tracebacks
    (_set("environment.dependencies", "x"), "environment.dependencies: expected an object, got 'x'"),
    (_set("resolved_config.loader_cfg.crop_pct", 0), "crop_pct: 0 is out of range (must be in [1e-06, 1])"),
    (_set("flagperf.acc1", 1e300), "flagperf.acc1: 1e+300 is out of range (must be in [0, 100])"),
    (_set("resolved_config.loader_cfg.image_size", 10 ** 400), "image_size: 1000000000"),
    (_set("config", "CPUx0x1"), "nodes and processes per node must be >= 1"),
    (_set("world_size", 0), "world_size: 0 is out of range (must be >= 1)"),
    (_set("flagperf.p_core", -5), "flagperf.p_core: -5 is out of range"),
    (_set("flagperf.p_core_timing", "banana"), "'banana' is not one of events, sync, none"),
])
def test_bad_keys_are_one_line_errors(tmp_path, change, expected):
    import copy

    m = copy.deepcopy(faithful())  # its environment is a shared constant
    change(m)
    path = write(tmp_path, "bad", m)
    with pytest.raises(RunFileError) as err:
        load_run(path)
    assert str(err.value).startswith(f"{path}: ") and expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("content,expected", [
    ("not json", "not a readable metrics JSON"), ('{"config": "CPUx1x1"}', "no flagperf"),
    ("[1]", "a JSON object expected")])
def test_bad_run_files_exit_2_without_traceback(tmp_path, capsys, content, expected):
    """In-process (the console script's main; any exception other than its SystemExit(2) fails the test, so no
    traceback can pass): the subprocess run of flagperf-report is test_an_old_json_without_flagperf_is_one_error_line."""
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(SystemExit) as exc:
        flagperf_report.main([str(bad)])
    out = capsys.readouterr()
    assert exc.value.code == 2 and "Traceback" not in out.err and out.out == ""
    assert out.err.strip().splitlines() == [out.err.strip()]
    assert out.err.startswith(f"flagperf-report: error: {bad}") and expected in out.err
    with pytest.raises(SystemExit) as exc:
        flagperf_report.main([str(tmp_path / "none.json")])
    assert exc.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_cli_writes_the_page(tmp_path, capsys):
    run = write(tmp_path, "a", faithful())
    assert flagperf_report.main([str(run), "--out", str(tmp_path / "page" / "README.md"), "--device-name", "A100"]) == 0
    page = (tmp_path / "page" / "README.md").read_text(encoding="utf-8")
    assert parse_tables(page).perf[1][0] == "A100单机8卡（1x8）" and "wrote" in capsys.readouterr().out
    assert flagperf_report.main([str(run), "--lang", "en"]) == 0
    assert "* Performance" in capsys.readouterr().out


# --- a real run's JSON ---------------------------------------------------------------------------------------------

def test_the_json_of_a_real_train_run_renders(tmp_path):
    from tools import train as train_cli

    out = tmp_path / "m.json"
    assert train_cli.main(["--loader", "synthetic", "--synthetic-train-samples", "8", "--synthetic-val-samples", "4",
                           "--batch-size", "4", "--image-size", "32", "--workers", "0", "--epochs", "1",
                           "--no-progress", "--metrics-json", str(out)]) == 0
    m = json.loads(out.read_text())
    page = render([load_run(out)], Lang.ZH, "CPU")
    row = parse_tables(page).perf[1]
    f = m["flagperf"]
    assert row == ["CPU单机单卡（1x1）", "fp32", m["fix_hp"], rounded(f["e2e_time"]), rounded(f["p_whole"]),
                   rounded(f["p_train"]), rounded(f["p_core"]), f"{rounded(f['acc1'], 1)}%",
                   f"{rounded(m['mem_used_gib'], 1)}/{rounded(m['mem_total_gib'], 1)}"]
    keys = [c.key for c in extra_changes([load_run(out)], Lang.ZH, "CPU")]
    assert keys[0] == "pipeline" and "tf32" not in keys and "cudnn" not in keys
    assert general(page)["数据集"] == "合成数据（随机张量，训练 8 / 验证 4 个样本，1000 类）"
