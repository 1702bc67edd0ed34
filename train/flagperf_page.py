"""The FlagPerf vendor README section of the ResNet50 case, filled from the metrics JSONs of real runs.

Layout and wording follow FlagPerf's vendor pages (github.com/FlagOpen/FlagPerf,
``training/<vendor>/resnet50-pytorch/README.md``): 环境配置 (硬件环境, 软件环境), then 运行情况 with the
通用指标 table (指标名称 | 指标值 | 特殊说明) and the 性能指标 table (配置 | precision | fix_hp | e2e_time |
p_whole | p_train | p_core | acc | mem), one row per run. Rows are ordered by layout (nodes, then processes per
node: 1x1, 1x8, 2x8) and precision (fp32, amp, bf16, fp16); the 配置 cell is the device name and the run's nodes x
processes per node ("A100单机8卡（1x8）", "A100单机单卡（1x1）", "A100两机8卡（2x8）"). Rounding as FlagPerf's pages:
e2e_time and p_* whole numbers (s, img/s), acc one decimal with %, mem used/total GiB one decimal each; ``/``
where a figure does not exist (no evaluation: acc; ``--test-only``: p_*). A field of the environment that no run
could read says "未知" (English: "unknown"); where runs disagree, their values are joined by " / ". 加速卡驱动版本 is
the environment's ``driver``: NVIDIA's driver (NVML / ``nvidia-smi``), on MetaX the "Kernel Mode Driver Version" of
``mx-smi``; MetaX runs add their MACA version to 依赖软件版本.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import Enum
from pathlib import Path


class Lang(str, Enum):
    ZH = "zh"
    EN = "en"


PRECISION_ORDER = ("fp32", "amp", "bf16", "fp16")


@dataclass(frozen=True)
class RunRecord:
    """What the page needs of one run's metrics JSON (``train --metrics-json``). Units: s, img/s, %, GiB."""

    path: str
    nodes: int
    per_node: int
    precision: str
    fix_hp: str
    e2e_time: float
    p_whole: float | None
    p_train: float | None
    p_core: float | None
    acc1: float | None
    mem_used_gib: float
    mem_total_gib: float
    device_name: str
    environment: dict

    @property
    def layout(self) -> str:
        return f"{self.nodes}x{self.per_node}"


class RunFileError(ValueError):
    """A metrics JSON that cannot be read or lacks a key the page needs (the message names file and key)."""


_NEEDED = ("config", "precision", "fix_hp", "e2e_time", "p_whole", "p_train", "p_core", "acc1", "mem_used_gib",
           "mem_total_gib", "device_name")


