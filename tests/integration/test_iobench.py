"""io-bench: the verdict's formulas, the verdict flipping with injected delays, fidelity, the report files."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from conftest import shared
from pipeline.backends import LoaderConfig, LoaderKind, Split, StageSeconds, build_loader
from pipeline.read.info import load_info
from train.verdict import Evidence, Lever, decide

SMALL = dict(batch_size=8, image_size=32, repeat=1, loader_batches=3, warmup_batches=1, train_steps=3,
             warmup_steps=1, stage_samples=16, workers=(1, 2))


# --- formulas with controlled numbers -------------------------------------------------------------------------

def test_io_bound_below_ninety_percent_of_compute():
    assert decide(Evidence(compute_rate=1000, input_rate=899)).io_bound
    assert not decide(Evidence(compute_rate=1000, input_rate=900)).io_bound
    v = decide(Evidence(compute_rate=1000, input_rate=250))
    assert v.ratio == 0.25 and "waits 75% of the time" in v.lines[0] and "4.00x more input" in v.lines[0]


def test_dominant_stage_cores_needed_and_levers():
    stages = StageSeconds(read=0.0002, decode=0.0015, augment=0.0002, collate=0.0001)  # 2 ms/img → 500 img/s/core
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


def _tiny_resnet50(weights=None, num_classes=1000, zero_init_residual=False):
    """Stands in for torchvision's resnet50: a conv, BN and a linear layer, hundreds of img/s at 32 px even on
    shared cores, so a delay put into one side decides the verdict however busy the machine is."""
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, num_classes))


@pytest.mark.slow
def test_verdict_flips_with_a_delay_in_decode_or_in_the_step(demo_shards, monkeypatch):
    """0.1 s a decode caps 2 workers at 20 img/s against a tiny model's hundreds; 1 s a step (batch 8) caps compute
    at 8 img/s against the loader's hundreds. Only lower bounds on time (upper bounds on rates) are asserted."""
    import torchvision

    from train.loop import TrainStep  # the training step of every run (train.run.run's too)
    from pipeline.read import transforms

    built = []
    monkeypatch.setattr(torchvision.models, "resnet50", lambda **kw: built.append(1) or _tiny_resnet50(**kw))
    real_decode = transforms.simplejpeg.decode_jpeg

    def slow_decode(*args, **kwargs):
        time.sleep(0.1)
        return real_decode(*args, **kwargs)

    with monkeypatch.context() as m:  # DataLoader workers are forked: they inherit the patched function
        m.setattr(transforms.simplejpeg, "decode_jpeg", slow_decode)
        m.setattr(transforms, "nvimgcodec", None)  # every train crop then decodes through simplejpeg
        slow_io = _bench(demo_shards, workers=(2,))
    assert slow_io.sweep["cpu"][2].median < 21  # at most 2 workers / 0.1 s
    assert slow_io.stages["cpu"].seconds_per_image.decode >= 0.1
    assert slow_io.verdict.dominant_stage[0] == "decode"
    assert slow_io.verdict.io_bound, slow_io.verdict.lines
    assert len(built) == 2  # the compute-only and the end-to-end run trained the tiny model

    real_call = TrainStep.__call__

    def slow_step(self, batch):
        time.sleep(1.0)  # 8 images a second at most
        return real_call(self, batch)

    with monkeypatch.context() as m:
        m.setattr(TrainStep, "__call__", slow_step)
        slow_compute = _bench(demo_shards, workers=(2,), train_steps=2)  # 1 warm-up + 2 timed steps of 1 s
    assert slow_compute.compute.p_core < 8.1
    assert not slow_compute.verdict.io_bound, slow_compute.verdict.lines


