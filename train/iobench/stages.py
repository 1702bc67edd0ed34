"""Where input-pipeline time goes: per-stage cost of each decode backend, and the raw storage read rate.

:func:`measure_stages` runs one backend in-process on one core and splits its time into the stages
``read`` (shard / file bytes), ``decode`` (JPEG → RGB), ``augment`` (crop, resize, flip) and ``collate``
(assembling the batch), in seconds per image. :func:`storage_read_rate` reads a split's shard files
sequentially, after asking the kernel to drop them from the page cache, to tell how fast the storage itself
delivers bytes. Both feed ``io-bench``.

DALI is imported only inside :func:`measure_stages` for ``kind="dali"``: a CPU-only install never imports it.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.backends import LoaderConfig, LoaderKind, Split
from pipeline.backends import STAGES
from pipeline.dataset import DatasetInfo

READ_CHUNK = 1 << 20  # bytes per read() of storage_read_rate
# Filesystems whose page cache posix_fadvise cannot drop (the files live in memory) or may not reach (the
# server's cache).
MEMORY_FS = {"tmpfs", "ramfs", "devtmpfs", "rootfs", "hugetlbfs"}
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse",
              "fuse.mountpoint-s3", "fuse.juicefs", "fuse.glusterfs", "lustre", "gpfs", "ceph", "fuse.ceph",
              "beegfs", "virtiofs", "afs"}


@dataclass(frozen=True)
class StageCosts:
    """Per-stage cost of one backend.

    Attributes:
        backend: ``"cpu"``, ``"folder"`` or ``"dali"``.
        samples: images measured.
        seconds_per_image: stage → seconds per image on one core; keys exactly :data:`STAGES`.
        wall_seconds: wall time of the measured pass (single thread, in-process).
        note: how it was measured (one sentence).
    """

    backend: str
    samples: int
    seconds_per_image: dict[str, float]
    wall_seconds: float
    note: str = ""

    @property
    def total(self) -> float:
        """Seconds per image over all stages (one core)."""
        return sum(self.seconds_per_image.values())

    def to_json(self) -> dict:
        return {"backend": self.backend, "samples": self.samples,
                "seconds_per_image": {s: self.seconds_per_image[s] for s in STAGES},
                "total_seconds_per_image": self.total, "wall_seconds": self.wall_seconds, "note": self.note}


@dataclass(frozen=True)
class ReadRate:
    """Sequential read rate of a split's shard files.

    Attributes:
        bytes: bytes read.
        samples: samples those bytes hold (a partly read shard counts in proportion to its bytes read).
        seconds: wall time of the reads.
        cold: True when the files were dropped from the local page cache first.
        note: how it was measured, and caveats.
    """

    bytes: int
    samples: int
    seconds: float
    cold: bool
    note: str

    @property
    def mb_per_s(self) -> float:
        """Megabytes (1e6 bytes) per second."""
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else math.inf

    @property
    def img_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else math.inf

    def to_json(self) -> dict:
        return {"bytes": self.bytes, "samples": self.samples, "seconds": self.seconds, "cold": self.cold,
                "mb_per_s": self.mb_per_s, "img_per_s": self.img_per_s, "note": self.note}


@contextlib.contextmanager
def _one_torch_thread():
    """Run torch ops on one thread (as in a DataLoader worker), restoring the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check(image_size: int, batch_size: int, max_samples: int) -> None:
    if image_size < 8 or batch_size < 1 or max_samples < 1:
        raise ValueError(f"bad options: image_size={image_size}, batch_size={batch_size}, max_samples={max_samples}")


def measure_stages(kind: LoaderKind | str, info: DatasetInfo | None, data_root, image_size: int, batch_size: int,
                   max_samples: int, split: Split | str = Split.TRAIN) -> StageCosts:
    """Measure the per-stage cost of backend ``kind`` on ``split``, in process, on one core.

    Args:
        kind: ``cpu`` or ``dali`` (read ``info``'s shards) or ``folder`` (reads ``data_root/<split>``).
        info: the shard folder (``cpu``, ``dali``); unused by ``folder``.
        data_root: the ImageFolder root (``folder``); unused by the others.
        max_samples: images to time (after one untimed warm-up batch); fewer when the split ends first
            (``cpu``, ``folder``).

    Raises:
        ValueError: an unknown or unmeasurable kind (``synthetic``), missing inputs, bad options, or DALI not
            installed (``dali``).
    """
    kind = LoaderKind(kind)
    split = Split(split)
    _check(image_size, batch_size, max_samples)
    if kind is LoaderKind.CPU:
        return _measure_cpu(info, image_size, batch_size, max_samples, split)
    if kind is LoaderKind.FOLDER:
        return _measure_folder(data_root, image_size, batch_size, max_samples, split)
    if kind is LoaderKind.DALI:
        return _measure_dali(info, image_size, batch_size, max_samples, split)
    raise ValueError(f"no stages to measure for the {kind.value} backend (use cpu, folder or dali)")


