"""Epoch contract of the ``cpu`` backend under real DDP: 2 torchrun processes (gloo, CPU), three shard layouts.

Each rank iterates 2 train epochs and 1 val pass and writes the keys it saw; the test then checks, across
ranks: equal train steps (== len(loader)), disjoint keys with only drop_last-sized losses, one shard order
shared by both ranks and reshuffled between epochs, and val covering every sample exactly once. The three layouts
run in one torchrun launch (one start of the two ranks; each layout's loaders built in turn), each checked alone.

This file is also the per-rank worker:
``python -m torch.distributed.run ... -m tests.integration.test_ddp_epochs SPECS.json``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORLD_SIZE = 2
TRAIN_SAMPLES, VAL_SAMPLES = 23, 7  # both odd: not divisible by the rank count
IMAGE_SIZE, SEED = 16, 0  # with seed 0 the shard order of 3 and of 5 shards differs between epochs 0 and 1


def worker(data: str, out_dir: str, batch_size: int, workers: int) -> None:
    """One rank, in the initialised gloo group: 2 train epochs + 1 val pass with the cpu backend; writes
    ``out_<rank>.json``."""
    import torch
    import torch.distributed as dist

    from pipeline.backends import LoaderConfig, LoaderKind, Split, build_loader
    from pipeline.read.info import load_info

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    info = load_info(data)
    cfg = LoaderConfig(batch_size=batch_size, image_size=IMAGE_SIZE, workers=workers, seed=SEED,
                       normalize=False)
    dev = torch.device("cpu")
    train = build_loader(LoaderKind.CPU, cfg, Split.TRAIN, info, dev, rank, world_size)
    val = build_loader(LoaderKind.CPU, cfg, Split.VAL, info, dev, rank, world_size)
    result = {"len": len(train), "val_len": len(val), "train": [], "steps": [], "batch_sizes": []}
    for epoch in range(2):
        train.set_epoch(epoch)
        keys, sizes = [], []
        for batch in train:
            assert len(batch.keys) == batch.images.shape[0] == batch.labels.shape[0]
            keys.extend(batch.keys)
            sizes.append(len(batch.keys))
        result["train"].append(keys)
        result["steps"].append(len(sizes))
        result["batch_sizes"].append(sizes)
        # a collective per epoch, as DDP does: a rank with fewer steps would still end, but unequal
        # steps in real training would hang in allreduce; here the JSON check catches it
        dist.barrier()
    val_keys, val_batches = [], 0
    for batch in val:
        val_keys.extend(batch.keys)
        val_batches += 1
    result["val"], result["val_batches"] = val_keys, val_batches
    result["skipped"] = list(train.stats().skipped + val.stats().skipped)
    Path(out_dir, f"out_{rank}.json").write_text(json.dumps(result))
    dist.barrier()


def main(argv: list) -> None:
    """One rank: joins the gloo group once, then runs :func:`worker` for each layout of the ``SPECS.json`` file
    (a list of ``{"data", "out", "batch_size", "workers"}``), in order; or, given ``DATA OUT BATCH WORKERS``, for
    that one layout."""
    import torch.distributed as dist

    if len(argv) == 1:
        specs = json.loads(Path(argv[0]).read_text())
    else:
        specs = [{"data": argv[0], "out": argv[1], "batch_size": int(argv[2]), "workers": int(argv[3])}]
    dist.init_process_group("gloo")
    for spec in specs:
        worker(spec["data"], spec["out"], spec["batch_size"], spec["workers"])
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """ImageFolder tree of small random JPEGs: 23 train (3 classes, uneven) and 7 val samples."""
    from PIL import Image

    root = tmp_path_factory.mktemp("ddp_tree")
    rng = random.Random(7)
    for split, n in (("train", TRAIN_SAMPLES), ("val", VAL_SAMPLES)):
        for i in range(n):
            d = root / split / f"n0000000{i % 3}"
            d.mkdir(parents=True, exist_ok=True)
            img = Image.frombytes("RGB", (40, 30), bytes(rng.randrange(256) for _ in range(40 * 30 * 3)))
            img.save(d / f"{split}_{i:03d}.JPEG", quality=90)
    return root


def shard_keys(path: str) -> list[str]:
    """Sample keys of one shard tar, in stored order."""
    with tarfile.open(path) as tf:
        return list(dict.fromkeys(m.name.split(".", 1)[0] for m in tf.getmembers() if m.isfile()))


def consistent_orders(shards: list[list[str]], per_rank: int, used: int, rank_keys: list[list[str]]) -> set:
    """Shard permutations under which rank r's keys are exactly positions [r*per_rank, r*per_rank+used)."""
    found = set()
    for order in itertools.permutations(range(len(shards))):
        seq = [k for s in order for k in shards[s]]
        if all(set(keys) == set(seq[r * per_rank: r * per_rank + used]) for r, keys in enumerate(rank_keys)):
            found.add(order)
    return found