@pytest.mark.slow
def test_compute_only_is_train_synthetic_p_core(demo_shards, tmp_path, monkeypatch):
    """io-bench's compute-only rate is `train --loader synthetic`'s p_core: the same TrainConfig goes into the same
    train.run.run (asserted exactly); the rates themselves are not compared, since the 2 cores may be shared with
    other jobs while they run (single runs then differ by 8x)."""
    import contextlib
    import dataclasses
    import io

    import train.run as loop
    from tools import train as train_cli
    from train.iobench.config import IoBenchConfig
    from train.iobench.e2e import run_quiet, train_config

    c = IoBenchConfig(data=demo_shards, batch_size=8, image_size=32, train_steps=15, warmup_steps=3)
    flags = ["--data", str(demo_shards), "--loader", "synthetic", "--batch-size", "8", "--image-size", "32",
             "--max-steps", "18", "--warmup-steps", "3", "--epochs", "1000000", "--no-eval", "--warmup-epochs", "0",
             "--workers", "0"]
    ours_cfg = train_config(c, LoaderKind.SYNTHETIC, 0, None)
    # by construction: the very run `train` makes of these flags (metrics path aside)
    assert dataclasses.replace(train_cli.config_from_args(train_cli.build_parser().parse_args(flags))) == ours_cfg
    runs, real_run = [], loop.run

    def recording_run(cfg, *args, **kwargs):
        runs.append(cfg)
        return real_run(cfg, *args, **kwargs)

    monkeypatch.setattr(loop, "run", recording_run)
    threads = torch.get_num_threads()
    report = run_quiet(ours_cfg, io.StringIO())
    ours = report.p_core
    out = tmp_path / "m.json"
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        assert train_cli.main([*flags, "--metrics-json", str(out)]) == 0
    m = json.loads(out.read_text())
    assert torch.get_num_threads() == threads
    assert len(runs) == 2 and runs[0] == ours_cfg == dataclasses.replace(runs[1], metrics_json=None)
    assert m["steps"] == 18 and m["warmup_steps"] == 3  # the same measured steps
    assert ours > 0 and m["p_core"] > 0  # their ratio is a timing: no bound on a shared machine (8x seen)


@pytest.mark.slow
def test_stage_times_add_up_to_loader_wall_time_at_one_worker(tmp_path, monkeypatch):
    """On real JPEGs at 224 px: the worker's per-stage seconds of a window's batches vs the window's wall time.
    Robust by construction: 20 ms of sleep in every decode (the forked worker inherits it) keeps the one worker
    the bottleneck and dwarfs what a busy machine adds to either side; a sleep is not slowed by a CPU hog."""
    from pipeline.read import transforms
    from pipeline.shard.run import ShardConfig, shard_tree
    from train.iobench.results import IoBenchResult
    from train.iobench.sweep import batches_forever, fidelity_hooks, time_windows

    files = sorted(shared("imagenet-samples").glob("*.JPEG"))[:192]
    for f in files:
        d = tmp_path / "tree" / "train" / f.name[:9]
        d.mkdir(parents=True, exist_ok=True)
        os.symlink(f, d / f.name)
    shard_tree(ShardConfig(src=tmp_path / "tree", out=tmp_path / "shards", shard_size=64, workers=2, progress=False))
    info = load_info(tmp_path / "shards")
    real_decode = transforms.simplejpeg.decode_jpeg

    def slow_decode(*args, **kwargs):
        time.sleep(0.02)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(transforms, "nvimgcodec", None)  # every train decode through simplejpeg (and the sleep)
    monkeypatch.setattr(transforms.simplejpeg, "decode_jpeg", slow_decode)
    loader = build_loader(LoaderKind.CPU, LoaderConfig(batch_size=16, image_size=224, workers=1), Split.TRAIN, info,
                          torch.device("cpu"))
    result = IoBenchResult(machine={}, config={})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        time_windows(batches_forever(loader), 4, 2, 2, lambda: None, **fidelity_hooks(loader, result))
    finally:
        torch.set_num_threads(threads)
    assert 0.9 <= result.stage_fidelity.ratio <= 1.1, result.stage_fidelity


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
    shown = capsys.readouterr()
    assert "verdict: " in shown.out
    # progress on a non-terminal stderr: one plain line per step of the planned 8 (storage, 2 stage probes, 2 sweep
    # points, compute-only, 2 end-to-end runs), with ETA, no carriage returns
    steps = [line for line in shown.err.splitlines() if line.startswith("io-bench: ")]
    assert "\r" not in shown.err and len(steps) == 9
    assert steps[0].startswith("io-bench: 0/8 steps (0%)") and steps[-1].startswith("io-bench: 8/8 steps (100%)")
    assert "ETA" in steps[1] and steps[5].endswith("compute-only: 2 steps with the synthetic backend")


def test_cli_defaults_are_io_bench_configs_and_every_data_backend_is_accepted():
    from tools import io_bench
    from train.iobench.run import IoBenchConfig

    parse = io_bench.build_parser().parse_args
    a, d = parse(["--data", "x"]), IoBenchConfig(data="x")
    assert (a.loader, a.workers, a.batch_size, a.image_size, a.precision, a.repeat, a.loader_batches, a.steps,
            a.folder_root, a.max_size) == (d.loaders, d.workers, d.batch_size, d.image_size, d.precision, d.repeat,
                                           d.loader_batches, d.train_steps, d.folder_root, d.max_size)
    assert parse(["--data", "x", "--loader", "cpu,nvjpeg"]).loader == (LoaderKind.CPU, LoaderKind.NVJPEG)
    with pytest.raises(SystemExit):
        parse(["--data", "x", "--loader", "synthetic"])


