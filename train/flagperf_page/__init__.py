"""The FlagPerf vendor page of the ResNet50 case, filled from the metrics JSONs of real runs.

Layout, headings and wording follow FlagPerf's vendor pages (github.com/FlagOpen/FlagPerf,
``training/nvidia/resnet50-pytorch/README.md``, ``training/metax/resnet50-pytorch/README.md``):

1. ``### 1. 数据集准备`` and FlagPerf's link to its ImageNet2012 instructions; where the runs did not train on
   ImageNet2012 or read it from shards, a line says what they read.
2. ``### 2. <vendor> 配置与运行信息参考`` (``Nvidia GPU``; ``沐曦集成电路 <device> GPU`` on MetaX; else the device
   name), ``#### 环境配置`` (硬件环境, 软件环境 from the runs' ``environment`` blocks) and, where a run used a 16-bit
   mode, the ``- 数据格式`` note saying exactly what ran (dtypes of parameters / inputs / autocast, loss scaling).
3. ``### 运行情况``: the 通用指标 table (指标名称 | 指标值 | 特殊说明; 数据集 and 额外修改项 filled from the runs) and
   the 性能指标 table (配置 | precision | fix_hp | e2e_time | p_whole | p_train | p_core | acc | mem), one row per
   run, then the notes under it (which figures these are, how p_core was timed, which FlagPerf config the runs
   are compared with).

The 性能指标 rows are the JSON's ``flagperf`` figure set (FlagPerf's own definitions), never the steady set of its
top level; ``mem`` is the top level's used/total GiB (the same in both sets). Rows are ordered by layout (nodes,
processes per node) and precision (fp32, amp, fp16, bf16, half); the precision cell is
:data:`train.precision.PAGE_LABEL` (fp16 → ``bf16``: FlagPerf's fp16 is a bfloat16 cast; bf16 autocast →
``amp-bf16``; half → ``fp16-ieee``). The 配置 cell is the device name and nodes x processes per node
(``A100单机8卡（1x8）``). Rounding as FlagPerf's pages, half up (:func:`rounded`): e2e_time and p_* whole numbers
(s, img/s), acc one decimal with ``%``, mem ``used/total`` GiB one decimal each; ``/`` where a figure does not
exist (no evaluation: acc).

fix_hp is ``/`` when the run's per-rank batch and peak LR equal those of the FlagPerf config it is compared with,
else ``bs=X,lr=Y``. That config is ``resolved_config["flagperf_case"]`` (:func:`train.flagperf_case.case_config`)
or, without one, FlagPerf's base config with the harness settings of the run's vendor (:func:`case_for`).
额外修改项 lists every way a run differs from that config and from what FlagPerf's harness does around it
(:func:`run_changes`); a difference true of only some runs names them (``[A100单机8卡（1x8）/amp]``). The data
pipeline is a difference for every run that reads webdataset tar shards (``--loader cpu|dali|nvjpeg``) or
synthetic tensors: FlagPerf reads a torchvision ImageFolder through a DataLoader, so that line is always there for
such runs; only ``--loader folder`` reads the data as FlagPerf does. ``无`` (``none``) only when nothing differs.

An environment field that no run could read says "未知" ("unknown"); where runs disagree, their values are joined
by " / ". 加速卡驱动版本 is the environment's ``driver`` (NVIDIA's driver; MetaX: ``mx-smi``'s "Kernel Mode
Driver Version"); MetaX runs add their MACA version to 依赖软件版本.

The package, by job: :mod:`.runs` loads and checks the metrics JSONs (:func:`load_run`, :class:`RunRecord`,
:class:`RunFileError`, the compared config and fix_hp); :mod:`.words` holds the page's fixed words in both
languages (:class:`Lang`); :mod:`.cells` the table cells and run names; :mod:`.changes` the 额外修改项 rules
(:func:`run_changes`, :func:`extra_changes`); :mod:`.render` puts the page together (:func:`render`) and reads its
tables back (:func:`parse_tables`). The names below are its public interface (``tools/flagperf_report.py``).
"""

from __future__ import annotations

from train.flagperf_page.cells import (config_cell, dataset_cell, dataset_text, performance_row, rounded,
                                       run_labels)
from train.flagperf_page.changes import (CHANGE_KEYS, FLAGPERF_IMAGE_SIZE, Change, changes_cell, extra_changes,
                                         run_changes)
from train.flagperf_page.render import (SIXTEEN_BIT, PageTables, data_format_lines, dataset_lines, default_device,
                                        environment_lines, numerics_text, parse_tables, perf_notes, render,
                                        section_heading, vendor_words)
from train.flagperf_page.runs import (PRECISION_ORDER, RunFileError, RunRecord, case_for, fix_hp, load_run, peak_lr,
                                      sort_runs)
from train.flagperf_page.words import GENERAL_ROWS, PERF_HEADER, PERF_HEADER_EN, Lang

__all__ = ["CHANGE_KEYS", "FLAGPERF_IMAGE_SIZE", "GENERAL_ROWS", "PERF_HEADER", "PERF_HEADER_EN", "PRECISION_ORDER",
           "SIXTEEN_BIT", "Change", "Lang", "PageTables", "RunFileError", "RunRecord", "case_for", "changes_cell",
           "config_cell", "data_format_lines", "dataset_cell", "dataset_lines", "dataset_text", "default_device",
           "environment_lines", "extra_changes", "fix_hp", "load_run", "numerics_text", "parse_tables", "peak_lr",
           "perf_notes", "performance_row", "render", "rounded", "run_changes", "run_labels", "section_heading",
           "sort_runs", "vendor_words"]
