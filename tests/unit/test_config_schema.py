"""The config schema (train/config.py, LoaderConfig): each default defined once and read by the flags, each
component checking its own values with one-line errors naming the flag, the flag table covering the fields."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import train.distributed

from pipeline.backends import IMAGENET_TRAIN_SAMPLES, IMAGENET_VAL_SAMPLES, LoaderConfig, SyntheticConfig
from pipeline.read.transforms import CROP_PCT
from pipeline.schema import default_of
from tools import train as train_cli
from train.config import CheckpointConfig, OptimConfig, TrainConfig
from train.recipe import Resolution

COMPONENT_OF = {attr: cls for cls, (attr, _) in train_cli.COMPONENTS.items()}
# schema fields no flag sets: the components themselves, derived values, and library-only options
NOT_FLAGS = {TrainConfig: {"loader_cfg", "optim", "checkpoint", "resolution"},
             LoaderConfig: {"seed", "crop_pct", "normalize", "options"}, SyntheticConfig: {"classes"},
             OptimConfig: set(), CheckpointConfig: {"resume_from"}}  # resume_from: the PATH of --resume PATH


def schema_field(option) -> tuple[type, str]:
    attr, _, name = option.field.rpartition(".")
    return COMPONENT_OF[attr or None], name


def test_flag_defaults_are_the_schema_defaults():
    parser = train_cli.build_parser()
    for option in train_cli.SCHEMA.options:
        if option.field is None:
            assert parser.get_default(option.dest) is None
            continue
        cls, name = schema_field(option)
        if option.type is None and option.negatable:  # --flag / --no-flag: the field's own default
            assert parser.get_default(option.dest) is default_of(cls, name), option.flag
        elif option.type is None:  # a switch: off by default; an inverted one turns a field on by default off
            assert parser.get_default(option.dest) is False and default_of(cls, name) is option.invert, option.flag
        elif option.flag != "--workers":  # --workers: default None = the cores per rank
            assert parser.get_default(option.dest) == default_of(cls, name), option.flag


def test_no_flags_give_the_schema_defaults():
    args = train_cli.build_parser().parse_args([])
    workers = train.distributed.cores_per_rank()
    assert train_cli.config_from_args(args) == TrainConfig(loader_cfg=LoaderConfig(workers=workers))


def test_every_schema_field_has_a_flag_or_is_listed():
    set_by_flags = {schema_field(o) for o in train_cli.SCHEMA.options if o.field is not None}
    for cls, skipped in NOT_FLAGS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        assert names - skipped == {name for c, name in set_by_flags if c is cls}, cls.__name__


def test_tables_are_the_components():
    assert train_cli.SCHEMA.tables == ("loader", "optim", "checkpoint")
    for option in train_cli.SCHEMA.options:
        if option.field is not None and option.flag != "--loader":  # --loader: in [loader] (see tools/train.py)
            assert option.table == train_cli.COMPONENTS[schema_field(option)[0]][1], option.flag


def test_defaults_defined_once():
    assert LoaderConfig().crop_pct is CROP_PCT
    parser = train_cli.build_parser()
    assert parser.get_default("synthetic_train_samples") == IMAGENET_TRAIN_SAMPLES
    assert parser.get_default("synthetic_val_samples") == IMAGENET_VAL_SAMPLES
    assert TrainConfig().seed == LoaderConfig().seed


def test_help_shows_the_schema_defaults():
    text = " ".join(train_cli.build_parser().format_help().split())
    assert "SGD momentum (default: 0.875)" in text and "per-rank batch size (default: 256)" in text
    assert "(default: 1/32768 = 3.05176e-05)" in text and "step schedule epochs (default: 30,60,80)" in text
    assert "decode backend (default: cpu)" in text and "ILSVRC2012 train, 1281167" in text


def test_workers_default_uses_the_local_world_size(monkeypatch):
    monkeypatch.setattr(train.distributed, "local_world_size", lambda: 4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # what LoaderConfig's own default (pipeline.hostinfo.cores_per_local_rank) reads
    monkeypatch.setattr(train.distributed.os, "sched_getaffinity", lambda pid: set(range(8)))
    args = train_cli.build_parser().parse_args([])
    assert train_cli.config_from_args(args).loader_cfg.workers == 2


@pytest.mark.parametrize("make, message", [
    (lambda: LoaderConfig(batch_size=0), "--batch-size must be >= 1, got 0"),
    (lambda: LoaderConfig(image_size=4), "--image-size must be >= 8, got 4"),
    (lambda: LoaderConfig(workers=-1), "--workers must be >= 0, got -1"),
    (lambda: LoaderConfig(crop_pct=1.5), "crop_pct must be in (0, 1], got 1.5"),
    (lambda: OptimConfig(gamma=0), "--gamma must be > 0, got 0"),
    (lambda: OptimConfig(lr=-1.0), "--lr must be > 0, got -1.0"),
    (lambda: OptimConfig(label_smoothing=1.0), "--label-smoothing must be in [0, 1), got 1.0"),
    (lambda: OptimConfig(weight_decay=-1e-4), "--weight-decay must be >= 0, got -0.0001"),
    (lambda: OptimConfig(warmup_epochs=-1), "--warmup-epochs must be >= 0, got -1"),
    (lambda: OptimConfig(nesterov=True, momentum=0.0), "--nesterov needs --momentum > 0, got 0.0"),
    (lambda: OptimConfig(momentum=5.0), "--momentum must be in [0, 1), got 5.0"),
    (lambda: OptimConfig(momentum=1.0), "--momentum must be in [0, 1), got 1.0"),
    (lambda: OptimConfig(momentum=-0.1), "--momentum must be in [0, 1), got -0.1"),
    (lambda: OptimConfig(lr=float("inf")), "--lr must be a finite number, got inf"),
    (lambda: OptimConfig(lr=float("nan")), "--lr must be > 0, got nan"),
    (lambda: OptimConfig(weight_decay=float("inf")), "--weight-decay must be a finite number, got inf"),
    (lambda: LoaderConfig(on_bad_sample="drop"), "--on-bad-sample must be skip or error, got 'drop'"),
    (lambda: OptimConfig(milestones=(60, 30)), "--milestones must be increasing epochs >= 0, got 60,30"),
    (lambda: TrainConfig(checkpoint=CheckpointConfig(resume=True)),
     "--resume and --checkpoint-every need --checkpoint-dir DIR or --output-dir DIR"),
    (lambda: CheckpointConfig(dir=Path("ck"), keep=0), "--checkpoint-keep must be >= 1, got 0"),
    (lambda: TrainConfig(epochs=0), "--epochs must be >= 1, got 0"),
    (lambda: TrainConfig(warmup_steps=-1), "--warmup-steps must be >= 0, got -1"),
    (lambda: TrainConfig(ema_decay=1.0), "--ema-decay must be in (0, 1), got 1.0"),
    (lambda: TrainConfig(target_acc1=101.0), "--target-acc1 takes a top-1 in [0, 100], got 101.0"),
    (lambda: TrainConfig(test_only=True),
     "--test-only needs --checkpoint FILE or --checkpoint-dir DIR (its newest checkpoint)"),
    (lambda: TrainConfig(checkpoint=CheckpointConfig(file=Path("c.pt"))),
     "--checkpoint FILE is for --test-only (to continue training use --resume FILE)"),
    (lambda: TrainConfig(resolution=Resolution(start=256, end=224, ramp_start=0, ramp_end=1, eval=224)),
     "--min-train-size 256 is above --image-size 224 (the size the ramp grows to)"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_each_component_checks_its_values(make, message):
    with pytest.raises(ValueError) as exc:
        make()
    assert str(exc.value) == message


@pytest.mark.parametrize("argv, line", [
    (["--gamma", "0"], "--gamma must be > 0, got 0.0"),
    (["--workers", "-1"], "--workers must be >= 0, got -1"),
    (["--image-size", "4", "--loader", "synthetic"], "--image-size must be >= 8, got 4"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1), got 1.0"),
    (["--milestones", "3,2"], "--milestones must be increasing epochs >= 0, got 3,2"),
    (["--resume"], "--resume and --checkpoint-every need --checkpoint-dir DIR or --output-dir DIR"),
    (["--ramp-epochs", "0,3"], "--ramp-epochs needs --min-train-size (the size the ramp starts from)"),
    (["--min-train-size", "64", "--ramp-epochs", "3,1"],
     "argument --ramp-epochs: takes FIRST,LAST with FIRST <= LAST, e.g. 10,70; got '3,1'"),
    (["--min-train-size", "256"], "--min-train-size 256 is above --image-size 224 (the size the ramp grows to)"),
    (["--test-only", "--checkpoint", "nope.pt"], "--checkpoint nope.pt: no such file"),
    (["--momentum", "5"], "--momentum must be in [0, 1), got 5.0"),
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--warmup-epochs", "inf"], "--warmup-epochs must be a finite number, got inf"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0, got -1.0"),
    (["--label-smoothing", "-0.5"], "--label-smoothing must be in [0, 1), got -0.5"),
    (["--data", "nope"], "--data nope: no such folder"),
    (["--loader", "synthetic", "--test-only", "--checkpoint-dir", "nope"],
     "--checkpoint-dir nope: no such folder (--test-only reads its newest checkpoint)"),
    (["--on-bad-sample", "drop"], "argument --on-bad-sample: invalid choice 'drop' (choose from skip, error)"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_cli_errors_are_one_line(argv, line, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        train_cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()  # the error, and for a mistake argparse finds a hint: see train --help
    assert lines[0] == f"train: error: {line}" and lines[1:] in ([], ["see train --help"]), lines


def test_resolved_config_keeps_the_flat_loader_keys():
    """The metrics JSON's resolved_config.loader_cfg keeps the keys runs have always written (readers of earlier
    runs' JSON), the synthetic backend's sub-config flat among them."""
    from pipeline.backends import SyntheticConfig
    from train.config import config_json

    cfg = TrainConfig(loader_cfg=LoaderConfig(workers=1, options=(SyntheticConfig(train_samples=16),)))
    loader = config_json(cfg)["loader_cfg"]
    assert list(loader) == ["batch_size", "image_size", "workers", "seed", "shuffle_buffer", "crop_pct",
                            "synthetic_train_samples", "synthetic_val_samples", "synthetic_classes", "data_root",
                            "dali_hw_decoder_load", "dali_device_memory_padding", "dali_host_memory_padding",
                            "dali_preallocate_width_hint", "dali_preallocate_height_hint", "dali_labels_on_device",
                            "dali_output", "normalize", "on_bad_sample", "remote_timeout", "remote_retries"]
    assert (loader["synthetic_train_samples"], loader["synthetic_val_samples"], loader["data_root"]) == (16, 50000, None)