def test_skip_reasons_come_from_the_registry(monkeypatch):
    import sys
    import types

    from pipeline.backends import backend_spec
    from train.iobench.config import IoBenchConfig
    from train.iobench.setup import BenchSetup, usable_loaders

    kinds = (LoaderKind.CPU, LoaderKind.FOLDER, LoaderKind.DALI, LoaderKind.NVJPEG)
    url_data = types.SimpleNamespace(remote=True)
    setup = BenchSetup(IoBenchConfig(data="https://x/", loaders=kinds), url_data, torch.device("cpu"), 2, (1,), None,
                       print)
    no_tree = "no ImageFolder tree: pass --folder-root DIR (the class-folder tree the shards were made from)"
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "nvidia.dali", None)  # DALI not installed
        skipped = {}
        assert usable_loaders(setup, skipped) == [LoaderKind.CPU, LoaderKind.NVJPEG]
        assert skipped == {"folder": no_tree, "dali": "DALI not installed: pip install 'imagenet-pipeline[dali]'"}
    skipped = {}
    usable_loaders(setup, skipped)
    assert skipped["dali"] == (backend_spec("dali").available() or "reads local files only; the data is a URL")


def test_cli_bad_data_is_one_line(tmp_path, capsys):
    from tools import io_bench

    assert io_bench.main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("io-bench: error: ") and "_info.json" in err[-1]


def test_cli_bad_option_value_is_one_line(demo_shards, tmp_path, capsys):
    from tools import io_bench

    assert io_bench.main(["--data", str(demo_shards), "--image-size", "4", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "io-bench: error: --image-size must be >= 8, got 4"


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


# --- typed stage seconds, one seed ------------------------------------------------------------------------------

def test_one_seed_reaches_every_loader_and_training_run(tmp_path):
    from pipeline.backends import FolderConfig
    from train.iobench.config import IoBenchConfig
    from train.iobench.e2e import train_config

    c = IoBenchConfig(data="x", batch_size=8, image_size=32, seed=7)
    assert c.loader_config(2).seed == 7 and c.loader_config(2).workers == 2 and c.loader_config(2).options == ()
    assert c.loader_config(0, tmp_path).options_for(FolderConfig).data_root == tmp_path
    run_cfg = train_config(c, LoaderKind.CPU, 2, None)
    assert run_cfg.seed == run_cfg.loader_cfg.seed == 7 and run_cfg.loader_cfg == c.loader_config(2)
    assert IoBenchConfig(data="x").seed == LoaderConfig().seed  # the loader's default, train's --seed default


def _result_with_stages(h2d: float | None):
    from pipeline.backends.probe import StageCosts
    from train.iobench.results import IoBenchResult, Machine, Settings

    result = IoBenchResult(Machine(2, "cpu", "cuda", "GPU", "2.x"),
                           Settings("d", 8, 32, "fp32", 1, 2, 1, 2, 1, [1], 100, None), decode="simplejpeg")
    result.stages["cpu"] = StageCosts("cpu", 16, StageSeconds(read=0.001, decode=0.002, augment=0.0005,
                                                              collate=0.0005), 0.1, "cpu: timed")
    result.h2d_seconds_per_image = h2d
    return result


def test_stage_table_shows_the_h2d_copy_where_measured():
    from train.iobench.report import render_markdown

    measured = _result_with_stages(0.001)
    assert measured.stage_seconds("cpu") == StageSeconds(0.001, 0.002, 0.0005, 0.0005, 0.001)
    text = render_markdown(measured, [])
    assert "| backend | read | decode | augment | collate | h2d copy | total | img/s per core |" in text
    assert "| cpu | 1.00 | 2.00 | 0.50 | 0.50 | 1.00 | 5.00 | 200 |" in text
    assert set(measured.to_json()["stages"]["cpu"]["seconds_per_image"]) == {"read", "decode", "augment", "collate"}
    assert measured.to_json()["h2d_seconds_per_image"] == 0.001
    unmeasured = _result_with_stages(None)
    assert unmeasured.stage_seconds("cpu").h2d == 0
    text = render_markdown(unmeasured, [])
    assert "| backend | read | decode | augment | collate | total | img/s per core |" in text
    assert "| cpu | 1.00 | 2.00 | 0.50 | 0.50 | 4.00 | 250 |" in text


def test_the_h2d_copy_can_be_the_dominant_stage():
    stages = StageSeconds(read=0.0001, decode=0.0002, augment=0.0001, collate=0.0001, h2d=0.0005)
    v = decide(Evidence(compute_rate=1000, input_rate=500, stage_seconds=stages))
    assert v.dominant_stage == ("h2d copy", pytest.approx(0.5)) and v.cores_needed == 1  # 1 ms/img: 1000 img/s
    assert decide(Evidence(compute_rate=1000, input_rate=500, stage_seconds=StageSeconds())).dominant_stage is None
