"""FlagPerf's ResNet50 case as data: its base config, each vendor config of the case, and the numerics settings
its harness applies, read from FlagPerf's source (github.com/FlagOpen/FlagPerf, Apache-2.0; read, not copied).

Sources (paths in FlagPerf's repository):

* ``training/benchmarks/resnet50/pytorch/config/_base.py``: lr 0.1, weight_decay 1e-4, momentum 0.9,
  lr_steps 30, lr_gamma 0.1, train/eval batch 32, target_acc1 75.5, max_epoch 100, seed 0, num_workers 32,
  cudnn_benchmark False, cudnn_deterministic True.
* ``training/benchmarks/resnet50/pytorch/train/trainer.py``: torchvision ``resnet50()`` (default init), SGD over
  all parameters (weight decay on every one), plain cross-entropy, ``StepLR`` stepped once per epoch, no LR
  warm-up; an evaluation after every epoch; training ends after ``max_epoch`` epochs or at the first evaluation
  whose top-1 reaches ``target_acc1`` (``converged``).
* ``training/benchmarks/driver/helper.py`` (``InitHelper.set_seed``): ``torch.backends.cudnn.benchmark`` and
  ``.deterministic`` are set from the config for vendor ``nvidia`` only; for MetaX it sets neither (torch's
  defaults: benchmark off, deterministic off).
* TF32: FlagPerf sets none of torch's TF32 flags, so PyTorch's defaults hold (cuDNN convolutions may use TF32,
  float32 matmuls do not); FlagPerf's MetaX cases export ``METAX_USE_TF32=1`` in their
  ``config/environment_variables.sh`` (seen in e.g. ``training/metax/efficientnet-pytorch``).
* Vendor configs (each overrides the base): ``training/nvidia/resnet50-pytorch/config/config_A100x1x8.py``
  (lr 0.1, batch 32), ``config_A100x2x8.py`` (lr 0.8, batch 256); ``training/metax/resnet50-pytorch/config/
  config_C500x1x1.py`` (lr 0.8, batch 256, max_epoch 6), ``config_C500x1x8.py`` (lr 0.4, batch 128),
  ``config_C550x1x8.py`` (lr 0.4, batch 128).
* ``A100x1x1``: ``training/nvidia/resnet50-pytorch/config/config_A100x1x1.py`` as stored is an older layout
  (``learning_rate = 0.1``, ``train_batch_size = 32``, a sample-count termination); its lr and batch are the
  base's, so the config here is the base's (lr 0.1, batch 32). The A100 1x1 row of FlagPerf's NVIDIA page ran with
  fix_hp bs=256, lr=0.8: a change from this config, which the page's fix_hp column shows.
* ``C500x2x8``: the MetaX page has a 2x8 row; its config file was not found in FlagPerf's tree as read here. The
  values (lr 0.8, batch 256) are those the A100 2x8 config and issue 19's reading of FlagPerf give; marked
  ``verified=False``.

Precision is not part of a FlagPerf config name: ``fp16`` / ``amp`` are switches of the run (``config.fp16`` casts
model and inputs to bfloat16 since FlagPerf PR #253; ``config.amp`` is float16 autocast with a GradScaler); the
fix_hp rows of its pages for 16-bit runs used bs=512, lr=0.2 on A100 1x8.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from types import MappingProxyType
from typing import Mapping

from pipeline.backends import IMAGENET_TRAIN_SAMPLES, IMAGENET_VAL_SAMPLES


class Vendor(str, Enum):
    """FlagPerf's vendor folder names (``training/<vendor>/``)."""

    NVIDIA = "nvidia"
    METAX = "metax"


@dataclass(frozen=True)
class CaseConfig:
    """One config of FlagPerf's ResNet50 case, with what FlagPerf's harness does around it.

    Attributes:
        name: FlagPerf's name (``config_<name>.py``): ``A100x1x8``, ``C500x1x1``; ``base`` for ``_base.py``.
        vendor: the vendor folder (None: the base config).
        nodes / per_node: machines and accelerators per machine the config is for.
        lr: SGD learning rate as given (not scaled by world size); batch: train and eval batch per rank.
        momentum, weight_decay (on every parameter), lr_steps (epochs per StepLR decay), lr_gamma.
        max_epoch, target_acc1 (%), num_workers (DataLoader workers per rank), seed.
        cudnn_benchmark / cudnn_deterministic: what the harness sets (None: not set, torch's default: False).
        metax_use_tf32: the ``METAX_USE_TF32`` value the case exports (None: not set).
        verified: False where a value could not be read from FlagPerf's own file (see the module docstring).
    """

    name: str
    vendor: Vendor | None
    nodes: int
    per_node: int
    lr: float
    batch: int
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: int = 30
    lr_gamma: float = 0.1
    max_epoch: int = 100
    target_acc1: float = 75.5
    num_workers: int = 32
    seed: int = 0
    cudnn_benchmark: bool | None = False
    cudnn_deterministic: bool | None = True
    metax_use_tf32: str | None = None
    verified: bool = True

    @property
    def layout(self) -> str:
        return f"{self.nodes}x{self.per_node}"

    @property
    def world_size(self) -> int:
        return self.nodes * self.per_node

    @property
    def milestones(self) -> tuple[int, ...]:
        """StepLR(step_size=lr_steps) as epoch milestones within ``max_epoch`` (30, 60, 90 for 100 epochs)."""
        return tuple(range(self.lr_steps, self.max_epoch, self.lr_steps))


BASE = CaseConfig("base", None, 1, 1, lr=0.1, batch=32)

_NVIDIA = replace(BASE, vendor=Vendor.NVIDIA)
# helper.py sets no cuDNN flag for MetaX; the MetaX cases export METAX_USE_TF32=1
_METAX = replace(BASE, vendor=Vendor.METAX, cudnn_benchmark=None, cudnn_deterministic=None, metax_use_tf32="1")

CONFIGS: Mapping[str, CaseConfig] = MappingProxyType({case.name: case for case in (
    replace(_NVIDIA, name="A100x1x1", nodes=1, per_node=1, lr=0.1, batch=32),
    replace(_NVIDIA, name="A100x1x8", nodes=1, per_node=8, lr=0.1, batch=32),
    replace(_NVIDIA, name="A100x2x8", nodes=2, per_node=8, lr=0.8, batch=256),
    replace(_METAX, name="C500x1x1", nodes=1, per_node=1, lr=0.8, batch=256, max_epoch=6),
    replace(_METAX, name="C500x1x8", nodes=1, per_node=8, lr=0.4, batch=128),
    replace(_METAX, name="C500x2x8", nodes=2, per_node=8, lr=0.8, batch=256, verified=False),
    replace(_METAX, name="C550x1x8", nodes=1, per_node=8, lr=0.4, batch=128),
)})
"""FlagPerf's vendor configs of the case by name (read-only): NVIDIA's, then MetaX's, each by layout."""


def case_config(name: str | None) -> CaseConfig:
    """The config called ``name`` (``None`` or ``"base"``: the base config).

    Raises:
        KeyError: no such config (the message lists the known names).
    """
    if name in (None, "base"):
        return BASE
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"no FlagPerf ResNet50 config {name!r}; known: base, {', '.join(CONFIGS)}") from None


def is_imagenet(train_images: int, val_images: int) -> bool:
    """Whether a dataset of these sizes is ILSVRC2012's (1,281,167 train / 50,000 val images)."""
    return train_images == IMAGENET_TRAIN_SAMPLES and val_images == IMAGENET_VAL_SAMPLES