# --------------------------------------------------------------------------------------------------- cpu


def _measure_cpu(info, image_size, batch_size, max_samples, split) -> StageCosts:
    from pipeline.backends.cpu import CpuLoader

    if info is None:
        raise ValueError("the cpu backend needs a shard folder (info)")
    # shuffle_buffer=1: tar reads are spread evenly over the batches instead of being front-loaded into the
    # buffer fill, so a pass over part of the epoch measures the read cost per image without bias.
    cfg = LoaderConfig(batch_size=batch_size, image_size=image_size, workers=0, shuffle_buffer=1, normalize=False)
    loader = CpuLoader(cfg=cfg, split=split, info=info, device=torch.device("cpu"))
    with _one_torch_thread():
        it = iter(loader)
        next(it, None)  # warm-up: imports, first file opens, allocator
        before = loader.stats().stages
        t0 = time.perf_counter()
        for _ in it:  # stages are counted before each batch is handed out (workers=0)
            if (loader.stats().stages - before).samples >= max_samples:
                break
        wall = time.perf_counter() - t0
        it.close()
        if (loader.stats().stages - before).samples == 0:  # a one-batch epoch: time the next one
            loader.set_epoch(1)
            it = iter(loader)
            t0 = time.perf_counter()
            for _ in it:
                if (loader.stats().stages - before).samples >= max_samples:
                    break
            wall = time.perf_counter() - t0
            it.close()
    spent = loader.stats().stages - before
    n = spent.samples
    if n == 0:
        raise ValueError(f"the {split.value} split yielded no batch to measure")
    per = spent.per_image()
    return StageCosts("cpu", n, per, wall, note="cpu: in-process (workers=0, one torch thread, no shuffle buffer), "
                                                "the loader's own per-stage timers")


# ------------------------------------------------------------------------------------------------ folder


def _measure_folder(data_root, image_size, batch_size, max_samples, split) -> StageCosts:
    from PIL import Image
    from torch.utils.data import default_collate
    from torchvision import datasets, transforms

    from pipeline.read.tarstream import is_url

    if data_root is None or is_url(data_root):
        raise ValueError("the folder backend needs a local ImageFolder root (data_root) holding train/ and val/")
    root = Path(data_root) / split.value
    try:
        dataset = datasets.ImageFolder(str(root))
    except (FileNotFoundError, OSError) as exc:
        raise ValueError(f"{root}: not an ImageFolder tree ({exc})") from None
    crop_pct = LoaderConfig(batch_size=batch_size).crop_pct
    if split is Split.TRAIN:  # the transforms of pipeline/backends/folder.py
        tf = transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                                 transforms.PILToTensor()])
    else:
        tf = transforms.Compose([transforms.Resize(round(image_size / crop_pct)), transforms.CenterCrop(image_size),
                                 transforms.PILToTensor()])
    samples = list(dataset.samples)
    if split is Split.TRAIN:
        random.Random(0).shuffle(samples)
    if not samples:
        raise ValueError(f"{root}: no images")
    warm, timed = samples[:batch_size], samples[batch_size:batch_size + max_samples]
    if not timed:  # fewer images than one batch: time them again after the warm-up
        timed = samples[:max_samples]
    clock = time.perf_counter
    totals = dict.fromkeys(STAGES, 0.0)

    def run(items, acc):
        for start in range(0, len(items), batch_size):
            batch = []
            for path, label in items[start:start + batch_size]:
                t0 = clock()
                with open(path, "rb") as f:
                    data = f.read()
                t1 = clock()
                img = Image.open(io.BytesIO(data))
                img.load()
                img = img.convert("RGB")
                t2 = clock()
                x = tf(img)
                t3 = clock()
                batch.append((x, label))
                acc["read"] += t1 - t0
                acc["decode"] += t2 - t1
                acc["augment"] += t3 - t2
            t0 = clock()
            default_collate(batch)
            acc["collate"] += clock() - t0

    with _one_torch_thread():
        run(warm, dict.fromkeys(STAGES, 0.0))
        t0 = clock()
        run(timed, totals)
        wall = clock() - t0
    n = len(timed)
    return StageCosts("folder", n, {s: totals[s] / n for s in STAGES}, wall,
                      note="folder: in-process loop over the ImageFolder files, torchvision transforms, "
                           "each stage timed around its call")


