"""``folder`` backend: the torchvision baseline users compare against.

``torchvision.datasets.ImageFolder`` over ``<data>/train`` and ``<data>/val`` (one JPEG file per sample,
no shards), PIL decode with torchvision's own ``RandomResizedCrop`` + ``RandomHorizontalFlip`` (train) or
``Resize`` + ``CenterCrop`` (val), ``DistributedSampler``-style splitting, DataLoader workers, uint8 batches
normalised on the device. Epochs follow the same contract as the other backends.

The workers end each sample as an ``S×S×3`` (HWC) uint8 tensor, so the DataLoader's default collate stacks the
batch as ``N×S×S×3`` uint8 (in shared memory, in a worker) and, on CUDA, pins it: that tensor goes to
:func:`pipeline.backends.staging.to_device_prefetched` untouched (its non-blocking copy really is asynchronous, and the
training process spends no time on a layout copy); on the device the NHWC batch viewed as NCHW is channels-last.

The listing is ImageFolder's (class folders of ``train/``, sorted, give the class indices; files with its image
extensions, in its order), with two differences: a folder symlink is followed at most once by its real path,
and never when it leads back into the split folder (a symlink loop is listed once, the link named in a note);
and a flat ``val/`` (ImageNet's val as distributed: image files, no class folders) is labelled by its label file,
found as ``shard-imagenet`` finds it (:mod:`pipeline.source.val_labels`), else refused in one line. A split
with no image at all is refused too: never an accuracy measured on nothing. Each image is turned upright by
its EXIF orientation (as every backend does; torchvision's ImageFolder does not).

The backend times its own stages where they run (in the workers): ``read`` (the file's bytes), ``decode`` (PIL
decode + convert to RGB), ``augment`` (the torchvision transforms and the HWC tensor) per sample, ``collate``
(stacking the batch) per batch. The seconds travel with each batch (a :class:`~pipeline.backends.staging.HostBatch`) and
are booked when the batch is handed out, so :meth:`FolderLoader.stats` covers exactly the batches yielded so far.

A file that cannot be read or decoded follows the shard backends' policy (``LoaderConfig.on_bad_sample``, see
:class:`pipeline.backends.shards.BadSamplePolicy`): the dataset hands over no image but the failure (``<file>: cannot
decode (...)``), and the collate puts another sample of the same batch in its slot (train) or leaves it out
(val), or, with ``error``, stops the run. Skipped files are named on stderr and counted in :meth:`FolderLoader.stats`.
"""

from __future__ import annotations

import io
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset, default_collate, get_worker_info
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from pipeline.read import plan as epoch_plan
from pipeline.backends import Batch, FolderConfig, LoaderConfig, LoaderStats, Split, StageSeconds, StageTimes
from pipeline.backends.replay import ReplayResume
from pipeline.backends.shards import BadSamplePolicy, decode_failure, warn_skipped
from pipeline.backends.staging import HostBatch, to_device_prefetched
from pipeline.dataset import DatasetInfo
from pipeline.read.tarstream import is_url
from pipeline.read.transforms import RRC_RATIO, RRC_SCALE, eval_resize_size, pil_orientation, upright_pil
from pipeline.source.types import LayoutError, LayoutOptions
from pipeline.source.val_labels import LabelFinder, LabelResolver


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of the DataLoader generator of ``epoch`` on ``rank`` (its workers' seeds are drawn from it)."""
    return (seed * 1_000_003 + epoch) * 1009 + rank


def worker_seed(seed: int, epoch: int, rank: int, worker: int) -> int:
    """The torch / ``random`` seed DataLoader worker ``worker`` gets in ``epoch``: torch's own rule for a loader
    made for that epoch (the first int64 its generator, seeded with :func:`epoch_seed`, draws, plus the worker id;
    ``torch.utils.data.dataloader._BaseDataLoaderIter`` and ``_utils.worker._worker_loop``)."""
    generator = torch.Generator()
    generator.manual_seed(epoch_seed(seed, epoch, rank))
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator)) + worker


