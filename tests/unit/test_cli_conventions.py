"""Issue 20 items 11 and 12: the flags users bring from timm, torchvision's references and NVIDIA's ConvNets, one-line
errors in every console script, the choices of a misspelt enum flag, and ``--device`` (a GPU-only choice without a
usable GPU stops the run in one line unless ``--device cpu`` accepts the CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.backends import LoaderKind
from tools import flagperf_report, flagperf_sweep, io_bench, make_demo_imagenet, shard_imagenet
from tools import train as train_cli
from tools.cli_common import shown
from tools.config_file import parse_args_with_config
from train import accelerator
from train.config import TrainConfig
from train.precision import Precision

SMALL = ["--loader", "synthetic", "--batch-size", "2", "--image-size", "32", "--max-steps", "1", "--no-eval",
         "--workers", "0"]


def config_of(argv: list[str]) -> TrainConfig:
    return train_cli.config_from_args(parse_args_with_config(train_cli.build_parser(), train_cli.SCHEMA, argv))


def stderr_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


# --- item 12: the familiar spellings -----------------------------------------------------------------------------

@pytest.mark.parametrize("alias, main", [
    (["-b", "8"], ["--batch-size", "8"]),
    (["-j", "3"], ["--workers", "3"]),
    (["--amp"], ["--precision", "amp"]),
    (["--output", "runs/a"], ["--output-dir", "runs/a"]),
    (["--channels-last"], []),
    (["--no-channels-last", "--channels-last"], ["--channels-last"]),
    (["--resume", "--checkpoint-dir", "ck"], ["--checkpoint-dir", "ck", "--resume"]),
], ids=lambda v: " ".join(v))
def test_each_alias_parses_to_the_main_flags_config(alias, main):
    assert config_of(alias) == config_of(main)


def test_the_switches_change_what_they_name():
    assert config_of(["--amp"]).precision is Precision.AMP and config_of([]).precision is Precision.AUTO
    assert config_of(["-b", "8"]).loader_cfg.batch_size == 8 and config_of(["-j", "3"]).loader_cfg.workers == 3
    assert not config_of(["--no-channels-last"]).channels_last and config_of(["--channels-last"]).channels_last
    assert config_of(["--precision", "fp32", "--amp"]).precision is Precision.AMP  # the later flag wins
    assert config_of(["--amp", "--precision", "bf16"]).precision is Precision.BF16


def test_c_reads_the_config_file_like_config(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('epochs = 3\nchannels_last = false\ndevice = "cpu"\n[loader]\nbatch_size = 16\n'
                    '[checkpoint]\ncheckpoint_dir = "ck"\nresume = true\n')
    cfg = config_of(["-c", str(toml)])
    assert cfg == config_of(["--config", str(toml)])
    assert (cfg.epochs, cfg.channels_last, cfg.device, cfg.loader_cfg.batch_size) == (3, False, "cpu", 16)
    assert cfg.checkpoint.resume and cfg.checkpoint.resume_from is None
    assert config_of(["-c", str(toml), "-b", "4", "--channels-last"]).loader_cfg.batch_size == 4  # flags win


def test_config_files_keep_reading_the_old_keys_and_resume_path(tmp_path):
    old = tmp_path / "old.toml"
    old.write_text("no_channels_last = true\n")  # the negated key of files written before --channels-last
    assert not config_of(["--config", str(old)]).channels_last
    ck = tmp_path / "ckpt-step00000002.pt"
    ck.write_bytes(b"")
    new = tmp_path / "new.toml"
    new.write_text(f'[checkpoint]\nresume = "{ck}"\n')
    cfg = config_of(["--config", str(new)])
    assert cfg.checkpoint.resume and cfg.checkpoint.resume_from == ck


def test_resume_takes_an_optional_path(tmp_path):
    alone = config_of(["--checkpoint-dir", "ck", "--resume"]).checkpoint
    assert alone.resume and alone.resume_from is None
    path = config_of(["--resume", str(tmp_path)]).checkpoint  # no --checkpoint-dir needed to read one
    assert path.resume and path.resume_from == tmp_path and path.dir is None
    assert not config_of([]).checkpoint.resume


def test_resume_path_that_is_not_there_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli.main([*SMALL, "--resume", str(tmp_path / "nope.pt")])
    assert exc.value.code == 2
    assert stderr_lines(capsys) == [f"train: error: --resume {tmp_path / 'nope.pt'}: no such checkpoint file or "
                                    f"folder"]


# --- item 12: a misspelt enum lists its choices ------------------------------------------------------------------

def enum_options():
    return [o for o in train_cli.SCHEMA.options if o.choices]


def test_every_enum_flag_of_train_is_covered():
    assert {o.flag for o in enum_options()} >= {"--loader", "--precision", "--tf32", "--timing", "--schedule",
                                                "--on-bad-sample"}


@pytest.mark.parametrize("option", enum_options(), ids=lambda o: o.flag)
def test_a_misspelt_enum_value_lists_the_choices(option, capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli.main([option.flag, "nope"])
    choices = ", ".join(shown(c) for c in option.choices)
    assert exc.value.code == 2
    assert stderr_lines(capsys) == [f"train: error: argument {option.flag}: invalid choice 'nope' (choose from "
                                    f"{choices})", "see train --help"]


def test_loader_dal_names_every_loader(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--loader", "dal"])
    line = stderr_lines(capsys)[0]
    assert line.startswith("train: error: argument --loader: invalid choice 'dal' (choose from ")
    assert all(k.value in line for k in LoaderKind) and "LoaderKind" not in line


@pytest.mark.parametrize("main, argv, line", [
    (shard_imagenet.main, ["src", "--layout", "flatt"], "shard-imagenet: error: argument --layout: invalid choice "
                                                        "'flatt' (choose from "),
    (io_bench.main, ["--data", "x", "--precision", "amp16"], "io-bench: error: argument --precision: invalid choice "
                                                             "'amp16' (choose from auto, fp32, amp, "),
], ids=["shard-imagenet", "io-bench"])
def test_enum_flags_of_the_other_scripts_list_their_choices(main, argv, line, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert stderr_lines(capsys)[0].startswith(line)


# --- item 12: one line (+ one hint), never the usage block -------------------------------------------------------

@pytest.mark.parametrize("prog, main, argv", [
    ("train", train_cli.main, ["--bogus"]),
    ("shard-imagenet", shard_imagenet.main, ["src", "--bogus"]),
    ("shard-imagenet verify", shard_imagenet.main, ["verify", "out", "--bogus"]),
    ("io-bench", io_bench.main, ["--data", "x", "--bogus"]),
    ("flagperf-report", flagperf_report.main, ["run.json", "--bogus"]),
    ("flagperf-sweep", flagperf_sweep.main, ["--data", "d", "--out", "o", "--bogus"]),
    ("make-demo-imagenet", make_demo_imagenet.main, ["out", "--bogus"]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_an_unknown_flag_is_one_line_and_a_hint(prog, main, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert stderr_lines(capsys) == [f"{prog}: error: unrecognized arguments: --bogus", f"see {prog} --help"]


@pytest.mark.parametrize("prog, main, argv, first", [
    ("train", train_cli.main, ["--epochs"], "train: error: argument --epochs: expected one argument"),
    ("io-bench", io_bench.main, [], "io-bench: error: the following arguments are required: --data"),
    ("shard-imagenet", shard_imagenet.main, [], "shard-imagenet: error: the following arguments are required: src"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_missing_value_is_one_line_and_a_hint(prog, main, argv, first, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and stderr_lines(capsys) == [first, f"see {prog} --help"]


def test_an_error_found_after_parsing_is_one_line_alone(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--data", str(tmp_path / "nope")])
    assert exc.value.code == 2 and stderr_lines(capsys) == [f"train: error: --data {tmp_path / 'nope'}: no such folder"]


# --- item 11: --device --------------------------------------------------------------------------------------------

def test_device_forms():
    assert [accelerator.parse_device(t) for t in ("auto", "CPU", "cuda", " cuda:01 ")] == ["auto", "cpu", "cuda",
                                                                                         "cuda:1"]
    for bad in ("gpu", "cuda:", "cuda:-1", "mps"):
        with pytest.raises(ValueError, match="--device takes auto, cpu, cuda or cuda:N"):
            accelerator.parse_device(bad)
    assert config_of(["--device", "cuda:1"]).device == "cuda:1" and config_of([]).device == "auto"
    with pytest.raises(ValueError, match="--device takes"):
        TrainConfig(device="gpu")


def no_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)


def two_gpus(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_choose_device(monkeypatch):
    no_gpu(monkeypatch)
    assert accelerator.choose_device("auto") == accelerator.choose_device("cpu") == torch.device("cpu")
    for asked in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=rf"^--device {asked}: no usable GPU here \(.+\); --device cpu runs it "
                                             r"on the CPU$"):
            accelerator.choose_device(asked)
    two_gpus(monkeypatch)
    assert accelerator.choose_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert accelerator.choose_device("cpu") == torch.device("cpu")  # the CPU, on a machine with GPUs
    assert accelerator.choose_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"--device cuda:2: this node has 2 GPU\(s\)"):
        accelerator.choose_device("cuda:2")
    with pytest.raises(ValueError, match="would put all 2 ranks of a node on one GPU"):
        accelerator.choose_device("cuda:0", ranks_per_node=2)
    with pytest.raises(ValueError, match="LOCAL_RANK=2 but this node has 2 GPU"):
        accelerator.choose_device("cuda", local_rank=2)


def test_why_cuda_is_unavailable_is_read_from_torchs_warning(monkeypatch):
    def old_driver() -> bool:
        import warnings
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version 12020). "
                      "Please update your GPU driver.", UserWarning)
        return False

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", old_driver)
    assert accelerator.cuda_unavailable_reason() == ("The NVIDIA driver on your system is too old (found version "
                                                     "12020)")
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    assert "built without CUDA" in accelerator.cuda_unavailable_reason()


def test_device_cuda_without_a_gpu_is_one_line(monkeypatch, capsys):
    no_gpu(monkeypatch)
    rc = train_cli.main([*SMALL, "--device", "cuda"])
    lines = stderr_lines(capsys)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith("train: error: --device cuda: no usable GPU here (")
    assert lines[0].endswith("); --device cpu runs it on the CPU")


@pytest.mark.parametrize("asked, named", [
    (["--loader", "nvjpeg"], "--loader nvjpeg"),
    (["--loader", "dali"], "--loader dali"),
    (["--amp"], "--precision amp"),
    (["--precision", "half"], "--precision half"),
    (["--loader", "nvjpeg", "--precision", "fp16"], "--loader nvjpeg and --precision fp16"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_a_gpu_only_choice_without_a_gpu_is_one_line_at_start(asked, named, monkeypatch, tmp_path, capsys):
    """Fails on the old code: these ran on the CPU and exited 0 (a silent CPU benchmark)."""
    no_gpu(monkeypatch)
    out = tmp_path / "m.json"
    rc = train_cli.main([*SMALL, *asked, "--data", str(tmp_path), "--metrics-json", str(out)])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "train:" not in captured.out and not out.exists(), lines
    assert lines[0].startswith(f"train: error: {named} asked for a GPU, but there is no usable one here (")
    assert lines[0].endswith("); --device cpu runs it on the CPU")


def test_gpu_only_refusal_leaves_cpu_runs_and_gpu_runs_alone():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    asks = ("--loader dali",)
    assert accelerator.gpu_only_refusal("auto", cpu, asks) is not None
    assert accelerator.gpu_only_refusal("cpu", cpu, asks) is None  # accepted by name
    assert accelerator.gpu_only_refusal("auto", gpu, asks) is None
    assert accelerator.gpu_only_refusal("auto", cpu, ()) is None  # --loader cpu, fp32 / auto / bf16


def test_an_unwritable_output_folder_is_one_line_before_any_work(tmp_path, capsys):
    """make-demo-imagenet OUT and io-bench --out naming a file (or under one): one line naming it, exit 2; io-bench
    says so before it measures anything (not after minutes of measuring)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(SystemExit) as ended:
        make_demo_imagenet.main([str(a_file), "--train-per-class", "1", "--val-per-class", "0"])
    assert ended.value.code == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("make-demo-imagenet: error: ") and str(a_file) in lines[0]
    assert io_bench.main(["--data", str(tmp_path / "no_shards"), "--out", str(a_file / "report")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"io-bench: error: --out {a_file / 'report'}: cannot write")
    assert captured.out == ""  # nothing measured, nothing announced