# -------------------------------------------------------------------------------------------------- dali


def _measure_dali(info, image_size, batch_size, max_samples, split) -> StageCosts:
    from pipeline.backends.dali import _import_dali

    pipeline_def, fn, types = _import_dali()  # ValueError with the install hint when DALI is missing
    import numpy as np

    if info is None:
        raise ValueError("the dali backend needs a shard folder (info)")
    if info.remote:
        raise ValueError(f"the dali backend reads shards from disk only, not {info.root}")
    paths = info.shard_paths(split.value)
    index_paths = [os.path.splitext(p)[0] + ".idx" for p in paths]
    for p in index_paths:
        if not os.path.isfile(p):
            raise ValueError(f"{p}: missing (DALI needs the .idx next to each shard); re-run shard-imagenet")
    train = split is Split.TRAIN
    crop_pct = LoaderConfig(batch_size=batch_size).crop_pct
    size = image_size
    cuda = torch.cuda.is_available()
    device_id = torch.cuda.current_device() if cuda else None
    decode_device = "mixed" if cuda else "cpu"
    batches = max(1, -(-max_samples // batch_size))

    def make(depth: int):
        # synchronous executor: run() returns when that iteration is done, so its time is that iteration's work
        @pipeline_def(batch_size=batch_size, num_threads=1, device_id=device_id, seed=1,
                      exec_pipelined=False, exec_async=False, prefetch_queue_depth=1)
        def graph():
            jpegs, labels = fn.readers.webdataset(
                paths=paths, index_paths=index_paths, ext=["jpg", "lbl"], dtypes=[types.UINT8, types.INT32],
                random_shuffle=False, pad_last_batch=True, name="Reader")
            if depth == 1:
                return jpegs, labels
            if train:
                images = fn.decoders.image_random_crop(jpegs, device=decode_device, output_type=types.RGB,
                                                       random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3],
                                                       num_attempts=10)
            else:
                images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB)
            if depth == 2:
                return images, labels
            if train:
                images = fn.resize(images, resize_x=size, resize_y=size)
                images = fn.crop_mirror_normalize(images, output_layout="HWC", dtype=types.UINT8,
                                                  mirror=fn.random.coin_flip(probability=0.5))
            else:
                images = fn.resize(images, resize_shorter=round(size / crop_pct))
                images = fn.crop_mirror_normalize(images, output_layout="HWC", dtype=types.UINT8, crop=(size, size))
            return images, labels

        pipe = graph()
        pipe.build()
        return pipe

    def to_host(images, labels):
        if cuda:
            images, labels = images.as_cpu(), labels.as_cpu()
        x = torch.from_numpy(np.array(images.as_tensor(), copy=True))
        y = torch.from_numpy(np.array(labels.as_tensor(), dtype=np.int64).reshape(-1))
        return x, y

    clock = time.perf_counter
    seconds = {}
    collate = wall = 0.0
    with _one_torch_thread():
        for depth in (1, 2, 3):
            pipe = make(depth)
            pipe.run()  # warm-up
            t0 = clock()
            for _ in range(batches):
                out = pipe.run()
                if depth == 3:
                    t1 = clock()
                    to_host(*out)
                    collate += clock() - t1
            seconds[depth] = clock() - t0
            if depth == 3:
                wall = seconds[3]
                seconds[3] -= collate
            del pipe
    n = batches * batch_size
    per = {"read": max(0.0, seconds[1]) / n, "decode": max(0.0, seconds[2] - seconds[1]) / n,
           "augment": max(0.0, seconds[3] - seconds[2]) / n, "collate": collate / n}
    where = "mixed (GPU) decode" if cuda else "CPU"
    crop = ("decode includes the random crop (DALI decodes only the crop region, ROI decode)" if train
            else "val decodes whole images")
    return StageCosts("dali", n, per, wall,
                      note=f"DALI ({where}, num_threads=1): by difference of partial pipelines (reader; + decoder; "
                           f"+ resize/crop/mirror), collate = copy of the output to a host batch; {crop}")