class EpochTagged(Sampler):
    """Yields ``(epoch, pass, index)`` for each index of a ``DistributedSampler``: persistent DataLoader workers,
    forked once for the whole run, learn each pass over the sampler (``pass`` counts them: an epoch read twice in
    one process is two passes) and its epoch from the indices they are sent, and reseed for it
    (:meth:`FolderSamples.enter_epoch`), whatever the multiprocessing start method."""

    def __init__(self, sampler: DistributedSampler):  # no Sampler.__init__: its signature differs across torch
        self.sampler = sampler
        self.passes = 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch, self.passes = self.sampler.epoch, self.passes + 1
        return ((epoch, self.passes, index) for index in self.sampler)


class FolderSamples(Dataset):
    """The listed image files of one split with their class indices (train's class list, so val labels index the
    same classes as train's), read, decoded and transformed per sample as torchvision's ImageFolder would.

    Attributes:
        samples: ``(file path, class index)`` pairs in ImageFolder's order (class, then folder path, then name).
        classes: the class names (train's class folders, sorted); ``targets``: the class index of each sample.
        seed / rank: the run's seed and this rank, from which a worker's per-epoch seed is drawn
            (:func:`worker_seed`).
    """

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], transform: Callable, seed: int = 0,
                 rank: int = 0):
        self.samples = samples
        self.targets = [target for _, target in samples]
        self.classes = list(classes)
        self.transform = transform
        self.seed, self.rank = seed, rank
        self._pass: int | None = None  # the pass this (worker's copy of the) dataset last seeded its RNGs for

    def __len__(self) -> int:
        return len(self.samples)

    def enter_epoch(self, epoch: int, pass_number: int) -> None:
        """In a DataLoader worker, at its first sample of each pass (``pass_number``, :class:`EpochTagged`): seed
        torch's and ``random``'s generators as a worker of a loader made for ``epoch`` is seeded, so an epoch's
        crops depend on (seed, epoch, rank, worker) alone, also with persistent workers and also when an epoch is
        read twice in one process (a resume's replay is exact). In the training process (no workers):
        nothing (its crops come from the global RNG, as torchvision's)."""
        info = get_worker_info()
        if info is None or pass_number == self._pass:
            return
        seed = worker_seed(self.seed, epoch, self.rank, info.id)
        torch.manual_seed(seed)
        random.seed(seed)
        self._pass = pass_number

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor | None, int, StageSeconds, str | None]:
        """Sample ``key`` (an index, or ``(epoch, pass, index)`` from :class:`EpochTagged`) as ``(S×S×3 uint8, class
        index, stage seconds, None)``: the file's bytes (read), PIL's decode + convert to RGB (the pixels
        ImageFolder's own loader gives) turned upright by the file's EXIF orientation (as every backend does), then
        the transform; for a file that cannot be read or decoded ``(None, class index, stage seconds, "<file>:
        cannot decode (...)")``."""
        if isinstance(key, tuple):
            self.enter_epoch(key[0], key[1])
            key = key[2]
        path, target = self.samples[key]
        clock = time.perf_counter
        t0 = t1 = t2 = clock()
        try:
            with open(path, "rb") as f:
                data = f.read()
            t1 = clock()
            img = Image.open(io.BytesIO(data))
            img = upright_pil(img.convert("RGB"), pil_orientation(img, data))
            t2 = clock()
            x = self.transform(img)
        except Exception as exc:  # damaged file: TimedCollate applies the bad-sample policy
            return None, target, StageSeconds(t1 - t0, clock() - t1), decode_failure(path, exc)
        return x, target, StageSeconds(t1 - t0, t2 - t1, clock() - t2), None


