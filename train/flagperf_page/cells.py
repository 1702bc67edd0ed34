"""The FlagPerf page's cells: the 配置 cell (:func:`config_cell`), FlagPerf's rounding (:func:`rounded`), one
性能指标 row (:func:`performance_row`), each run's name on the page (:func:`run_labels`), the 数据集 cell
(:func:`dataset_text`, :func:`dataset_cell`), and :func:`grouped`, which gathers the runs that share a text.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from train.flagperf_case import is_imagenet
from train.flagperf_page.runs import RunRecord
from train.flagperf_page.words import ZH_NODES, Lang, tagged
from train.report import DatasetSummary


def config_cell(device: str, nodes: int, per_node: int, lang: Lang) -> str:
    """The 配置 cell: ``A100单机单卡（1x1）``, ``A100单机8卡（1x8）``, ``A100两机8卡（2x8）``; English
    ``A100 1 node x 8 cards (1x8)``."""
    if lang is Lang.EN:
        return (f"{device} {nodes} node{'s' if nodes > 1 else ''} x {per_node} card{'s' if per_node > 1 else ''} "
                f"({nodes}x{per_node})")
    machines = ZH_NODES.get(nodes, f"{nodes}机")
    cards = "单卡" if per_node == 1 and nodes == 1 else f"{per_node}卡"
    return f"{device}{machines}{cards}（{nodes}x{per_node}）"


def rounded(value: float, digits: int = 0) -> str:
    """``value`` rounded half away from zero to ``digits`` decimals, as a person rounds a table (Python's own
    rounding is half to even: 4586.5 would read 4586)."""
    return str(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def _whole(value: float | None) -> str:
    return "/" if value is None else rounded(value)


def performance_row(run: RunRecord, device: str, lang: Lang) -> list[str]:
    """One 性能指标 row's cells from the run's ``flagperf`` figures: e2e_time (s) and p_* (img/s) whole, acc one
    decimal with %, mem used/total GiB one decimal each, ``/`` where a figure is None."""
    figures = run.figures
    acc = "/" if figures.acc1 is None else f"{rounded(figures.acc1, 1)}%"
    return [config_cell(device, run.nodes, run.per_node, lang), run.page_label, run.fix_hp, _whole(figures.e2e_time),
            _whole(figures.p_whole), _whole(figures.p_train), _whole(figures.p_core), acc,
            f"{rounded(run.mem_used_gib, 1)}/{rounded(run.mem_total_gib, 1)}"]


def run_labels(runs: list[RunRecord], device: str, lang: Lang) -> dict[str, str]:
    """Each run's name on the page (by ``path``): ``<配置 cell>/<precision cell>``, with ``/<fix_hp>`` and then
    the file name added where that is not unique."""
    def base(run: RunRecord) -> str:
        return f"{config_cell(device, run.nodes, run.per_node, lang)}/{run.page_label}"
    labels = {run.path: base(run) for run in runs}
    for extra in (lambda run: run.fix_hp, lambda run: Path(run.path).name):
        values = list(labels.values())
        labels = {run.path: labels[run.path] + (f"/{extra(run)}" if values.count(labels[run.path]) > 1 else "")
                  for run in runs}
    return labels


def grouped(texts: list[tuple[str, str]], labels: dict[str, str], n_runs: int) -> list[tuple[str, tuple[str, ...]]]:
    """(text, run labels) per distinct text in first-seen order, from (run path, text) pairs; labels empty when
    every run shares the text."""
    order: list[str] = []
    runs: dict[str, list[str]] = {}
    for path, text in texts:
        if text not in runs:
            order.append(text)
            runs[text] = []
        runs[text].append(labels[path])
    return [(text, () if len(runs[text]) == n_runs else tuple(runs[text])) for text in order]


def dataset_text(dataset: DatasetSummary, loader: str, lang: Lang) -> str:
    """``ImageNet2012`` for ILSVRC2012's 1,281,167 / 50,000 images (not synthetic), else the data's name and
    counts: ``demo-imagenet（训练 1,000 张 / 验证 200 张，10 类）``."""
    train, val, classes = dataset.train_samples, dataset.val_samples, dataset.num_classes
    if loader != "synthetic" and is_imagenet(train, val):
        return "ImageNet2012"
    if lang is Lang.ZH:
        if loader == "synthetic":
            return f"合成数据（随机张量，训练 {train:,} / 验证 {val:,} 个样本，{classes} 类）"
        return f"{dataset.name}（训练 {train:,} 张 / 验证 {val:,} 张，{classes} 类）"
    if loader == "synthetic":
        return f"synthetic (random tensors, {train:,} train / {val:,} val samples, {classes} classes)"
    return f"{dataset.name} ({train:,} train / {val:,} val images, {classes} classes)"


def dataset_cell(runs: list[RunRecord], device: str, lang: Lang) -> str:
    """The 数据集 cell: one text when all runs used the same data, else each dataset with the runs that used it."""
    labels = run_labels(runs, device, lang)
    groups = grouped([(run.path, dataset_text(run.dataset, run.loader, lang)) for run in runs], labels, len(runs))
    return ("；" if lang is Lang.ZH else "; ").join(tagged(text, names, lang) for text, names in groups)