# ---------------------------------------------------------------------------------------------- storage


def _fs_type(path: str) -> str:
    """Filesystem type of the mount holding ``path`` (from /proc/self/mounts), or ``""`` when unknown."""
    try:
        real = os.path.realpath(path)
        best, kind = "", ""
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
        return kind
    except OSError:
        return ""


def _drop_cache(fd: int) -> str | None:
    """Ask the kernel to drop ``fd``'s file from the page cache; returns why it could not, or None."""
    if not hasattr(os, "posix_fadvise"):
        return "os.posix_fadvise is not available on this platform"
    try:
        os.fdatasync(fd)  # dirty pages (a freshly written shard) are not dropped until written back
    except OSError:
        pass
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError as exc:
        return f"posix_fadvise failed ({exc.strerror})"
    return None


def storage_read_rate(info: DatasetInfo, split: str = "train", max_bytes: int | None = None,
                      cold: bool = True) -> ReadRate:
    """Read the shard files of ``split`` sequentially (1 MiB reads, whole files, at most ``max_bytes`` in all).

    With ``cold``, each local file is first dropped from the page cache (``posix_fadvise(DONTNEED)``); where
    that is impossible the result says ``cold=False`` and why. URL datasets are streamed through
    :func:`pipeline.read.tarstream.open_shard` (``cold=False``: no cache can be dropped from here).

    Raises:
        ValueError: ``max_bytes`` < 1.
        pipeline.read.tarstream.ShardReadError: a shard cannot be opened.
    """
    from pipeline.read.tarstream import open_shard

    split = split.value if isinstance(split, Split) else str(split)
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    sinfo = info.split(split)
    paths = info.shard_paths(split)
    manifest = {name: e.bytes for name, e in info.shard_entries().items()}
    limit = math.inf if max_bytes is None else max_bytes
    buf = bytearray(READ_CHUNK)
    total, samples_f, seconds = 0, 0.0, 0.0
    notes: list[str] = []
    dropped = cold and not info.remote
    if info.remote:
        notes.append("streamed from a URL: the remote side's caches cannot be dropped (cold=False)" if cold
                     else "streamed from a URL")
    elif cold:
        fs = _fs_type(paths[0]) if paths else ""
        if fs in MEMORY_FS:
            dropped = False
            notes.append(f"the shards are on {fs} (in memory): could not drop the page cache: warm-cache rate")
        elif fs in NETWORK_FS or fs.startswith("fuse"):
            notes.append(f"the shards are on {fs}: posix_fadvise drops only this machine's page cache, not the "
                         f"server's, so the rate may be partly warm")
    for path, length, fname in zip(paths, sinfo.shard_lengths, sinfo.filenames):
        if total >= limit:
            break
        got = 0
        if info.remote:
            t0 = time.perf_counter()
            with open_shard(path) as f:
                while total + got < limit:
                    chunk = f.read(int(min(READ_CHUNK, limit - total - got)))
                    if not chunk:
                        break
                    got += len(chunk)
            seconds += time.perf_counter() - t0
            size = manifest.get(fname)
            complete = total + got < limit or (size is not None and got >= size)
        else:
            fd = os.open(path, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                if dropped:
                    why = _drop_cache(fd)
                    if why is not None:
                        dropped = False
                        notes.append(f"{why}: could not drop the page cache: warm-cache rate")
                view = memoryview(buf)
                t0 = time.perf_counter()
                while total + got < limit:
                    want = int(min(READ_CHUNK, limit - total - got))
                    n = os.readv(fd, [view[:want]])
                    if n == 0:
                        break
                    got += n
                seconds += time.perf_counter() - t0
            finally:
                os.close(fd)
            complete = got >= size
        total += got
        if complete:
            samples_f += length
        elif size:
            samples_f += length * got / size
        # a partly streamed shard of unknown size adds no samples
    how = "cold (page cache dropped with posix_fadvise)" if dropped else "warm-cache" if not info.remote else "remote"
    notes.insert(0, f"sequential {READ_CHUNK >> 20} MiB reads of {split} shard files, {how}")
    return ReadRate(bytes=total, samples=int(round(samples_f)), seconds=seconds, cold=dropped, note="; ".join(notes))


__all__ = ["STAGES", "ReadRate", "StageCosts", "measure_stages", "storage_read_rate"]
