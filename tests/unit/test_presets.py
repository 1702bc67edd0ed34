"""The packaged presets (train/presets/): each FlagPerf one reproduces its train.flagperf_case config exactly, read
through the same parse ``train --config NAME`` does; the tuned ones are this project's recipe, never FlagPerf's;
``--config NAME`` finds a preset by name, and an unknown name is one line listing them."""

from __future__ import annotations

from pathlib import Path

import pytest

import train
from tools import train as train_cli
from tools.config_file import (ConfigFileError, find_preset, load_defaults, parse_args_with_config, presets,
                               presets_dir, resolve_config)
from train.flagperf_case import CONFIGS, Vendor
from train.precision import Precision, Tf32Mode
from train.recipe import Schedule

PRESETS = Path(train.__file__).resolve().parent / "presets"
TUNED = sorted((PRESETS / "tuned").glob("*.toml"))


def config_of(argv: list[str]):
    """The TrainConfig ``train ARGV`` would run (parsed as the train command parses, ``--config`` included)."""
    parser = train_cli.build_parser()
    return train_cli.config_from_args(parse_args_with_config(parser, train_cli.SCHEMA, argv))


def error_line(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        parse_args_with_config(train_cli.build_parser(), train_cli.SCHEMA, argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_one_flagperf_preset_per_case_config_and_nothing_else():
    assert presets_dir() == PRESETS
    assert sorted(p.stem for p in (PRESETS / "flagperf").glob("*.toml")) == sorted(CONFIGS)
    assert [n for n in presets() if "/" not in n] == sorted(CONFIGS)
    assert TUNED and all(n.startswith("tuned/") for n in presets() if "/" in n)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_flagperf_preset_reproduces_the_case_config(name):
    case = CONFIGS[name]
    cfg = config_of(["--config", name, "--data", "shards"])  # by name, as `train --config C500x1x8`
    assert cfg.flagperf_case == name
    assert cfg.precision is Precision.FP32  # FlagPerf's default run: neither config.fp16 nor config.amp
    assert cfg.loader_cfg.batch_size == case.batch
    assert cfg.loader_cfg.workers == case.num_workers
    assert cfg.optim.lr == case.lr and cfg.optim.peak_lr(case.batch * case.world_size) == case.lr  # not rescaled
    assert cfg.optim.momentum == case.momentum and not cfg.optim.nesterov
    assert cfg.optim.weight_decay == case.weight_decay and cfg.optim.decay_bn_and_bias  # decay on every parameter
    assert cfg.optim.schedule is Schedule.STEP and cfg.optim.gamma == case.lr_gamma
    # StepLR(lr_steps) as milestones: every lr_steps epochs; those within the run are the case's
    assert cfg.optim.milestones == (30, 60, 90) and case.lr_steps == 30
    assert tuple(m for m in cfg.optim.milestones if m < cfg.epochs) == case.milestones
    assert cfg.optim.warmup_epochs == 0 and cfg.optim.label_smoothing == 0
    assert cfg.epochs == case.max_epoch and cfg.target_acc1 == case.target_acc1 and cfg.seed == case.seed
    assert cfg.eval and cfg.initial_eval  # an evaluation per epoch and one before training
    assert not cfg.zero_init_residual  # torchvision's default init
    assert cfg.tf32 is (Tf32Mode.ON if case.metax_use_tf32 == "1" else Tf32Mode.DEFAULT)
    assert cfg.cudnn_benchmark is bool(case.cudnn_benchmark)
    assert cfg.cudnn_deterministic is bool(case.cudnn_deterministic)
    assert (case.vendor is Vendor.NVIDIA) == (cfg.tf32 is Tf32Mode.DEFAULT and cfg.cudnn_deterministic)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_flagperf_preset_names_its_sources_and_leaves_the_loader_open(name):
    path = PRESETS / "flagperf" / f"{name}.toml"
    text = path.read_text()
    keys = load_defaults(train_cli.SCHEMA, path)
    assert "loader" not in keys  # the decode backend is the user's choice
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert "github.com/FlagOpen/FlagPerf" in text and "training/benchmarks/resnet50/pytorch/config/_base.py" in text
    assert f"training/{CONFIGS[name].vendor.value}/resnet50-pytorch/config/config_{name}.py" in text
    assert f"--config {name}" in text  # the launch line
    assert ("UNVERIFIED" in header[0]) == (not CONFIGS[name].verified)


@pytest.mark.parametrize("path", TUNED, ids=[p.stem for p in TUNED])
def test_tuned_presets_are_this_projects_recipe_not_flagperfs(path):
    assert "flagperf_case" not in load_defaults(train_cli.SCHEMA, path)
    assert "NOT FlagPerf's" in path.read_text().splitlines()[0]
    cfg = config_of(["--config", f"tuned/{path.stem}"])
    assert cfg.flagperf_case is None and cfg.channels_last and cfg.zero_init_residual
    assert cfg.optim.lr is None and cfg.optim.schedule is Schedule.COSINE and cfg.optim.label_smoothing == 0.1


def test_dle_amp_is_amp_and_dle_fp32_is_true_fp32():
    assert config_of(["--config", "dle-amp"]).precision is Precision.AMP
    fp32 = config_of(["--config", "tuned/dle-fp32"])
    assert fp32.precision is Precision.FP32 and fp32.tf32 is Tf32Mode.OFF


@pytest.mark.parametrize("given, expected", [
    ("C500x1x8", "flagperf/C500x1x8.toml"), ("flagperf/C500x1x8", "flagperf/C500x1x8.toml"),
    ("C500x1x8.toml", "flagperf/C500x1x8.toml"), ("tuned/dle-amp", "tuned/dle-amp.toml"),
    ("dle-amp", "tuned/dle-amp.toml"),
])
def test_preset_names_resolve_to_the_packaged_files(given, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config(given) == PRESETS / expected


def test_an_existing_file_wins_over_a_preset_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("C500x1x8").write_text("epochs = 3\n")
    assert resolve_config("C500x1x8") == Path("C500x1x8")
    assert config_of(["--config", "C500x1x8"]).epochs == 3


def test_flags_override_a_preset():
    cfg = config_of(["--config", "C500x1x8", "--batch-size", "4", "--precision", "amp", "--workers", "0"])
    assert (cfg.loader_cfg.batch_size, cfg.precision, cfg.loader_cfg.workers) == (4, Precision.AMP, 0)
    assert cfg.optim.lr == 0.4  # the rest stays the preset's


def test_unknown_preset_is_one_line_listing_the_presets(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = error_line(capsys, ["--config", "C600x1x8"])
    assert line.startswith("train: error: C600x1x8: no such config file, and no preset of that name (presets: ")
    assert all(name in line for name in CONFIGS) and "tuned/dle-amp" in line
    # a path that is no preset stays a missing file
    assert error_line(capsys, ["--config", "nope.toml"]) == "train: error: nope.toml: config file not found"


def test_a_bare_name_in_two_groups_is_ambiguous(tmp_path):
    for group in ("tuned", "mine"):
        (tmp_path / group).mkdir()
        (tmp_path / group / "fast.toml").write_text("epochs = 2\n")
    assert find_preset("mine/fast", tmp_path) == tmp_path / "mine" / "fast.toml"
    with pytest.raises(ConfigFileError, match=r"fast: several presets have that name \(mine/fast, tuned/fast\)"):
        find_preset("fast", tmp_path)
    assert presets(tmp_path / "none") == {}
    assert find_preset("flagperf/dle-amp") is None and find_preset("flagperf/tuned/dle-amp") is None


def test_flags_override_a_preset_both_ways():
    base = ["--config", "C500x1x8", "--loader", "synthetic"]
    cfg = config_of(base)
    assert cfg.initial_eval is True and cfg.cudnn_benchmark is False and cfg.tf32 is Tf32Mode.ON
    cfg = config_of([*base, "--no-initial-eval", "--precision", "fp16", "--tf32", "off", "--batch-size", "8"])
    assert cfg.initial_eval is False and cfg.precision is Precision.FP16 and cfg.tf32 is Tf32Mode.OFF
    assert cfg.loader_cfg.batch_size == 8 and cfg.optim.lr == 0.4  # the rest stays the preset's
    assert config_of(["--loader", "synthetic", "--initial-eval"]).initial_eval is True


def test_every_switch_a_preset_sets_can_be_turned_back(tmp_path):
    cfg = config_of(["--config", "A100x1x8", "--loader", "synthetic", "--cudnn-benchmark", "--no-cudnn-deterministic",
                     "--zero-init-residual", "--no-decay-bn-bias"])
    assert (cfg.cudnn_benchmark, cfg.cudnn_deterministic, cfg.zero_init_residual) == (True, False, True)
    assert cfg.optim.decay_bn_and_bias is False
    old = tmp_path / "old.toml"  # the negative spelling of older files is read too
    old.write_text("no_cudnn_benchmark = true\nno_zero_init_residual = true\n")
    cfg = config_of(["--config", str(old), "--loader", "synthetic"])
    assert (cfg.cudnn_benchmark, cfg.zero_init_residual) == (False, False)
