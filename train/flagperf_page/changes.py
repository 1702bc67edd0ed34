"""The page's 额外修改项: every way a run differs from the FlagPerf config it is compared with and from what
FlagPerf's harness does around it. :func:`run_changes` applies the rules of :data:`_RULES` (one small function per
difference, in page order: :data:`CHANGE_KEYS`) to one run; :func:`extra_changes` gathers them over the runs of a
page into :class:`Change` items (naming the runs where not all share one); :func:`changes_cell` writes the cell.

The data pipeline is a difference for every run that reads webdataset tar shards (``--loader cpu|dali|nvjpeg``) or
synthetic tensors: FlagPerf reads a torchvision ImageFolder through a DataLoader; only ``--loader folder`` reads
the data as FlagPerf does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Optional, Tuple

from pipeline.read.geometry import CROP_PCT, eval_resize_size
from train.flagperf_case import CaseConfig, Vendor
from train.flagperf_page.cells import grouped, run_labels
from train.flagperf_page.runs import RunRecord, sort_runs
from train.flagperf_page.words import Lang, Words, epochs_en, joined, number, on_off, say, tagged

FLAGPERF_IMAGE_SIZE = 224  # FlagPerf's RandomResizedCrop(224); eval Resize(256) + CenterCrop(224)

CHANGE_KEYS = ("pipeline", "layout", "bn_sync", "channels_last", "tf32", "cudnn", "momentum", "weight_decay",
               "decay_bn_bias", "nesterov", "label_smoothing", "lr_warmup", "lr_schedule", "zero_init_residual", "ema",
               "image_size", "resolution", "crop_pct", "compile", "max_steps", "epochs", "initial_eval", "eval",
               "target_acc1", "workers", "seed", "precision", "resumed")
"""The 额外修改项 items in page order (see :func:`run_changes`)."""


@dataclass(frozen=True)
class Change:
    """One 额外修改项 item: ``key`` (stable id, :data:`CHANGE_KEYS`), its text, and the labels of the runs it
    is true of (empty: every run on the page)."""

    key: str
    text: str
    runs: tuple[str, ...] = ()


Item = Optional[Tuple[str, str]]
"""What a rule finds: (key, text), or None where the run does as FlagPerf does."""

_NONE = ("无", "none")
_ON = ("开", "on")


def _item(lang: Lang, key: str, label: Words, detail: Words, flagperf: Words) -> tuple[str, str]:
    """(key, ``<label>：<detail>（FlagPerf：<flagperf>）``), English ``<label>: <detail> (FlagPerf: <flagperf>)``."""
    label, detail, flagperf = say(label, lang), say(detail, lang), say(flagperf, lang)
    if lang is Lang.ZH:
        return key, f"{label}：{detail}（FlagPerf：{flagperf}）"
    return key, f"{label}: {detail} (FlagPerf: {flagperf})"


# --- the data pipeline, layout and numerics ------------------------------------------------------------------------

_FLAGPERF_PIPELINE = ("FlagPerf：torchvision ImageFolder + DataLoader，PIL 解码，worker 中做 torchvision 变换",
                      "FlagPerf: torchvision ImageFolder + DataLoader, PIL decode, torchvision transforms in the "
                      "workers")
_SHARDS = ("webdataset tar 分片（shard-imagenet 离线写成）", "webdataset tar shards (written offline by shard-imagenet)")
_DECODE = MappingProxyType({
    "cpu": ("，DataLoader 工作进程中以 libjpeg-turbo 解码和增强（--loader cpu）",
            ", decoded and augmented with libjpeg-turbo in DataLoader workers (--loader cpu)"),
    "dali": ("，NVIDIA DALI 在 GPU 上解码（--loader dali）", ", decoded on the GPU by NVIDIA DALI (--loader dali)"),
    "nvjpeg": ("，torchvision 的 nvJPEG 在 GPU 上解码（--loader nvjpeg）",
               ", JPEGs decoded on the GPU by torchvision's nvJPEG decoder (--loader nvjpeg)"),
})
_SYNTHETIC = ("随机张量的合成数据，不读取、不解码图像（--loader synthetic），acc 无意义",
              "synthetic data: random tensors, no image read or decoded (--loader synthetic), acc is meaningless")


def _pipeline(run: RunRecord, lang: Lang) -> Item:
    if run.loader == "folder":
        return None
    if run.loader == "synthetic":
        what = say(_SYNTHETIC, lang)
    elif run.loader in _DECODE:
        what = say(_SHARDS, lang) + say(_DECODE[run.loader], lang)
    else:
        what = f"--loader {run.loader}"
    if lang is Lang.ZH:
        return "pipeline", f"数据管线：{what}；{say(_FLAGPERF_PIPELINE, lang)}"
    return "pipeline", f"data pipeline: {what}; {say(_FLAGPERF_PIPELINE, lang)}"


def _layout(run: RunRecord, lang: Lang) -> Item:
    case = run.case
    if run.resolved.get("flagperf_case") in (None, "base") or (run.nodes, run.per_node) == (case.nodes, case.per_node):
        return None
    return _item(lang, "layout", ("布局", "layout"),
                 (f"按 {case.name} 的配置运行于 {run.layout}", f"{case.name}'s config run on {run.layout}"), case.layout)


def _bn_sync(run: RunRecord, lang: Lang) -> Item:
    if run.nodes * run.per_node <= 1:
        return None
    return _item(lang, "bn_sync", ("BN 统计量", "BN statistics"),
                 ("每次评估与检查点前在各 rank 间取平均", "averaged over ranks before every evaluation and checkpoint"),
                 ("DDP 默认，前向时广播 rank 0 的", "DDP's default: rank 0's, broadcast at each forward"))


def _channels_last(run: RunRecord, lang: Lang) -> Item:
    if not run.numerics.channels_last:
        return None
    return _item(lang, "channels_last", ("内存布局", "memory format"),
                 ("模型与输入为 channels-last", "model and inputs channels-last"), "NCHW")


def _on_accelerator(run: RunRecord) -> bool:
    """TF32 and cuDNN are compared for runs with an accelerator only."""
    return run.vendor != "none" and run.numerics.tf32_matmul is not None


def _env_value(value: str | None, lang: Lang) -> str:
    return value if value is not None else say(("未设置", "unset"), lang)


def _tf32(run: RunRecord, lang: Lang) -> Item:
    """FlagPerf: PyTorch's defaults (matmul off, cuDNN on); on MetaX also ``METAX_USE_TF32`` as the case exports
    it."""
    if not _on_accelerator(run):
        return None
    numerics, metax, expected = run.numerics, run.vendor == Vendor.METAX.value, run.case.metax_use_tf32
    parts = []
    if numerics.tf32_matmul:
        parts.append(say(("float32 矩阵乘 TF32 开", "float32 matmul TF32 on"), lang))
    if numerics.tf32_cudnn is False:
        parts.append(say(("cuDNN 卷积 TF32 关", "cuDNN convolution TF32 off"), lang))
    if metax and numerics.metax_use_tf32 != expected:
        parts.append(f"METAX_USE_TF32={_env_value(numerics.metax_use_tf32, lang)}")
    if not parts:
        return None
    theirs = say(("PyTorch 默认：矩阵乘关、cuDNN 卷积开", "PyTorch's defaults: matmul off, cuDNN convolutions on"), lang)
    if metax:
        theirs += say(("，", ", "), lang) + f"METAX_USE_TF32={_env_value(expected, lang)}"
    mode = say((f"（--tf32 {numerics.tf32}）", f" (--tf32 {numerics.tf32})"), lang)
    return _item(lang, "tf32", "TF32", joined(parts, lang) + mode, theirs)


def _harness_cudnn(case: CaseConfig) -> tuple[bool, bool]:
    """cuDNN (benchmark, deterministic) as FlagPerf's harness leaves them for a run compared with ``case``: the
    case's values where its vendor is NVIDIA (``helper.py`` sets them for vendor nvidia only), torch's defaults
    (False, False) elsewhere."""
    if case.vendor is Vendor.NVIDIA:
        return bool(case.cudnn_benchmark), bool(case.cudnn_deterministic)
    return False, False


def _cudnn(run: RunRecord, lang: Lang) -> Item:
    if not _on_accelerator(run):
        return None
    mine = (run.numerics.cudnn_benchmark, run.numerics.cudnn_deterministic)
    theirs = _harness_cudnn(run.case)
    if mine == theirs:
        return None

    def words(benchmark: bool, deterministic: bool) -> str:
        return joined((f"benchmark {on_off(benchmark, lang)}", f"deterministic {on_off(deterministic, lang)}"), lang)
    return _item(lang, "cudnn", "cuDNN", words(*mine), words(*theirs))


# --- the recipe ----------------------------------------------------------------------------------------------------

def _momentum(run: RunRecord, lang: Lang) -> Item:
    momentum = run.resolved["optim"]["momentum"]
    if math.isclose(momentum, run.case.momentum):
        return None
    return _item(lang, "momentum", ("动量", "momentum"), number(momentum), number(run.case.momentum))


def _weight_decay(run: RunRecord, lang: Lang) -> Item:
    decay = run.resolved["optim"]["weight_decay"]
    if math.isclose(decay, run.case.weight_decay):
        return None
    return _item(lang, "weight_decay", ("权重衰减", "weight decay"), number(decay), number(run.case.weight_decay))


def _decay_bn_bias(run: RunRecord, lang: Lang) -> Item:
    optim = run.resolved["optim"]
    if optim["decay_bn_and_bias"] or optim["weight_decay"] <= 0:
        return None
    return _item(lang, "decay_bn_bias", ("权重衰减范围", "weight decay scope"),
                 ("BN 参数与 bias 不衰减", "not on BN parameters and biases"), ("所有参数", "every parameter"))


def _nesterov(run: RunRecord, lang: Lang) -> Item:
    if not run.resolved["optim"]["nesterov"]:
        return None
    return _item(lang, "nesterov", "Nesterov", _ON, ("关", "off"))


def _label_smoothing(run: RunRecord, lang: Lang) -> Item:
    smoothing = run.resolved["optim"]["label_smoothing"]
    if smoothing <= 0:
        return None
    return _item(lang, "label_smoothing", ("标签平滑", "label smoothing"), number(smoothing), _NONE)


def _lr_warmup(run: RunRecord, lang: Lang) -> Item:
    warmup = run.resolved["optim"]["warmup_epochs"]
    if warmup <= 0:
        return None
    return _item(lang, "lr_warmup", ("学习率预热", "LR warm-up"),
                 (f"{number(warmup)} 轮线性预热", f"linear over {epochs_en(warmup)}"), _NONE)


def _flagperf_schedule(case: CaseConfig) -> Words:
    return (f"StepLR，每 {case.lr_steps} 轮 ×{number(case.lr_gamma)}",
            f"StepLR, x{number(case.lr_gamma)} every {case.lr_steps} epochs")


def _lr_schedule(run: RunRecord, lang: Lang) -> Item:
    """The run's schedule against FlagPerf's StepLR every ``lr_steps`` epochs: the milestones within the run's
    epochs, and gamma where there is a milestone."""
    optim, case, epochs, label = run.resolved["optim"], run.case, run.resolved["epochs"], ("学习率策略", "LR schedule")
    if optim["schedule"] != "step":
        mine = ("余弦退火至 0", "cosine to zero") if optim["schedule"] == "cosine" else optim["schedule"]
        return _item(lang, "lr_schedule", label, mine, _flagperf_schedule(case))
    milestones = [m for m in optim["milestones"] if 0 < m < epochs]
    steps = list(range(case.lr_steps, epochs, case.lr_steps))  # FlagPerf's StepLR(step_size=lr_steps)
    if milestones == steps and not (milestones and not math.isclose(optim["gamma"], case.lr_gamma)):
        return None
    at = joined(map(str, milestones), lang) or say(_NONE, lang)
    gamma = number(optim["gamma"])
    return _item(lang, "lr_schedule", label, (f"第 {at} 轮 ×{gamma}（{epochs} 轮内）",
                                              f"x{gamma} at epochs {at} (within {epochs} epochs)"),
                 _flagperf_schedule(case))


def _zero_init_residual(run: RunRecord, lang: Lang) -> Item:
    if not run.resolved["zero_init_residual"]:
        return None
    return _item(lang, "zero_init_residual", ("初始化", "initialisation"),
                 ("每个残差块最后一个 BN 的 γ 置零", "last BN gamma of every residual block zeroed"),
                 ("torchvision 默认初始化", "torchvision's default init"))


def _ema(run: RunRecord, lang: Lang) -> Item:
    decay = run.resolved["ema_decay"]
    if decay is None:
        return None
    return _item(lang, "ema", "EMA", (f"权重 EMA（decay {number(decay)}），另行评估；acc 为原权重的",
                                      f"weight EMA (decay {number(decay)}) evaluated too; acc is the raw weights'"),
                 _NONE)


# --- image sizes, evaluation and the run's length --------------------------------------------------------------------

def _image_size(run: RunRecord, lang: Lang) -> Item:
    size, crop = run.resolved["loader_cfg"]["image_size"], run.resolved["loader_cfg"]["crop_pct"]
    if run.resolved.get("resolution") is not None or size == FLAGPERF_IMAGE_SIZE:
        return None
    eval_size = eval_resize_size(size, crop)
    return _item(lang, "image_size", ("图像尺寸", "image size"),
                 (f"训练 RandomResizedCrop {size}，验证 Resize {eval_size} + CenterCrop {size}",
                  f"train RandomResizedCrop {size}, eval Resize {eval_size} + CenterCrop {size}"),
                 ("RandomResizedCrop 224，Resize 256 + CenterCrop 224",
                  "RandomResizedCrop 224, Resize 256 + CenterCrop 224"))


def _resolution(run: RunRecord, lang: Lang) -> Item:
    resolution = run.resolved.get("resolution")
    if resolution is None:
        return None
    start, end, ramp_start, ramp_end, evaluated = (resolution[k] for k in ("start", "end", "ramp_start", "ramp_end",
                                                                           "eval"))
    return _item(lang, "resolution", ("渐进分辨率", "progressive resolution"),
                 (f"训练边长第 {ramp_start} 轮前 {start} px、第 {ramp_end} 轮起 {end} px，验证 {evaluated} px",
                  f"train side {start} px up to epoch {ramp_start}, {end} px from epoch {ramp_end}, "
                  f"eval {evaluated} px"),
                 ("训练与验证固定 224 px", "train and eval at 224 px"))


def _crop_pct(run: RunRecord, lang: Lang) -> Item:
    crop = run.resolved["loader_cfg"]["crop_pct"]
    if math.isclose(crop, CROP_PCT):
        return None
    return _item(lang, "crop_pct", ("验证裁剪比例", "eval crop ratio"), f"crop_pct {number(crop)}", "224/256 = 0.875")


def _compile(run: RunRecord, lang: Lang) -> Item:
    return _item(lang, "compile", "torch.compile", _ON, "eager") if run.resolved["compile"] else None


def _run_length(run: RunRecord, lang: Lang) -> Item:
    """``max_steps``: cut short by ``--max-steps`` before the target; else ``epochs``: other epochs than the case's
    ``max_epoch`` without reaching the target, or the target reached after ``max_epoch``."""
    case, resolved, reached, steps = run.case, run.resolved, run.target_reached_epoch, run.steps
    epochs, target, max_steps = resolved["epochs"], resolved["target_acc1"], resolved["max_steps"]
    until = (f"最多 {case.max_epoch} 轮，acc 达 {number(case.target_acc1)}% 即停",
             f"up to {case.max_epoch} epochs, stopping once acc reaches {number(case.target_acc1)}%")
    if max_steps is not None and steps >= max_steps and reached is None:
        return _item(lang, "max_steps", ("提前截止", "cut short"),
                     (f"第 {steps} 步停止（--max-steps {max_steps}，{run.epochs_run} 轮）",
                      f"stopped at step {steps} (--max-steps {max_steps}, {epochs_en(run.epochs_run)})"), until)
    if reached is None and epochs != case.max_epoch:
        return _item(lang, "epochs", ("训练轮数", "epochs"),
                     (f"最多 {epochs} 轮{'，未达目标' if target is not None else ''}",
                      f"up to {epochs}{', target not reached' if target is not None else ''}"), until)
    if reached is not None and reached > case.max_epoch:
        return _item(lang, "epochs", ("训练轮数", "epochs"),
                     (f"第 {reached} 轮达到目标", f"target reached in epoch {reached}"), until)
    return None


def _initial_eval(run: RunRecord, lang: Lang) -> Item:
    if run.resolved["initial_eval"]:
        return None
    return _item(lang, "initial_eval", ("训练前评估", "initial evaluation"), _NONE,
                 ("训练前评估一次，计入 e2e_time", "one before training, inside e2e_time"))


def _eval(run: RunRecord, lang: Lang) -> Item:
    if run.resolved["eval"]:
        return None
    return _item(lang, "eval", ("评估", "evaluation"), ("不做每轮评估，acc 记 /", "none after the epochs, acc is /"),
                 ("每轮后评估", "after every epoch"))


def _target_acc1(run: RunRecord, lang: Lang) -> Item:
    target = run.resolved["target_acc1"]
    if target is not None and math.isclose(target, run.case.target_acc1):
        return None
    mine = ("无（训满全部轮次）", "none (every epoch runs)") if target is None else f"{number(target)}%"
    return _item(lang, "target_acc1", "target_acc1", mine, f"{number(run.case.target_acc1)}%")


# --- the loader, seeds, precision and resumption ---------------------------------------------------------------------

def _workers(run: RunRecord, lang: Lang) -> Item:
    workers = run.resolved["loader_cfg"]["workers"]
    if workers == run.case.num_workers:
        return None
    return _item(lang, "workers", ("数据加载进程", "loader workers"), (f"每进程 {workers} 个", f"{workers} per rank"),
                 str(run.case.num_workers))


def _seed(run: RunRecord, lang: Lang) -> Item:
    model_seed, data_seed = run.resolved["seed"], run.resolved["loader_cfg"]["seed"]
    if model_seed == run.case.seed and data_seed == run.case.seed:
        return None
    return _item(lang, "seed", ("随机种子", "seed"),
                 (f"模型 {model_seed}、数据 {data_seed}", f"model {model_seed}, data {data_seed}"), str(run.case.seed))


def _precision(run: RunRecord, lang: Lang) -> Item:
    if run.precision not in ("bf16", "half"):
        return None
    return _item(lang, "precision", ("数据精度", "precision"),
                 (f"{run.page_label}，非 FlagPerf 的模式", f"{run.page_label}, not a FlagPerf mode"), "fp32 / amp / fp16")


def _resumed(run: RunRecord, lang: Lang) -> Item:
    step = run.resumed_from_step
    if step <= 0:
        return None
    return _item(lang, "resumed", ("续训", "resumed"),
                 (f"自第 {step} 步的检查点继续", f"from a checkpoint at step {step}"), ("一次运行到底", "one uninterrupted run"))


_RULES: tuple[Callable[[RunRecord, Lang], Item], ...] = (
    _pipeline, _layout, _bn_sync, _channels_last, _tf32, _cudnn, _momentum, _weight_decay, _decay_bn_bias, _nesterov,
    _label_smoothing, _lr_warmup, _lr_schedule, _zero_init_residual, _ema, _image_size, _resolution, _crop_pct,
    _compile, _run_length, _initial_eval, _eval, _target_acc1, _workers, _seed, _precision, _resumed)
"""One rule per difference, in :data:`CHANGE_KEYS` order: (run, language) -> (key, text) or None."""


def run_changes(run: RunRecord, lang: Lang) -> list[tuple[str, str]]:
    """Every way ``run`` differs from its FlagPerf config (``run.case``) and FlagPerf's harness, as (key, text) in
    :data:`CHANGE_KEYS` order. bs / lr are not here (they are fix_hp). Compared: the data pipeline (see the
    module docstring), the layout against a named case's, BN statistics over several ranks, channels-last, TF32
    (FlagPerf: PyTorch's defaults, matmul off / cuDNN on; MetaX: ``METAX_USE_TF32`` as the case exports it; runs
    with an accelerator only), cuDNN benchmark / deterministic (as the harness sets them; accelerator runs only),
    the recipe (momentum, weight decay and whether on BN / bias, Nesterov, label smoothing, LR warm-up, schedule:
    the run's milestones within its epochs and gamma against FlagPerf's StepLR every ``lr_steps`` epochs,
    zero-init residual), EMA, image size (FlagPerf: 224), progressive resolution, the eval crop ratio (FlagPerf:
    224/256), torch.compile, a run cut short (``--max-steps``, or other epochs than the case's ``max_epoch``
    without reaching its target), no initial evaluation, no evaluation, target_acc1, DataLoader workers, seeds, a
    precision FlagPerf does not have (amp-bf16, fp16-ieee), a resumed run."""
    found = [rule(run, lang) for rule in _RULES]
    return sorted((item for item in found if item is not None), key=lambda item: CHANGE_KEYS.index(item[0]))


def extra_changes(runs: list[RunRecord], lang: Lang, device: str) -> list[Change]:
    """The 额外修改项 items of the page: :func:`run_changes` of every run, one item per distinct text, in
    :data:`CHANGE_KEYS` order, each naming its runs when not all runs share it (``device``: as the 配置 cells)."""
    labels = run_labels(runs, device, lang)
    per_key: dict[str, list[tuple[str, str]]] = {}
    for run in sort_runs(runs):
        for key, text in run_changes(run, lang):
            per_key.setdefault(key, []).append((run.path, text))
    return [Change(key, text, names) for key in CHANGE_KEYS if key in per_key
            for text, names in grouped(per_key[key], labels, len(runs))]


def changes_cell(changes: list[Change], lang: Lang) -> str:
    """The 额外修改项 cell: ``无`` / ``none``, else the items numbered and joined by ``<br>``."""
    if not changes:
        return say(_NONE, lang)
    return "<br>".join(f"{i}. {tagged(change.text, change.runs, lang)}" for i, change in enumerate(changes, 1))
