"""io-bench: the verdict's formulas, the verdict flipping with injected delays, fidelity, the report files."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import pytest
import torch

from conftest import shared
from pipeline.backends import LoaderConfig, LoaderKind, Split, build_loader
from pipeline.dataset import load_info
from train.iobench.verdict import Evidence, Lever, decide

SMALL = dict(batch_size=8, image_size=32, repeat=1, loader_batches=3, warmup_batches=1, train_steps=3,
             warmup_steps=1, stage_samples=16, workers=(1, 2))


# --- formulas with controlled numbers -------------------------------------------------------------------------

def test_io_bound_below_ninety_percent_of_compute():
    assert decide(Evidence(compute_rate=1000, input_rate=899)).io_bound
    assert not decide(Evidence(compute_rate=1000, input_rate=900)).io_bound
    v = decide(Evidence(compute_rate=1000, input_rate=250))
    assert v.ratio == 0.25 and "waits 75% of the time" in v.lines[0] and "4.00x more input" in v.lines[0]


def test_dominant_stage_cores_needed_and_levers():
    stages = {"read": 0.0002, "decode": 0.0015, "augment": 0.0002, "collate": 0.0001}  # 2 ms/img → 500 img/s/core
    v = decide(Evidence(compute_rate=3000, input_rate=900, stage_seconds=stages, workers=2, cores=4,
                        levers=(Lever("--loader dali", 2900, "measured"), Lever("--max-size 320", 1200, "x"))))
    assert v.io_bound and v.dominant_stage == ("decode", pytest.approx(0.75))
    assert v.cores_needed == 6  # ceil(3000 / 500)
    names = [lv.name for lv in v.levers]
    assert names[0] == "--loader dali" and any(n.startswith("--workers 4") for n in names)
    workers = next(lv for lv in v.levers if lv.name.startswith("--workers 4"))
    assert workers.rate == pytest.approx(1800)  # 900 img/s at 2 workers, x 4/2 (≤ 4 cores x 500)
    text = "\n".join(v.lines)
    assert "closes the gap" in text and "dominant stage: decode (75%" in text and "cores per accelerator" in text
    assert decide(Evidence(compute_rate=3000, input_rate=900, stage_seconds=stages, cores=1)).lines[-1].startswith(
        "no single lever")


def test_run_verdict_wording():
    v = decide(Evidence(compute_rate=100, input_rate=60, data_wait_fraction=0.4, from_run=True))
    assert v.io_bound and v.lines[0].startswith("I/O-bound: the train loop ran at 60 img/s")
    assert "data wait: 40%" in v.lines[1]
    with pytest.raises(ValueError):
        decide(Evidence(compute_rate=0, input_rate=1))


# --- the whole tool -------------------------------------------------------------------------------------------

def _bench(demo_shards, **kw):
    from train.iobench.run import IoBenchConfig, run_io_bench

    cfg = IoBenchConfig(data=demo_shards, loaders=(LoaderKind.CPU,), **{**SMALL, **kw})
    return run_io_bench(cfg, progress=lambda line: None)


@pytest.mark.slow
def test_verdict_flips_with_a_delay_in_decode_or_in_the_step(demo_shards, monkeypatch):
    import train.loop as loop
    from pipeline.read import transforms

    real_decode = transforms.simplejpeg.decode_jpeg

    def slow_decode(*args, **kwargs):
        time.sleep(0.2)  # 200 ms an image: at most 10 img/s from 2 workers
        return real_decode(*args, **kwargs)

    with monkeypatch.context() as m:  # DataLoader workers are forked: they inherit the patched function
        m.setattr(transforms.simplejpeg, "decode_jpeg", slow_decode)
        slow_io = _bench(demo_shards, workers=(2,))
    assert slow_io.verdict.io_bound, slow_io.verdict.lines
    assert slow_io.verdict.dominant_stage[0] == "decode"
    assert slow_io.sweep["cpu"][2].median < 11

    real_call = loop.TrainStep.__call__

    def slow_step(self, batch):
        time.sleep(1.0)  # 8 images a second at most
        return real_call(self, batch)

    with monkeypatch.context() as m:
        m.setattr(loop.TrainStep, "__call__", slow_step)
        slow_compute = _bench(demo_shards, workers=(2,))
    assert not slow_compute.verdict.io_bound, slow_compute.verdict.lines
    assert slow_compute.compute["p_core"] < 8.5


@pytest.mark.slow
def test_compute_only_matches_train_synthetic_p_core(demo_shards, tmp_path):
    """io-bench's compute-only rate and `train --loader synthetic` measure the same thing (within 5%)."""
    import contextlib
    import dataclasses
    import io

    from tools import train as train_cli
    from train.iobench.run import IoBenchConfig, _run_quiet, _train_config

    c = IoBenchConfig(data=demo_shards, batch_size=8, image_size=32, train_steps=15, warmup_steps=3)
    flags = ["--data", str(demo_shards), "--loader", "synthetic", "--batch-size", "8", "--image-size", "32",
             "--max-steps", "18", "--warmup-steps", "3", "--epochs", "1000000", "--no-eval", "--warmup-epochs", "0",
             "--workers", "0"]
    ours_cfg = _train_config(c, LoaderKind.SYNTHETIC, 0, None)
    # by construction: the very run `train` makes of these flags (metrics path aside)
    assert dataclasses.replace(train_cli.config_from_args(train_cli.build_parser().parse_args(flags))) == ours_cfg
    threads = torch.get_num_threads()

    def io_bench_compute() -> float:
        return _run_quiet(ours_cfg, io.StringIO())["p_core"]

    def train_synthetic() -> float:
        out = tmp_path / "m.json"
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
            assert train_cli.main([*flags, "--metrics-json", str(out)]) == 0
        return json.loads(out.read_text())["p_core"]

    ratios = []
    # back-to-back pairs in alternating order: the machine's speed drifts by ~10% over tens of seconds here, which
    # cancels within a pair; single runs still scatter by ~5%, hence the median of 10 pairs
    for i in range(10):
        if i % 2 == 0:
            a = io_bench_compute()
            b = train_synthetic()
        else:
            b = train_synthetic()
            a = io_bench_compute()
        ratios.append(a / b)
    assert torch.get_num_threads() == threads
    assert abs(statistics.median(ratios) - 1) < 0.05, ratios


