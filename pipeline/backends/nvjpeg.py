"""``nvjpeg`` backend: webdataset shards → DataLoader workers (bytes only) → nvJPEG decode + crop on the device.

Its one job: turn one split's shards into device batches for one rank with the JPEG decode and the
augmentation on the accelerator (torchvision's nvJPEG binding, no DALI), so the host's cores only read tars.

Data flow and what runs where:

1. DataLoader workers (persistent, forked; ``--workers`` of them, 0 = in the training process) read their part
   of the epoch exactly as the cpu backend's do (:class:`pipeline.backends.shards.ShardSamples`: epoch plan, tar
   reader, train shuffle buffer; same samples per rank and epoch) and decode nothing. Each batch is handed over
   as one :class:`ByteBatch`: all its JPEG files concatenated in ONE flat uint8 tensor (written straight into
   shared memory), ``N+1`` int64 offsets, ``N`` int64 labels, and the keys, shards and a per-sample flag
   "nvJPEG can take it" read from the JPEG's frame header (:func:`nvjpeg_decodable`) as plain lists: three
   shared-memory segments per batch, however large it is.
2. In the training process, ONE producer thread (:func:`pipeline.backends.staging.prefetched` with
   ``depth`` :data:`PREFETCH_DEPTH` = 2: it draws the DataLoader's items and makes batch ``i+1`` and ``i+2``
   while batch ``i`` trains; torch's kernels and the decoder release the GIL) cuts the buffer into ``N`` views
   (no copy) and decodes the flagged ones with one ``torchvision.io.decode_jpeg(list, device=<device>,
   mode=RGB)`` call (batched nvJPEG on CUDA; on a machine without CUDA the same call decodes on the CPU), each
   into a ``3×H×W`` uint8 tensor on the device.
3. On the same thread, per image only Python: the EXIF check and the rng draws: train the crop box
   (RandomResizedCrop, scale 0.08-1, ratio 3/4-4/3, :func:`pipeline.read.transforms.random_resized_crop_box`)
   then a horizontal flip with p=0.5, from a ``random.Random`` seeded by (seed, epoch, rank, split), image by
   image. Then the whole batch is cropped and resized on the device in a few calls
   (:mod:`pipeline.backends.nvjpeg_crop`): train by size-bucket canvases and two batched matmuls whose weights
   are ``F.interpolate(bilinear, antialias=True)``'s of each crop, the flip folded in; val as torchvision's
   Resize(floor(size / crop_pct)) + CenterCrop(size) exactly (:func:`pipeline.read.transforms.center_crop_box`,
   :func:`~pipeline.read.transforms.resize_box_exact` on each group of equal-size images). Into an
   ``N×S×S×3`` float32 batch, rounded to uint8; then :func:`pipeline.backends.staging.normalize_on_device`:
   ``Batch.images`` ``N×3×S×S`` float32 ImageNet-normalised with channels-last strides (uint8 0..255 with
   ``LoaderConfig.normalize=False``), ``Batch.labels`` ``N`` int64 on the device (copied from pinned memory,
   :func:`~pipeline.backends.staging.to_device_pinned`), ``Batch.keys`` the samples' keys.
4. The consumer (the training loop's thread) only takes each batch from the queue, makes its stream wait for
   the batch's event and records the batch's tensors on its stream.

Stream rules (:mod:`pipeline.backends.staging`): the producer thread selects the device and makes its own side
stream current in its thread; each batch records an event on that stream, the consumer's stream waits for that
event only, and the batch's tensors are recorded on the consumer's stream so the caching allocator does not
reuse them early. An error while making a batch is raised in the consumer as it was raised; a consumer that
stops early (break, preemption, Ctrl-C, :meth:`NvjpegLoader.close`, or the next pass starting) stops and joins
the thread before the DataLoader is read again. Known traps of the GPU decoder
handled here (torchvision's CUDA decoder as of 0.29):

* ``decode_jpeg(device="cuda")`` allocates its outputs on the caller's current stream but decodes on a private
  stream without waiting for the caller's work (pytorch/vision#9606), and nvJPEG's hardware engine writes before
  work queued ahead of it on its own stream (meta-pytorch/torchcodec#1634): a block freed on the allocating
  stream while kernels still read it can be overwritten. So the decode runs with the side stream current, and
  the producer thread waits for the side stream (``Stream.synchronize``, not a device-wide sync) right before each call.
* The call blocks its thread until its decode is done (the producer thread: the training loop's thread goes on),
  and one bad bitstream fails the whole call with no partial result: the batch is then decoded one image at a
  time to find the culprits.
* CMYK / YCCK (4 components), arithmetic-coded, lossless, 12-bit and non-JPEG data are not given to nvJPEG (the
  header flag); ``decode_jpeg`` on the CPU converts CMYK to RGB; PNG and the rest go to PIL.
* nvJPEG leaks memory before CUDA 11.6 (torchvision warns once); files the hardware engine does not take
  (progressive ones; all of them on GPUs without the engine) are decoded one by one inside the call, on the SMs.
* torchvision 0.29 deprecates its decoders in favour of TorchCodec: the per-call DeprecationWarning is silenced.
* ``decode_jpeg`` ignores EXIF orientation (and older torchvisions cannot apply it): each decoded image is turned
  upright here (:func:`~pipeline.read.transforms.exif_orientation`, a header walk; a flip / transpose on the device
  only for a rotated image), as every backend does.

Robustness (the cpu backend's policy): a sample nvJPEG rejects is retried on the CPU (``decode_jpeg``, then PIL
through :mod:`pipeline.read.transforms`, which also crops it); one that decodes nowhere is named on stderr
(``warning: skipped sample <shard>: <key>: ...``) and kept in ``skipped``; in train another decoded sample of
the same batch takes its slot, in val it is left out; with ``LoaderConfig.on_bad_sample`` ``error`` it stops the
run instead. Damage that leaves a decodable bitstream (e.g. altered scan data) is not detected by any decoder and
gives wrong pixels.

Raises (while iterating): ``SampleDecodeError`` when not one sample of a batch decodes (or, with
``on_bad_sample`` ``error``, when one does not), ``ShardReadError`` for
an unreadable shard; at construction ``ValueError`` for missing data, bad options, or a CUDA device this
torchvision cannot decode on.
"""

