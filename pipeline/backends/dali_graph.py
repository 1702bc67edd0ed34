"""What the ``dali`` backend runs and reads, shared by its loader (:mod:`pipeline.backends.dali`) and its stage
measurement (:mod:`pipeline.backends.dali_stages`): DALI's import (:func:`import_dali`), the option and shard
checks made before DALI opens anything (:func:`check_options`, :func:`checked_shards`), DALI's errors turned into
one line (:func:`failure`), the pipeline graph (:func:`make_graph`, with torchvision's val crop box computed in
the graph: :func:`val_crop_roi`; the nvJPEG settings of its decoders, :func:`decoder_options`, and what its image
output holds, :func:`emitted`, both from the backend's :class:`~pipeline.backends.DaliConfig`), and DALI's CPU
outputs turned into torch tensors (:func:`host_batch`, :func:`host_labels`). DALI itself is imported only inside
functions: importing this module does not import it.
"""

from __future__ import annotations

import os
import re
import warnings
from types import MappingProxyType

import numpy as np
import torch

from pipeline.backends import IMAGENET_MEAN_255, IMAGENET_STD_255, DaliConfig, DaliOutput, LoaderConfig
from pipeline.dataset import DatasetInfo
from pipeline.read.shardcheck import CheckedShards, check_split
from pipeline.read.transforms import RRC_RATIO, RRC_SCALE, eval_resize_size

INSTALL_HINT = "--loader dali needs NVIDIA DALI: pip install 'imagenet-pipeline[dali]' (nvidia-dali-cuda130)"
READER_NAME = "Reader"
# the components the reader takes → their exact size in bytes (None: any > 0)
MEMBERS = MappingProxyType({"jpg": None, "lbl": 4})
GRAPH_STAGES = ("read", "decode", "augment")  # where make_graph can cut the graph (the last: the whole graph)


def import_dali():
    """Import DALI's modules: ``(pipeline_def, fn, types)``.

    Raises:
        ValueError: DALI is not installed (one line, with the install command).
    """
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    return pipeline_def, fn, types


def dali_version() -> str:
    import nvidia.dali

    return str(nvidia.dali.__version__)


def check_options(cfg: LoaderConfig, info: DatasetInfo | None, rank: int, world_size: int) -> None:
    """Raises ValueError (one line) for a missing or remote dataset or invalid option values."""
    if info is None:
        raise ValueError("--loader dali needs --data DIR (a folder written by shard-imagenet)")
    if info.remote:
        raise ValueError(f"--loader dali reads shards from disk only, not {info.root}; copy them to a local or "
                         f"mounted folder, or stream them with --loader cpu")
    if not 0 <= rank < world_size:
        raise ValueError(f"bad loader options: rank={rank}, world_size={world_size}")


def checked_shards(info: DatasetInfo, split: str) -> CheckedShards:
    """The shards of ``split`` DALI reads, checked before DALI opens them (:func:`pipeline.read.shardcheck.check_split`:
    sizes against the manifest, every ``.idx`` parsed: a positive sample count equal to ``shard_lengths``, a ``.jpg``
    and a 4-byte ``.lbl`` in every sample, every member inside its file). A shard listed with 0 samples (which
    DALI refuses) is left out of DALI's shard list, with one warning line naming it; that moves no sample.

    Raises:
        pipeline.read.shardcheck.ShardCheckError (a ValueError): one line naming the shard, the sample key and line
            of its ``.idx`` where there is one, what is wrong and ``shard-imagenet verify``.
    """
    shards = check_split(info, split, MEMBERS)
    if shards.skipped:
        warnings.warn(f"{len(shards.skipped)} {split} shard(s) listed with 0 samples left out of DALI's shard list "
                      f"(DALI cannot read an empty shard): {', '.join(shards.skipped)}", stacklevel=3)
    return shards


# Lines of DALI's error text that wrap or locate the cause rather than say it (skipped by failure).
_DALI_NOISE = ("Critical error in pipeline", "Current pipeline object is no longer valid", "C++ context:",
               "Error in ", "which was used in", "File \"")