# name -> (shard size, shard count, loader workers per rank, batch size)
LAYOUTS = {
    "3shards": (8, 3, 2, 2),           # 3 uneven shards (8, 8, 7)
    "1shard": (100, 1, 2, 3),          # 1 shard: fewer shards than ranks × workers
    "5shards-3workers": (5, 5, 3, 2),  # 5 shards, 3 workers per rank (6 readers)
}


@pytest.mark.slow
def test_ddp_epoch_contract(tree, tmp_path):
    """Every layout of :data:`LAYOUTS` under one torchrun launch, each layout checked on its own."""
    from pipeline.read.info import load_info
    from pipeline.shard.run import ShardConfig, shard_tree

    specs, layouts = [], {}
    for name, (shard_size, num_shards, workers, batch_size) in LAYOUTS.items():
        out_dir = tmp_path / name
        data = out_dir / "shards"
        shard_tree(ShardConfig(src=tree, out=data, shard_size=shard_size, workers=1, progress=False))
        info = load_info(data)
        assert len(info.split("train").filenames) == num_shards, name
        assert info.split("train").num_samples == TRAIN_SAMPLES and info.split("val").num_samples == VAL_SAMPLES
        shards = [shard_keys(p) for p in info.shard_paths("train")]
        all_val = [k for p in info.shard_paths("val") for k in shard_keys(p)]
        assert [len(s) for s in shards] == list(info.split("train").shard_lengths), name
        specs.append({"data": str(data), "out": str(out_dir), "batch_size": batch_size, "workers": workers})
        layouts[name] = (out_dir, shards, all_val, num_shards, batch_size)
    (tmp_path / "specs.json").write_text(json.dumps(specs))

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD_SIZE),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "tests.integration.test_ddp_epochs",
           str(tmp_path / "specs.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name, layout in layouts.items():
        check_layout(name, *layout)


def check_layout(name: str, out_dir: Path, shards: list, all_val: list, num_shards: int, batch_size: int) -> None:
    """The epoch contract of one layout, from the ranks' ``out_<rank>.json`` in ``out_dir``."""
    out = [json.loads((out_dir / f"out_{r}.json").read_text()) for r in range(WORLD_SIZE)]

    steps = (TRAIN_SAMPLES // WORLD_SIZE) // batch_size
    per_rank = TRAIN_SAMPLES // WORLD_SIZE
    used = steps * batch_size
    orders = []
    for r, o in enumerate(out):
        assert o["skipped"] == [], name
        # equal steps on every rank, every epoch, all full batches, == len(loader)
        assert o["len"] == steps and o["steps"] == [steps, steps], (name, r, o["len"], o["steps"])
        assert all(s == batch_size for sizes in o["batch_sizes"] for s in sizes), name
        # the epoch's order changes (shard order and/or buffer shuffle reseeded per epoch)
        assert o["train"][0] != o["train"][1], name
    for epoch in range(2):
        rank_keys = [o["train"][epoch] for o in out]
        seen = [k for keys in rank_keys for k in keys]
        assert len(seen) == len(set(seen)) == used * WORLD_SIZE, \
            f"{name} epoch {epoch}: duplicate keys over ranks/workers"
        assert set(seen) <= {k for s in shards for k in s}, name
        dropped = TRAIN_SAMPLES - len(seen)
        assert dropped <= WORLD_SIZE * (batch_size + 1), name
        # both ranks read contiguous ranges of ONE shard order (the same on both ranks)
        found = consistent_orders(shards, per_rank, used, rank_keys)
        assert found, f"{name} epoch {epoch}: rank key sets fit no common shard order"
        orders.append(found)
    if num_shards > 1:
        assert not (orders[0] & orders[1]), f"{name}: shard order not reshuffled between epochs"
        # keys differ in which samples are dropped or where: the set per rank changes with the order
        assert any(set(out[r]["train"][0]) != set(out[r]["train"][1]) for r in range(WORLD_SIZE)), name

    # val: every sample exactly once over all ranks, each rank yields len(val loader) batches
    val_seen = [k for o in out for k in o["val"]]
    assert len(val_seen) == VAL_SAMPLES and sorted(val_seen) == sorted(all_val), name
    for o in out:
        assert o["val_batches"] == o["val_len"], name


if __name__ == "__main__":
    main(sys.argv[1:])