from __future__ import annotations

import io
import itertools
import random
import warnings
from typing import Iterator, NamedTuple

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import get_worker_info
from torchvision.io import ImageReadMode

from pipeline.compat import decode_jpeg_one, decode_jpegs
from pipeline.backends import Batch, LoaderConfig, Split
from pipeline.backends.shards import ShardLoaderBase, ShardSamples, skip_reason
from pipeline.backends.nvjpeg_crop import TrainCrop, train_crops, val_crops
from pipeline.backends.staging import normalize_on_device, prefetched, to_device_pinned
from pipeline.dataset import DatasetInfo
from pipeline.read.transforms import decode_train, decode_val, exif_orientation, random_resized_crop_box, upright_chw

# Frame (SOF) markers that start a frame header; DHT (C4), JPG (C8) and DAC (CC) share the range but are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Huffman-coded baseline, extended sequential and progressive frames: what nvJPEG decodes (at 8 bits).
_NVJPEG_SOF = frozenset({0xC0, 0xC1, 0xC2})
# Batches the producer thread may make ahead of the one being trained (issue 22: a bounded queue of 2): enough to
# absorb a slow batch (a CPU fallback, a cold shard), few enough to bound the device memory (two batches).
PREFETCH_DEPTH = 2


class ByteBatch(NamedTuple):
    """One batch as a worker hands it over: the encoded files, not pixels.

    Attributes:
        data: ``B`` uint8, the ``N`` JPEG files concatenated (``B`` = their total size in bytes).
        offsets: ``N+1`` int64; file ``i`` is ``data[offsets[i]:offsets[i+1]]``.
        labels: ``N`` int64 class indices.
        keys: ``N`` sample keys.
        shards: ``N`` shard paths / URLs the samples come from (for messages).
        gpu_ok: ``N`` flags, :func:`nvjpeg_decodable` of each file.
    """

    data: torch.Tensor
    offsets: torch.Tensor
    labels: torch.Tensor
    keys: list[str]
    shards: list[str]
    gpu_ok: list[bool]


def nvjpeg_decodable(data: bytes) -> bool:
    """True when ``data`` is a JPEG nvJPEG can decode to RGB: its frame header (SOF) is Huffman baseline,
    extended or progressive, 8 bits per sample, 1 or 3 components. False for CMYK / YCCK, arithmetic-coded,
    lossless, 12-bit, non-JPEG and truncated headers (those go to the CPU decoders).
    """
    if data[:2] != b"\xff\xd8":
        return False
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length field
            pos += 2
            continue
        if marker in _SOF_MARKERS:
            return pos + 10 <= n and marker in _NVJPEG_SOF and data[pos + 4] == 8 and data[pos + 9] in (1, 3)
        if marker == 0xDA:  # a scan before any frame header: not a valid JPEG
            return False
        pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])
    return False