def _index_key(index_path: str, line: int) -> str:
    """The sample key on line ``line`` (1 = the first sample) of a ``.idx``, or "" when it cannot be read."""
    try:
        with open(index_path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        return lines[line].split()[3].rsplit("/", 1)[-1].split(".", 1)[0] if 0 < line < len(lines) else ""
    except (OSError, IndexError):
        return ""


def failure(exc: BaseException, split: str, root: str | os.PathLike) -> ValueError:
    """A DALI error → one-line ValueError: the failing operator and cause, the shard and sample key where DALI's
    text names an index line, what DALI needs of each sample, and ``shard-imagenet verify``."""
    text = str(exc)
    op = re.search(r"operator `nvidia\.dali\.fn\.([\w.]+)`", text)
    body = text.split("encountered:", 1)[-1]
    cause = next((ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith(_DALI_NOISE)),
                 type(exc).__name__)
    where = ""
    at_index = re.search(r'index file at "([^"]+)" line (\d+)', text)
    at_tar = re.search(r'([^\s"]+\.tar)\b', text)
    if at_index:
        key = _index_key(at_index[1], int(at_index[2]))
        where = f"shard {os.path.splitext(at_index[1])[0]}.tar{', sample ' + key if key else ''}: "
    elif at_tar:
        where = f"shard {at_tar[1]}: "
    return ValueError(f"DALI failed reading the {split} shards in {root}: {where}{op[1] + ': ' if op else ''}"
                      f"{cause[:200]}; every sample needs a KEY.jpg (a JPEG) and a 4-byte KEY.lbl, and DALI cannot "
                      f"skip a damaged one: run `shard-imagenet verify {root}` to find it, or train with --loader "
                      f"cpu, which skips and names such samples")


def val_crop_roi(jpegs, size: int, crop_pct: float):
    """In-graph, per sample: the source region ``(roi_start, roi_end)`` (``[y, x]``, absolute pixels, float32) of
    torchvision's ``Resize(eval_resize_size(size, crop_pct))`` + ``CenterCrop(size)``, the box of
    :func:`pipeline.read.transforms.center_crop_box`, from the JPEG header (``fn.peek_image_shape``, which follows
    EXIF orientation as the decoder does). Resampling it with ``fn.resize(size=..., roi_start=..., roi_end=...)``
    keeps torchvision's integer crop box (``resize_shorter`` + ``crop_mirror_normalize(crop=...)`` rounds the
    long side and places the crop by DALI's own rounding: 4.4/255 mean from torchvision at 224 px).

    Resized ``H' = s * H // short``, ``W'`` likewise; the corner ``round_half_even((H' - size) / 2)`` in integer
    DALI arithmetic: with ``m = H' - size``, ``q = m // 2``, it is ``q + (m - 2q) * (q - 2 (q // 2))``.
    """
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    shape = fn.peek_image_shape(jpegs, dtype=types.INT64)  # H, W, C
    h, w = shape[0], shape[1]
    short_side = eval_resize_size(size, crop_pct)
    new_h, new_w = short_side * h // dmath.min(h, w), short_side * w // dmath.min(h, w)

    def corner(n):
        q = (n - size) // 2
        return q + (n - size - 2 * q) * (q - 2 * (q // 2))

    top, left = corner(new_h), corner(new_w)
    fy, fx = fn.cast(h, dtype=types.FLOAT64) / new_h, fn.cast(w, dtype=types.FLOAT64) / new_w
    start = fn.stack(top * fy, left * fx)
    end = fn.stack((top + size) * fy, (left + size) * fx)
    return fn.cast(start, dtype=types.FLOAT), fn.cast(end, dtype=types.FLOAT)


def make_graph(cfg: LoaderConfig, train: bool, shards: CheckedShards, rank: int, world_size: int,
               device_id: int | None, last_stage: str = "augment"):
    """The pipeline definition over ``shards`` (:func:`checked_shards`) for shard ``rank`` of ``world_size``: call
    it (optionally with ``checkpoint=...`` or other ``Pipeline`` arguments, which override the ones given here) to
    get an unbuilt pipeline. ``device_id`` None: the graph runs on the CPU; else the decode is ``mixed`` (nvJPEG)
    with the nvJPEG settings of ``cfg``'s :class:`~pipeline.backends.DaliConfig` (:func:`decoder_options`), and with
    its ``labels_on_device`` the labels leave the graph on the GPU as int64 (``N×1``; else the reader's host int32).
    The image output holds what :func:`emitted` says.

    ``last_stage`` cuts the graph after a stage, for :func:`pipeline.backends.dali_stages.measure_stages`:
    ``"read"`` outputs the reader's (JPEG bytes, int32 label), ``"decode"`` the decoder's ``H×W×3`` uint8 images
    (train: already the random crop, decoded region only) and labels, ``"augment"`` (the whole graph, what the
    loader runs) the ``S×S×3`` batch.

    Raises:
        ValueError: ``last_stage`` is none of those three.
    """
    if last_stage not in GRAPH_STAGES:
        raise ValueError(f"last_stage must be one of {', '.join(GRAPH_STAGES)}, got {last_stage!r}")
    pipeline_def, fn, types = import_dali()
    paths, index_paths = list(shards.paths), list(shards.index_paths)
    dali = cfg.options_for(DaliConfig)
    decode_device = "cpu" if device_id is None else "mixed"

    @pipeline_def(batch_size=cfg.batch_size, num_threads=max(1, cfg.workers), device_id=device_id,
                  seed=cfg.seed + 1_000_003 * rank, prefetch_queue_depth=2, enable_checkpointing=train)
    def graph():
        jpegs, labels = fn.readers.webdataset(
            paths=paths, index_paths=index_paths, ext=list(MEMBERS), dtypes=[types.UINT8, types.INT32],
            missing_component_behavior="error", shard_id=rank, num_shards=world_size, random_shuffle=train,
            initial_fill=max(1, cfg.shuffle_buffer), seed=cfg.seed, pad_last_batch=True,
            stick_to_shard=not train, name=READER_NAME)
        if last_stage == "read":
            return jpegs, labels
        images = _decoded(jpegs, train, decode_device, decoder_options(dali, decode_device, train))
        if last_stage == "decode":
            return images, labels
        if dali.labels_on_device and device_id is not None:
            labels = fn.cast(labels.gpu(), dtype=types.INT64)  # no host -> device copy per step
        return _augmented(images, jpegs, cfg, train), labels

    return graph


def decoder_options(dali: DaliConfig, decode_device: str, train: bool) -> dict[str, float | int]:
    """The nvJPEG settings of ``dali`` a decoder on ``decode_device`` takes, as DALI's argument names: none on
    ``"cpu"`` (they apply to the ``mixed`` decoder only); on ``"mixed"``, ``hw_decoder_load`` and the hardware
    decoder's ``preallocate_width_hint`` / ``preallocate_height_hint``, and on the train decoder only (as DLE) the
    nvJPEG ``device_memory_padding`` / ``host_memory_padding`` (bytes)."""
    if decode_device != "mixed":
        return {}
    options: dict[str, float | int] = {"hw_decoder_load": dali.hw_decoder_load,
                                       "preallocate_width_hint": dali.preallocate_width_hint,
                                       "preallocate_height_hint": dali.preallocate_height_hint}
    if train:
        options.update(device_memory_padding=dali.device_memory_padding, host_memory_padding=dali.host_memory_padding)
    return options


def emitted(cfg: LoaderConfig) -> DaliOutput:
    """What the graph's image output holds: ``cfg``'s :attr:`DaliConfig.output <pipeline.backends.DaliConfig>` with
    ``normalize`` on (ImageNet-normalised float32 / float16, or uint8 for torch to normalise), else uint8 0..255."""
    return cfg.options_for(DaliConfig).output if cfg.normalize else DaliOutput.UINT8


def _decoded(jpegs, train: bool, decode_device: str, options: dict[str, float | int]):
    """In-graph: the JPEGs decoded to RGB on ``decode_device`` (train: only a random crop region, RandomResizedCrop's
    area and ratio ranges), with the nvJPEG ``options`` of :func:`decoder_options`."""
    _, fn, types = import_dali()
    if train:
        return fn.decoders.image_random_crop(jpegs, device=decode_device, output_type=types.RGB,
                                             random_area=list(RRC_SCALE), random_aspect_ratio=list(RRC_RATIO),
                                             num_attempts=10, **options)
    return fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB, **options)


def _augmented(images, jpegs, cfg: LoaderConfig, train: bool):
    """In-graph: decoded images → the ``S×S×3`` batch (train: resize + random mirror; val: torchvision's Resize +
    CenterCrop box), ImageNet-normalised float32 / float16, or uint8 (:func:`emitted`)."""
    _, fn, types = import_dali()
    size = cfg.image_size
    output = emitted(cfg)
    if output is DaliOutput.UINT8:
        norm = dict(dtype=types.UINT8)
    else:
        norm = dict(dtype=types.FLOAT if output is DaliOutput.FLOAT32 else types.FLOAT16,
                    mean=list(IMAGENET_MEAN_255), std=list(IMAGENET_STD_255))
    if train:
        images = fn.resize(images, resize_x=size, resize_y=size)
        return fn.crop_mirror_normalize(images, output_layout="HWC", mirror=fn.random.coin_flip(probability=0.5),
                                        **norm)
    roi_start, roi_end = val_crop_roi(jpegs, size, cfg.crop_pct)  # torchvision's Resize + CenterCrop box
    images = fn.resize(images, size=[size, size], roi_start=roi_start, roi_end=roi_end, roi_relative=False)
    return fn.crop_mirror_normalize(images, output_layout="HWC", **norm)


def host_labels(labels) -> torch.Tensor:
    """DALI's CPU int32 (or int64) label batch → ``N`` int64 tensor."""
    return torch.from_numpy(np.array(labels.as_tensor(), dtype=np.int64).reshape(-1))


def host_batch(images, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """DALI's CPU outputs → (``N×S×S×3`` tensor copied out of DALI's buffer, which DALI reuses; ``N`` int64)."""
    return torch.from_numpy(np.array(images.as_tensor(), copy=True)), host_labels(labels)


__all__ = ["GRAPH_STAGES", "INSTALL_HINT", "MEMBERS", "READER_NAME", "check_options", "checked_shards",
           "dali_version", "decoder_options", "emitted", "failure", "host_batch", "host_labels", "import_dali",
           "make_graph", "val_crop_roi"]