def _is_image(name: str) -> bool:
    """torchvision's ImageFolder rule: the file name ends in one of its image extensions (any case)."""
    return name.lower().endswith(IMG_EXTENSIONS)


def walk_images(top: Path, tree: Path, followed: set[str], notes: list[str]) -> list[str]:
    """The image files under ``top`` (recursively) in ImageFolder's order: by folder path, then by name.

    Folder symlinks are followed at most once by their real path: a link whose target is inside ``tree`` (the
    split folder: its files are listed where they are) or a folder already listed (``followed``, the real paths
    so far, updated here) is skipped, and named in ``notes``; so a symlink loop is listed once, never followed
    round. File symlinks are kept (as ImageFolder keeps them); unreadable folders are named in ``notes``.
    """
    tree_real = os.path.realpath(tree)
    top_real = os.path.realpath(top)
    if top_real in followed:  # e.g. a class folder that is a symlink to another class folder
        notes.append(f"{top}: its target {top_real} is already listed (a folder is read once); left out")
        return []
    by_dir: list[tuple[str, list[str]]] = []
    pending = [str(top)]
    followed.add(top_real)
    while pending:
        folder = pending.pop()
        files = []
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            notes.append(f"{folder}: cannot list it ({exc.strerror or exc}); its images are left out")
            continue
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows a symlink
            except OSError:
                is_dir = False
            if not is_dir:
                if _is_image(entry.name):
                    files.append(entry.path)
                continue
            real = os.path.realpath(entry.path)
            if entry.is_symlink():
                inside = real == tree_real or real.startswith(tree_real.rstrip(os.sep) + os.sep)
                if inside or real in followed:
                    why = "it leads back into " + str(tree) if inside else "its target is already listed"
                    notes.append(f"{entry.path}: folder symlink to {real} not followed ({why}; each folder is "
                                 f"read once)")
                    continue
            elif real in followed:  # a folder reached twice through links above it
                continue
            followed.add(real)
            pending.append(entry.path)
        by_dir.append((folder, files))
    return [f for _, files in sorted(by_dir) for f in files]


def class_folder_samples(split_dir: Path, classes: list[str], notes: list[str]) -> list[tuple[str, int]]:
    """``(file, class index)`` of every image under ``split_dir/<class>/`` (ImageFolder's listing, with
    :func:`walk_images`' symlink rule); a class folder that is absent holds no images (val may hold fewer classes
    than train).

    Raises:
        ValueError: ``split_dir`` holds a folder that is not a class of ``classes`` (one line).
    """
    present = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    known = set(classes)
    unknown = [c for c in present if c not in known]
    if unknown:
        raise ValueError(f"{split_dir}: class folder(s) {', '.join(unknown[:3])} not in train/; give --data the "
                         f"folder holding train/<class>/ and val/<class>/")
    followed: set[str] = set()
    samples = []
    for index, name in enumerate(classes):
        if name in present:
            samples += [(f, index) for f in walk_images(split_dir / name, split_dir, followed, notes)]
    strays = [e.name for e in os.scandir(split_dir) if not e.is_dir() and _is_image(e.name)]
    if strays and present:
        notes.append(f"{split_dir}: {len(strays)} image file(s) outside the class folders (e.g. {min(strays)}) "
                     f"left out, as ImageFolder leaves them")
    return samples