def load_run(path: Path) -> RunRecord:
    """Read one ``train --metrics-json`` file.

    Raises:
        RunFileError: unreadable, not JSON, or without one of the keys the page needs (e.g. written before the
            ``environment`` block existed: then only the environment says unknown, not an error).
    """
    try:
        m = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFileError(f"{path}: not a readable metrics JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(m, dict):
        raise RunFileError(f"{path}: not a metrics JSON of train (a JSON object expected)")
    missing = [k for k in _NEEDED if k not in m]
    if missing:
        raise RunFileError(f"{path}: no {', '.join(missing)}: not a metrics JSON of train --metrics-json")
    try:
        _, nodes, per_node = str(m["config"]).split("x")
        nodes_i, per_node_i = int(nodes), int(per_node)
    except ValueError:
        raise RunFileError(f"{path}: config {m['config']!r} is not <device>x<nodes>x<per node>") from None
    return RunRecord(str(path), nodes_i, per_node_i, str(m["precision"]), str(m["fix_hp"]), float(m["e2e_time"]),
                     m["p_whole"], m["p_train"], m["p_core"], m["acc1"], float(m["mem_used_gib"]),
                     float(m["mem_total_gib"]), str(m["device_name"]), m.get("environment") or {})


def sort_runs(runs: list[RunRecord]) -> list[RunRecord]:
    """Layout order (nodes, processes per node), then precision (fp32, amp, bf16, fp16, others), then file."""
    def key(r: RunRecord):
        p = PRECISION_ORDER.index(r.precision) if r.precision in PRECISION_ORDER else len(PRECISION_ORDER)
        return r.nodes, r.per_node, p, r.precision, r.path
    return sorted(runs, key=key)


_ZH_NODES = {1: "单机", 2: "两机", 3: "三机", 4: "四机"}


def config_cell(device: str, nodes: int, per_node: int, lang: Lang) -> str:
    """The 配置 cell: ``A100单机单卡（1x1）``, ``A100单机8卡（1x8）``, ``A100两机8卡（2x8）``; English
    ``A100 1 node x 8 cards (1x8)``."""
    if lang is Lang.EN:
        return (f"{device} {nodes} node{'s' if nodes > 1 else ''} x {per_node} card{'s' if per_node > 1 else ''} "
                f"({nodes}x{per_node})")
    machines = _ZH_NODES.get(nodes, f"{nodes}机")
    cards = "单卡" if per_node == 1 and nodes == 1 else f"{per_node}卡"
    return f"{device}{machines}{cards}（{nodes}x{per_node}）"


def rounded(value: float, digits: int = 0) -> str:
    """``value`` rounded half away from zero to ``digits`` decimals, as a person rounds a table (Python's own
    rounding is half to even: 4586.5 would read 4586)."""
    return str(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def _num(value: float | None) -> str:
    return "/" if value is None else rounded(value)


def performance_row(r: RunRecord, device: str, lang: Lang) -> list[str]:
    """One 性能指标 row's cells, rounded as FlagPerf's pages."""
    acc = "/" if r.acc1 is None else f"{rounded(r.acc1, 1)}%"
    return [config_cell(device, r.nodes, r.per_node, lang), r.precision, r.fix_hp, _num(r.e2e_time),
            _num(r.p_whole), _num(r.p_train), _num(r.p_core), acc,
            f"{rounded(r.mem_used_gib, 1)}/{rounded(r.mem_total_gib, 1)}"]


PERF_HEADER = ("配置", "precision", "fix_hp", "e2e_time", "p_whole", "p_train", "p_core", "acc", "mem")
PERF_HEADER_EN = ("config", *PERF_HEADER[1:])

_TEXT = {
    Lang.ZH: {
        "env": "#### 环境配置", "hw": "- ##### 硬件环境", "sw": "- ##### 软件环境", "run": "### 运行情况",
        "general": "* 通用指标", "perf": "* 性能指标", "unknown": "未知",
        "machine": "机器型号", "accelerator": "加速卡型号", "cpu": "CPU型号", "net": "多机网络类型、带宽",
        "os": "OS版本", "kernel": "OS kernel版本", "driver": "加速卡驱动版本", "docker": "Docker 版本",
        "framework": "训练框架版本", "deps": "依赖软件版本", "single_node": "单机运行，无多机网络",
        "general_header": ("指标名称", "指标值", "特殊说明"),
        "rows": (("任务类别", "图像分类", ""), ("模型", "resnet50", ""), ("数据集", "ImageNet2012", ""),
                 ("数据精度", "precision,见“性能指标”", "可选fp32/amp/fp16"),
                 ("超参修改", "fix_hp,见“性能指标”", "跑满硬件设备评测吞吐量所需特殊超参"),
                 ("硬件设备简称", "{device}", ""),
                 ("硬件存储使用", "mem,见“性能指标”", "通常称为“显存”,单位为GiB"),
                 ("端到端时间", "e2e_time,见“性能指标”", "总时间+Perf初始化等时间"),
                 ("总吞吐量", "p_whole,见“性能指标”", "实际训练图片数除以总时间(performance_whole)"),
                 ("训练吞吐量", "p_train,见“性能指标”", "不包含每个epoch末尾的评估部分耗时"),
                 ("**计算吞吐量**", "**p_core,见“性能指标”**", "不包含数据IO部分的耗时(p3>p2>p1)"),
                 ("训练结果", "acc,见“性能指标”", "单位为top1分类准确率(acc1)"),
                 ("额外修改项", "无", "")),
    },
    Lang.EN: {
        "env": "#### Environment", "hw": "- ##### Hardware", "sw": "- ##### Software", "run": "### Results",
        "general": "* General metrics", "perf": "* Performance", "unknown": "unknown",
        "machine": "Machine model", "accelerator": "Accelerator model", "cpu": "CPU model",
        "net": "Multi-node network type, bandwidth", "os": "OS version", "kernel": "OS kernel version",
        "driver": "Accelerator driver version", "docker": "Docker version", "framework": "Training framework",
        "deps": "Other dependencies", "single_node": "single node, no multi-node network",
        "general_header": ("Metric", "Value", "Note"),
        "rows": (("Task", "image classification", ""), ("Model", "resnet50", ""), ("Dataset", "ImageNet2012", ""),
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
                 ("Other changes", "none", "")),
    },
}


def _table(header, rows) -> list[str]:
    return [f"| {' | '.join(header)} |", f"| {' | '.join('-' * max(3, len(h)) for h in header)} |",
            *(f"| {' | '.join(row)} |" for row in rows)]


def _field(runs: list[RunRecord], name: str, unknown: str) -> str:
    """One environment field over all runs: distinct known values in run order, joined by " / "."""
    values = []
    for r in runs:
        v = r.environment.get(name)
        if v not in (None, "") and str(v) not in values:
            values.append(str(v))
    return " / ".join(values) if values else unknown


def _network(runs: list[RunRecord], t: dict) -> str:
    multi = [r for r in runs if r.nodes > 1]
    if not multi:
        return t["single_node"]
    return _field(multi, "interconnect", t["unknown"])


def _dependencies(runs: list[RunRecord], t: dict) -> list[str]:
    lines = [f"     - cuda: {_field(runs, 'cuda', t['unknown'])}"]
    if any(r.environment.get("maca") for r in runs):  # MetaX's software stack (runs on other vendors: none)
        lines.append(f"     - maca: {_field(runs, 'maca', t['unknown'])}")
    for dep in ("torchvision", "cudnn", "dali", "python"):
        values = {str(r.environment.get('dependencies', {}).get(dep)) for r in runs
                  if r.environment.get("dependencies", {}).get(dep)}
        lines.append(f"     - {dep}: {' / '.join(sorted(values)) if values else t['unknown']}")
    return lines


def environment_lines(runs: list[RunRecord], lang: Lang) -> list[str]:
    """The 环境配置 section: hardware and software as the runs recorded them."""
    t, u = _TEXT[lang], _TEXT[lang]["unknown"]
    sep = "：" if lang is Lang.ZH else ": "
    accel = _field(runs, "accelerator", "") or f"{_field(runs, 'cpu', u)} (CPU)"
    count = " / ".join(sorted({str(r.environment.get("accelerator_count")) for r in runs
                               if r.environment.get("accelerator_count")}))
    return [t["env"], t["hw"],
            f"    - {t['machine']}{sep}{_field(runs, 'machine', u)}",
            f"    - {t['accelerator']}{sep}{accel}" + (f" x {count}" if count else ""),
            f"    - {t['cpu']}{sep}{_field(runs, 'cpu', u)}",
            f"    - {t['net']}{sep}{_network(runs, t)}",
            "", t["sw"],
            f"   - {t['os']}{sep}{_field(runs, 'os', u)}",
            f"   - {t['kernel']}{sep}{_field(runs, 'kernel', u)}",
            f"   - {t['driver']}{sep}{_field(runs, 'driver', u)}",
            f"   - {t['docker']}{sep}{_field(runs, 'docker', u)}",
            f"   - {t['framework']}{sep}{_field(runs, 'framework', u)}",
            f"   - {t['deps']}{sep}", *_dependencies(runs, t)]


def default_device(r: RunRecord) -> str:
    """The accelerator model the run recorded, else its CPU model (a CPU run), else its ``device_name``."""
    env = r.environment
    return str(env.get("accelerator") or env.get("cpu") or r.device_name)


def render(runs: list[RunRecord], lang: Lang = Lang.ZH, device: str | None = None) -> str:
    """The whole section (markdown). ``device``: the short device name of the 配置 cells and 硬件设备简称
    (default: :func:`default_device` of the first run in row order).

    Raises:
        ValueError: no runs.
    """
    if not runs:
        raise ValueError("no runs to report")
    runs = sort_runs(runs)
    device = device or default_device(runs[0])
    t = _TEXT[lang]
    general = [(name, value.format(device=device), note) for name, value, note in t["rows"]]
    perf = [performance_row(r, device, lang) for r in runs]
    lines = [*environment_lines(runs, lang), "", t["run"], "", t["general"], "",
             *_table(t["general_header"], general), "", t["perf"], "",
             *_table(PERF_HEADER if lang is Lang.ZH else PERF_HEADER_EN, perf)]
    return "\n".join(lines) + "\n"
