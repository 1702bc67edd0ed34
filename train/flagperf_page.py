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
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal
from enum import Enum
from pathlib import Path

from pipeline.read.transforms import CROP_PCT, eval_resize_size
from train.flagperf_case import BASE, CONFIGS, CaseConfig, Vendor, case_config, is_imagenet
from train.metrics import FlagPerfFigures
from train.precision import PAGE_LABEL, Precision
from train.report import DatasetSummary, Numerics  # the metrics JSON's blocks, read back as the writer's types


class Lang(str, Enum):
    ZH = "zh"
    EN = "en"


PRECISION_ORDER = ("fp32", "amp", "fp16", "bf16", "half")
"""Row order of the precision modes within a layout (FlagPerf's page: fp32, amp, then its fp16 written bf16)."""

SIXTEEN_BIT = ("amp", "fp16", "bf16", "half")
"""Modes that get a line in the 数据格式 note."""

FLAGPERF_IMAGE_SIZE = 224  # FlagPerf's RandomResizedCrop(224); eval Resize(256) + CenterCrop(224)


class RunFileError(ValueError):
    """A metrics JSON that cannot be read, lacks a key the page needs or holds a value of the wrong kind (the
    message is one line naming the file and the key)."""


@dataclass(frozen=True)
class RunRecord:
    """What the page needs of one run's metrics JSON (``train --metrics-json``).

    Attributes:
        path: the file; nodes / per_node: from its ``config`` label (``CUDAx1x8``); precision: the mode
            (``fp32``, ``amp``, ``fp16``, ``bf16``, ``half``); page_label: its precision cell.
        fix_hp: ``/`` or ``bs=X,lr=Y`` against ``case`` (:func:`fix_hp`).
        figures: the ``flagperf`` set; mem_used_gib / mem_total_gib: GiB.
        device_name, environment (the JSON's block, a dict), numerics, dataset, loader (``--loader``).
        resolved: the JSON's ``resolved_config``; case: the FlagPerf config it is compared with.
        steps, epochs_run, target_reached_epoch (1-based, None: not reached), resumed_from_step (0: fresh).
    """

    path: str
    nodes: int
    per_node: int
    precision: str
    page_label: str
    fix_hp: str
    figures: FlagPerfFigures
    mem_used_gib: float
    mem_total_gib: float
    device_name: str
    environment: dict
    numerics: Numerics
    dataset: DatasetSummary
    loader: str
    resolved: dict
    case: CaseConfig
    steps: int
    epochs_run: int
    target_reached_epoch: int | None
    resumed_from_step: int

    @property
    def layout(self) -> str:
        return f"{self.nodes}x{self.per_node}"

    @property
    def vendor(self) -> str:
        """``environment.accelerator_vendor`` (``nvidia``, ``metax``, ``amd``, ``other-cuda``; ``none`` on a CPU)."""
        return str(self.environment.get("accelerator_vendor") or "none")


@dataclass(frozen=True)
class Change:
    """One 额外修改项 item: ``key`` (stable id, :data:`CHANGE_KEYS`), its text, and the labels of the runs it
    is true of (empty: every run on the page)."""

    key: str
    text: str
    runs: tuple[str, ...] = ()


CHANGE_KEYS = ("pipeline", "layout", "bn_sync", "channels_last", "tf32", "cudnn", "momentum", "weight_decay", "decay_bn_bias",
               "nesterov", "label_smoothing", "lr_warmup", "lr_schedule", "zero_init_residual", "ema", "image_size",
               "resolution", "crop_pct", "compile", "max_steps", "epochs", "initial_eval", "eval", "target_acc1",
               "workers", "seed", "precision", "resumed")
"""The 额外修改项 items in page order (see :func:`run_changes`)."""


# --- reading a metrics JSON ----------------------------------------------------------------------------------------

_NUM = (int, float)
_KIND_WORDS = {_NUM: "a number", int: "an integer", str: "a string", bool: "true or false", dict: "an object",
               list: "a list"}


class _Reader:
    """Typed access to one metrics JSON; every failure is a :class:`RunFileError` naming the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, what: str) -> RunFileError:
        return RunFileError(f"{self.path}: {key}: {what}")

    def get(self, obj: dict, key: str, kind, where: str = "", optional: bool = False, low: float | None = None,
            high: float | None = None):
        """``obj[key]`` of ``kind`` (None allowed when ``optional``), within [``low``, ``high``] where given."""
        value = self._get(obj, key, kind, where, optional)
        if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
            name = f"{where}.{key}" if where else key
            bound = f">= {low:g}" if high is None else f"<= {high:g}" if low is None else f"in [{low:g}, {high:g}]"
            shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
            raise self.fail(name, f"{shown} is out of range (must be {bound})")
        return value

    def _get(self, obj: dict, key: str, kind, where: str = "", optional: bool = False):
        name = f"{where}.{key}" if where else key
        if key not in obj:
            raise self.fail(name, "missing (not a metrics JSON of this project's train --metrics-json)")
        value = obj[key]
        if value is None and optional:
            return None
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (_NUM, int))
        if kind is bool:
            ok = isinstance(value, bool)
        if not ok or (kind is _NUM and not math.isfinite(value)):
            raise self.fail(name, f"expected {_KIND_WORDS[kind]}{' or null' if optional else ''}, got {value!r}")
        return value


def case_for(resolved: dict, vendor: str | None) -> CaseConfig:
    """The FlagPerf config a run is compared with: ``resolved["flagperf_case"]``, or without one FlagPerf's base
    config with the harness settings (cuDNN flags, ``METAX_USE_TF32``) of ``vendor`` (``environment``'s
    ``accelerator_vendor``), taken from that vendor's configs in :data:`train.flagperf_case.CONFIGS`.

    Raises:
        KeyError: an unknown case name (the message lists the known ones).
    """
    name = resolved.get("flagperf_case")
    if name not in (None, "base"):
        return case_config(name)
    try:
        v = Vendor(vendor)
    except ValueError:
        return BASE
    like = next((c for c in CONFIGS.values() if c.vendor is v), None)
    if like is None:
        return replace(BASE, vendor=v)
    return replace(BASE, vendor=v, cudnn_benchmark=like.cudnn_benchmark,
                   cudnn_deterministic=like.cudnn_deterministic, metax_use_tf32=like.metax_use_tf32)


def peak_lr(resolved: dict, world_size: int) -> float:
    """The run's peak LR: ``optim.lr``, else ``optim.lr_per_256`` × global batch / 256."""
    optim, batch = resolved["optim"], resolved["loader_cfg"]["batch_size"]
    return optim["lr"] if optim["lr"] is not None else optim["lr_per_256"] * batch * world_size / 256


