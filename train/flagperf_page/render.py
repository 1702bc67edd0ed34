"""The FlagPerf page put together: the 数据集准备 lines (:func:`dataset_lines`), the vendor section's heading
(:func:`section_heading`, :func:`vendor_words`), 环境配置 (:func:`environment_lines`), the 数据格式 note
(:func:`data_format_lines`, :func:`numerics_text`), the notes under the 性能指标 table (:func:`perf_notes`), the
whole page (:func:`render`, its device name by default :func:`default_device`), and its two tables read back
(:func:`parse_tables` into :class:`PageTables`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from train.flagperf_case import Vendor
from train.flagperf_page.cells import dataset_cell, dataset_text, grouped, performance_row, run_labels
from train.flagperf_page.changes import changes_cell, extra_changes
from train.flagperf_page.runs import RunRecord, sort_runs
from train.flagperf_page.words import (MODE_RELATION, PAGE_TEXT, PERF_HEADER, PERF_HEADER_EN, TIMING, Lang, say,
                                       tagged)

SIXTEEN_BIT = ("amp", "fp16", "bf16", "half")
"""Modes that get a line in the 数据格式 note."""


def _table(header, rows) -> list[str]:
    return [f"| {' | '.join(header)} |", f"| {' | '.join('-' * max(3, len(h)) for h in header)} |",
            *(f"| {' | '.join(row)} |" for row in rows)]


def _field(runs: list[RunRecord], name: str, unknown: str) -> str:
    """One environment field over all runs: distinct known values in run order, joined by " / "."""
    values = []
    for run in runs:
        value = run.environment.get(name)
        if value not in (None, "") and str(value) not in values:
            values.append(str(value))
    return " / ".join(values) if values else unknown


def _network(runs: list[RunRecord], text: Mapping) -> str:
    multi = [run for run in runs if run.nodes > 1]
    if not multi:
        return text["single_node"]
    return _field(multi, "interconnect", text["unknown"])


def _dependencies(runs: list[RunRecord], text: Mapping) -> list[str]:
    lines = [f"     - cuda: {_field(runs, 'cuda', text['unknown'])}"]
    if any(run.environment.get("maca") for run in runs):  # MetaX's software stack (runs on other vendors: none)
        lines.append(f"     - maca: {_field(runs, 'maca', text['unknown'])}")
    for dep in ("torchvision", "cudnn", "dali", "python"):
        values = {str((run.environment.get("dependencies") or {}).get(dep)) for run in runs
                  if (run.environment.get("dependencies") or {}).get(dep)}
        lines.append(f"     - {dep}: {' / '.join(sorted(values)) if values else text['unknown']}")
    return lines


def environment_lines(runs: list[RunRecord], lang: Lang) -> list[str]:
    """The 环境配置 section: hardware and software as the runs recorded them."""
    text, unknown = PAGE_TEXT[lang], PAGE_TEXT[lang]["unknown"]
    sep = say(("：", ": "), lang)
    accel = _field(runs, "accelerator", "") or f"{_field(runs, 'cpu', unknown)} (CPU)"
    count = " / ".join(sorted({str(run.environment.get("accelerator_count")) for run in runs
                               if run.environment.get("accelerator_count")}))
    return [text["env"], text["hw"],
            f"    - {text['machine']}{sep}{_field(runs, 'machine', unknown)}",
            f"    - {text['accelerator']}{sep}{accel}" + (f" x {count}" if count else ""),
            f"    - {text['cpu']}{sep}{_field(runs, 'cpu', unknown)}",
            f"    - {text['net']}{sep}{_network(runs, text)}",
            "", text["sw"],
            f"   - {text['os']}{sep}{_field(runs, 'os', unknown)}",
            f"   - {text['kernel']}{sep}{_field(runs, 'kernel', unknown)}",
            f"   - {text['driver']}{sep}{_field(runs, 'driver', unknown)}",
            f"   - {text['docker']}{sep}{_field(runs, 'docker', unknown)}",
            f"   - {text['framework']}{sep}{_field(runs, 'framework', unknown)}",
            f"   - {text['deps']}{sep}", *_dependencies(runs, text)]


def numerics_text(run: RunRecord, lang: Lang) -> str:
    """What a run's precision mode ran, from its ``numerics``: ``bf16：参数 bfloat16、输入 bfloat16，无 autocast，
    无损失缩放（GradScaler）——即 FlagPerf 的 fp16（...）``."""
    numerics = run.numerics
    relation = MODE_RELATION[lang].get(run.precision, run.precision)
    if lang is Lang.ZH:
        auto = f"{numerics.autocast_dtype} autocast" if numerics.autocast_dtype else "无 autocast"
        scale = "GradScaler 损失缩放" if numerics.grad_scaler else "无损失缩放（GradScaler）"
        return (f"{run.page_label}：参数 {numerics.param_dtype}、输入 {numerics.input_dtype}，{auto}，{scale}——"
                f"{relation}")
    auto = f"{numerics.autocast_dtype} autocast" if numerics.autocast_dtype else "no autocast"
    scale = "GradScaler loss scaling" if numerics.grad_scaler else "no loss scaling (GradScaler)"
    return (f"{run.page_label}: parameters {numerics.param_dtype}, inputs {numerics.input_dtype}, {auto}, {scale}: "
            f"{relation}")


def data_format_lines(runs: list[RunRecord], lang: Lang, device: str) -> list[str]:
    """The ``- 数据格式`` note (FlagPerf's NVIDIA page has it for its bf16 row): one line per distinct 16-bit
    numerics on the page, naming its runs where not all share it; empty when every run is fp32."""
    sixteen = [run for run in sort_runs(runs) if run.precision in SIXTEEN_BIT]
    if not sixteen:
        return []
    labels = run_labels(sixteen, device, lang)
    groups = grouped([(run.path, numerics_text(run, lang)) for run in sixteen], labels, len(sixteen))
    return ["", PAGE_TEXT[lang]["format"], "", *(f"   - {tagged(text, names, lang)}" for text, names in groups)]


def vendor_words(vendor: str, device: str, lang: Lang) -> str:
    """The vendor / device words of the section heading: ``Nvidia GPU``; ``沐曦集成电路 C500 GPU`` (English
    ``MetaX C500 GPU``); else the device name."""
    if vendor == Vendor.NVIDIA.value:
        return "Nvidia GPU"
    if vendor == Vendor.METAX.value:
        short = device[len("metax"):].strip() if device.lower().startswith("metax") else device
        return say((f"沐曦集成电路 {short} GPU", f"MetaX {short} GPU"), lang)
    return device


def section_heading(runs: list[RunRecord], device: str, lang: Lang) -> str:
    """``### 2. Nvidia GPU配置与运行信息参考`` (the words of every vendor on the page, joined by " / ")."""
    words: list[str] = []
    for run in sort_runs(runs):
        vendor = vendor_words(run.vendor, device, lang)
        if vendor not in words:
            words.append(vendor)
    return PAGE_TEXT[lang]["section"].format(words=" / ".join(words))


def dataset_lines(runs: list[RunRecord], device: str, lang: Lang) -> list[str]:
    """``### 1. 数据集准备``, FlagPerf's link, and what the runs read where that is not ImageNet2012 as FlagPerf
    reads it (shards: how they were made; other data: its name and counts)."""
    lines = [PAGE_TEXT[lang]["dataset_heading"], PAGE_TEXT[lang]["dataset_link"]]
    if any(run.loader in ("cpu", "dali", "nvjpeg") for run in runs):
        lines += ["", say(("本页的运行先以本项目的 `shard-imagenet` 把类目录树写成 webdataset tar 分片，再从分片训练"
                           "（见“额外修改项”）。",
                           "The runs on this page read the class-folder tree after this project's `shard-imagenet` "
                           "wrote it as webdataset tar shards (see Other changes)."), lang)]
    if any(dataset_text(run.dataset, run.loader, lang) != "ImageNet2012" for run in runs):
        cell = dataset_cell(runs, device, lang)
        lines += ["", say((f"本页的运行所用数据：{cell}。", f"Data of the runs on this page: {cell}."), lang)]
    return lines


_NOTES_ZH = (
    "注：", "",
    "- 性能指标为 metrics JSON 中 `flagperf` 一组（FlagPerf 的定义）：e2e_time 自导入之后的运行开始计，含训练前的"
    "评估（--initial-eval）；每轮训练图像数记为 len(dataset)；预热步计入 p_*；acc 为最后一次评估各批 top-1 的平均。去掉预热步、"
    "按实际训练图像数计的稳态一组（`figure_set` 为 `steady`）在同一 JSON 的顶层。",
    "- p_core：{timed}；FlagPerf 自身的计时在单卡（1x1）运行中不同步设备，只计到 kernel 发射为止。",
    "- fix_hp 与额外修改项对照的 FlagPerf 配置：{against}；fix_hp 为 `/` 表示该行每卡 batch 与学习率与此配置相同，否则写出该行所用的值。")
_NOTES_EN = (
    "Notes:", "",
    "- The performance rows are the metrics JSON's `flagperf` set (FlagPerf's definitions): e2e_time from "
    "the run's start after the imports, the evaluation before training (--initial-eval) included; "
    "len(dataset) images per epoch; warm-up steps counted in p_*; acc the mean of the per-batch top-1 of "
    "the last evaluation. The steady set (warm-up left out, images actually trained; `figure_set` "
    "`steady`) is at the same JSON's top level.",
    "- p_core: {timed}; FlagPerf's own timer does not synchronise the device in a one-card (1x1) run, so "
    "it measures kernel launches only.",
    "- FlagPerf config that fix_hp and Other changes compare with: {against} ; a fix_hp of `/` "
    "means that row ran the config's per-card batch and learning rate, else the row's own values are shown.")


def perf_notes(runs: list[RunRecord], device: str, lang: Lang) -> list[str]:
    """The notes under the 性能指标 table: which figures the rows are (the JSON's ``flagperf`` set; the steady set
    is at the JSON's top level), how p_core was timed (FlagPerf's own timer on one card measures kernel
    launches only), and the FlagPerf config each run's fix_hp and 额外修改项 compare with."""
    labels = run_labels(runs, device, lang)
    ordered = sort_runs(runs)
    sep = say(("；", "; "), lang)

    def how(run: RunRecord) -> str:
        kind = "cpu" if run.vendor == "none" else run.figures.p_core_timing
        return TIMING[lang].get(kind, kind)
    timing = grouped([(run.path, how(run)) for run in ordered], labels, len(runs))
    cases = grouped([(run.path, "_base.py" if run.case.name == "base" else f"config_{run.case.name}.py")
                     for run in ordered], labels, len(runs))
    timed = sep.join(tagged(text, names, lang) for text, names in timing)
    against = sep.join(tagged(text, names, lang) for text, names in cases)
    notes = _NOTES_ZH if lang is Lang.ZH else _NOTES_EN
    return [*notes[:3], notes[3].format(timed=timed), notes[4].format(against=against)]


def default_device(run: RunRecord) -> str:
    """The accelerator model the run recorded, else its CPU model (a CPU run), else its ``device_name``."""
    env = run.environment
    return str(env.get("accelerator") or env.get("cpu") or run.device_name)


def render(runs: list[RunRecord], lang: Lang = Lang.ZH, device: str | None = None) -> str:
    """The whole page (markdown). ``device``: the short device name of the 配置 cells, the 硬件设备简称 and the
    MetaX heading (default: :func:`default_device` of the first run in row order).

    Raises:
        ValueError: no runs.
    """
    if not runs:
        raise ValueError("no runs to report")
    runs = sort_runs(runs)
    device = device or default_device(runs[0])
    text = PAGE_TEXT[lang]
    fill = {"device": device, "dataset": dataset_cell(runs, device, lang),
            "changes": changes_cell(extra_changes(runs, lang, device), lang)}
    general = [(name, value.format(**fill), note) for name, value, note in text["rows"]]
    perf = [performance_row(run, device, lang) for run in runs]
    lines = [*dataset_lines(runs, device, lang), "", section_heading(runs, device, lang),
             *environment_lines(runs, lang), *data_format_lines(runs, lang, device), "", text["run"], "",
             text["general"], "", *_table(text["general_header"], general), "", text["perf"], "",
             *_table(PERF_HEADER if lang is Lang.ZH else PERF_HEADER_EN, perf), "",
             *perf_notes(runs, device, lang)]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PageTables:
    """The two tables of a rendered page, cells stripped: ``general`` (通用指标, header row first) and ``perf``
    (性能指标, header row first); the separator rows left out."""

    general: list[list[str]]
    perf: list[list[str]]


def parse_tables(page: str) -> PageTables:
    """Read the 通用指标 and 性能指标 tables back out of a page :func:`render` wrote (either language).

    Raises:
        ValueError: a table is missing.
    """
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in page.splitlines() + [""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= {"-"} and cell for cell in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    if len(tables) < 2:
        raise ValueError(f"a FlagPerf page has two tables, found {len(tables)}")
    return PageTables(tables[0], tables[1])