def pack_batch(chunk: list[tuple[str, str, bytes, int]], shared: bool) -> ByteBatch:
    """Samples ``(shard, key, jpg bytes, label)`` → one :class:`ByteBatch`; ``shared``: allocate ``data`` in shared
    memory (in a DataLoader worker, so the hand-off to the training process copies nothing)."""
    sizes = [len(sample[2]) for sample in chunk]
    bounds = [0, *itertools.accumulate(sizes)]
    data = torch.empty(bounds[-1], dtype=torch.uint8)
    if shared:
        data.share_memory_()
    flat = data.numpy()
    for (_, _, jpg, _), lo, hi in zip(chunk, bounds, bounds[1:]):
        flat[lo:hi] = np.frombuffer(jpg, dtype=np.uint8)
    labels = torch.tensor([sample[3] for sample in chunk], dtype=torch.int64)
    return ByteBatch(data, torch.tensor(bounds, dtype=torch.int64), labels, [sample[1] for sample in chunk],
                     [sample[0] for sample in chunk], [nvjpeg_decodable(sample[2]) for sample in chunk])


class ShardBytes(ShardSamples):
    """Iterable dataset of :class:`ByteBatch` for one rank (the cpu backend's plan and reader, nothing decoded)."""

    def __iter__(self) -> Iterator[ByteBatch]:
        shared = get_worker_info() is not None
        for _, chunk, _ in self.chunks():
            yield pack_batch(chunk, shared)


def _decode(streams: torch.Tensor | list[torch.Tensor], device: torch.device):
    """``torchvision.io.decode_jpeg(streams, mode=RGB, device=device)`` without its deprecation warning (0.29): a
    list in one batched call where torchvision has it (0.19+), else one call per file
    (:func:`pipeline.compat.decode_jpegs`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if isinstance(streams, list):
            return decode_jpegs(streams, ImageReadMode.RGB, device)
        return decode_jpeg_one(streams, ImageReadMode.RGB, device)


def batch_decode(streams: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode 1-D uint8 CPU tensors (JPEG files) into ``3×H×W`` uint8 tensors on ``device`` in one call; when
    that call fails (one bad file fails it all), one by one, with None for each file that does not decode."""
    if not streams:
        return []
    try:
        return list(_decode(streams, device))
    except (RuntimeError, ValueError):
        if device.type == "cuda":  # the failed call may leave nvJPEG work writing into outputs it already freed
            torch.cuda.synchronize(device)
    out: list[torch.Tensor | None] = []
    for stream in streams:
        try:
            out.append(_decode(stream, device))
        except (RuntimeError, ValueError):
            out.append(None)
    return out


def decode_images(streams: list[torch.Tensor], gpu_ok: list[bool], device: torch.device) -> list[torch.Tensor | None]:
    """Decode a batch's files into ``3×H×W`` uint8 RGB tensors on ``device``, None where no torchvision decoder
    can: the flagged files in one :func:`batch_decode` on ``device``; the others, and (on CUDA) those nvJPEG
    rejected, with ``decode_jpeg`` on the CPU, copied to ``device``."""
    out: list[torch.Tensor | None] = [None] * len(streams)
    first = [i for i, ok in enumerate(gpu_ok) if ok]
    for i, img in zip(first, batch_decode([streams[i] for i in first], device)):
        out[i] = img
    cpu = torch.device("cpu")
    for i, stream in enumerate(streams):
        if out[i] is None and (device.type != "cpu" or not gpu_ok[i]):
            try:
                out[i] = _decode(stream, cpu).to(device)
            except (RuntimeError, ValueError):
                pass  # PIL gets its turn in NvjpegLoader
    return out


def _check_device_decoder(device: torch.device) -> None:
    """Decode one tiny JPEG on ``device`` (also initialises nvJPEG before the first batch).

    Raises:
        ValueError: this torchvision cannot decode JPEGs on ``device`` (e.g. built without nvJPEG).
    """
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (20, 120, 220)).save(buf, "JPEG")
    try:
        _decode([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], device)
    except (RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or ["?"])[0]
        raise ValueError(f"--loader nvjpeg: torchvision {torchvision.__version__} cannot decode JPEGs on {device} "
                         f"({first}); use --loader cpu or dali") from None