def fix_hp(resolved: dict, world_size: int, case: CaseConfig) -> str:
    """FlagPerf's fix_hp cell: ``/`` when the per-rank batch and the peak LR equal ``case``'s, else
    ``bs=<per-rank batch>,lr=<peak LR>`` (``%g``)."""
    batch, lr = resolved["loader_cfg"]["batch_size"], peak_lr(resolved, world_size)
    if batch == case.batch and math.isclose(lr, case.lr, rel_tol=1e-9):
        return "/"
    return f"bs={batch},lr={lr:g}"


_BIG = 1e12  # a bound no real figure reaches (img/s, s, GiB, images): beyond it a JSON was edited or is damaged
_TIMINGS = ("events", "sync", "none")


def _one_of(rd: _Reader, value: str, key: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise rd.fail(key, f"{value!r} is not one of {', '.join(allowed)}")
    return value


_OLD = "written by an older train without FlagPerf's figures: rerun train to get FlagPerf's figures"


def load_run(path: Path) -> RunRecord:
    """Read one ``train --metrics-json`` file.

    Raises:
        RunFileError: unreadable, not JSON, a ``--test-only`` run, written before the ``flagperf`` block existed
            ("rerun train to get FlagPerf's figures"), or a key the page needs missing or of the wrong kind (a
            missing ``environment`` is not an error: its fields then say unknown).
    """
    try:
        m = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFileError(f"{path}: not a readable metrics JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(m, dict):
        raise RunFileError(f"{path}: not a metrics JSON of train (a JSON object expected)")
    rd = _Reader(Path(path))
    if m.get("test_only"):
        raise RunFileError(f"{path}: a --test-only run (a checkpoint evaluation) has no FlagPerf row: give the "
                           f"training run's metrics JSON")
    for block in ("flagperf", "numerics", "dataset", "resolved_config"):
        if m.get(block) is None:
            raise RunFileError(f"{path}: no {block}: {_OLD}")
    config = rd.get(m, "config", str)
    try:
        _, nodes, per_node = config.split("x")
        nodes_i, per_node_i = int(nodes), int(per_node)
    except ValueError:
        raise rd.fail("config", f"{config!r} is not <device>x<nodes>x<per node>") from None
    f = rd.get(m, "flagperf", dict)
    figures = FlagPerfFigures(
        rd.get(f, "e2e_time", _NUM, "flagperf", low=0, high=_BIG),
        rd.get(f, "p_whole", _NUM, "flagperf", True, 0, _BIG),
        rd.get(f, "p_train", _NUM, "flagperf", True, 0, _BIG), rd.get(f, "p_core", _NUM, "flagperf", True, 0, _BIG),
        rd.get(f, "acc1", _NUM, "flagperf", True, 0, 100), rd.get(f, "trained_images", int, "flagperf", low=0),
        rd.get(f, "converged", bool, "flagperf", True), rd.get(f, "initial_eval_s", _NUM, "flagperf", True),
        _one_of(rd, rd.get(f, "p_core_timing", str, "flagperf"), "flagperf.p_core_timing", _TIMINGS))
    n = rd.get(m, "numerics", dict)
    precision = rd.get(n, "precision", str, "numerics")
    try:
        label = PAGE_LABEL[Precision(precision)]
    except (ValueError, KeyError):
        raise rd.fail("numerics.precision", f"{precision!r} is not a precision mode of train "
                                            f"({', '.join(PRECISION_ORDER)})") from None
    numerics = Numerics(
        precision, label, rd.get(n, "param_dtype", str, "numerics"),
        rd.get(n, "input_dtype", str, "numerics"), rd.get(n, "autocast_dtype", str, "numerics", True),
        rd.get(n, "grad_scaler", bool, "numerics"), rd.get(n, "tf32", str, "numerics"),
        rd.get(n, "tf32_matmul", bool, "numerics", True), rd.get(n, "tf32_cudnn", bool, "numerics", True),
        rd.get(n, "tf32_mechanism", str, "numerics", True), rd.get(n, "metax_use_tf32", str, "numerics", True),
        rd.get(n, "cudnn_benchmark", bool, "numerics"), rd.get(n, "cudnn_deterministic", bool, "numerics"),
        rd.get(n, "channels_last", bool, "numerics"))
    d = rd.get(m, "dataset", dict)
    dataset = DatasetSummary(rd.get(d, "data", str, "dataset", True), rd.get(d, "name", str, "dataset"),
                         rd.get(d, "train_samples", int, "dataset", low=0),
                         rd.get(d, "val_samples", int, "dataset", low=0),
                         rd.get(d, "num_classes", int, "dataset", low=1))
    resolved = _check_resolved(rd, rd.get(m, "resolved_config", dict))
    environment = m.get("environment") or {}
    if not isinstance(environment, dict):
        raise rd.fail("environment", f"expected an object, got {environment!r}")
    if not isinstance(environment.get("dependencies", {}) or {}, dict):
        raise rd.fail("environment.dependencies", f"expected an object, got {environment['dependencies']!r}")
    try:
        case = case_for(resolved, environment.get("accelerator_vendor"))
    except KeyError as exc:
        raise rd.fail("resolved_config.flagperf_case", exc.args[0]) from None
    world_size = rd.get(m, "world_size", int, low=1)
    if nodes_i < 1 or per_node_i < 1:
        raise rd.fail("config", f"{config!r}: nodes and processes per node must be >= 1")
    return RunRecord(
        str(path), nodes_i, per_node_i, numerics.precision, label, fix_hp(resolved, world_size, case), figures,
        float(rd.get(m, "mem_used_gib", _NUM, low=0, high=_BIG)),
        float(rd.get(m, "mem_total_gib", _NUM, low=0, high=_BIG)),
        rd.get(m, "device_name", str), environment, numerics, dataset, rd.get(resolved, "loader", str,
                                                                              "resolved_config"),
        resolved, case, rd.get(m, "steps", int), rd.get(m, "epochs", int),
        rd.get(m, "target_reached_epoch", int, "", True), rd.get(m, "resumed_from_step", int))


def _check_resolved(rd: _Reader, r: dict) -> dict:
    """The ``resolved_config`` keys the page reads, each of its kind (the dict itself is returned)."""
    w = "resolved_config"
    rd.get(r, "flagperf_case", str, w, True)
    rd.get(r, "loader", str, w)
    lc = rd.get(r, "loader_cfg", dict, w)
    rd.get(lc, "batch_size", int, f"{w}.loader_cfg", low=1, high=_BIG)
    rd.get(lc, "image_size", int, f"{w}.loader_cfg", low=8, high=1_000_000)
    rd.get(lc, "workers", int, f"{w}.loader_cfg", low=0, high=_BIG)
    rd.get(lc, "seed", int, f"{w}.loader_cfg")
    rd.get(lc, "crop_pct", _NUM, f"{w}.loader_cfg", low=1e-6, high=1)
    o = rd.get(r, "optim", dict, w)
    rd.get(o, "lr", _NUM, f"{w}.optim", True, 0, _BIG)
    for key in ("lr_per_256", "momentum", "weight_decay", "label_smoothing", "warmup_epochs", "gamma"):
        rd.get(o, key, _NUM, f"{w}.optim", low=0, high=_BIG)
    for key in ("nesterov", "decay_bn_and_bias"):
        rd.get(o, key, bool, f"{w}.optim")
    rd.get(o, "schedule", str, f"{w}.optim")
    for i, v in enumerate(rd.get(o, "milestones", list, f"{w}.optim")):
        if isinstance(v, bool) or not isinstance(v, int):
            raise rd.fail(f"{w}.optim.milestones[{i}]", f"expected an integer, got {v!r}")
    rd.get(r, "epochs", int, w, low=1, high=_BIG)
    rd.get(r, "max_steps", int, w, True, 1, _BIG)
    rd.get(r, "seed", int, w)
    rd.get(r, "ema_decay", _NUM, w, True, 0, 1)
    rd.get(r, "target_acc1", _NUM, w, True, 0, 100)
    for key in ("eval", "zero_init_residual", "compile", "initial_eval"):
        rd.get(r, key, bool, w)
    res = rd.get(r, "resolution", dict, w, True)
    if res is not None:
        for key in ("start", "end", "ramp_start", "ramp_end", "eval"):
            rd.get(res, key, int, f"{w}.resolution", low=0, high=1_000_000)
    return r


def sort_runs(runs: list[RunRecord]) -> list[RunRecord]:
    """Layout order (nodes, processes per node), then precision (:data:`PRECISION_ORDER`, others last), then
    file."""
    def key(r: RunRecord):
        p = PRECISION_ORDER.index(r.precision) if r.precision in PRECISION_ORDER else len(PRECISION_ORDER)
        return r.nodes, r.per_node, p, r.precision, r.path
    return sorted(runs, key=key)


# --- cells ---------------------------------------------------------------------------------------------------------

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
    """One 性能指标 row's cells from the run's ``flagperf`` figures: e2e_time (s) and p_* (img/s) whole, acc one
    decimal with %, mem used/total GiB one decimal each, ``/`` where a figure is None."""
    f = r.figures
    acc = "/" if f.acc1 is None else f"{rounded(f.acc1, 1)}%"
    return [config_cell(device, r.nodes, r.per_node, lang), r.page_label, r.fix_hp, _num(f.e2e_time),
            _num(f.p_whole), _num(f.p_train), _num(f.p_core), acc,
            f"{rounded(r.mem_used_gib, 1)}/{rounded(r.mem_total_gib, 1)}"]


def run_labels(runs: list[RunRecord], device: str, lang: Lang) -> dict[str, str]:
    """Each run's name on the page (by ``path``): ``<配置 cell>/<precision cell>``, with ``/<fix_hp>`` and then
    the file name added where that is not unique."""
    def base(r: RunRecord) -> str:
        return f"{config_cell(device, r.nodes, r.per_node, lang)}/{r.page_label}"
    labels = {r.path: base(r) for r in runs}
    for extra in (lambda r: r.fix_hp, lambda r: Path(r.path).name):
        values = list(labels.values())
        labels = {r.path: labels[r.path] + (f"/{extra(r)}" if values.count(labels[r.path]) > 1 else "")
                  for r in runs}
    return labels


def _g(value: float) -> str:
    return f"{value:g}"


def _epochs_en(n: float) -> str:
    return f"{_g(n)} epoch{'' if n == 1 else 's'}"


def _join(items: list[str], lang: Lang) -> str:
    return ("、" if lang is Lang.ZH else ", ").join(items)


def dataset_text(d: DatasetSummary, loader: str, lang: Lang) -> str:
    """``ImageNet2012`` for ILSVRC2012's 1,281,167 / 50,000 images (not synthetic), else the data's name and
    counts: ``demo-imagenet（训练 1,000 张 / 验证 200 张，10 类）``."""
    if loader != "synthetic" and is_imagenet(d.train_samples, d.val_samples):
        return "ImageNet2012"
    if lang is Lang.ZH:
        if loader == "synthetic":
            return (f"合成数据（随机张量，训练 {d.train_samples:,} / 验证 {d.val_samples:,} 个样本，"
                    f"{d.num_classes} 类）")
        return f"{d.name}（训练 {d.train_samples:,} 张 / 验证 {d.val_samples:,} 张，{d.num_classes} 类）"
    if loader == "synthetic":
        return (f"synthetic (random tensors, {d.train_samples:,} train / {d.val_samples:,} val samples, "
                f"{d.num_classes} classes)")
    return f"{d.name} ({d.train_samples:,} train / {d.val_samples:,} val images, {d.num_classes} classes)"


def _grouped(texts: list[tuple[str, str]], labels: dict[str, str], n_runs: int) -> list[tuple[str, tuple[str, ...]]]:
    """(text, run labels) per distinct text in first-seen order, from (run path, text) pairs; labels empty when
    every run shares the text."""
    order: list[str] = []
    runs: dict[str, list[str]] = {}
    for path, text in texts:
        if text not in runs:
            order.append(text)
            runs[text] = []
        runs[text].append(labels[path])
    return [(t, () if len(runs[t]) == n_runs else tuple(runs[t])) for t in order]


def _tagged(text: str, runs: tuple[str, ...], lang: Lang) -> str:
    return f"[{_join(list(runs), lang)}] {text}" if runs else text


def dataset_cell(runs: list[RunRecord], device: str, lang: Lang) -> str:
    """The 数据集 cell: one text when all runs used the same data, else each dataset with the runs that used it."""
    labels = run_labels(runs, device, lang)
    groups = _grouped([(r.path, dataset_text(r.dataset, r.loader, lang)) for r in runs], labels, len(runs))
    return ("；" if lang is Lang.ZH else "; ").join(_tagged(t, rs, lang) for t, rs in groups)


# --- 额外修改项 ----------------------------------------------------------------------------------------------------

def _flagperf_schedule(case: CaseConfig, lang: Lang) -> str:
    if lang is Lang.ZH:
        return f"StepLR，每 {case.lr_steps} 轮 ×{_g(case.lr_gamma)}"
    return f"StepLR, x{_g(case.lr_gamma)} every {case.lr_steps} epochs"


def _harness_cudnn(r: RunRecord) -> tuple[bool, bool]:
    """cuDNN (benchmark, deterministic) as FlagPerf's harness leaves them for this run: the case's values where
    its vendor is NVIDIA (``helper.py`` sets them for vendor nvidia only), torch's defaults (False, False)
    elsewhere."""
    c = r.case
    if c.vendor is Vendor.NVIDIA:
        return bool(c.cudnn_benchmark), bool(c.cudnn_deterministic)
    return False, False


def _on_off(value: bool, lang: Lang) -> str:
    return ("开" if value else "关") if lang is Lang.ZH else ("on" if value else "off")


def _pipeline(r: RunRecord, lang: Lang) -> str | None:
    zh = lang is Lang.ZH
    flagperf = ("FlagPerf：torchvision ImageFolder + DataLoader，PIL 解码，worker 中做 torchvision 变换" if zh else
                "FlagPerf: torchvision ImageFolder + DataLoader, PIL decode, torchvision transforms in the workers")
    shards = "webdataset tar 分片（shard-imagenet 离线写成）" if zh else \
        "webdataset tar shards (written offline by shard-imagenet)"
    how = {
        "cpu": ("，DataLoader 工作进程中以 libjpeg-turbo 解码和增强（--loader cpu）" if zh else
                ", decoded and augmented with libjpeg-turbo in DataLoader workers (--loader cpu)"),
        "dali": ("，NVIDIA DALI 在 GPU 上解码（--loader dali）" if zh else
                 ", decoded on the GPU by NVIDIA DALI (--loader dali)"),
        "nvjpeg": ("，torchvision 的 nvJPEG 在 GPU 上解码（--loader nvjpeg）" if zh else
                   ", JPEGs decoded on the GPU by torchvision's nvJPEG decoder (--loader nvjpeg)"),
    }
    if r.loader == "folder":
        return None
    if r.loader == "synthetic":
        what = ("随机张量的合成数据，不读取、不解码图像（--loader synthetic），acc 无意义" if zh else
                "synthetic data: random tensors, no image read or decoded (--loader synthetic), acc is meaningless")
    elif r.loader in how:
        what = shards + how[r.loader]
    else:
        what = f"--loader {r.loader}"
    return f"{'数据管线' if zh else 'data pipeline'}{'：' if zh else ': '}{what}{'；' if zh else '; '}{flagperf}"


def run_changes(r: RunRecord, lang: Lang) -> list[tuple[str, str]]:
    """Every way run ``r`` differs from its FlagPerf config (``r.case``) and FlagPerf's harness, as (key, text) in
    :data:`CHANGE_KEYS` order. bs / lr are not here (they are fix_hp). Compared: the data pipeline (see the
    module docstring), the layout against a named case's, channels-last, TF32 (FlagPerf: PyTorch's defaults,
    matmul off / cuDNN on; MetaX: ``METAX_USE_TF32`` as the case exports it; runs with an accelerator only), cuDNN
    benchmark / deterministic (as the harness sets them; accelerator runs only), the recipe (momentum, weight
    decay and whether on BN / bias, Nesterov, label smoothing, LR warm-up, schedule: the run's milestones
    within its epochs and gamma against FlagPerf's StepLR every ``lr_steps`` epochs, zero-init residual), EMA,
    image size (FlagPerf: 224), progressive resolution, the eval crop ratio (FlagPerf: 224/256), torch.compile,
    a run cut short (``--max-steps``, or other epochs than the case's ``max_epoch`` without reaching its target),
    no initial evaluation, no evaluation, target_acc1, DataLoader workers, seeds, a precision FlagPerf does not
    have (amp-bf16, fp16-ieee), a resumed run."""
    zh = lang is Lang.ZH
    sep = "：" if zh else ": "
    c, res, n = r.case, r.resolved, r.numerics
    lc, o = res["loader_cfg"], res["optim"]
    fp = "FlagPerf：" if zh else "FlagPerf: "
    out: list[tuple[str, str]] = []

    def add(key: str, label: str, detail: str, flagperf: str) -> None:
        out.append((key, f"{label}{sep}{detail}（{fp}{flagperf}）" if zh else
                    f"{label}{sep}{detail} ({fp}{flagperf})"))

    pipeline = _pipeline(r, lang)
    if pipeline:
        out.append(("pipeline", pipeline))
    if res.get("flagperf_case") not in (None, "base") and (r.nodes, r.per_node) != (c.nodes, c.per_node):
        add("layout", "布局" if zh else "layout",
            f"按 {c.name} 的配置运行于 {r.layout}" if zh else f"{c.name}'s config run on {r.layout}", c.layout)
    if r.nodes * r.per_node > 1:
        add("bn_sync", "BN 统计量" if zh else "BN statistics",
            "每次评估与检查点前在各 rank 间取平均" if zh else "averaged over ranks before every evaluation and checkpoint",
            "DDP 默认，前向时广播 rank 0 的" if zh else "DDP's default: rank 0's, broadcast at each forward")
    if n.channels_last:
        add("channels_last", "内存布局" if zh else "memory format",
            "模型与输入为 channels-last" if zh else "model and inputs channels-last", "NCHW")
    accelerator = r.vendor != "none" and n.tf32_matmul is not None
    if accelerator:
        parts = []
        if n.tf32_matmul:
            parts.append("float32 矩阵乘 TF32 开" if zh else "float32 matmul TF32 on")
        if n.tf32_cudnn is False:
            parts.append("cuDNN 卷积 TF32 关" if zh else "cuDNN convolution TF32 off")
        expected_env = c.metax_use_tf32
        if r.vendor == Vendor.METAX.value and n.metax_use_tf32 != expected_env:
            parts.append(f"METAX_USE_TF32={n.metax_use_tf32 if n.metax_use_tf32 is not None else '未设置'}" if zh
                         else f"METAX_USE_TF32={n.metax_use_tf32 if n.metax_use_tf32 is not None else 'unset'}")
        if parts:
            if zh:
                theirs = "PyTorch 默认：矩阵乘关、cuDNN 卷积开"
                if r.vendor == Vendor.METAX.value:
                    theirs += f"，METAX_USE_TF32={expected_env if expected_env is not None else '未设置'}"
            else:
                theirs = "PyTorch's defaults: matmul off, cuDNN convolutions on"
                if r.vendor == Vendor.METAX.value:
                    theirs += f", METAX_USE_TF32={expected_env if expected_env is not None else 'unset'}"
            mode = f"（--tf32 {n.tf32}）" if zh else f" (--tf32 {n.tf32})"
            add("tf32", "TF32", _join(parts, lang) + mode, theirs)
        bench, det = _harness_cudnn(r)
        if (n.cudnn_benchmark, n.cudnn_deterministic) != (bench, det):
            add("cudnn", "cuDNN",
                f"benchmark {_on_off(n.cudnn_benchmark, lang)}{'、' if zh else ', '}"
                f"deterministic {_on_off(n.cudnn_deterministic, lang)}",
                f"benchmark {_on_off(bench, lang)}{'、' if zh else ', '}deterministic {_on_off(det, lang)}")
    if not math.isclose(o["momentum"], c.momentum):
        add("momentum", "动量" if zh else "momentum", _g(o["momentum"]), _g(c.momentum))
    if not math.isclose(o["weight_decay"], c.weight_decay):
        add("weight_decay", "权重衰减" if zh else "weight decay", _g(o["weight_decay"]), _g(c.weight_decay))
    if not o["decay_bn_and_bias"] and o["weight_decay"] > 0:
        add("decay_bn_bias", "权重衰减范围" if zh else "weight decay scope",
            "BN 参数与 bias 不衰减" if zh else "not on BN parameters and biases",
            "所有参数" if zh else "every parameter")
    if o["nesterov"]:
        add("nesterov", "Nesterov", "开" if zh else "on", "关" if zh else "off")
    if o["label_smoothing"] > 0:
        add("label_smoothing", "标签平滑" if zh else "label smoothing", _g(o["label_smoothing"]),
            "无" if zh else "none")
    if o["warmup_epochs"] > 0:
        add("lr_warmup", "学习率预热" if zh else "LR warm-up",
            f"{_g(o['warmup_epochs'])} 轮线性预热" if zh else f"linear over {_epochs_en(o['warmup_epochs'])}",
            "无" if zh else "none")
    epochs = res["epochs"]
    if o["schedule"] != "step":
        add("lr_schedule", "学习率策略" if zh else "LR schedule",
            ("余弦退火至 0" if zh else "cosine to zero") if o["schedule"] == "cosine" else o["schedule"],
            _flagperf_schedule(c, lang))
    else:
        mine = [m for m in o["milestones"] if 0 < m < epochs]
        theirs = list(range(c.lr_steps, epochs, c.lr_steps))  # FlagPerf's StepLR(step_size=lr_steps)
        if mine != theirs or (mine and not math.isclose(o["gamma"], c.lr_gamma)):
            at = ("、".join(map(str, mine)) if zh else ", ".join(map(str, mine))) or ("无" if zh else "none")
            add("lr_schedule", "学习率策略" if zh else "LR schedule",
                f"第 {at} 轮 ×{_g(o['gamma'])}（{epochs} 轮内）" if zh else
                f"x{_g(o['gamma'])} at epochs {at} (within {epochs} epochs)", _flagperf_schedule(c, lang))
    if res["zero_init_residual"]:
        add("zero_init_residual", "初始化" if zh else "initialisation",
            "每个残差块最后一个 BN 的 γ 置零" if zh else "last BN gamma of every residual block zeroed",
            "torchvision 默认初始化" if zh else "torchvision's default init")
    if res["ema_decay"] is not None:
        add("ema", "EMA", f"权重 EMA（decay {_g(res['ema_decay'])}），另行评估；acc 为原权重的" if zh else
            f"weight EMA (decay {_g(res['ema_decay'])}) evaluated too; acc is the raw weights'",
            "无" if zh else "none")
    size, crop = lc["image_size"], lc["crop_pct"]
    resolution = res.get("resolution")
    if resolution is None and size != FLAGPERF_IMAGE_SIZE:
        add("image_size", "图像尺寸" if zh else "image size",
            f"训练 RandomResizedCrop {size}，验证 Resize {eval_resize_size(size, crop)} + CenterCrop {size}" if zh
            else f"train RandomResizedCrop {size}, eval Resize {eval_resize_size(size, crop)} + CenterCrop {size}",
            "RandomResizedCrop 224，Resize 256 + CenterCrop 224" if zh else
            "RandomResizedCrop 224, Resize 256 + CenterCrop 224")
    if resolution is not None:
        s, e, a, b, ev = (resolution[k] for k in ("start", "end", "ramp_start", "ramp_end", "eval"))
        add("resolution", "渐进分辨率" if zh else "progressive resolution",
            f"训练边长第 {a} 轮前 {s} px、第 {b} 轮起 {e} px，验证 {ev} px" if zh else
            f"train side {s} px up to epoch {a}, {e} px from epoch {b}, eval {ev} px",
            "训练与验证固定 224 px" if zh else "train and eval at 224 px")
    if not math.isclose(crop, CROP_PCT):
        add("crop_pct", "验证裁剪比例" if zh else "eval crop ratio", f"crop_pct {_g(crop)}", "224/256 = 0.875")
    if res["compile"]:
        add("compile", "torch.compile", "开" if zh else "on", "eager")
    target = res["target_acc1"]
    reached = r.target_reached_epoch
    until = (f"最多 {c.max_epoch} 轮，acc 达 {_g(c.target_acc1)}% 即停" if zh else
             f"up to {c.max_epoch} epochs, stopping once acc reaches {_g(c.target_acc1)}%")
    if res["max_steps"] is not None and r.steps >= res["max_steps"] and reached is None:
        add("max_steps", "提前截止" if zh else "cut short",
            f"第 {r.steps} 步停止（--max-steps {res['max_steps']}，{r.epochs_run} 轮）" if zh else
            f"stopped at step {r.steps} (--max-steps {res['max_steps']}, {_epochs_en(r.epochs_run)})", until)
    elif reached is None and epochs != c.max_epoch:
        add("epochs", "训练轮数" if zh else "epochs",
            f"最多 {epochs} 轮{'，未达目标' if target is not None else ''}" if zh else
            f"up to {epochs}{', target not reached' if target is not None else ''}", until)
    elif reached is not None and reached > c.max_epoch:
        add("epochs", "训练轮数" if zh else "epochs", f"第 {reached} 轮达到目标" if zh else
            f"target reached in epoch {reached}", until)
    if not res["initial_eval"]:
        add("initial_eval", "训练前评估" if zh else "initial evaluation", "无" if zh else "none",
            "训练前评估一次，计入 e2e_time" if zh else "one before training, inside e2e_time")
    if not res["eval"]:
        add("eval", "评估" if zh else "evaluation", "不做每轮评估，acc 记 /" if zh else
            "none after the epochs, acc is /", "每轮后评估" if zh else "after every epoch")
    if target is None or not math.isclose(target, c.target_acc1):
        add("target_acc1", "target_acc1", ("无（训满全部轮次）" if zh else "none (every epoch runs)")
            if target is None else f"{_g(target)}%", f"{_g(c.target_acc1)}%")
    if lc["workers"] != c.num_workers:
        add("workers", "数据加载进程" if zh else "loader workers",
            f"每进程 {lc['workers']} 个" if zh else f"{lc['workers']} per rank", str(c.num_workers))
    if res["seed"] != c.seed or lc["seed"] != c.seed:
        add("seed", "随机种子" if zh else "seed",
            f"模型 {res['seed']}、数据 {lc['seed']}" if zh else f"model {res['seed']}, data {lc['seed']}",
            str(c.seed))
    if r.precision in ("bf16", "half"):
        add("precision", "数据精度" if zh else "precision",
            f"{r.page_label}{'，非 FlagPerf 的模式' if zh else ', not a FlagPerf mode'}", "fp32 / amp / fp16")
    if r.resumed_from_step > 0:
        add("resumed", "续训" if zh else "resumed",
            f"自第 {r.resumed_from_step} 步的检查点继续" if zh else
            f"from a checkpoint at step {r.resumed_from_step}", "一次运行到底" if zh else "one uninterrupted run")
    return sorted(out, key=lambda kt: CHANGE_KEYS.index(kt[0]))


def extra_changes(runs: list[RunRecord], lang: Lang, device: str) -> list[Change]:
    """The 额外修改项 items of the page: :func:`run_changes` of every run, one item per distinct text, in
    :data:`CHANGE_KEYS` order, each naming its runs when not all runs share it (``device``: as the 配置 cells)."""
    labels = run_labels(runs, device, lang)
    per_key: dict[str, list[tuple[str, str]]] = {}
    for r in sort_runs(runs):
        for key, text in run_changes(r, lang):
            per_key.setdefault(key, []).append((r.path, text))
    return [Change(key, text, rs) for key in CHANGE_KEYS if key in per_key
            for text, rs in _grouped(per_key[key], labels, len(runs))]


def changes_cell(changes: list[Change], lang: Lang) -> str:
    """The 额外修改项 cell: ``无`` / ``none``, else the items numbered and joined by ``<br>``."""
    if not changes:
        return "无" if lang is Lang.ZH else "none"
    return "<br>".join(f"{i}. {_tagged(c.text, c.runs, lang)}" for i, c in enumerate(changes, 1))


# --- page parts ----------------------------------------------------------------------------------------------------

PERF_HEADER = ("配置", "precision", "fix_hp", "e2e_time", "p_whole", "p_train", "p_core", "acc", "mem")
PERF_HEADER_EN = ("config", *PERF_HEADER[1:])

_TEXT = {
    Lang.ZH: {
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
    },
    Lang.EN: {
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
    },
}

GENERAL_ROWS = tuple(name for name, _, _ in _TEXT[Lang.ZH]["rows"])
"""The 通用指标 row names in order (FlagPerf's)."""


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
        values = {str((r.environment.get("dependencies") or {}).get(dep)) for r in runs
                  if (r.environment.get("dependencies") or {}).get(dep)}
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


_MODE_RELATION = {
    Lang.ZH: {"amp": "即 FlagPerf 的 amp", "fp16": "即 FlagPerf 的 fp16（其 bfloat16 实现，FlagPerf 的 NVIDIA 页面记作 bf16）",
              "bf16": "非 FlagPerf 的模式", "half": "IEEE 754 float16，FlagPerf 改用 bfloat16 之前的 fp16 实现，非其现行模式"},
    Lang.EN: {"amp": "FlagPerf's amp", "fp16": "FlagPerf's fp16 (its bfloat16 implementation, written bf16 on "
                                           "FlagPerf's NVIDIA page)",
              "bf16": "not a FlagPerf mode", "half": "IEEE 754 float16, FlagPerf's fp16 before it moved to "
                                                  "bfloat16, not its current mode"},
}


def numerics_text(r: RunRecord, lang: Lang) -> str:
    """What a run's precision mode ran, from its ``numerics``: ``bf16：参数 bfloat16、输入 bfloat16，无 autocast，
    无损失缩放（GradScaler）——即 FlagPerf 的 fp16（...）``."""
    n = r.numerics
    if lang is Lang.ZH:
        auto = f"{n.autocast_dtype} autocast" if n.autocast_dtype else "无 autocast"
        scale = "GradScaler 损失缩放" if n.grad_scaler else "无损失缩放（GradScaler）"
        return (f"{r.page_label}：参数 {n.param_dtype}、输入 {n.input_dtype}，{auto}，{scale}——"
                f"{_MODE_RELATION[lang].get(r.precision, r.precision)}")
    auto = f"{n.autocast_dtype} autocast" if n.autocast_dtype else "no autocast"
    scale = "GradScaler loss scaling" if n.grad_scaler else "no loss scaling (GradScaler)"
    return (f"{r.page_label}: parameters {n.param_dtype}, inputs {n.input_dtype}, {auto}, {scale}: "
            f"{_MODE_RELATION[lang].get(r.precision, r.precision)}")


def data_format_lines(runs: list[RunRecord], lang: Lang, device: str) -> list[str]:
    """The ``- 数据格式`` note (FlagPerf's NVIDIA page has it for its bf16 row): one line per distinct 16-bit
    numerics on the page, naming its runs where not all share it; empty when every run is fp32."""
    sixteen = [r for r in sort_runs(runs) if r.precision in SIXTEEN_BIT]
    if not sixteen:
        return []
    labels = run_labels(sixteen, device, lang)
    groups = _grouped([(r.path, numerics_text(r, lang)) for r in sixteen], labels, len(sixteen))
    return ["", _TEXT[lang]["format"], "", *(f"   - {_tagged(t, rs, lang)}" for t, rs in groups)]


def vendor_words(vendor: str, device: str, lang: Lang) -> str:
    """The vendor / device words of the section heading: ``Nvidia GPU``; ``沐曦集成电路 C500 GPU`` (English
    ``MetaX C500 GPU``); else the device name."""
    if vendor == Vendor.NVIDIA.value:
        return "Nvidia GPU"
    if vendor == Vendor.METAX.value:
        short = device[len("metax"):].strip() if device.lower().startswith("metax") else device
        return f"沐曦集成电路 {short} GPU" if lang is Lang.ZH else f"MetaX {short} GPU"
    return device


def section_heading(runs: list[RunRecord], device: str, lang: Lang) -> str:
    """``### 2. Nvidia GPU配置与运行信息参考`` (the words of every vendor on the page, joined by " / ")."""
    words: list[str] = []
    for r in sort_runs(runs):
        w = vendor_words(r.vendor, device, lang)
        if w not in words:
            words.append(w)
    return _TEXT[lang]["section"].format(words=" / ".join(words))


def dataset_lines(runs: list[RunRecord], device: str, lang: Lang) -> list[str]:
    """``### 1. 数据集准备``, FlagPerf's link, and what the runs read where that is not ImageNet2012 as FlagPerf
    reads it (shards: how they were made; other data: its name and counts)."""
    t = _TEXT[lang]
    lines = [t["dataset_heading"], t["dataset_link"]]
    zh = lang is Lang.ZH
    if any(r.loader in ("cpu", "dali", "nvjpeg") for r in runs):
        lines += ["", "本页的运行先以本项目的 `shard-imagenet` 把类目录树写成 webdataset tar 分片，再从分片训练"
                      "（见“额外修改项”）。" if zh else
                  "The runs on this page read the class-folder tree after this project's `shard-imagenet` wrote "
                  "it as webdataset tar shards (see Other changes)."]
    if any(dataset_text(r.dataset, r.loader, lang) != "ImageNet2012" for r in runs):
        lines += ["", f"本页的运行所用数据：{dataset_cell(runs, device, lang)}。" if zh else
                  f"Data of the runs on this page: {dataset_cell(runs, device, lang)}."]
    return lines


_TIMING = {
    Lang.ZH: {"sync": "每步都同步设备（torch.cuda.synchronize）后计时", "events": "以每步前后记录的 CUDA event "
              "量设备上的执行时间", "cpu": "在 CPU 上计算同步进行，按主机时间计"},
    Lang.EN: {"sync": "timed with the device synchronised at every step (torch.cuda.synchronize)",
              "events": "timed by CUDA events recorded around every step (the device's execution time)",
              "cpu": "host time of the step (CPU work is synchronous)"},
}


def perf_notes(runs: list[RunRecord], device: str, lang: Lang) -> list[str]:
    """The notes under the 性能指标 table: which figures the rows are (the JSON's ``flagperf`` set; the steady set
    is at the JSON's top level), how p_core was timed (FlagPerf's own timer on one card measures kernel
    launches only), and the FlagPerf config each run's fix_hp and 额外修改项 compare with."""
    zh = lang is Lang.ZH
    labels = run_labels(runs, device, lang)
    ordered = sort_runs(runs)
    def how(r: RunRecord) -> str:
        kind = "cpu" if r.vendor == "none" else r.figures.p_core_timing
        return _TIMING[lang].get(kind, kind)
    timing = _grouped([(r.path, how(r)) for r in ordered], labels, len(runs))
    timed = ("；" if zh else "; ").join(_tagged(t, rs, lang) for t, rs in timing)
    cases = _grouped([(r.path, "_base.py" if r.case.name == "base" else f"config_{r.case.name}.py")
                      for r in ordered], labels, len(runs))
    against = ("；" if zh else "; ").join(_tagged(t, rs, lang) for t, rs in cases)
    if zh:
        return ["注：", "",
                "- 性能指标为 metrics JSON 中 `flagperf` 一组（FlagPerf 的定义）：e2e_time 自导入之后的运行开始计，含训练前的"
                "评估（--initial-eval）；每轮训练图像数记为 len(dataset)；预热步计入 p_*；acc 为最后一次评估各批 top-1 的平均。去掉预热步、"
                "按实际训练图像数计的稳态一组（`figure_set` 为 `steady`）在同一 JSON 的顶层。",
                f"- p_core：{timed}；FlagPerf 自身的计时在单卡（1x1）运行中不同步设备，只计到 kernel 发射为止。",
                f"- fix_hp 与额外修改项对照的 FlagPerf 配置：{against}；fix_hp 为 `/` 表示该行每卡 batch 与学习率与此配置相同，否则写出该行所用的值。"]
    return ["Notes:", "",
            "- The performance rows are the metrics JSON's `flagperf` set (FlagPerf's definitions): e2e_time from "
            "the run's start after the imports, the evaluation before training (--initial-eval) included; "
            "len(dataset) images per epoch; warm-up steps counted in p_*; acc the mean of the per-batch top-1 of "
            "the last evaluation. The steady set (warm-up left out, images actually trained; `figure_set` "
            "`steady`) is at the same JSON's top level.",
            f"- p_core: {timed}; FlagPerf's own timer does not synchronise the device in a one-card (1x1) run, so "
            "it measures kernel launches only.",
            f"- FlagPerf config that fix_hp and Other changes compare with: {against} ; a fix_hp of `/` "
            "means that row ran the config's per-card batch and learning rate, else the row's own values are shown."]


def default_device(r: RunRecord) -> str:
    """The accelerator model the run recorded, else its CPU model (a CPU run), else its ``device_name``."""
    env = r.environment
    return str(env.get("accelerator") or env.get("cpu") or r.device_name)


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
    t = _TEXT[lang]
    fill = {"device": device, "dataset": dataset_cell(runs, device, lang),
            "changes": changes_cell(extra_changes(runs, lang, device), lang)}
    general = [(name, value.format(**fill), note) for name, value, note in t["rows"]]
    perf = [performance_row(r, device, lang) for r in runs]
    lines = [*dataset_lines(runs, device, lang), "", section_heading(runs, device, lang),
             *environment_lines(runs, lang), *data_format_lines(runs, lang, device), "", t["run"], "",
             t["general"], "", *_table(t["general_header"], general), "", t["perf"], "",
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
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-"} and c for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    if len(tables) < 2:
        raise ValueError(f"a FlagPerf page has two tables, found {len(tables)}")
    return PageTables(tables[0], tables[1])