def flat_val_samples(root: Path, val_dir: Path, classes: list[str], notes: list[str]) -> list[tuple[str, int]]:
    """``(file, class index)`` of a flat val (ImageNet's val as distributed: image files, no class folders),
    labelled by its label file, found as ``shard-imagenet`` finds it (:mod:`pipeline.source.val_labels`: devkit
    ground truth, ``LOC_val_solution.csv``, TensorFlow synset labels, ``valprep.sh``, Caffe ``val.txt``; in
    ``root``, its subfolders or ``val_dir``); images are matched by file stem. Images the file does not list are
    left out (named in ``notes``).

    Raises:
        ValueError: no usable label file, or one naming a class train/ does not have (one line each).
    """
    files = sorted(e.path for e in os.scandir(val_dir) if not e.is_dir() and _is_image(e.name))
    finder = LabelFinder(root, [val_dir])
    resolver = LabelResolver(root, LayoutOptions(), finder, list(classes), None, None)
    found: list[str] = []
    try:
        labels = resolver.resolve(found)
    except LayoutError as exc:
        raise ValueError(f"--loader folder: {exc}") from None
    if labels is None:
        raise ValueError(f"{val_dir}: flat val ({len(files)} image files, no class folders) and no val label file "
                         f"to label it; {resolver.looked_for()} (SRC = {root}); put ImageNet's label file there "
                         f"(e.g. LOC_val_solution.csv) or sort val/ into class folders val/<class>/")
    notes += found
    index = {c: i for i, c in enumerate(classes)}
    samples, unlisted = [], []
    for path in files:
        wnid = labels.by_stem.get(Path(path).stem)
        if wnid is None:
            unlisted.append(path)
        elif wnid not in index:
            raise ValueError(f"{path}: class {wnid} (from {labels.source}, read as {labels.read_as}) is not a "
                             f"class folder of {root / Split.TRAIN.value}; remove those val images or add the class")
        else:
            samples.append((path, index[wnid]))
    notes.append(f"{val_dir}: flat val labelled by {labels.description}")
    if unlisted:
        notes.append(f"{val_dir}: {len(unlisted)} image(s) not listed in {labels.source} left out "
                     f"(e.g. {Path(unlisted[0]).name})")
    return samples