class NvjpegLoader(ShardLoaderBase):
    """The ``nvjpeg`` backend for one split on one rank (see module docstring). Implements ``Loader``.

    Yields :class:`Batch`: ``N×3×S×S`` channels-last float32 normalised (uint8 with ``normalize=False``) on the
    device, ``N`` int64 labels, the keys; train: ``len(self)`` full batches, the same on every rank; val: every
    image of this rank's share once, the last batch maybe partial.
    """

    kind = "nvjpeg"
    pin_memory = False  # decode_jpeg reads the files on the host (nvJPEG stages them itself); pinning copies them

    def __init__(self, cfg: LoaderConfig, split: Split, info: DatasetInfo | None, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        super().__init__(cfg, split, info, device, rank, world_size)
        self._batches: Iterator[Batch] | None = None  # the current pass's prefetcher (its producer thread)
        if device.type == "cuda":
            _check_device_decoder(device)

    def make_dataset(self, info: DatasetInfo, split: Split, cfg: LoaderConfig, rank: int,
                     world_size: int) -> ShardBytes:
        return ShardBytes(info, split, cfg, rank, world_size)

    def __iter__(self) -> Iterator[Batch]:
        self._stop_producer()  # a previous pass left unfinished: its thread stops before the DataLoader is reused
        loader = self.worker_loader()
        rng = random.Random(f"{self.cfg.seed}/{self.dataset.epoch}/{self.rank}/{self.split.value}/nvjpeg")
        # made by one producer thread, PREFETCH_DEPTH ahead; host_sync: the host waits for the side stream before
        # each decode (decode_jpeg's stream hazard, above)
        self._batches = prefetched(loader, self.device, lambda item: self._to_batch(item, rng), host_sync=True,
                                   depth=PREFETCH_DEPTH)
        yield from self._batches

    def _stop_producer(self) -> None:
        """Close the last pass's batch generator: its producer thread is stopped and joined (no-op when none)."""
        batches, self._batches = self._batches, None
        if batches is not None:
            batches.close()

    def close(self) -> None:
        self._stop_producer()
        super().close()

    def _to_batch(self, item: ByteBatch, rng: random.Random) -> Batch:
        """One :class:`ByteBatch` → :class:`Batch` on the device (decode, crop, resize, flip, normalise).

        Runs on the producer thread: per image only the decode's list, the EXIF check and the rng draws (in the
        order the per-image path drew them); the crops of the batch are made by :mod:`~pipeline.backends.
        nvjpeg_crop` in a few calls. Labels travel through pinned memory.
        """
        n, size = len(item.keys), self.cfg.image_size
        bounds = item.offsets.tolist()  # a host tensor: no device sync
        streams = [item.data[bounds[i]:bounds[i + 1]] for i in range(n)]
        decoded = decode_images(streams, item.gpu_ok, self.device)
        crops = torch.empty((n, size, size, 3), dtype=torch.float32, device=self.device)
        on_device, ok, skipped = [], [], []
        for i in range(n):
            try:
                drawn = self._draw(i, decoded[i], streams[i], rng)
                if isinstance(drawn, torch.Tensor):
                    crops[i] = drawn  # decoded and cropped on the CPU
                else:
                    on_device.append(drawn)
                ok.append(i)
            except Exception as exc:
                skipped.append(skip_reason(item.shards[i], item.keys[i], exc))
        if self.split is Split.TRAIN:
            train_crops(on_device, crops)
        else:
            val_crops(on_device, crops, self.cfg.crop_pct)
        crops, labels, keys = self.dataset.policy.keep_decoded(crops, item.labels, list(item.keys), ok, skipped, rng)
        for what in skipped:  # named once the policy kept the batch (with --on-bad-sample error it raised)
            self.note_skipped(what)
        images = crops.round_().clamp_(0, 255).to(torch.uint8)  # N×S×S×3, as the other backends' batches
        return Batch(normalize_on_device(images, self.device, self.cfg.normalize),
                     to_device_pinned(labels, self.device), tuple(keys))

    def _draw(self, slot: int, img: torch.Tensor | None, stream: torch.Tensor, rng: random.Random):
        """What one decoded image needs before the batched crop: train a :class:`TrainCrop` (its RandomResizedCrop
        box, then its flip, drawn from ``rng``), val ``(slot, image)``; both with the image turned upright. ``img``
        None (no torchvision decoder took it): the ``S×S×3`` uint8 crop made here on the CPU by
        :mod:`pipeline.read.transforms` (libjpeg-turbo, then PIL), which draws from ``rng`` in the same order.

        Raises:
            PIL.UnidentifiedImageError / OSError: PIL cannot decode ``stream`` either.
        """
        size, train = self.cfg.image_size, self.split is Split.TRAIN
        if img is None:
            data = stream.numpy().tobytes()
            out = decode_train(data, size, rng) if train else decode_val(data, size, self.cfg.crop_pct)
            return out.to(self.device)
        img = upright_chw(img, exif_orientation(stream.numpy()))  # decode_jpeg leaves EXIF orientation to us
        if not train:
            return slot, img
        _, h, w = img.shape
        box = random_resized_crop_box(w, h, rng)
        return TrainCrop(slot, img, box, rng.random() < 0.5)
