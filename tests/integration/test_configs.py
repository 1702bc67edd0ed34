"""``train --config FILE.toml``: precedence, one-line errors, the resolved config round trip, a FlagPerf preset
run by name, and a 2-"node" gloo launch of one (two torchrun agents with --nnodes 2 on this machine). The presets'
values are checked in tests/unit/test_presets.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.compat import toml_loads
from tools import train as train_cli
from tools.config_file import parse_args_with_config, resolved_path, resolved_toml
from train.precision import Precision

REPO = Path(__file__).resolve().parents[2]
TINY = ["--image-size", "32", "--batch-size", "2", "--max-steps", "2", "--no-eval", "--loader", "cpu",
        "--workers", "1"]


def parse(argv: list[str]):
    parser = train_cli.build_parser()
    return parser, parse_args_with_config(parser, train_cli.SCHEMA, argv)


def options(args) -> dict:
    return {k: v for k, v in vars(args).items() if k != "config"}


def error_line(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_precedence_defaults_file_flags(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('batch_size = 8\n"max-steps" = 5\nprecision = "fp32"\n\n[optim]\nlr = 0.5\nwarmup-epochs = 0\n'
                   '[run]\nno_eval = true\n')
    _, args = parse(["--config", str(cfg), "--batch-size", "4"])
    assert args.batch_size == 4  # flag beats file
    assert args.max_steps == 5 and args.lr == 0.5 and args.warmup_epochs == 0.0 and args.no_eval  # file beats default
    assert args.precision is Precision.FP32
    assert args.image_size == 224 and args.epochs == 1  # defaults where neither says anything
    _, plain = parse([])
    assert plain.batch_size == 256 and plain.lr is None and not plain.no_eval


@pytest.mark.parametrize("text, expected", [
    ("batch_sise = 8\n", "unknown key 'batch_sise'"),
    ("[optim]\nlearning_rate = 0.1\n", "unknown key 'optim.learning_rate'"),
    ("[model]\ndepth = 50\n", "unknown table [model]"),
    ('batch_size = "8"\n', "key 'batch_size': expected a number"),
    ("batch_size = 8.5\n", "key 'batch_size': invalid value 8.5"),
    ("batch_size = 0\n", "key 'batch_size': invalid value 0"),
    ("no_eval = 1\n", "key 'no_eval': expected true or false"),
    ("lr = true\n", "key 'lr': expected a number or string"),
    ('precision = "fp64"\n', "key 'precision': invalid value 'fp64'"),
    ("batch_size = \n", "invalid TOML"),
], ids=["unknown", "unknown-in-table", "unknown-table", "str-for-int", "float-for-int", "range", "bool",
        "bool-for-float", "choice", "syntax"])
def test_bad_file_is_a_one_line_error(tmp_path, capsys, text, expected):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    line = error_line(capsys, ["--config", str(cfg)])
    assert line.startswith(f"train: error: {cfg}: ") and expected in line, line


@pytest.mark.parametrize("text, expected", [
    ("[optim]\nbatch_size = 8\n", "key 'optim.batch_size' belongs in [loader], not in [optim]"),
    ("[loader]\nepochs = 2\n", "key 'loader.epochs' belongs at the top level, not in [loader]"),
    ("[checkpoint]\nlr = 0.1\n", "key 'checkpoint.lr' belongs in [optim], not in [checkpoint]"),
    ("[optim]\nresume = true\n", "key 'optim.resume' belongs in [checkpoint], not in [optim]"),
    ("batch_size = 8\n[run]\nbatch-size = 4\n", "key 'run.batch-size': set twice"),
], ids=["loader-key-in-optim", "run-key-in-loader", "optim-key-in-checkpoint", "checkpoint-key-in-optim", "twice"])
def test_key_in_the_wrong_table_is_a_one_line_error(tmp_path, capsys, text, expected):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    line = error_line(capsys, ["--config", str(cfg)])
    assert line == f"train: error: {cfg}: {expected}", line


def test_component_tables_set_their_components(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('epochs = 3\nno_eval = true\n[loader]\nloader = "synthetic"\nbatch_size = 8\nworkers = 0\n'
                   '[optim]\nlr = 0.5\nmilestones = "1,2"\n[checkpoint]\ncheckpoint_dir = "ck"\nresume = true\n'
                   'checkpoint_keep = 3\n')
    cfg = train_cli.config_from_args(parse(["--config", str(cfg)])[1])
    assert cfg.epochs == 3 and not cfg.eval and cfg.loader.value == "synthetic"
    assert (cfg.loader_cfg.batch_size, cfg.loader_cfg.workers) == (8, 0)
    assert cfg.optim.lr == 0.5 and cfg.optim.milestones == (1, 2)
    assert (cfg.checkpoint.dir, cfg.checkpoint.resume, cfg.checkpoint.keep) == (Path("ck"), True, 3)


def test_missing_file_is_a_one_line_error(tmp_path, capsys):
    line = error_line(capsys, ["--config", str(tmp_path / "nope.toml")])
    assert line == f"train: error: {tmp_path / 'nope.toml'}: config file not found"


def test_resolved_config_round_trip(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[optim]\nlr = 0.3\nweight_decay = 5e-05\n[run]\nprecision = "bf16"\nno_eval = true\n')
    parser, args = parse(["--config", str(cfg), "--data", "s3://bucket/shards", "--epochs", "3", "--workers", "2",
                          "--metrics-json", str(tmp_path / "out" / "m.json")])
    assert resolved_path(args.metrics_json) == tmp_path / "out" / "m.config.toml"
    written = tmp_path / "resolved.toml"
    written.write_text(resolved_toml(train_cli.SCHEMA, args, "header\nlines"))
    text = written.read_text()
    assert 'data = "s3://bucket/shards"' in text and 'precision = "bf16"' in text and "no_eval = true" in text
    keys = {line.split(" = ")[0] for line in text.splitlines() if not line.startswith("#")}
    assert "max_steps" not in keys and "config" not in keys  # None values and --config itself left out
    tables = toml_loads(text)  # grouped by component: the run's own options at the top level
    assert tables["data"] == "s3://bucket/shards" and tables["epochs"] == 3 and tables["no_eval"] is True
    assert tables["loader"] == {"loader": "cpu", "batch_size": 256, "image_size": 224, "workers": 2,
                                "shuffle_buffer": 500, "synthetic_train_samples": 1_281_167,
                                "synthetic_val_samples": 50_000, "on_bad_sample": "skip", "remote_timeout": 30.0,
                                "remote_retries": 3, "dali_hw_decoder_load": 0.99,
                                "dali_device_memory_padding": 211_025_920, "dali_host_memory_padding": 140_544_512,
                                "dali_preallocate_width_hint": 0, "dali_preallocate_height_hint": 0,
                                "dali_labels_on_device": True, "dali_output": "float32"}
    assert tables["optim"]["lr"] == 0.3 and tables["optim"]["milestones"] == "30,60,80"
    assert tables["checkpoint"] == {"checkpoint_keep": 2, "resume": False}
    _, again = parse(["--config", str(written)])
    assert options(again) == options(args)
    # and with a local path and every default
    parser, args = parse(["--data", str(tmp_path / "shards")])
    written.write_text(resolved_toml(train_cli.SCHEMA, args))
    assert options(parse(["--config", str(written)])[1]) == options(args)


def test_train_writes_the_resolved_config_next_to_the_metrics(demo_shards, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert train_cli.main(["--data", str(demo_shards), *TINY, "--metrics-json", str(out)]) == 0
    resolved = tmp_path / "m.config.toml"
    assert resolved.exists() and out.exists()
    _, from_file = parse(["--config", str(resolved)])
    _, direct = parse(["--data", str(demo_shards), *TINY, "--metrics-json", str(out)])
    assert options(from_file) == options(direct)


@pytest.mark.slow
def test_flagperf_preset_runs_on_cpu_with_tiny_overrides(demo_shards, tmp_path, capsys):
    """A FlagPerf preset by name (the packaged A100x1x1: bs=32, lr=0.1), shrunk by flags to two CPU steps."""
    out = tmp_path / "m.json"
    assert train_cli.main(["--config", "A100x1x1", "--data", str(demo_shards), *TINY,
                           "--metrics-json", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["steps"] == 2 and m["precision"] == "fp32" and m["fix_hp"] == "bs=2,lr=0.1"
    assert "| CPUx1x1 | fp32 | bs=2,lr=0.1 |" in capsys.readouterr().out
    resolved = (tmp_path / "m.config.toml").read_text()
    assert 'precision = "fp32"' in resolved and 'flagperf_case = "A100x1x1"' in resolved


@pytest.mark.slow
def test_two_nodes_gloo_launch(demo_shards, tmp_path):
    """Two torchrun agents, --nnodes 2 --nproc-per-node 1, ranks 0 and 1: the row reads CPUx2x1."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
               "-m", "tools.train", "--config", "A100x2x8",
               "--data", str(demo_shards), *TINY, "--metrics-json", str(tmp_path / f"node{node}" / "m.json")]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=240))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stdout[-3000:] + stderr[-3000:]
    m = json.loads((tmp_path / "node0" / "m.json").read_text())
    assert m["world_size"] == 2 and m["config"] == "CPUx2x1" and m["global_batch_size"] == 4
    assert "| CPUx2x1 | fp32 | bs=2,lr=0.8 |" in outs[0][0]
    assert (tmp_path / "node0" / "m.config.toml").exists()
    assert not (tmp_path / "node1" / "m.json").exists()  # rank 1 writes nothing
    assert not (tmp_path / "node1" / "m.config.toml").exists()
