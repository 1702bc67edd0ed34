"""Training end to end on shards: a few steps in-process, and a 2-process torchrun (gloo) run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tools import train as train_cli

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--batch-size", "4", "--image-size", "32", "--workers", "1"]
FLAGPERF_KEYS = {"e2e_time", "p_whole", "p_train", "p_core", "acc1", "mem"}


def check_metrics(m: dict) -> None:
    assert FLAGPERF_KEYS <= set(m)
    assert m["p_core"] >= m["p_train"] >= m["p_whole"] > 0
    assert m["e2e_time"] > m["times_s"]["loop"] > 0
    assert 0 <= m["acc1"] <= 100
    used, total = (float(v) for v in m["mem"].split("/"))
    assert 0 < used < total


def test_few_train_steps_on_shards(demo_shards, tmp_path, capsys):
    out = tmp_path / "m.json"
    rc = train_cli.main(["--data", str(demo_shards), "--loader", "cpu", "--epochs", "2", "--max-steps", "3",
                         *SMALL, "--metrics-json", str(out)])
    assert rc == 0
    m = json.loads(out.read_text())
    check_metrics(m)
    # a run of more than one step never counts its first (allocator / cuDNN start-up): 2 of 3 steps measured
    assert m["steps"] == 3 and m["epochs"] == 1 and m["warmup_steps"] == 1 and m["trained_images"] == 8
    assert m["eval_images"] == m["val_samples"] == 13
    assert m["precision"] == "fp32"  # auto on CPU
    printed = capsys.readouterr().out
    assert "| config | precision | fix_hp | e2e_time | p_whole | p_train | p_core | acc | mem |" in printed
    assert "| CPUx1x1 | fp32 | bs=4," in printed


def test_synthetic_loader_without_data(tmp_path):
    out = tmp_path / "m.json"
    rc = train_cli.main(["--loader", "synthetic", "--synthetic-train-samples", "12", "--synthetic-val-samples", "6",
                         "--epochs", "2", *SMALL, "--metrics-json", str(out)])
    assert rc == 0
    m = json.loads(out.read_text())
    check_metrics(m)
    assert m["steps"] == 6 and m["eval_images"] == 6


def test_bad_data_is_a_one_line_error(tmp_path, capsys):
    assert train_cli.main(["--data", str(tmp_path), *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert "_info.json" in err and "shard-imagenet" in err and len(err.splitlines()) == 1
    assert train_cli.main(["--loader", "cpu", *SMALL]) == 2
    assert "needs --data" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_ranks_equal_steps_exact_val_count(demo_shards, tmp_path, capsys):
    out, ckdir = tmp_path / "m.json", tmp_path / "ck"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "tools.train", "--data", str(demo_shards), "--loader", "cpu",
           "--epochs", "2", *SMALL, "--metrics-json", str(out), "--checkpoint-dir", str(ckdir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads(out.read_text())
    check_metrics(m)
    # train: 45 samples over 2 ranks of batch 4 → 22 per rank → 5 steps per epoch on every rank
    assert m["world_size"] == 2 and m["rank_steps_min"] == m["rank_steps_max"] == m["steps"] == 10
    assert m["total_trained_images"] == 10 * 8 and m["warmup_steps"] == 2  # auto: min(20, 10 // 5)
    assert m["trained_images"] == (10 - 2) * 8
    assert m["eval_images"] == 13  # 13 val images over 2 ranks: each counted exactly once
    assert "| CPUx1x2 |" in proc.stdout
    # BN statistics are averaged over ranks before every eval and checkpoint: both ranks evaluated the model the
    # final checkpoint holds, so one process evaluating that checkpoint finds the same top-1 / top-5
    capsys.readouterr()
    test_json = tmp_path / "test.json"
    assert train_cli.main(["--data", str(demo_shards), "--loader", "cpu", *SMALL, "--test-only", "--checkpoint-dir",
                           str(ckdir), "--metrics-json", str(test_json)]) == 0
    t = json.loads(test_json.read_text())
    assert t["test_only"] and t["checkpoint_step"] == 10 and t["eval_images"] == 13
    assert (t["acc1"], t["acc5"]) == (m["acc1"], m["acc5"])
    assert t["p_core"] is None and "| CPUx1x1 | fp32 | bs=4,test-only |" in capsys.readouterr().out


def test_average_buffers_makes_ranks_agree():
    """Two gloo ranks with different BN running statistics end with their mean; integer buffers untouched."""
    import torch.multiprocessing as mp

    port = free_port()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_average_worker, args=(r, port, results)) for r in range(2)]
    for proc in procs:
        proc.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(60)
    assert got[0] == got[1] == ([0.5, 0.5], [2.0, 2.0], 3)


def _average_worker(rank: int, port: int, results) -> None:
    import torch
    import torch.distributed as dist

    from train.distributed import DistEnv, average_buffers

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    bn = torch.nn.BatchNorm1d(2)
    bn.running_mean.fill_(float(rank))
    bn.running_var.fill_(1.0 + 2.0 * rank)
    bn.num_batches_tracked.fill_(3)
    average_buffers(bn, DistEnv(rank, 2, rank, torch.device("cpu")))
    results.put((rank, (bn.running_mean.tolist(), bn.running_var.tolist(), int(bn.num_batches_tracked))))
    dist.destroy_process_group()


def test_test_only_needs_a_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--loader", "synthetic", "--test-only"])
    assert "--checkpoint FILE" in capsys.readouterr().err
    assert train_cli.main(["--loader", "synthetic", *SMALL, "--test-only", "--checkpoint-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds none" in err


def test_folder_baseline_trains_on_an_imagefolder_tree(demo_shards, tmp_path):
    out = tmp_path / "m.json"
    tree = demo_shards.parent / "tree"
    assert train_cli.main(["--data", str(tree), "--loader", "folder", "--max-steps", "2", *SMALL,
                           "--metrics-json", str(out)]) == 0
    m = json.loads(out.read_text())
    check_metrics(m)
    assert m["loader"] == "folder" and m["steps"] == 2 and m["eval_images"] == 13


def test_diverging_loss_is_a_one_line_error(demo_shards, capsys):
    assert train_cli.main(["--data", str(demo_shards), "--loader", "cpu", "--max-steps", "6", "--batch-size", "4",
                           "--image-size", "32", "--workers", "1", "--no-eval", "--lr", "1e6",
                           "--warmup-epochs", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("train: error: the training loss became") and "lower --lr" in err[-1]
