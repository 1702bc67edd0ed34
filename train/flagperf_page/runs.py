"""Loading and checking the runs of a FlagPerf page: :func:`load_run` reads one ``train --metrics-json`` file into
a :class:`RunRecord` (every failure one :class:`RunFileError` line naming the file and the key), with the FlagPerf
config the run is compared with (:func:`case_for`), its fix_hp cell (:func:`fix_hp`, :func:`peak_lr`), and the
page's row order (:func:`sort_runs` by layout and :data:`PRECISION_ORDER`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

from train.flagperf_case import BASE, CONFIGS, CaseConfig, Vendor, case_config
from train.metrics import FlagPerfFigures
from train.precision import PAGE_LABEL, Precision
from train.report import DatasetSummary, Numerics  # the metrics JSON's blocks, read back as the writer's types

PRECISION_ORDER = ("fp32", "amp", "fp16", "bf16", "half")
"""Row order of the precision modes within a layout (FlagPerf's page: fp32, amp, then its fp16 written bf16)."""


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
        known_vendor = Vendor(vendor)
    except ValueError:
        return BASE
    like = next((case for case in CONFIGS.values() if case.vendor is known_vendor), None)
    if like is None:
        return replace(BASE, vendor=known_vendor)
    return replace(BASE, vendor=known_vendor, cudnn_benchmark=like.cudnn_benchmark,
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


def sort_runs(runs: list[RunRecord]) -> list[RunRecord]:
    """Layout order (nodes, processes per node), then precision (:data:`PRECISION_ORDER`, others last), then
    file."""
    def key(run: RunRecord):
        rank = PRECISION_ORDER.index(run.precision) if run.precision in PRECISION_ORDER else len(PRECISION_ORDER)
        return run.nodes, run.per_node, rank, run.precision, run.path
    return sorted(runs, key=key)


# --- reading a metrics JSON ----------------------------------------------------------------------------------------

_NUM = (int, float)
_KIND_WORDS = MappingProxyType({_NUM: "a number", int: "an integer", str: "a string", bool: "true or false",
                                dict: "an object", list: "a list"})
_BIG = 1e12  # a bound no real figure reaches (img/s, s, GiB, images): beyond it a JSON was edited or is damaged
_TIMINGS = ("events", "sync", "none")
_OLD = "written by an older train without FlagPerf's figures: rerun train to get FlagPerf's figures"


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

    def one_of(self, value: str, key: str, allowed: tuple[str, ...]) -> str:
        """``value`` where it is one of ``allowed``."""
        if value not in allowed:
            raise self.fail(key, f"{value!r} is not one of {', '.join(allowed)}")
        return value


def load_run(path: Path) -> RunRecord:
    """Read one ``train --metrics-json`` file.

    Raises:
        RunFileError: unreadable, not JSON, a ``--test-only`` run, written before the ``flagperf`` block existed
            ("rerun train to get FlagPerf's figures"), or a key the page needs missing or of the wrong kind (a
            missing ``environment`` is not an error: its fields then say unknown).
    """
    metrics = _metrics_object(Path(path))
    reader = _Reader(Path(path))
    config, nodes, per_node = _layout(reader, metrics)
    figures = _figures(reader, reader.get(metrics, "flagperf", dict))
    numerics = _numerics(reader, reader.get(metrics, "numerics", dict))
    dataset = _dataset(reader, reader.get(metrics, "dataset", dict))
    resolved = _check_resolved(reader, reader.get(metrics, "resolved_config", dict))
    environment = _environment(reader, metrics)
    try:
        case = case_for(resolved, environment.get("accelerator_vendor"))
    except KeyError as exc:
        raise reader.fail("resolved_config.flagperf_case", exc.args[0]) from None
    world_size = reader.get(metrics, "world_size", int, low=1)
    if nodes < 1 or per_node < 1:
        raise reader.fail("config", f"{config!r}: nodes and processes per node must be >= 1")
    return RunRecord(
        str(path), nodes, per_node, numerics.precision, numerics.page_label, fix_hp(resolved, world_size, case),
        figures, float(reader.get(metrics, "mem_used_gib", _NUM, low=0, high=_BIG)),
        float(reader.get(metrics, "mem_total_gib", _NUM, low=0, high=_BIG)),
        reader.get(metrics, "device_name", str), environment, numerics, dataset,
        reader.get(resolved, "loader", str, "resolved_config"), resolved, case, reader.get(metrics, "steps", int),
        reader.get(metrics, "epochs", int), reader.get(metrics, "target_reached_epoch", int, "", True),
        reader.get(metrics, "resumed_from_step", int))


def _metrics_object(path: Path) -> dict:
    """The JSON object of ``path``, refused (:class:`RunFileError`) where it is no training run's metrics JSON:
    unreadable, not JSON, not an object, a ``--test-only`` run, or one without the page's blocks."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFileError(f"{path}: not a readable metrics JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(metrics, dict):
        raise RunFileError(f"{path}: not a metrics JSON of train (a JSON object expected)")
    if metrics.get("test_only"):
        raise RunFileError(f"{path}: a --test-only run (a checkpoint evaluation) has no FlagPerf row: give the "
                           f"training run's metrics JSON")
    for block in ("flagperf", "numerics", "dataset", "resolved_config"):
        if metrics.get(block) is None:
            raise RunFileError(f"{path}: no {block}: {_OLD}")
    return metrics


def _layout(reader: _Reader, metrics: dict) -> tuple[str, int, int]:
    """The ``config`` label (``CUDAx1x8``) and its nodes and processes per node (not yet checked >= 1)."""
    config = reader.get(metrics, "config", str)
    try:
        _, nodes, per_node = config.split("x")
        return config, int(nodes), int(per_node)
    except ValueError:
        raise reader.fail("config", f"{config!r} is not <device>x<nodes>x<per node>") from None


def _figures(reader: _Reader, block: dict) -> FlagPerfFigures:
    """The ``flagperf`` block: s, img/s and % within their bounds, ``p_core_timing`` one of :data:`_TIMINGS`."""
    where = "flagperf"
    return FlagPerfFigures(
        reader.get(block, "e2e_time", _NUM, where, low=0, high=_BIG),
        reader.get(block, "p_whole", _NUM, where, True, 0, _BIG),
        reader.get(block, "p_train", _NUM, where, True, 0, _BIG),
        reader.get(block, "p_core", _NUM, where, True, 0, _BIG), reader.get(block, "acc1", _NUM, where, True, 0, 100),
        reader.get(block, "trained_images", int, where, low=0), reader.get(block, "converged", bool, where, True),
        reader.get(block, "initial_eval_s", _NUM, where, True),
        reader.one_of(reader.get(block, "p_core_timing", str, where), "flagperf.p_core_timing", _TIMINGS))


def _numerics(reader: _Reader, block: dict) -> Numerics:
    """The ``numerics`` block, its page label from :data:`train.precision.PAGE_LABEL` (not the JSON's)."""
    where = "numerics"
    precision = reader.get(block, "precision", str, where)
    try:
        label = PAGE_LABEL[Precision(precision)]
    except (ValueError, KeyError):
        raise reader.fail("numerics.precision", f"{precision!r} is not a precision mode of train "
                                                f"({', '.join(PRECISION_ORDER)})") from None
    return Numerics(
        precision, label, reader.get(block, "param_dtype", str, where), reader.get(block, "input_dtype", str, where),
        reader.get(block, "autocast_dtype", str, where, True), reader.get(block, "grad_scaler", bool, where),
        reader.get(block, "tf32", str, where), reader.get(block, "tf32_matmul", bool, where, True),
        reader.get(block, "tf32_cudnn", bool, where, True), reader.get(block, "tf32_mechanism", str, where, True),
        reader.get(block, "metax_use_tf32", str, where, True), reader.get(block, "cudnn_benchmark", bool, where),
        reader.get(block, "cudnn_deterministic", bool, where), reader.get(block, "channels_last", bool, where))


def _dataset(reader: _Reader, block: dict) -> DatasetSummary:
    where = "dataset"
    return DatasetSummary(reader.get(block, "data", str, where, True), reader.get(block, "name", str, where),
                          reader.get(block, "train_samples", int, where, low=0),
                          reader.get(block, "val_samples", int, where, low=0),
                          reader.get(block, "num_classes", int, where, low=1))


def _environment(reader: _Reader, metrics: dict) -> dict:
    """The ``environment`` block (an empty dict where it is missing or null), its ``dependencies`` an object."""
    environment = metrics.get("environment") or {}
    if not isinstance(environment, dict):
        raise reader.fail("environment", f"expected an object, got {environment!r}")
    if not isinstance(environment.get("dependencies", {}) or {}, dict):
        raise reader.fail("environment.dependencies", f"expected an object, got {environment['dependencies']!r}")
    return environment


def _check_resolved(reader: _Reader, resolved: dict) -> dict:
    """The ``resolved_config`` keys the page reads, each of its kind (the dict itself is returned)."""
    where = "resolved_config"
    reader.get(resolved, "flagperf_case", str, where, True)
    reader.get(resolved, "loader", str, where)
    _check_loader_cfg(reader, reader.get(resolved, "loader_cfg", dict, where))
    _check_optim(reader, reader.get(resolved, "optim", dict, where))
    reader.get(resolved, "epochs", int, where, low=1, high=_BIG)
    reader.get(resolved, "max_steps", int, where, True, 1, _BIG)
    reader.get(resolved, "seed", int, where)
    reader.get(resolved, "ema_decay", _NUM, where, True, 0, 1)
    reader.get(resolved, "target_acc1", _NUM, where, True, 0, 100)
    for key in ("eval", "zero_init_residual", "compile", "initial_eval"):
        reader.get(resolved, key, bool, where)
    resolution = reader.get(resolved, "resolution", dict, where, True)
    if resolution is not None:
        for key in ("start", "end", "ramp_start", "ramp_end", "eval"):
            reader.get(resolution, key, int, f"{where}.resolution", low=0, high=1_000_000)
    return resolved


def _check_loader_cfg(reader: _Reader, loader_cfg: dict) -> None:
    where = "resolved_config.loader_cfg"
    reader.get(loader_cfg, "batch_size", int, where, low=1, high=_BIG)
    reader.get(loader_cfg, "image_size", int, where, low=8, high=1_000_000)
    reader.get(loader_cfg, "workers", int, where, low=0, high=_BIG)
    reader.get(loader_cfg, "seed", int, where)
    reader.get(loader_cfg, "crop_pct", _NUM, where, low=1e-6, high=1)


def _check_optim(reader: _Reader, optim: dict) -> None:
    where = "resolved_config.optim"
    reader.get(optim, "lr", _NUM, where, True, 0, _BIG)
    for key in ("lr_per_256", "momentum", "weight_decay", "label_smoothing", "warmup_epochs", "gamma"):
        reader.get(optim, key, _NUM, where, low=0, high=_BIG)
    for key in ("nesterov", "decay_bn_and_bias"):
        reader.get(optim, key, bool, where)
    reader.get(optim, "schedule", str, where)
    for i, milestone in enumerate(reader.get(optim, "milestones", list, where)):
        if isinstance(milestone, bool) or not isinstance(milestone, int):
            raise reader.fail(f"{where}.milestones[{i}]", f"expected an integer, got {milestone!r}")
