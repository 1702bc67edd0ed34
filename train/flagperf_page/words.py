"""The FlagPerf page's fixed words in its two languages (:class:`Lang`): headings, labels and the 通用指标 rows
(:data:`PAGE_TEXT`), the 性能指标 headers (:data:`PERF_HEADER`, :data:`PERF_HEADER_EN`), the Chinese words for
machine counts (:data:`ZH_NODES`), what each precision mode is in FlagPerf's terms (:data:`MODE_RELATION`), how
p_core was timed (:data:`TIMING`), and the small helpers that put words together: :func:`say` (one of a
(Chinese, English) pair), :func:`joined`, :func:`tagged`, :func:`on_off`, :func:`number`, :func:`epochs_en`.

Every table here is read-only (``types.MappingProxyType`` of tuples and strings).
"""

from __future__ import annotations

from enum import Enum
from types import MappingProxyType
from typing import Tuple, Union


class Lang(str, Enum):
    ZH = "zh"
    EN = "en"


Words = Union[str, Tuple[str, str]]
"""A text that is the same in both languages (a str), or a (Chinese, English) pair."""


def say(words: Words, lang: Lang) -> str:
    """``words`` in ``lang``: a str as it is, a (Chinese, English) pair's element for ``lang``."""
    if isinstance(words, str):
        return words
    return words[0] if lang is Lang.ZH else words[1]


def joined(items, lang: Lang) -> str:
    """``items`` (strings) joined by ``、`` (Chinese) or ``, ``."""
    return ("、" if lang is Lang.ZH else ", ").join(items)


def tagged(text: str, runs: tuple[str, ...], lang: Lang) -> str:
    """``[<run>、<run>] text`` where only the named runs share ``text``; ``text`` alone for every run (no runs)."""
    return f"[{joined(runs, lang)}] {text}" if runs else text


def on_off(value: bool, lang: Lang) -> str:
    return say(("开", "on") if value else ("关", "off"), lang)


def number(value: float) -> str:
    """``value`` as ``%g`` (0.1, 3.05176e-05, 100)."""
    return f"{value:g}"


def epochs_en(count: float) -> str:
    """``1 epoch``, ``5 epochs``, ``2.5 epochs``."""
    return f"{number(count)} epoch{'' if count == 1 else 's'}"


ZH_NODES = MappingProxyType({1: "单机", 2: "两机", 3: "三机", 4: "四机"})
"""The 配置 cell's word for 1-4 machines (more: ``<n>机``)."""

PERF_HEADER = ("配置", "precision", "fix_hp", "e2e_time", "p_whole", "p_train", "p_core", "acc", "mem")
PERF_HEADER_EN = ("config", *PERF_HEADER[1:])