@pytest.mark.slow
def test_stage_times_add_up_to_loader_wall_time_at_one_worker(tmp_path):
    """On real JPEGs at 224 px: the worker's per-stage seconds of a window's batches vs the window's wall time."""
    from pipeline.shard.run import ShardConfig, shard_tree
    from train.iobench.run import IoBenchResult, _fidelity_hooks, batches_forever, time_windows

    files = sorted(shared("imagenet-samples").glob("*.JPEG"))[:192]
    for f in files:
        d = tmp_path / "tree" / "train" / f.name[:9]
        d.mkdir(parents=True, exist_ok=True)
        os.symlink(f, d / f.name)
    shard_tree(ShardConfig(src=tmp_path / "tree", out=tmp_path / "shards", shard_size=64, workers=2, progress=False))
    info = load_info(tmp_path / "shards")
    loader = build_loader(LoaderKind.CPU, LoaderConfig(batch_size=16, image_size=224, workers=1), Split.TRAIN, info,
                          torch.device("cpu"))
    result = IoBenchResult(machine={}, config={})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        time_windows(batches_forever(loader), 4, 2, 2, lambda: None, **_fidelity_hooks(loader, result))
    finally:
        torch.set_num_threads(threads)
    assert 0.9 <= result.stage_fidelity["ratio"] <= 1.1, result.stage_fidelity


@pytest.mark.slow
def test_cli_writes_report_json_and_plots(demo_shards, tmp_path, capsys):
    from tools import io_bench

    out = tmp_path / "report"
    assert io_bench.main(["--data", str(demo_shards), "--loader", "cpu,folder", "--workers", "1", "--batch-size", "8",
                          "--image-size", "32", "--repeat", "2", "--loader-batches", "2", "--steps", "2",
                          "--folder-root", str(demo_shards.parent / "tree"), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"report.md", "results.json", "loader_vs_workers.png", "stages.png"}
    r = json.loads((out / "results.json").read_text())
    assert set(r["sweep"]) == {"cpu", "folder"} and set(r["stages"]) == {"cpu", "folder"}
    assert r["sweep"]["cpu"]["1"]["median"] > 0 and len(r["sweep"]["cpu"]["1"]["runs"]) == 2
    assert r["compute"]["p_core"] > 0 and set(r["end_to_end"]) == {"cpu", "folder"}
    assert r["storage"]["bytes"] > 0 and r["verdict"]["lines"]
    report = (out / "report.md").read_text()
    assert "## Verdict" in report and "![stages.png](stages.png)" in report
    assert (out / "stages.png").read_bytes()[:4] == b"\x89PNG"
    assert "verdict: " in capsys.readouterr().out


def test_cli_bad_data_is_one_line(tmp_path, capsys):
    from tools import io_bench

    assert io_bench.main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("io-bench: error: ") and "_info.json" in err[-1]


def test_train_prints_the_verdict(demo_shards, tmp_path, capsys):
    from tools import train as train_cli

    out = tmp_path / "m.json"
    assert train_cli.main(["--data", str(demo_shards), "--loader", "cpu", "--max-steps", "3", "--batch-size", "4",
                           "--image-size", "32", "--workers", "1", "--no-eval", "--metrics-json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "p_core/p_train = " in printed and "data wait" in printed
    assert "verdict: compute-bound" in printed or "verdict: I/O-bound" in printed
    m = json.loads(out.read_text())
    assert m["verdict"]["lines"] and set(m["loader_stage_seconds_per_image_rank0"]) == {"read", "decode", "augment",
                                                                                          "collate"}