def pil_to_hwc_tensor(img) -> torch.Tensor:
    """PIL RGB image → ``H×W×3`` uint8 tensor (HWC, the layout the batch keeps up to the device)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))


class TimedCollate:
    """Samples of :meth:`FolderSamples.__getitem__` → one :class:`~pipeline.backends.staging.HostBatch`
    (``N×S×S×3`` uint8, ``N`` int64, no keys, the lines naming the files that did not decode, the batch's stage
    seconds over its ``N`` samples). The images are stacked by the DataLoader's default collate (in a worker:
    straight into shared memory); the rows of failed files are then replaced or dropped by ``policy``
    (:class:`~pipeline.backends.shards.BadSamplePolicy`: train: replaced; val: dropped; ``error``: raised).
    """

    def __init__(self, image_size: int, policy: BadSamplePolicy):
        self.image_size, self.policy = image_size, policy

    def __call__(self, samples: list[tuple[torch.Tensor | None, int, StageSeconds, str | None]]) -> HostBatch:
        t0 = time.perf_counter()
        failures = [failure for _, _, _, failure in samples if failure is not None]
        blank = torch.zeros((self.image_size, self.image_size, 3), dtype=torch.uint8) if failures else None
        images, labels = default_collate([(blank if x is None else x, y) for x, y, _, _ in samples])
        if failures:
            ok = [i for i, sample in enumerate(samples) if sample[3] is None]
            images, labels, _ = self.policy.keep_decoded(images, labels, [""] * len(samples), ok, failures,
                                                         random.Random(" ".join(failures)))
        collate = time.perf_counter() - t0
        per_sample = sum((seconds for _, _, seconds, _ in samples), StageSeconds())
        return HostBatch(images, labels, (), tuple(failures), per_sample + StageSeconds(collate=collate),
                         len(samples))


class BookedBatches:
    """The DataLoader's host batches (:class:`~pipeline.backends.staging.HostBatch`): iterating hands each batch (its
    stage seconds and the lines naming its skipped files) to ``book`` just before the batch is yielded."""

    def __init__(self, loader: Iterable, book: Callable[[HostBatch], None]):
        self.dataloader = loader
        self._book = book

    def __len__(self) -> int:
        return len(self.dataloader)

    def __iter__(self) -> Iterator[HostBatch]:
        for host in self.dataloader:
            self._book(host)
            yield host


def crop_transform(split: Split, cfg: LoaderConfig) -> transforms.Compose:
    """The per-sample transform: PIL RGB → ``S×S×3`` uint8 tensor. Train: torchvision's RandomResizedCrop
    (scale / ratio of :mod:`pipeline.read.transforms`) + RandomHorizontalFlip; val: Resize(floor(S / crop_pct)) (:func:`~pipeline.read.transforms.eval_resize_size`)
    + CenterCrop(S)."""
    size = cfg.image_size
    if split is Split.TRAIN:
        return transforms.Compose([transforms.RandomResizedCrop(size, scale=RRC_SCALE, ratio=RRC_RATIO),
                                   transforms.RandomHorizontalFlip(), pil_to_hwc_tensor])
    return transforms.Compose([transforms.Resize(eval_resize_size(size, cfg.crop_pct)), transforms.CenterCrop(size),
                               pil_to_hwc_tensor])


def list_split(data_root: Path | str | None, split: Split) -> tuple[list[tuple[str, int]], list[str], list[str]]:
    """``(samples, classes, notes)`` of ``<data_root>/<split>``: its ``(file, class index)`` pairs (class folders,
    or a flat val labelled by its label file), train's class names (val may hold a subset), and what the listing
    left out or how it labelled a flat val.

    Raises:
        ValueError: no local ``data_root``, not an ImageFolder tree, a flat val with no usable label file, or no
            image in the split (one line each).
    """
    if data_root is None or is_url(data_root):
        raise ValueError("--loader folder needs --data DIR: a local ImageFolder root holding train/<class>/ and "
                         "val/<class>/")
    data_root = Path(data_root)
    root = data_root / split.value
    notes: list[str] = []
    try:
        # class indices always come from train/ (val/ may hold a subset of the classes, as in a split run)
        classes = datasets.folder.find_classes(str(data_root / Split.TRAIN.value))[0]
        if split is Split.VAL and _is_flat(root):
            samples = flat_val_samples(data_root, root, classes, notes)
        else:
            samples = class_folder_samples(root, classes, notes)
    except (FileNotFoundError, OSError) as exc:
        raise ValueError(f"{root}: not an ImageFolder tree ({exc}); give --data the folder holding "
                         f"train/<class>/ and val/<class>/") from None
    if not samples:
        raise ValueError(f"{root}: no image files to {'evaluate' if split is Split.VAL else 'train on'} (looked "
                         f"for {', '.join(IMG_EXTENSIONS[:3])}, ... files in its class folders); put the images "
                         f"there" + (" or pass --no-eval" if split is Split.VAL else ""))
    return samples, list(classes), notes


def _is_flat(split_dir: Path) -> bool:
    """True when ``split_dir`` holds image files and no folders (ImageNet's val as distributed)."""
    try:
        entries = list(os.scandir(split_dir))
    except OSError:
        return False
    return not any(e.is_dir() for e in entries) and any(_is_image(e.name) for e in entries)


class FolderLoader(ReplayResume):
    """The ``folder`` backend for one split on one rank. Implements ``Loader``.

    Yields ``N×3×S×S`` channels-last images (float32 normalised, or uint8 with ``normalize=False``) and ``N``
    int64 labels. ``notes``: what the listing left out or how it labelled a flat val (printed on stderr as
    ``note: ...`` lines by rank 0).

    Raises:
        ValueError: no ``data_root`` in the config's :class:`~pipeline.backends.FolderConfig`,
            ``<data_root>/<split>`` is not an ImageFolder tree, a flat val with no usable label file, or a split
            with no image to train on / evaluate (one line each).
    """

    def __init__(self, cfg: LoaderConfig, split: Split, info: DatasetInfo | None, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        samples, classes, notes = list_split(cfg.options_for(FolderConfig).data_root, split)
        dataset = FolderSamples(samples, classes, crop_transform(split, cfg), cfg.seed, rank)
        self.notes = tuple(notes)
        if rank == 0:
            for note in notes:
                print(f"note: {note}", file=sys.stderr, flush=True)
        self.split = split
        self.device = device
        self.normalize = cfg.normalize
        self.num_samples = len(dataset)
        self.num_classes = len(dataset.classes)
        self.classes = tuple(dataset.classes)
        # the workers' torch seeds (base seed + worker id) come from this generator, re-seeded by (seed, epoch, rank)
        # in set_epoch: an epoch's crops do not depend on the global RNG, so a resume's replay is exact
        self._seed, self._rank = cfg.seed, rank
        self._generator = torch.Generator()
        self._generator.manual_seed(self._epoch_seed(0))
        self.sampler, batches = self._dataloader(dataset, cfg, rank, world_size)
        self._stages = StageTimes()  # per-stage seconds of the batches handed out so far (summed over the workers)
        self._skipped: list[str] = []  # "<file>: cannot decode (...)" of every skipped file
        self._torch_loader = batches  # its persistent workers are stopped by close()
        self.loader = BookedBatches(batches, self._book)  # the DataLoader's host batches, stage times booked

    def _dataloader(self, dataset: FolderSamples, cfg: LoaderConfig, rank: int,
                    world_size: int) -> tuple[DistributedSampler | None, DataLoader]:
        """``(sampler, DataLoader)`` of this rank's share: train through a shuffling ``DistributedSampler`` (whole
        batches; ValueError when the split is too small for one step per rank), val its even contiguous share in
        order (no sampler). Workers (``cfg.workers`` > 0) persist across epochs, as the shard backends' do: no
        re-fork (and no cold first batches) at each epoch start; :meth:`close` stops them."""
        common = dict(batch_size=cfg.batch_size, num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
                      generator=self._generator, persistent_workers=cfg.workers > 0,
                      collate_fn=TimedCollate(cfg.image_size, BadSamplePolicy(self.split is Split.TRAIN,
                                                                              cfg.on_bad_sample)))
        if self.split is not Split.TRAIN:
            lo, hi = epoch_plan.split_even(self.num_samples, world_size, rank)
            return None, DataLoader(Subset(dataset, range(lo, hi)), shuffle=False, **common)
        if epoch_plan.train_steps_per_epoch(self.num_samples, world_size, cfg.batch_size) == 0:
            raise ValueError(f"train split has {self.num_samples} samples, fewer than world size × batch size"
                             f" = {world_size} × {cfg.batch_size}; lower --batch-size")
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.seed,
                                     drop_last=True)
        return sampler, DataLoader(dataset, sampler=EpochTagged(sampler), drop_last=True, **common)

    def __len__(self) -> int:
        return len(self.loader)

    def _epoch_seed(self, epoch: int) -> int:
        return epoch_seed(self._seed, epoch, self._rank)

    def set_epoch(self, epoch: int) -> None:
        self._generator.manual_seed(self._epoch_seed(epoch))
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Batch]:
        # the DataLoader's own N×S×S×3 uint8 tensors (pinned on CUDA), handed over as they are
        yield from to_device_prefetched(self.loader, self.device, self.normalize)

    def _book(self, host: HostBatch) -> None:
        """Add one batch's stage seconds to the stage counters and name its skipped files."""
        self._stages = self._stages + host.times()
        for what in host.skipped:
            self._skipped.append(what)
            warn_skipped(what)

    def close(self) -> None:
        """Stop the persistent DataLoader workers (they would otherwise stop only when the loader is collected)."""
        iterator = getattr(self._torch_loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._torch_loader._iterator = None

    def stats(self) -> LoaderStats:
        """The skipped files and the per-stage seconds of the batches yielded."""
        return LoaderStats(tuple(self._skipped), self._stages)