PAGE_TEXT = MappingProxyType({
    Lang.ZH: MappingProxyType({
        "dataset_heading": "### 1. 数据集准备", "dataset_link": "[下载ImageNet2012](../../benchmarks/resnet50)",
        "section": "### 2. {words}配置与运行信息参考",
        "env": "#### 环境配置", "hw": "- ##### 硬件环境", "sw": "- ##### 软件环境", "format": "- 数据格式",
        "run": "### 运行情况", "general": "* 通用指标", "perf": "* 性能指标", "unknown": "未知",
        "machine": "机器型号", "accelerator": "加速卡型号", "cpu": "CPU型号", "net": "多机网络类型、带宽",
        "os": "OS版本", "kernel": "OS kernel版本", "driver": "加速卡驱动版本", "docker": "Docker 版本",
        "framework": "训练框架版本", "deps": "依赖软件版本", "single_node": "单机运行，无多机网络",
        "general_header": ("指标名称", "指标值", "特殊说明"),
        "rows": (("任务类别", "图像分类", ""), ("模型", "resnet50", ""), ("数据集", "{dataset}", ""),
                 ("数据精度", "precision,见“性能指标”", "可选fp32/amp/fp16"),
                 ("超参修改", "fix_hp,见“性能指标”", "跑满硬件设备评测吞吐量所需特殊超参"),
                 ("硬件设备简称", "{device}", ""),
                 ("硬件存储使用", "mem,见“性能指标”", "通常称为“显存”,单位为GiB"),
                 ("端到端时间", "e2e_time,见“性能指标”", "总时间+Perf初始化等时间"),
                 ("总吞吐量", "p_whole,见“性能指标”", "实际训练图片数除以总时间(performance_whole)"),
                 ("训练吞吐量", "p_train,见“性能指标”", "不包含每个epoch末尾的评估部分耗时"),
                 ("**计算吞吐量**", "**p_core,见“性能指标”**", "不包含数据IO部分的耗时(p3>p2>p1)"),
                 ("训练结果", "acc,见“性能指标”", "单位为top1分类准确率(acc1)"),
                 ("额外修改项", "{changes}", "")),
    }),
    Lang.EN: MappingProxyType({
        "dataset_heading": "### 1. Dataset preparation",
        "dataset_link": "[Download ImageNet2012](../../benchmarks/resnet50)",
        "section": "### 2. {words}: configuration and run information",
        "env": "#### Environment", "hw": "- ##### Hardware", "sw": "- ##### Software", "format": "- Data format",
        "run": "### Results", "general": "* General metrics", "perf": "* Performance", "unknown": "unknown",
        "machine": "Machine model", "accelerator": "Accelerator model", "cpu": "CPU model",
        "net": "Multi-node network type, bandwidth", "os": "OS version", "kernel": "OS kernel version",
        "driver": "Accelerator driver version", "docker": "Docker version", "framework": "Training framework",
        "deps": "Other dependencies", "single_node": "single node, no multi-node network",
        "general_header": ("Metric", "Value", "Note"),
        "rows": (("Task", "image classification", ""), ("Model", "resnet50", ""), ("Dataset", "{dataset}", ""),
                 ("Precision", "precision, see Performance", "fp32/amp/fp16"),
                 ("Hyperparameters changed", "fix_hp, see Performance",
                  "what saturating the device for throughput needs"),
                 ("Device", "{device}", ""),
                 ("Device memory used", "mem, see Performance", "device memory, GiB"),
                 ("End-to-end time", "e2e_time, see Performance", "whole process, start-up included (s)"),
                 ("Total throughput", "p_whole, see Performance", "trained images / whole loop time (img/s)"),
                 ("Training throughput", "p_train, see Performance", "without the per-epoch evaluation"),
                 ("**Compute throughput**", "**p_core, see Performance**", "without data I/O (p3>p2>p1)"),
                 ("Training result", "acc, see Performance", "top-1 accuracy (acc1)"),
                 ("Other changes", "{changes}", "")),
    }),
})
"""Per language: the page's headings (``dataset_heading``, ``section`` with ``{words}``, ``env``, ``hw``, ``sw``,
``format``, ``run``, ``general``, ``perf``), the environment labels, ``unknown``, ``single_node``, the 通用指标
header (``general_header``) and rows (``rows``: name, value with ``{dataset}`` / ``{device}`` / ``{changes}``,
note)."""

GENERAL_ROWS = tuple(name for name, _, _ in PAGE_TEXT[Lang.ZH]["rows"])
"""The 通用指标 row names in order (FlagPerf's)."""

MODE_RELATION = MappingProxyType({
    Lang.ZH: MappingProxyType({
        "amp": "即 FlagPerf 的 amp", "fp16": "即 FlagPerf 的 fp16（其 bfloat16 实现，FlagPerf 的 NVIDIA 页面记作 bf16）",
        "bf16": "非 FlagPerf 的模式", "half": "IEEE 754 float16，FlagPerf 改用 bfloat16 之前的 fp16 实现，非其现行模式"}),
    Lang.EN: MappingProxyType({
        "amp": "FlagPerf's amp", "fp16": "FlagPerf's fp16 (its bfloat16 implementation, written bf16 on "
                                         "FlagPerf's NVIDIA page)",
        "bf16": "not a FlagPerf mode", "half": "IEEE 754 float16, FlagPerf's fp16 before it moved to "
                                                "bfloat16, not its current mode"}),
})
"""Per language and 16-bit precision mode: what the mode is in FlagPerf's terms (the 数据格式 note)."""

TIMING = MappingProxyType({
    Lang.ZH: MappingProxyType({
        "sync": "每步都同步设备（torch.cuda.synchronize）后计时",
        "events": "以每步前后记录的 CUDA event 量设备上的执行时间", "cpu": "在 CPU 上计算同步进行，按主机时间计"}),
    Lang.EN: MappingProxyType({
        "sync": "timed with the device synchronised at every step (torch.cuda.synchronize)",
        "events": "timed by CUDA events recorded around every step (the device's execution time)",
        "cpu": "host time of the step (CPU work is synchronous)"}),
})
"""Per language and ``p_core_timing`` (``cpu``: a run without an accelerator): how p_core was timed."""
